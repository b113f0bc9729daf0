"""``lt-punch download`` as a user runs it, behind a port-restricted NAT, from a seed behind
another one, with only the signaling room as peer source (root; issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    make_payload,
    next_line,
    read_events,
    start_agent,
    start_signaling,
)
from lt_punch.torrent.maketorrent import sha256_file

NatLabFactory = Callable[..., NatLab]
SIZE = 20 << 20


def test_download_command_through_two_port_nats(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"s": "port", "l": "port"})
    stun = lab.start_stun()
    signaling = start_signaling(lab)
    url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
    with tempfile.TemporaryDirectory(prefix="ltp-dl-", dir="/dev/shm") as tmp:
        base = Path(tmp)
        torrent, digest = make_payload(base, SIZE)
        seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                           save=base / "seed", peer_id="seed-s")
        try:
            read_events(seed, "ready", 30.0, [])
            out = base / "out"
            download = lab.popen("l", [sys.executable, "-m", "lt_punch", "download",
                                       str(torrent), "-o", str(out), "--json", "--isolated",
                                       "--signal", url, "--stun", f"{stun[0]}:{stun[1]}"],
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
            lab.stop(signaling)
    assert verified, "downloaded data differs from the seed's"
    done = events[-1]
    assert done["event"] == "done"
    assert [(p["peer_id"], p["method"]) for p in done["punched"]] == [("seed-s", "utp")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["downloaded"] == SIZE and progress[-1]["progress"] == 1.0
