"""Two sessions and a signaling server on one machine, sessions listening on every
interface (the default): they meet and download (they used to wait for ever: libtorrent
runs its DHT only on the non-loopback sockets, which cannot send to the reflector on
127.0.0.1). Run inside a lab host so that nothing listens on this machine's own
interfaces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("loopback_pair.py")


@pytest.mark.parametrize("method", ["utp", "tcp"])
def test_sessions_on_one_machine_meet_through_a_loopback_server(nat_lab, method):
    lab = nat_lab({"a": "open"})
    done = lab.run("a", [sys.executable, str(SCRIPT), method], timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["udp"][0] == "127.0.0.1"
    assert result["method"] == method and result["error"] is None
    assert result["sha_ok"]
