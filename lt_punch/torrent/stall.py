"""Stall recovery: a peer connection that stops delivering is dropped and redialled.

libtorrent keeps a connection that delivers nothing for as long as the peer answers
(its ``request_timeout`` only re-requests blocks; with one peer there is nobody else
to ask). Measured against a stock Transmission 3.00 seeder on loopback: libtorrent's
uTP stalls after a burst (19 MB in 1 s, then one 1,382-byte packet every ~10 s with
512 requests outstanding and the peer unchoking us) in about 1 run of 4; TCP from
the same seeder never stalled. Punched uTP under 10% loss froze the same way.

Rule (:class:`StallDetector`, no I/O): a connection is *waiting* while we have
requests outstanding to it and it does not choke us. A waiting connection that has
not delivered one block (16 KiB) for ``limit`` seconds is stalled, where ``limit``
is the time :data:`BLOCKS` blocks take at the connection's own recent rate, clamped
to [:data:`STALL_MIN`, :data:`STALL_MAX`]; :data:`STALL_UNKNOWN` before its first
block. A slow but moving peer is never stalled: bytes arriving at a pace that would
complete a block within :data:`STALL_MAX` (0.8 KB/s) give it that long, as long as
they keep arriving (none for ``limit`` seconds: stalled). The floor
is 5 s, not less, for TCP: under heavy loss it backs off for seconds (0.2, 0.4, 0.8,
1.6 s ...) and then goes on, and closing it costs a new connection. uTP gets 3 s
(:data:`UTP_STALL_MIN`, :data:`UTP_STALL_UNKNOWN`): libtorrent's uTP does not go on.

Recovery (:class:`PeerWatch`): the connection is closed and dialled again on the
other transport (TCP for a uTP connection and the reverse), a punched one punched
again; at most :data:`MAX_RECOVERIES` times per peer in a row. A
:class:`~lt_punch.torrent.events.PeerStalled` event says why. A connection the peer
made to us is only closed: the peer dials again (we cannot: its port is its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from ..punch.lt_dialer import close_connections
from ..types import Address
from .events import Event, PeerConnected, PeerDisconnected, PeerStalled

if TYPE_CHECKING:
    from .handle import Torrent

logger = logging.getLogger(__name__)

BLOCK = 16 * 1024
"""libtorrent's request size: progress is counted in whole blocks."""

BLOCKS = 8
"""The stall limit is the time this many blocks take at the connection's recent rate."""

STALL_MIN = 5.0
"""Seconds: no connection is called stalled sooner (a fast peer's hiccup)."""

STALL_MAX = 20.0
"""Seconds: a waiting connection silent this long is stalled, however slow it was."""

STALL_UNKNOWN = 10.0
"""Seconds: the limit for a connection that has not delivered a whole block yet (a
punched uTP path under 10% loss delivered a few bytes in 20 s: frozen, not slow)."""

UTP_STALL_MIN = 3.0
UTP_STALL_UNKNOWN = 5.0
"""The same floors for uTP, lower: libtorrent's uTP freezes under random loss where
TCP backs off and goes on (two stock sessions on a lossy loopback, 10% of the packets
dropped: uTP 0.24 MB/s, TCP 7 MB/s; benchmarks/utp_loss.py), and a healthy uTP
connection with requests out never paused 3 s (Transmission, the lab)."""

TICK = 0.25
"""Seconds between two looks at the peers of the torrents (new connections show in
events and stats at most this late)."""

SEEDING_EVERY = 8
"""A finished torrent's peers are looked at every this many ticks (2 s)."""

MAX_RECOVERIES = 8
"""Stall recoveries per peer and torrent in a row; then its connections are left
alone. A connection that delivered :data:`PRODUCTIVE` bytes before it stalled starts
the count over: the cap ends loops of connections that deliver nothing, not a long
download over a lossy path that stalls now and then."""

DEGRADED = 0.1
"""A degradable connection (:attr:`PeerSample.degradable`) whose recent rate fell below
this fraction of its best, while we wait on :data:`BLOCKS` requests or more (not the
last blocks of a download), is handed over as stalled: libtorrent's
TCP under random loss does not stall but crawls (a block every few seconds for 20 s and
more, while its recent rate, and so its stall limit, adapts to the crawl), and our
stream over the same path does not back off (benchmarks/utp_loss.py)."""

DEGRADED_PEAK = 1 << 20
"""B/s (1 MiB/s) a connection must have reached for its fall to count: a slow peer
never "degrades"."""

