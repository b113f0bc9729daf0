"""Typed events of one torrent, and the async iterator that delivers them.

``async for event in torrent.events(): ...`` yields, in order:
:class:`MetadataReceived`, :class:`PeerPunched`, :class:`PunchFailed`,
:class:`PieceFinished`, :class:`Finished`, :class:`TorrentError`. The stream is
subscribed when ``events()`` is called (nothing after that is missed) and ends when
the torrent is removed or the session closes.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class MetadataReceived:
    """The torrent's metadata is known (from a peer for a magnet link)."""

    infohash: str
    name: str
    num_files: int
    total_size: int


@dataclass(frozen=True)
class PeerPunched:
    """A peer of the signaling room is connected through a punched path."""

    infohash: str
    peer_id: str
    method: str
    endpoint: tuple[str, int]
    time_to_connect: float | None


@dataclass(frozen=True)
class PunchFailed:
    """Every punch method for a peer failed (``reason`` says the last one's cause)."""

    infohash: str
    peer_id: str
    reason: str


@dataclass(frozen=True)
class PieceFinished:
    """A piece was downloaded and passed its hash check."""

    infohash: str
    piece: int


@dataclass(frozen=True)
class Finished:
    """Every wanted piece is downloaded."""

    infohash: str


@dataclass(frozen=True)
class TorrentError:
    """libtorrent stopped the torrent on an error (disk full, file error, ...)."""

    infohash: str
    message: str


TorrentEvent: TypeAlias = (MetadataReceived | PeerPunched | PunchFailed | PieceFinished
                           | Finished | TorrentError)

_END = object()


class EventStream:
    """An async iterator of a torrent's events, subscribed from its creation.

    It buffers up to ``maxsize`` events for a slow consumer; beyond that the oldest
    are dropped and counted in :attr:`dropped`. Use it as an async context manager
    (or call :meth:`close`) to unsubscribe before the torrent ends.
    """

    def __init__(self, subscribers: set[EventStream], maxsize: int = 10_000) -> None:
        self._subscribers = subscribers
        self._buffer: collections.deque[object] = collections.deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self.dropped = 0
        subscribers.add(self)

    def put(self, event: TorrentEvent) -> None:
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

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TorrentEvent:
        while not self._buffer:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._buffer.popleft()
        if item is _END:
            self._buffer.appendleft(_END)  # stays ended
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
