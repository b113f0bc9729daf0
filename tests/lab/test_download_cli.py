"""``lt-punch download`` as a user runs it, behind a port-restricted NAT, from a seed behind
another one, with only the signaling room as peer source (root; issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from lt_punch.netlab.scenario import make_payload, next_line, read_events
from lt_punch.torrent.maketorrent import sha256_file

from .conftest import PortPair

SIZE = 20 << 20


def test_download_command_through_two_port_nats(port_pair: PortPair) -> None:
    room, lab = port_pair, port_pair.lab
    torrent, digest = make_payload(room.base, SIZE)
    seed = room.agent("s", "seed", torrent, room.base / "seed", "seed-s")
    try:
        read_events(seed, "ready", 30.0, [])
        out = room.base / "out"
        download = lab.popen("l", [sys.executable, "-m", "lt_punch", "download",
                                   str(torrent), "-o", str(out), "--json", "--isolated",
                                   "--signal", room.url,
                                   "--stun", f"{room.stun[0]}:{room.stun[1]}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = []
        deadline = time.monotonic() + 60
        while (line := next_line(download, deadline)) is not None:
            events.append(json.loads(line))
        assert download.wait(timeout=10) == 0, download.stderr.read() if download.stderr \
            else ""
        verified = sha256_file(out / "payload.bin") == digest
    finally:
        lab.stop(seed)
    assert verified, "downloaded data differs from the seed's"
    done = events[-1]
    assert done["event"] == "done"
    # The library's order on both sides: TCP first.
    assert [(p["peer_id"], p["method"]) for p in done["punched"]] == [("seed-s", "tcp")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["downloaded"] == SIZE and progress[-1]["progress"] == 1.0
