"""The stall rule (lt_punch.torrent.stall.StallDetector): time and samples given."""

from __future__ import annotations

import pytest

from lt_punch.torrent.stall import (
    BLOCK,
    BLOCKS,
    DEGRADED_PEAK,
    STALL_MAX,
    STALL_MIN,
    STALL_UNKNOWN,
    UTP_STALL_MIN,
    UTP_STALL_UNKNOWN,
    PeerSample,
    StallDetector,
)

IH = "ab" * 20
EP = ("10.0.0.2", 6881)


def peer(received: int, *, requests: int = 16, choked: bool = False,
         transport: str = "tcp", endpoint: tuple[str, int] = EP,
         degradable: bool = False) -> PeerSample:
    return PeerSample(endpoint, transport, True, received, requests, choked, degradable)


def run(detector: StallDetector, samples: list[tuple[float, list[PeerSample]]]) -> list[float]:
    """Feed (time, samples) pairs; the times at which a stall was reported."""
    return [t for t, ps in samples if detector.observe(t, IH, ps)]


def test_limit_scales_with_the_connections_own_rate() -> None:
    assert StallDetector.limit(None) == STALL_UNKNOWN
    assert StallDetector.limit(100e6) == STALL_MIN           # fast: a hiccup is short
    assert StallDetector.limit(10.0) == STALL_MAX            # very slow: capped
    rate = BLOCKS * BLOCK / 12.0
    assert StallDetector.limit(rate) == pytest.approx(12.0)  # in between: 8 blocks' time


