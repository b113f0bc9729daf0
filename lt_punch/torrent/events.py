"""The typed events of a session, and the async iterator that delivers a torrent's.

One vocabulary for everything that happens: the punch engine, the alert dispatch and
the port mapper publish these; the session's :meth:`events` yields their
:meth:`to_dict` form (``{"type": "punched", ...}``, the JSON of ``lt-punch`` agents),
a torrent's ``events()`` stream yields the objects themselves, and the metrics count
them (:class:`~lt_punch.punch.metrics.PunchMetrics`).

``async for event in torrent.events(): ...`` yields, in order of occurrence:
:class:`MetadataReceived`, :class:`PeerPunched`, :class:`PunchAttemptFailed`,
:class:`PunchFailed`, :class:`ConnectionLost`, :class:`PeerConnected`,
:class:`PeerDisconnected`, :class:`PeerStalled`, :class:`PeerLeft`,
:class:`PieceFinished`, :class:`Finished`, :class:`TorrentError`. The stream is
subscribed when ``events()`` is called (nothing after that is missed) and ends when
the torrent is removed or the session closes. :class:`PortMapping` is about the
session, not a torrent: only the session's :meth:`events` has it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:
    from .handle import Torrent


class _Event:
    kind: ClassVar[str]
    """The ``type`` of the dict form."""
    public: ClassVar[bool] = True
    """Whether the session's :meth:`events` queue carries it (per-piece noise does not)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"type": kind, <fields>}`` (tuples as lists)."""
        data: dict[str, Any] = {"type": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class MetadataReceived(_Event):
    """The torrent's metadata is known (from a peer for a magnet link)."""

    kind: ClassVar[str] = "metadata"
    public: ClassVar[bool] = False
    infohash: str
    name: str
    num_files: int
    total_size: int


@dataclass(frozen=True)
class PeerPunched(_Event):
    """A peer of the signaling room is connected through a punched path."""

    kind: ClassVar[str] = "punched"
    infohash: str
    peer_id: str
    method: str
    endpoint: tuple[str, int]
    time_to_connect: float | None


@dataclass(frozen=True)
class PunchAttemptFailed(_Event):
    """One attempt of one method failed (more may follow; :class:`PunchFailed` ends)."""

    kind: ClassVar[str] = "punch-attempt-failed"
    public: ClassVar[bool] = False
    infohash: str
    peer_id: str
    method: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class PunchFailed(_Event):
    """Every punch method for a peer failed (``reason`` says the last one's cause)."""

    kind: ClassVar[str] = "punch-failed"
    infohash: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class ConnectionLost(_Event):
    """A punched connection was lost; the engine punches again (bounded)."""

    kind: ClassVar[str] = "connection-lost"
    infohash: str
    peer_id: str
    method: str
    reason: str


@dataclass(frozen=True)
class PeerConnected(_Event):
    """A peer connection completed its BitTorrent handshake (any source, punched or not)."""

    kind: ClassVar[str] = "peer-connected"
    infohash: str
    endpoint: tuple[str, int]
    transport: str
    """"utp" or "tcp"."""
    outgoing: bool
    since_start: float
    """Seconds since the session started."""


@dataclass(frozen=True)
class PeerDisconnected(_Event):
    """A peer connection closed (``reason`` from libtorrent)."""

    kind: ClassVar[str] = "peer-disconnected"
    infohash: str
    endpoint: tuple[str, int]
    transport: str
    reason: str
    since_start: float


@dataclass(frozen=True)
class PeerStalled(_Event):
    """A connection with requests outstanding delivered no block for ``waited`` seconds
    (over its ``limit``): it is closed and, with ``redial``, dialled again on that
    transport; with ``repunch``, it was a punched connection and the punch engine
    punches again, the stalled method last (:mod:`lt_punch.torrent.stall`)."""

    kind: ClassVar[str] = "peer-stalled"
    infohash: str
    endpoint: tuple[str, int]
    transport: str
    waited: float
    limit: float
    redial: str | None
    repunch: bool
    since_start: float
    degraded: bool = False
    """Not silent but crawling: a punched TCP or uTP connection whose rate fell to a
    tenth of its best, handed to the engine, which punches the loss-tolerant stream."""


@dataclass(frozen=True)
class PeerLeft(_Event):
    """A peer left the torrent's signaling room."""

    kind: ClassVar[str] = "peer-left"
    infohash: str
    peer_id: str


@dataclass(frozen=True)
class PieceFinished(_Event):
    """A piece was downloaded and passed its hash check."""

    kind: ClassVar[str] = "piece-finished"
    public: ClassVar[bool] = False
    infohash: str
    piece: int


@dataclass(frozen=True)
class Finished(_Event):
    """Every wanted piece is downloaded."""

    kind: ClassVar[str] = "finished"
    infohash: str


@dataclass(frozen=True)
class TorrentError(_Event):
    """libtorrent stopped the torrent on an error (disk full, file error, ...)."""

    kind: ClassVar[str] = "error"
    infohash: str
    message: str


@dataclass(frozen=True)
class PortMapping(_Event):
    """libtorrent's UPnP / NAT-PMP result for one mapping (``error`` when it failed)."""

    kind: ClassVar[str] = "port-mapping"
    transport: str
    protocol: str | None
    external_port: int | None
    error: str | None


TorrentEvent: TypeAlias = (MetadataReceived | PeerPunched | PunchAttemptFailed | PunchFailed
                           | ConnectionLost | PeerConnected | PeerDisconnected | PeerStalled
                           | PeerLeft | PieceFinished | Finished | TorrentError)
Event: TypeAlias = TorrentEvent | PortMapping

_END = object()

T = TypeVar("T")


class EventStream(Generic[T]):
    """An async iterator of a torrent's events (or, from
    :meth:`EventHub.subscribe`, of the session's events as dicts), subscribed from
    its creation.

    It buffers up to ``maxsize`` events for a slow consumer; beyond that the oldest
    are dropped and counted in :attr:`dropped`. Use it as an async context manager
    (or call :meth:`close`) to unsubscribe before the torrent ends.
    """

    def __init__(self, subscribers: set[EventStream[T]], maxsize: int = 10_000) -> None:
        self._subscribers = subscribers
        self._buffer: collections.deque[object] = collections.deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self.dropped = 0
        subscribers.add(self)

    def put(self, event: T) -> None:
        if len(self._buffer) >= self._maxsize:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._wakeup.set()

    def end(self) -> None:
        """No more events (torrent removed, session closed): iteration stops."""
        self._subscribers.discard(self)
        self._buffer.append(_END)
        self._wakeup.set()

    def close(self) -> None:
        """Unsubscribe; iteration stops after the events already buffered."""
        if self in self._subscribers:
            self.end()

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> T:
        while not self._buffer:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._buffer.popleft()
        if item is _END:
            self._buffer.appendleft(_END)  # stays ended
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    async def __aenter__(self) -> EventStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Where every event goes: the metrics, the torrent's open streams, and (the
    events users act on, :attr:`_Event.public`) the session's queue of dicts.

    The queue keeps the last 1,000: beyond that the oldest are dropped.
    """

    def __init__(self, torrents: Mapping[str, Torrent],
                 metrics: Callable[[Event], None]) -> None:
        self._torrents = torrents
        self._metrics = metrics
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers: set[EventStream[dict[str, Any]]] = set()

    def emit(self, event: Event) -> None:
        self._metrics(event)
        torrent = self._torrents.get(getattr(event, "infohash", ""))
        if torrent is not None and torrent.listened:
            torrent.publish(event)  # type: ignore[arg-type]
        if event.public:
            if self._queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
            self._queue.put_nowait(event.to_dict())
            for stream in list(self._subscribers):
                stream.put(event.to_dict())

    def subscribe(self, maxsize: int = 1000) -> EventStream[dict[str, Any]]:
        """A stream of the session's public events as dicts, for one consumer (each
        subscriber gets every event; :meth:`events` is one shared queue)."""
        return EventStream(self._subscribers, maxsize)

    def end(self) -> None:
        """The session closed: every subscriber's iteration stops."""
        for stream in list(self._subscribers):
            stream.end()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self._queue.get()

    def drain(self) -> list[dict[str, Any]]:
        drained = []
        while not self._queue.empty():
            drained.append(self._queue.get_nowait())
        return drained
