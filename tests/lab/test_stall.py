"""A punched uTP connection that stalls is replaced, through the NATs, by TCP (root).

A punched uTP connection under loss froze with the connection kept (600 KB, then
0 B/s for 57 s); against Transmission's uTP, libtorrent's stalls the same way. Here
the leech's host starts dropping every UDP packet from the seed mid-download: the uTP
connection stays "connected" and delivers nothing. The stall watch must notice within
its bounded limit, the engine punch again over TCP, and the download finish."""

from __future__ import annotations

import time
from typing import Any

from lt_punch.netlab.scenario import SIGNAL_PORT, make_payload, read_events
from lt_punch.torrent.stall import STALL_MAX, TICK

from .conftest import PortPair

SIZE = 30 << 20


def test_a_stalled_utp_punch_is_replaced_by_tcp(port_pair: PortPair) -> None:
    room, lab = port_pair, port_pair.lab
    torrent, digest = make_payload(room.base, SIZE)
    common = ["--methods", "utp,tcp", "--udp-port", str(SIGNAL_PORT), "--timeout", "60"]
    seed = room.agent("s", "seed", torrent, room.base / "seed", "seed", *common,
                      "--upload-limit", "5000000")  # still downloading when UDP goes
    leech = None
    events: list[dict[str, Any]] = []
    try:
        read_events(seed, "ready", 30.0, [])
        leech = room.agent("l", "leech", torrent, room.base / "leech", "leech", *common,
                           "--progress-every", "0.2")
        punched = read_events(leech, ("punched", "punch-failed"), 30.0, events)
        assert punched["event"] == "punched" and punched["method"] == "utp", punched
        while read_events(leech, "progress", 30.0, [])["progress"] < 0.2:
            pass
        seed_ip = lab.host("s").public_ip
        # Dropped on the way in (a drop on the way out fails sendto() with EPERM, which
        # closes the connection instead of stalling it).
        lab.run("l", ["nft", "add table inet stall; "
                      "add chain inet stall in { type filter hook input priority 0; }; "
                      f"add rule inet stall in ip saddr {seed_ip} meta l4proto udp drop"])
        dropped_at = time.monotonic()
        events.clear()
        stalled = read_events(leech, "peer-stalled", STALL_MAX + 10.0, events)
        noticed = time.monotonic() - dropped_at
        again = read_events(leech, ("punched", "punch-failed"), 30.0, events)
        done = read_events(leech, ("done", "error"), 60.0, events)
    finally:
        if leech is not None:
            lab.stop(leech)
        lab.stop(seed)
    assert stalled["transport"] == "utp" and stalled["repunch"] is True, stalled
    # Bounded: the connection had a rate, so its limit is short; never over the cap.
    assert stalled["waited"] <= STALL_MAX + TICK and noticed <= STALL_MAX + 5.0, stalled
    assert again["event"] == "punched" and again["method"] == "tcp", again
    assert done["event"] == "done" and done["sha256"] == digest, done