def test_a_burst_then_a_trickle_is_a_stall() -> None:
    # What Transmission's uTP did: 19 MB in a second, then one 1,382-byte packet
    # every few seconds with 512 requests outstanding.
    d = StallDetector()
    timeline = [(0.0, [peer(0)]), (1.0, [peer(19_000_000)])]
    timeline += [(1.0 + t, [peer(19_000_000 + 1382 * int(t // 3))]) for t in range(1, 12)]
    stalls = run(d, timeline)
    assert stalls == [1.0 + STALL_MIN]


def test_a_peer_that_slows_down_but_moves_is_never_stalled() -> None:
    d = StallDetector()
    rate = 1000  # 1 KB/s after a first block: one block every 16 s, under STALL_MAX
    timeline = [(0.0, [peer(0)]), (1.0, [peer(BLOCK)])]
    timeline += [(1.0 + t, [peer(BLOCK + rate * t)]) for t in range(1, 120)]
    assert run(d, timeline) == []


def test_a_slow_steady_peer_is_never_stalled() -> None:
    d = StallDetector()
    timeline = [(float(t), [peer(1000 * t)]) for t in range(120)]  # 1 KB/s from the start
    assert run(d, timeline) == []


def test_a_new_connection_without_a_whole_block_is_stalled() -> None:
    # A punched uTP path under 10% loss: a few bytes, never a block.
    d = StallDetector()
    timeline = [(float(t), [peer(100 * t)]) for t in range(40)]
    assert run(d, timeline) == [STALL_UNKNOWN, 2 * STALL_UNKNOWN + 1, 3 * STALL_UNKNOWN + 2]


def test_a_few_bytes_then_nothing_is_a_stall_counted_from_the_last_byte() -> None:
    # A punched uTP path under 10% loss: 10 KB in its first second (no whole block),
    # then nothing. The pace since the mark looked "moving" (10 KB / 12 s * 20 s
    # >= 16 KiB) for 12 s; bytes that stopped coming are not a pace.
    d = StallDetector()
    timeline = [(0.0, [peer(0, transport="utp")]), (1.0, [peer(10_000, transport="utp")])]
    timeline += [(1.0 + t, [peer(10_000, transport="utp")]) for t in range(1, 20)]
    assert run(d, timeline)[0] == 1.0 + UTP_STALL_UNKNOWN


def test_a_dribble_that_goes_on_is_slow_not_stalled() -> None:
    # 2.5 KB every 2 s over uTP (a block every 13 s, within STALL_MAX): each arrival is
    # within the 5 s limit of the one before.
    d = StallDetector()
    timeline = [(float(t), [peer(2500 * (t // 2), transport="utp")]) for t in range(60)]
    assert run(d, timeline) == []


def test_choked_or_idle_connections_are_not_waiting() -> None:
    d = StallDetector()
    assert run(d, [(float(t), [peer(0, choked=True)]) for t in range(60)]) == []
    assert run(d, [(float(t), [peer(0, requests=0)]) for t in range(60, 120)]) == []


def test_waiting_starts_when_the_peer_unchokes() -> None:
    # Transmission unchokes after several seconds: the clock starts then.
    d = StallDetector()
    timeline = [(float(t), [peer(0, choked=True)]) for t in range(8)]
    timeline += [(float(t), [peer(0)]) for t in range(8, 30)]
    assert run(d, timeline)[0] == 7.0 + STALL_UNKNOWN


def test_a_stall_is_reported_once_then_the_clock_starts_over() -> None:
    d = StallDetector()
    stalls = run(d, [(float(t), [peer(0)]) for t in range(31)])
    assert stalls == [STALL_UNKNOWN, 2 * STALL_UNKNOWN + 1]


def test_transports_and_torrents_are_tracked_apart() -> None:
    d = StallDetector()
    # A uTP connection that stalls and a TCP one to the same endpoint that moves.
    timeline = [(float(t), [peer(0, transport="utp"), peer(t * BLOCK, transport="tcp")])
                for t in range(8)]
    found = [s for t, ps in timeline for s in d.observe(t, IH, ps)]
    assert [s.sample.transport for s in found] == ["utp"]
    d.forget(IH)
    assert d.tracks == {}


def test_a_closed_connection_is_forgotten() -> None:
    d = StallDetector()
    d.observe(0.0, IH, [peer(0)])
    d.observe(9.0, IH, [])
    # Back with the same endpoint: a new connection, a new clock.
    assert d.observe(9.5, IH, [peer(0)]) == []
    assert d.observe(9.5 + STALL_UNKNOWN - 0.5, IH, [peer(0)]) == []


def test_recovery_alternates_transports_and_is_bounded() -> None:
    """PeerWatch.recover on a real (empty) libtorrent session: each stall of an outgoing
    connection is redialled on the other transport, a stall of an incoming one only
    closed, and a peer that keeps stalling is left alone after MAX_RECOVERIES."""
    import asyncio

    import libtorrent as lt

    from lt_punch.torrent.events import PeerStalled
    from lt_punch.torrent.stall import MAX_RECOVERIES, PeerWatch, Stall

    async def main() -> None:
        session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                              "enable_lsd": False, "enable_upnp": False,
                              "enable_natpmp": False})
        dials: list[tuple[str, str, tuple[str, int]]] = []
        events: list[object] = []

        async def dial(infohash: str, transport: str, endpoint: tuple[str, int]) -> None:
            dials.append((infohash, transport, endpoint))

        watch = PeerWatch(session, {}, dial, events.append, started=0.0)
        transport = "utp"
        for _ in range(MAX_RECOVERIES + 2):
            watch.recover(IH, Stall(peer(0, transport=transport), 5.0, 3.0))
            await asyncio.sleep(0)
            transport = "tcp" if transport == "utp" else "utp"
        assert [t for _, t, _ in dials] == ["tcp", "utp"] * (MAX_RECOVERIES // 2)
        assert len(events) == MAX_RECOVERIES and all(
            isinstance(e, PeerStalled) and not e.repunch for e in events)
        assert session.get_ip_filter().access(EP[0]) == 0  # the filter was restored
        incoming = PeerSample(("10.0.0.3", 51000), "utp", False, 0, 16, False)
        watch.recover(IH, Stall(incoming, 5.0, 3.0))
        await asyncio.sleep(0)
        assert len(dials) == MAX_RECOVERIES and events[-1].redial is None  # type: ignore[attr-defined]

    asyncio.run(main())


def test_a_productive_connection_starts_the_count_over() -> None:
    """A long download over a lossy path stalls now and then: a connection that had
    delivered PRODUCTIVE bytes before it stalled does not count towards the cap."""
    import asyncio

    import libtorrent as lt

    from lt_punch.torrent.stall import MAX_RECOVERIES, PRODUCTIVE, PeerWatch, Stall

    async def main() -> None:
        session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                              "enable_lsd": False, "enable_upnp": False,
                              "enable_natpmp": False})
        dials: list[str] = []
        productive: list[bool] = []

        async def dial(infohash: str, transport: str, endpoint: tuple[str, int]) -> None:
            dials.append(transport)

        def punched(ih: str, endpoint: tuple[str, int], transport: str, enough: bool) -> bool:
            productive.append(enough)
            return False  # not a punched peer: redialled

        watch = PeerWatch(session, {}, dial, lambda e: None, started=0.0, punched=punched)
        for n in range(3 * MAX_RECOVERIES):
            received = PRODUCTIVE if n % 4 == 3 else 0  # every 4th one had delivered
            watch.recover(IH, Stall(peer(received, transport="tcp"), 5.0, 5.0))
            await asyncio.sleep(0)
        assert len(dials) == 3 * MAX_RECOVERIES
        assert productive == [n % 4 == 3 for n in range(3 * MAX_RECOVERIES)]
        # Without productive ones in between, the cap holds.
        for _ in range(MAX_RECOVERIES + 1):
            watch.recover(IH, Stall(peer(0, transport="tcp"), 5.0, 5.0))
            await asyncio.sleep(0)
        assert len(dials) == 3 * MAX_RECOVERIES + MAX_RECOVERIES - 1

    asyncio.run(main())


def test_utp_has_lower_floors() -> None:
    # libtorrent's uTP freezes under loss where TCP backs off and resumes
    # (benchmarks/utp_loss.py): it is given less time.
    assert StallDetector.limit(None, "utp") == UTP_STALL_UNKNOWN < STALL_UNKNOWN
    assert StallDetector.limit(100e6, "utp") == UTP_STALL_MIN < STALL_MIN
    assert StallDetector.limit(10.0, "utp") == STALL_MAX
    d = StallDetector()
    timeline = [(0.0, [peer(0, transport="utp")]), (1.0, [peer(19_000_000, transport="utp")])]
    timeline += [(1.0 + t / 2, [peer(19_000_000, transport="utp")]) for t in range(1, 20)]
    assert run(d, timeline)[0] == 1.0 + UTP_STALL_MIN


def _crawl(degradable: bool, fast: int) -> list[tuple[float, list[PeerSample]]]:
    """``fast`` B/s for 4 s, then a block every 2 s (TCP backing off under loss),
    sampled every 0.25 s."""
    timeline = []
    for i in range(16):
        timeline.append((i * 0.25, [peer(fast * i // 4, degradable=degradable)]))
    base = fast * 4
    for i in range(1, 160):
        t = 4.0 + i * 0.25
        timeline.append((t, [peer(base + BLOCK * int(i * 0.25 // 2), degradable=degradable)]))
    return timeline


def test_a_degradable_connection_that_crawls_is_handed_over() -> None:
    """A punched TCP connection with a stream alternative: 8 MB/s, then a block every
    2 s (never silent for its limit): reported, degraded, within seconds."""
    d = StallDetector()
    reported = []
    for t, samples in _crawl(True, 8 << 20):
        for stall in d.observe(t, IH, samples):
            reported.append((t, stall.degraded))
    assert len(reported) == 1 and reported[0][1] is True
    assert reported[0][0] < 4.0 + 12.0


def test_a_crawl_is_left_alone_without_an_alternative_or_a_fast_start() -> None:
    """Not degradable: the crawl is a slow peer's business (the silence rule only).
    Degradable but never fast (below DEGRADED_PEAK): a slow peer, not a degraded path."""
    assert run(StallDetector(), _crawl(False, 8 << 20)) == []
    assert run(StallDetector(), _crawl(True, DEGRADED_PEAK // 4)) == []


def test_a_stalled_stream_is_closed_alone() -> None:
    """A stream of ours (loopback) is closed by itself: closing by address would also
    close every other stream and relayed connection, all on loopback. Any other
    connection is closed by address, and the other outgoing connections there are
    dialled again."""
    import asyncio

    import libtorrent as lt

    from lt_punch.torrent.stall import PeerWatch, Stall

    async def main() -> None:
        session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                              "enable_lsd": False, "enable_upnp": False,
                              "enable_natpmp": False})
        dials: list[tuple[str, str, tuple[str, int]]] = []
        closed: list[tuple[str, int]] = []
        dropped: list[str] = []
        stream, other, plain = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("127.0.0.1", 40003)

        async def dial(infohash: str, transport: str, endpoint: tuple[str, int]) -> None:
            dials.append((infohash, transport, endpoint))

        def close_one(endpoint: tuple[str, int]) -> bool:
            closed.append(endpoint)
            return endpoint == stream

        watch = PeerWatch(session, {}, dial, lambda e: None, started=0.0,
                          punched=lambda *a: True, close_one=close_one)
        watch.drop = dropped.append  # type: ignore[method-assign]
        watch.connected[IH] = {other: PeerSample(other, "tcp", True, 0, 0, False)}
        watch.recover(IH, Stall(peer(0, endpoint=stream), 5.0, 5.0))
        await asyncio.sleep(0)
        assert closed == [stream] and dropped == [] and dials == []
        watch.recover(IH, Stall(peer(0, endpoint=plain), 5.0, 5.0))
        await asyncio.sleep(0)
        assert dropped == ["127.0.0.1"] and dials == [(IH, "tcp", other)]

    asyncio.run(main())
