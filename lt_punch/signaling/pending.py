"""Requests of the signaling client that wait for the server's reply.

Replies carry no request id: ``registered``, ``joined``, ``left`` and ``pong`` answer the
request of their kind, and an ``error`` names the request it refuses in ``ref``. So
requests of one kind are serialised (one ``join`` in flight at a time) and a reply
always matches its request; a predicate per request (the same room, the same ping id)
drops late replies of an earlier, timed-out request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..errors import LtTimeoutError, SignalingError
from ..types import InfoHash
from .protocol import Error, Message

__all__ = ["Match", "Pending", "same_room"]

logger = logging.getLogger(__name__)

Match = Callable[[Message], bool]
"""Does this reply belong to the request waiting for it?"""

REPLY_TO = {"registered": "register", "joined": "join", "left": "leave", "pong": "ping"}
"""The request kind each reply type answers."""


def same_room(room: InfoHash) -> Match:
    """Replies about ``room`` (and ``error`` replies, which name no room)."""
    return lambda m: getattr(m, "room", room) == room


class Pending:
    """The requests waiting for a reply, at most one per kind."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[Message], Match]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def request(self, message: Message, kind: str, match: Match,
                      send: Callable[[], Awaitable[None]], within: float) -> Message:
        """Wait for our turn for ``kind``, ``send()`` and wait ``within`` seconds for
        the reply.

        Raises:
            SignalingError: the server refused (``code``), or :meth:`fail` ended the wait.
            LtTimeoutError: no reply within ``within`` seconds.
        """
        lock = self._locks.setdefault(kind, asyncio.Lock())
        async with lock:
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            self._waiting[kind] = (future, match)
            try:
                await send()
                async with asyncio.timeout(within):
                    return await future
            except TimeoutError:
                raise LtTimeoutError(f"no reply to {message.TYPE} within {within} s") from None
            finally:
                if kind in self._waiting and self._waiting[kind][0] is future:
                    del self._waiting[kind]

    def complete(self, message: Message) -> bool:
        """Hand ``message`` to the request it answers. False if it is an event (no
        reply, or an ``error`` no request waits for); a late reply is dropped."""
        kind = REPLY_TO.get(message.TYPE)
        if isinstance(message, Error) and message.ref in self._waiting:
            kind = message.ref
        waiting = self._waiting.get(kind) if kind is not None else None
        if waiting is not None and not waiting[0].done() and waiting[1](message):
            future = waiting[0]
            if isinstance(message, Error):
                future.set_exception(SignalingError(message.message, message.code))
            else:
                future.set_result(message)
            return True
        if kind is not None and not isinstance(message, Error):
            logger.debug("dropping a late reply: %s", message)
            return True
        return False

    def fail(self, make: Callable[[], SignalingError]) -> None:
        """Fail every waiting request with ``make()``."""
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(make())
        self._waiting.clear()
