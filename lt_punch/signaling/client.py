"""Signaling client (asyncio); ``whoami`` (the public mapping of a local TCP port) is
re-exported from :mod:`.mapping`.

:class:`SignalingClient` keeps one websocket to the server (:class:`~.link.Link`). A
reader task parses every frame: replies (``registered``, ``joined``, ``left``, ``pong``,
and ``error`` whose ``ref`` names a pending request) complete the waiting request
(:mod:`.pending`); everything else (``peer-joined``, ``peer-left``, ``relay``, other
``error``) is queued as an event, in arrival order (:mod:`.events`). Requests of one
type are serialised (one ``join`` in flight at a time) so a reply always matches its
request.

Without ``reconnect``, losing the connection fails the pending requests with
:class:`~lt_punch.errors.SignalingError` and ends the event stream: after the queued
events, :meth:`SignalingClient.next_event` raises :class:`SignalingClosed` and
:meth:`SignalingClient.events` stops.

With ``reconnect=True`` the client reconnects by itself (exponential backoff with full
jitter, :mod:`.retry`), registers again (``resume`` = the last ``session_key``) and
re-joins its rooms; the event stream goes on across reconnections and carries
:class:`ConnectionState` events (``connected``, ``disconnected``, ``reconnecting``,
``closed``) between the protocol messages. It ends only on
:meth:`SignalingClient.close` or an error that retrying cannot fix (:data:`FATAL_CODES`).
See docs/signaling.md, "Client: reconnection".
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from ssl import SSLContext
from typing import Any

from websockets.asyncio.client import ClientConnection

from ..errors import LocalProtocolError, SignalingError
from ..types import Address, InfoHash
from .events import ConnectionState, EventStream, SignalingClosed
from .link import Link
from .mapping import whoami
from .pending import Pending, same_room
from .protocol import (
    Join,
    Joined,
    Leave,
    Left,
    Message,
    MessageError,
    PeerInfo,
    Ping,
    Pong,
    Registered,
    Relay,
    normalize_infohash,
    validate_peer_id,
)
from .retry import FATAL_CODES, backoff_delay

__all__ = [
    "FATAL_CODES",
    "ConnectionState",
    "SignalingClient",
    "SignalingClosed",
    "whoami",
]


class SignalingClient:
    """One peer's connection to a signaling server.

    Args:
        url: ``ws://host:port`` of the server.
        peer_id: our id, 1..64 characters of ``[A-Za-z0-9._-]``.
        metadata: a JSON object (≤ 4 KiB) shown to room members.
        timeout: seconds for connecting and for each request.
        token: sent in every ``register`` (servers with a secret require it).
        reconnect: reconnect after a lost connection (see the module docstring).
        backoff_initial: upper bound in seconds of the first reconnection delay; the
            bound doubles with each failed attempt.
        backoff_max: largest bound of a reconnection delay, in seconds.
        keepalive: seconds between application ``ping``\\ s while connected (the server
            may drop idle peers; a ping without a reply drops the connection);
            ``None`` sends none.
        rng: source of the jitter (``random.Random()`` by default; tests pass a seeded one).
        ssl: TLS context for a ``wss://`` server (default: the system's CAs).
    """

    def __init__(
        self,
        url: str,
        peer_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,
        token: str | None = None,
        reconnect: bool = False,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        keepalive: float | None = 30.0,
        rng: random.Random | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        try:
            self.peer_id = validate_peer_id(peer_id)
        except MessageError as exc:
            raise LocalProtocolError(str(exc)) from None
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if keepalive is not None and keepalive <= 0:
            raise ValueError("keepalive must be positive or None")
        self.url = url
        self.metadata = dict(metadata or {})
        self.timeout = timeout
        self.token = token
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.keepalive = keepalive
        self._rng = rng if rng is not None else random.Random()
        self.observed: Address | None = None
        """Our TCP source address as the server sees it (set by :meth:`connect`)."""
        self.rooms: set[InfoHash] = set()
        """Rooms we are in (re-joined after a reconnection)."""
        self.session_key: str | None = None
        """The last ``registered.session_key`` (sent as ``resume`` when reconnecting)."""
        self.state = "new"
        """``new``, ``connecting``, ``connected``, ``disconnected``, ``reconnecting``
        or ``closed``."""
        self._events = EventStream()
        self._link = Link(self, self._events, Pending(), ssl)
        self._ping_ids = itertools.count(1)

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> Registered:
        """Open the websocket and register.

        With ``reconnect``, a successful connect starts the reconnection supervisor and
        queues ``ConnectionState("connected")``; a failed first connect is not retried.

        Raises:
            SignalingError: the server is unreachable, refused the handshake, or refused
                the registration (``code`` is the server's error code, e.g. ``peer-id-taken``).
            SignalingClosed: the client was closed.
            LtTimeoutError: no connection or no ``registered`` within ``timeout``.
        """
        return await self._link.connect()

    async def close(self) -> None:
        """Close the connection and stop every task; no reconnection after it (idempotent)."""
        await self._link.close()

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the websocket is open and registered."""
        return self._link.connected

    @property
    def _ws(self) -> ClientConnection | None:
        """The open websocket, if any (tests read its local address)."""
        return self._link.ws

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnection attempt ``attempt`` (1, 2, ...): full jitter,
        uniform in ``[0, min(backoff_max, backoff_initial * 2 ** (attempt - 1))]``."""
        return backoff_delay(attempt, self.backoff_initial, self.backoff_max, self._rng)

    # --- requests --------------------------------------------------------------------------

    async def join(self, room: str) -> list[PeerInfo]:
        """Join the room of infohash ``room``; returns the other members already in it.

        Raises:
            LocalProtocolError: ``room`` is not an infohash.
            SignalingError: the server refused (``code``), the connection is lost, or
                (reconnecting client) it is down right now (code ``disconnected``).
            LtTimeoutError: no reply within ``timeout``.
        """
        infohash = _local_infohash(room)
        reply = await self._link.request(Join(infohash), "join", same_room(infohash))
        assert isinstance(reply, Joined)
        self.rooms.add(infohash)
        return list(reply.peers)

    async def leave(self, room: str) -> None:
        """Leave a room (``not-in-room`` from the server raises SignalingError).

        A reconnecting client that is (or gets) disconnected just forgets the room (it
        will not re-join it); the server dropped us from it with the connection.
        """
        infohash = _local_infohash(room)
        if self.reconnect and not self._link.closing and self.state != "connected":
            self.rooms.discard(infohash)
            return
        try:
            reply = await self._link.request(Leave(infohash), "leave", same_room(infohash))
        except SignalingError as exc:
            if exc.code != "disconnected":
                raise
            reply = Left(infohash)  # lost on the way: out of the room all the same
        assert isinstance(reply, Left)
        self.rooms.discard(infohash)

    async def relay(self, to: str, room: str, data: dict[str, Any]) -> None:
        """Send ``data`` to ``to`` through the server. No reply: a refusal (``unknown-peer``,
        ``not-in-room``) arrives later as an ``error`` event with ``ref="relay"``."""
        try:
            message = Relay(validate_peer_id(to, "to"), _local_infohash(room), data)
        except MessageError as exc:
            raise LocalProtocolError(str(exc)) from None
        await self._link.send(message)

    async def ping(self) -> float:
        """Round-trip time to the server, in seconds."""
        loop = asyncio.get_running_loop()
        ping_id = next(self._ping_ids)
        start = loop.time()
        await self._link.request(
            Ping(ping_id), "ping", lambda m: not isinstance(m, Pong) or m.id == ping_id
        )
        return loop.time() - start

    # --- events ----------------------------------------------------------------------------

    # The timeout argument is part of the API (callers wait for "the next event within
    # N s"); it is applied with asyncio.timeout inside.
    async def next_event(self, timeout: float | None = None) -> Message | ConnectionState:  # noqa: ASYNC109
        """The next ``peer-joined`` / ``peer-left`` / ``relay`` / ``error`` event; with
        ``reconnect`` also :class:`ConnectionState` changes and the ``joined`` replies
        of the re-joins.

        Args:
            timeout: seconds to wait; ``None`` waits until an event or the end.

        Raises:
            SignalingClosed: the connection is closed and every event was consumed.
            LtTimeoutError: nothing arrived within ``timeout``.
        """
        return await self._events.next(timeout)

    async def events(self) -> AsyncIterator[Message | ConnectionState]:
        """Iterate over events until the connection closes (for good, with ``reconnect``)."""
        async for event in self._events:
            yield event


def _local_infohash(room: str) -> InfoHash:
    try:
        return normalize_infohash(room)
    except MessageError as exc:
        raise LocalProtocolError(str(exc)) from None
