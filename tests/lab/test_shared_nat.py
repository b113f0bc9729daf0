"""Two peers behind one NAT (one public address) downloading from the same seed at once
(root). Each new punch used to pause and resume the torrent to dial at once, which
dropped the peers already connected and could leave the torrent paused."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    make_payload,
    read_events,
    start_agent,
    start_signaling,
)

NatLabFactory = Callable[..., NatLab]
SIZE = 16 << 20


def test_two_leeches_behind_one_nat_download_at_once(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"s": "port", "l": "port"})
    stun = lab.start_stun()
    signaling = start_signaling(lab)
    url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
    with tempfile.TemporaryDirectory(prefix="ltp-shared-", dir="/dev/shm") as tmp:
        base = Path(tmp)
        torrent, digest = make_payload(base, SIZE)

        def agent(ns: str, role: str, name: str, *extra: str) -> subprocess.Popen[str]:
            return start_agent(lab, ns, role, url=url, stun=stun, torrent=torrent,
                               save=base / name, peer_id=name, extra=["--timeout", "60", *extra])

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
            lab.stop(signaling)
    assert [d["event"] for d in done] == ["done", "done"], done
    assert all(d["sha256"] == digest for d in done)
