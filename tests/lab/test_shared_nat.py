"""Two peers behind one NAT (one public address) downloading from the same seed at once
(root). Each new punch used to pause and resume the torrent to dial at once, which
dropped the peers already connected and could leave the torrent paused."""

from __future__ import annotations

import subprocess
from typing import Any

from lt_punch.netlab.scenario import make_payload, read_events

from .conftest import PortPair

SIZE = 16 << 20


def test_two_leeches_behind_one_nat_download_at_once(port_pair: PortPair) -> None:
    room, lab = port_pair, port_pair.lab
    torrent, digest = make_payload(room.base, SIZE)

    def agent(side: str, role: str, name: str, *extra: str) -> subprocess.Popen[str]:
        return room.agent(side, role, torrent, room.base / name, name, "--timeout", "60",
                          *extra)

    # 4 MB/s: both downloads overlap for seconds.
    seed = agent("s", "seed", "seed", "--upload-limit", "4000000")
    leeches: list[subprocess.Popen[str]] = []
    try:
        read_events(seed, "ready", 30.0, [])
        leeches = [agent("l", "leech", f"leech-{i}") for i in range(2)]
        done: list[dict[str, Any]] = []
        for proc in leeches:
            done.append(read_events(proc, ("done", "error"), 60.0, []))
    finally:
        for proc in leeches:
            lab.stop(proc)
        lab.stop(seed)
    assert [d["event"] for d in done] == ["done", "done"], done
    assert all(d["sha256"] == digest for d in done)
