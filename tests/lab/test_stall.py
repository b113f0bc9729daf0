"""A punched uTP connection that stalls is replaced, through the NATs, by TCP (root).

A punched uTP connection under loss froze with the connection kept (600 KB, then
0 B/s for 57 s); against Transmission's uTP, libtorrent's stalls the same way. Here
the leech's host starts dropping every UDP packet from the seed mid-download: the uTP
connection stays "connected" and delivers nothing. The stall watch must notice within
its bounded limit, the engine punch again over TCP, and the download finish."""

from __future__ import annotations

import time
from typing import Any

from lt_punch.netlab.scenario import make_payload, read_events
from lt_punch.torrent.stall import STALL_MAX, TICK

from .conftest import PortPair

SIZE = 30 << 20


def test_a_stalled_utp_punch_is_replaced_by_tcp(port_pair: PortPair) -> None:
    room, lab = port_pair, port_pair.lab
    torrent, digest = make_payload(room.base, SIZE)
    events: list[dict[str, Any]] = []
    with room.mid_download(torrent, "utp,tcp", events) as (leech, punched):
        assert punched["event"] == "punched" and punched["method"] == "utp", punched
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
    assert stalled["transport"] == "utp" and stalled["repunch"] is True, stalled
    # Bounded: the connection had a rate, so its limit is short; never over the cap.
    assert stalled["waited"] <= STALL_MAX + TICK and noticed <= STALL_MAX + 5.0, stalled
    assert again["event"] == "punched" and again["method"] == "tcp", again
    assert done["event"] == "done" and done["sha256"] == digest, done