PRODUCTIVE = 4 << 20
"""Bytes (4 MiB) a stalled connection must have delivered for its stall not to count
towards :data:`MAX_RECOVERIES`."""

REDIALS = 4
"""Dials of the other transport after a stall before libtorrent's own redial is left."""

REDIAL_PAUSE = 0.5
"""Seconds before the second redial (then twice that, three times, ...)."""

UTP_FLAG = 1 << 17
"""``peer_info.flags`` bit of a uTP connection (libtorrent's ``utp_socket``; this
binding does not export its name)."""


@dataclass(frozen=True)
class PeerSample:
    """What the detector needs of one connection (from ``lt.peer_info``)."""

    endpoint: Address
    transport: str
    """"utp" or "tcp"."""
    outgoing: bool
    """We dialled it: ``endpoint`` is its listen port, so it can be dialled again."""
    received: int
    """Payload bytes received on this connection."""
    requests: int
    """Blocks requested and not received yet."""
    choked: bool
    """The peer chokes us."""
    degradable: bool = False
    """A punched TCP or uTP connection whose pair can punch our loss-tolerant stream
    instead: :data:`DEGRADED` applies to it."""


@dataclass(frozen=True)
class Stall:
    """One stalled connection, as the detector found it."""

    sample: PeerSample
    waited: float
    """Seconds without a block while waiting."""
    limit: float
    """The limit it crossed (seconds)."""
    degraded: bool = False
    """Not silent but crawling: its rate fell below :data:`DEGRADED` of its best."""


@dataclass
class _Track:
    mark: int
    mark_time: float
    rate: float | None = None
    last: int = 0
    """Bytes received at the last sample that brought any."""
    last_time: float = 0.0
    """When bytes last arrived."""
    peak: float = 0.0
    """The best recent rate it had (B/s)."""


@dataclass
class StallDetector:
    """Finds stalled connections from periodic samples (pure: time is passed in)."""

    tracks: dict[tuple[str, Address, str], _Track] = field(default_factory=dict)

    @staticmethod
    def limit(rate: float | None, transport: str = "tcp") -> float:
        """Seconds a waiting connection with this recent rate (B/s) may go without a
        block."""
        utp = transport == "utp"
        if not rate:
            return UTP_STALL_UNKNOWN if utp else STALL_UNKNOWN
        return min(STALL_MAX, max(UTP_STALL_MIN if utp else STALL_MIN, BLOCKS * BLOCK / rate))

    def observe(self, now: float, infohash: str, samples: Iterable[PeerSample]) -> list[Stall]:
        """Update with the current connections of one torrent; returns the stalled ones
        (each is then forgotten, so it is reported once)."""
        stalls: list[Stall] = []
        seen: set[tuple[str, Address, str]] = set()
        for s in samples:
            key = (infohash, s.endpoint, s.transport)
            seen.add(key)
            track = self.tracks.get(key)
            if track is None or s.received < track.mark:
                self.tracks[key] = _Track(s.received, now, last=s.received, last_time=now)
                continue
            if s.received > track.last:
                track.last, track.last_time = s.received, now
            if s.choked or s.requests == 0:
                track.mark, track.mark_time = s.received, now  # not waiting on it
                continue
            got = s.received - track.mark
            if got >= BLOCK:
                elapsed = now - track.mark_time
                if elapsed > 0:
                    rate = got / elapsed
                    track.rate = rate if track.rate is None else 0.5 * track.rate + 0.5 * rate
                    track.peak = max(track.peak, track.rate)
                track.mark, track.mark_time = s.received, now
                if (s.degradable and s.requests >= BLOCKS and track.rate is not None
                        and track.peak >= DEGRADED_PEAK and track.rate < DEGRADED * track.peak):
                    stalls.append(Stall(s, elapsed, self.limit(track.rate, s.transport),
                                        degraded=True))
                    del self.tracks[key]
                continue
            waited = now - track.mark_time
            # Bytes coming at a pace that completes a block within STALL_MAX: slow, not
            # stalled (a rate-capped peer), whatever its earlier rate; as long as they
            # still come (a frozen uTP path's first few KB kept it "moving" for 12 s).
            base = self.limit(track.rate, s.transport)
            moving = (got > 0 and waited > 0 and got / waited * STALL_MAX >= BLOCK
                      and now - track.last_time < base)
            limit = STALL_MAX if moving else base
            if waited >= limit:
                stalls.append(Stall(s, waited, limit))
                del self.tracks[key]
        for key in [k for k in self.tracks if k[0] == infohash and k not in seen]:
            del self.tracks[key]
        return stalls

    def forget(self, infohash: str) -> None:
        for key in [k for k in self.tracks if k[0] == infohash]:
            del self.tracks[key]


