"""The signaling client's event stream: what the server sent unasked, and, for a
reconnecting client, the changes of its connection.

Events (``peer-joined``, ``peer-left``, ``relay``, ``error`` that answers no pending
request, :class:`ConnectionState`) queue in arrival order. The stream ends once, with a
reason; after the queued events, :meth:`EventStream.next` raises
:class:`SignalingClosed`, for every later call too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from ..errors import LtTimeoutError, SignalingError
from .protocol import Message

__all__ = ["ConnectionState", "Event", "EventStream", "SignalingClosed"]


class SignalingClosed(SignalingError):
    """The connection to the signaling server is closed; no more events will come."""

    def __init__(self, message: str = "signaling connection closed") -> None:
        super().__init__(message, code="closed")


@dataclass(frozen=True)
class ConnectionState:
    """A change of the connection, yielded by a reconnecting client's event stream.

    ``state`` is one of:

    - ``connected``: registered and back in every room (``attempt`` of the reconnection
      that succeeded, 0 for :meth:`SignalingClient.connect`);
    - ``disconnected``: the connection was lost (``error`` says why);
    - ``reconnecting``: attempt number ``attempt`` (1, 2, ...) starts after ``delay``
      seconds; ``error`` is why the previous attempt (or the connection) failed;
    - ``closed``: the last event: :meth:`SignalingClient.close` (``error`` None) or an
      error retrying cannot fix (``error`` says which).
    """

    state: str
    attempt: int = 0
    error: str | None = None
    delay: float = 0.0

    TYPE: ClassVar[str] = "connection-state"
    """Like a message's ``TYPE``, so consumers can switch on ``event.TYPE``."""


Event = Message | ConnectionState


class _Closed:
    """Queue sentinel: the event stream ended."""


_CLOSED = _Closed()


class EventStream:
    """Events in arrival order, until :meth:`end`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self.closed_reason: str | None = None
        """Why the stream ended (``None`` while it goes on)."""

    def put(self, event: Event) -> None:
        """Queue ``event``, unless the stream has ended."""
        if self.closed_reason is None:
            self._queue.put_nowait(event)

    def end(self, reason: str) -> bool:
        """End the stream after the queued events; False if it had ended already."""
        if self.closed_reason is not None:
            return False
        self.closed_reason = reason
        self._queue.put_nowait(_CLOSED)
        return True

    # The timeout argument is part of the API (callers wait for "the next event within
    # N s"); it is applied with asyncio.timeout inside.
    async def next(self, timeout: float | None = None) -> Event:  # noqa: ASYNC109
        """The next event, waiting up to ``timeout`` seconds (``None``: no limit).

        Raises:
            SignalingClosed: the stream ended and every event was consumed.
            LtTimeoutError: nothing arrived within ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise LtTimeoutError(f"no signaling event within {timeout} s") from None
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # later calls see the end too
            raise SignalingClosed(f"signaling connection closed: {self.closed_reason}")
        return item

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Every event until the end."""
        while True:
            try:
                yield await self.next()
            except SignalingClosed:
                return