def sample(info: Any) -> PeerSample:
    """A :class:`PeerSample` of one ``lt.peer_info``."""
    flags = int(info.flags)
    return PeerSample(
        endpoint=(str(info.ip[0]), int(info.ip[1])),
        transport="utp" if flags & UTP_FLAG else "tcp",
        outgoing=bool(flags & int(lt.peer_info.outgoing_connection)),
        received=int(info.total_download),
        requests=int(info.download_queue_length),
        choked=bool(flags & int(lt.peer_info.remote_choked)),
    )


class PeerWatch:
    """Watches the peer connections of a session's torrents: publishes
    :class:`~lt_punch.torrent.events.PeerConnected` / ``PeerDisconnected`` and
    recovers stalled connections (``PeerStalled``).

    libtorrent posts no alert when a handshake completes, so connections are seen by
    looking at each torrent's peers every :data:`TICK` seconds.

    Args:
        session: the libtorrent session (its IP filter closes one peer's connections).
        torrents: the session's torrents by infohash.
        dial: ``await dial(infohash, transport, endpoint)`` dials one peer on one
            transport (the punch dialer's, which can force TCP).
        punched: ``punched(infohash, endpoint, transport, productive)`` hands a
            stalled punched connection to the punch engine (which punches again, the
            stalled method last; ``productive``: it had delivered :data:`PRODUCTIVE`
            bytes); True when it took it: the connection is then only closed.
        degradable: ``degradable(infohash, endpoint, transport)``: whether a
            connection may be handed over for crawling (:data:`DEGRADED`), not only
            for silence (the punch engine: a punched TCP or uTP connection whose pair
            can punch the ``udp`` stream).
        close_one: ``close_one(endpoint)`` closes that one connection when it can (a
            stream of ours on loopback) and says so; else every connection to the
            endpoint's address is closed (libtorrent has no call for one).
        emit: the session's event sink.
        started: ``time.monotonic()`` of the session start (events say seconds since).
    """

    def __init__(self, session: lt.session, torrents: Mapping[str, Torrent],
                 dial: Callable[[str, str, Address], Awaitable[Any]],
                 emit: Callable[[Event], None], started: float,
                 punched: Callable[[str, Address, str, bool], bool] = lambda *a: False,
                 degradable: Callable[[str, Address, str], bool] = lambda *a: False,
                 close_one: Callable[[Address], bool] = lambda endpoint: False,
                 ) -> None:
        self._session = session
        self._punched = punched
        self._degradable = degradable
        self._close_one = close_one
        self._torrents = torrents
        self._dial = dial
        self._emit = emit
        self._started = started
        self.detector = StallDetector()
        self.connected: dict[str, dict[Address, PeerSample]] = {}
        """Connections past their handshake, by infohash and endpoint."""
        self.first_connected: float | None = None
        """Seconds from the session start to the first connected peer (any torrent)."""
        self.stalled: dict[tuple[str, Address], list[str]] = {}
        """The transports of the connections that stalled, in order, by (infohash,
        endpoint)."""
        self.in_a_row: dict[tuple[str, Address], int] = {}
        """Recoveries since the last productive connection (:data:`PRODUCTIVE`), by
        (infohash, endpoint)."""
        self._looks = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def since_start(self) -> float:
        return round(time.monotonic() - self._started, 3)

    async def run(self, tick: float = TICK) -> None:
        try:
            while True:
                await asyncio.sleep(tick)
                self.look(time.monotonic())
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def look(self, now: float) -> None:
        """One look at every downloading torrent's peers; at finished (seeding) ones
        only every :data:`SEEDING_EVERY` looks: no stall to find there, and a media
        server may seed hundreds."""
        self._looks += 1
        for infohash, torrent in list(self._torrents.items()):
            if torrent.finished.is_set() and self._looks % SEEDING_EVERY:
                continue
            try:
                peers = [p for p in torrent.handle.get_peer_info()
                         if not p.flags & (lt.peer_info.connecting | lt.peer_info.handshake)]
            except RuntimeError:  # removed meanwhile
                continue
            samples = [sample(p) for p in peers]
            samples = [dataclasses.replace(s, degradable=True)
                       if self._degradable(infohash, s.endpoint, s.transport) else s
                       for s in samples]
            self._connections(infohash, samples)
            if torrent.finished.is_set() or not torrent.ready.is_set():
                self.detector.forget(infohash)
                continue
            for stall in self.detector.observe(now, infohash, samples):
                self.recover(infohash, stall)

    def _connections(self, infohash: str, samples: list[PeerSample]) -> None:
        known = self.connected.setdefault(infohash, {})
        for s in samples:
            if s.endpoint not in known:
                known[s.endpoint] = s
                if self.first_connected is None:
                    self.first_connected = self.since_start()
                self._emit(PeerConnected(infohash, s.endpoint, s.transport, s.outgoing,
                                         self.since_start()))

    def punched(self, infohash: str, endpoint: Address, transport: str, outgoing: bool) -> None:
        """The punch engine saw this connection made (it looks every 10 ms while it
        waits for one): counted now rather than at the next look."""
        self._connections(infohash, [PeerSample(endpoint, transport, outgoing, 0, 0, False)])

    def disconnected(self, infohash: str, endpoint: Address, reason: str) -> None:
        """libtorrent closed a connection (``peer_disconnected_alert``)."""
        s = self.connected.get(infohash, {}).pop(endpoint, None)
        if s is not None:
            self._emit(PeerDisconnected(infohash, endpoint, s.transport, reason,
                                        self.since_start()))

    def forget(self, infohash: str) -> None:
        self.connected.pop(infohash, None)
        self.detector.forget(infohash)
        for key in [k for k in self.in_a_row if k[0] == infohash]:
            del self.in_a_row[key]

    @staticmethod
    def next_transport(s: PeerSample) -> str | None:
        """The transport to dial after ``s`` stalled, or None when it cannot be dialled
        (an incoming connection: its port is the peer's own, which dials us again).
        Always the other transport: after a uTP stall TCP, after a TCP stall uTP (a
        Transmission seeder once left the last block of a TCP download unanswered)."""
        if not s.outgoing:
            return None
        return "tcp" if s.transport == "utp" else "utp"

    @property
    def recoveries(self) -> int:
        """Stalled connections acted on since the start."""
        return sum(len(history) for history in self.stalled.values())

    def recover(self, infohash: str, stall: Stall) -> None:
        s = stall.sample
        history = self.stalled.setdefault((infohash, s.endpoint), [])
        productive = s.received >= PRODUCTIVE
        if productive:
            self.in_a_row.pop((infohash, s.endpoint), None)
        in_a_row = self.in_a_row.get((infohash, s.endpoint), 0)
        if in_a_row >= MAX_RECOVERIES:
            return  # this peer stalls whatever we do: leave it to libtorrent
        self.in_a_row[(infohash, s.endpoint)] = in_a_row + 1
        history.append(s.transport)
        repunch = self._punched(infohash, s.endpoint, s.transport, productive)
        redial = None if repunch else self.next_transport(s)
        self._emit(PeerStalled(
            infohash=infohash, endpoint=s.endpoint, transport=s.transport,
            waited=round(stall.waited, 2), limit=round(stall.limit, 2),
            redial=redial, repunch=repunch, since_start=self.since_start(),
            degraded=stall.degraded))
        action = ("punching again" if repunch else
                  f"redialling over {redial}" if redial else "dropping it")
        logger.info("%s: %s connection to %s:%d %s; %s", infohash[:8], s.transport,
                    *s.endpoint, "crawling (a tenth of its best rate)" if stall.degraded
                    else f"stalled ({stall.waited:.1f} s without a block)", action)
        # Closing goes by IP (unless the connection is a stream of ours): the other
        # outgoing connections to that IP are dialled again on their own transport.
        others: list[tuple[str, PeerSample]] = []
        if not self._close_one(s.endpoint):
            others = [(ih, o) for ih, conns in self.connected.items()
                      for o in conns.values()
                      if o.endpoint[0] == s.endpoint[0] and o.outgoing
                      and (ih, o.endpoint) != (infohash, s.endpoint)]
            self.drop(s.endpoint[0])
        dials = [(ih, o.transport, o.endpoint) for ih, o in others]
        if redial is not None:
            dials.insert(0, (infohash, redial, s.endpoint))
        if dials:
            task = asyncio.get_running_loop().create_task(self._redial(dials))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _redial(self, dials: list[tuple[str, str, Address]]) -> None:
        for ih, transport, endpoint in dials:
            try:
                await self._dial(ih, transport, endpoint)
            except Exception as exc:  # noqa: BLE001 - one failed redial must not stop others
                logger.warning("%s: redial of %s:%d over %s failed: %s", ih[:8], *endpoint,
                               transport, exc)

    def drop(self, ip: str) -> None:
        """Close the connections to ``ip`` (:func:`~lt_punch.punch.lt_dialer.close_connections`)."""
        close_connections(self._session, ip)
