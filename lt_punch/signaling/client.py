"""Signaling client (asyncio); ``whoami`` (the public mapping of a local TCP port) is
re-exported from :mod:`.mapping`.

:class:`SignalingClient` keeps one websocket to the server. A reader task parses every
frame: replies (``registered``, ``joined``, ``left``, ``pong``, and ``error`` whose
``ref`` names a pending request) complete the waiting request; everything else
(``peer-joined``, ``peer-left``, ``relay``, other ``error``) is queued as an event, in
arrival order. Requests of one type are serialised (one ``join`` in flight at a time)
so a reply always matches its request.

Without ``reconnect``, losing the connection fails the pending requests with
:class:`~lt_punch.errors.SignalingError` and ends the event stream: after the queued
events, :meth:`SignalingClient.next_event` raises :class:`SignalingClosed` and
:meth:`SignalingClient.events` stops.

With ``reconnect=True`` the client reconnects by itself (exponential backoff with full
jitter), registers again (``resume`` = the last ``session_key``) and re-joins its rooms;
the event stream goes on across reconnections and carries :class:`ConnectionState`
events (``connected``, ``disconnected``, ``reconnecting``, ``closed``) between the
protocol messages. It ends only on :meth:`SignalingClient.close` or an error that
retrying cannot fix (:data:`FATAL_CODES`). See docs/signaling.md, "Client: reconnection".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from ..errors import LocalProtocolError, LtTimeoutError, SignalingError
from ..types import Address, InfoHash
from .mapping import whoami
from .protocol import (
    MAX_SERVER_MESSAGE_SIZE,
    REPLACED_CLOSE_CODE,
    Error,
    Join,
    Joined,
    Leave,
    Left,
    Message,
    MessageError,
    PeerInfo,
    Ping,
    Pong,
    Register,
    Registered,
    Relay,
    normalize_infohash,
    parse_message,
    validate_peer_id,
)

__all__ = [
    "FATAL_CODES",
    "ConnectionState",
    "SignalingClient",
    "SignalingClosed",
    "whoami",
]

logger = logging.getLogger(__name__)

_REPLY_TO = {"registered": "register", "joined": "join", "left": "leave", "pong": "ping"}

FATAL_CODES = frozenset({"auth-required", "bad-token", "token-expired", "bad-peer-id"})
"""``register`` refusals that stop reconnecting: retrying cannot fix them."""


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


class _Closed:
    """Queue sentinel: the event stream ended."""


_CLOSED = _Closed()

_Event = Message | ConnectionState


class _Fatal(SignalingError):
    """Reconnecting cannot help (bad token, replaced by another connection, ...)."""


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
        self._ssl = ssl
        self.observed: Address | None = None
        """Our TCP source address as the server sees it (set by :meth:`connect`)."""
        self.rooms: set[InfoHash] = set()
        """Rooms we are in (re-joined after a reconnection)."""
        self.session_key: str | None = None
        """The last ``registered.session_key`` (sent as ``resume`` when reconnecting)."""
        self.state = "new"
        """``new``, ``connecting``, ``connected``, ``disconnected``, ``reconnecting``
        or ``closed``."""
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        # request kind -> (future, predicate a reply must satisfy)
        self._pending: dict[str, tuple[asyncio.Future[Message], Callable[[Message], bool]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._events: asyncio.Queue[_Event | _Closed] = asyncio.Queue()
        self._ping_ids = itertools.count(1)
        self._closed_reason: str | None = None
        self._closing = False
        self._lost_reason = ""
        self._replaced = False
        self._attempt = 0  # of the reconnection under way

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
        if self._closing:
            raise SignalingClosed("the client is closed")
        if self._ws is not None or self._supervisor is not None:
            raise SignalingError("already connected")
        self.state = "connecting"
        try:
            reply, _ = await self._open(resume=False)
        except BaseException:
            await self.close()
            raise
        if self.reconnect:
            self._put(ConnectionState("connected"))
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"signaling-reconnect-{self.peer_id}"
            )
        return reply

    async def close(self) -> None:
        """Close the connection and stop every task; no reconnection after it (idempotent)."""
        self._closing = True
        self.state = "closed"
        tasks = [t for t in (self._supervisor, self._pinger) if t is not None]
        self._supervisor = self._pinger = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(self.timeout + 1.0):
                        await task
        self._end("closed by us", ConnectionState("closed"))
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the websocket is open and registered."""
        return (
            self.state == "connected"
            and self._ws is not None
            and self._ws.state is State.OPEN
            and self._reader is not None
            and not self._reader.done()
            and self.observed is not None
        )

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
        reply = await self._request(Join(infohash), "join", _same_room(infohash))
        assert isinstance(reply, Joined)
        self.rooms.add(infohash)
        return list(reply.peers)

    async def leave(self, room: str) -> None:
        """Leave a room (``not-in-room`` from the server raises SignalingError).

        A reconnecting client that is (or gets) disconnected just forgets the room (it
        will not re-join it); the server dropped us from it with the connection.
        """
        infohash = _local_infohash(room)
        if self.reconnect and not self._closing and self.state != "connected":
            self.rooms.discard(infohash)
            return
        try:
            reply = await self._request(Leave(infohash), "leave", _same_room(infohash))
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
        await self._send(message)

    async def ping(self) -> float:
        """Round-trip time to the server, in seconds."""
        loop = asyncio.get_running_loop()
        ping_id = next(self._ping_ids)
        start = loop.time()
        await self._request(
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
        try:
            async with asyncio.timeout(timeout):
                item = await self._events.get()
        except TimeoutError:
            raise LtTimeoutError(f"no signaling event within {timeout} s") from None
        if isinstance(item, _Closed):
            self._events.put_nowait(item)  # later calls see the end too
            raise SignalingClosed(f"signaling connection closed: {self._closed_reason}")
        return item

    async def events(self) -> AsyncIterator[Message | ConnectionState]:
        """Iterate over events until the connection closes (for good, with ``reconnect``)."""
        while True:
            try:
                yield await self.next_event()
            except SignalingClosed:
                return

    # --- connection ------------------------------------------------------------------------

    def _tls_options(self) -> dict[str, Any]:
        # websockets refuses ssl=None for wss:// (and any ssl for ws://): pass it only
        # when set.
        return {"ssl": self._ssl} if self._ssl is not None else {}

    async def _open(self, *, resume: bool) -> tuple[Registered, list[Joined]]:
        """Connect, register and re-join :attr:`rooms`; on success the state is
        ``connected``. On failure everything opened here is closed again."""
        try:
            async with asyncio.timeout(self.timeout):
                ws = await ws_connect(
                    self.url,
                    open_timeout=None,  # the enclosing timeout covers it
                    max_size=MAX_SERVER_MESSAGE_SIZE,
                    compression=None,
                    close_timeout=self.timeout,
                    **self._tls_options(),
                )
        except TimeoutError:
            raise LtTimeoutError(f"connecting to {self.url} timed out") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SignalingError(f"cannot connect to {self.url}: {exc}") from None
        self._ws = ws
        self._lost_reason = ""
        self._reader = asyncio.create_task(self._read(ws), name=f"signaling-{self.peer_id}")
        try:
            key = self.session_key if resume else None
            register = Register(self.peer_id, self.metadata, self.token, key)
            try:
                reply = await self._request(register, "register", ws=ws)
            except SignalingError as exc:
                if exc.code in FATAL_CODES:
                    raise _Fatal(f"registration refused ({exc.code}): {exc}", exc.code) from None
                if key is not None and exc.code not in ("peer-id-taken", "rate-limited",
                                                        "disconnected", "closed"):
                    self.session_key = None  # the server does not know it: plain register
                raise
            assert isinstance(reply, Registered)
            joined = []
            for room in sorted(self.rooms):
                try:
                    answer = await self._request(Join(room), "join", _same_room(room), ws=ws)
                except SignalingError as exc:
                    if exc.code in ("disconnected", "closed"):
                        raise
                    logger.warning("cannot re-join room %s: %s", room, exc)
                    self._put(Error(exc.code or "internal-error", str(exc), "join"))
                    continue
                assert isinstance(answer, Joined)
                joined.append(answer)
            if self._ws is not ws:  # lost after the last reply
                raise SignalingError(f"signaling {self._lost_reason}", "disconnected")
        except BaseException:
            await self._discard(ws)
            raise
        self.observed = reply.observed
        self.session_key = reply.session_key
        self.state = "connected"
        if self.keepalive is not None:
            self._pinger = asyncio.create_task(
                self._keep_alive(ws, self.keepalive), name=f"signaling-keepalive-{self.peer_id}"
            )
        logger.info("registered as %s, observed %s:%d", self.peer_id, *reply.observed)
        return reply, joined

    async def _discard(self, ws: ClientConnection) -> None:
        """Close a connection that did not make it to ``connected``."""
        if self._ws is ws:
            self._ws = None
        reader = self._reader
        await ws.close()
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then reconnect; until close or a fatal error."""
        try:
            while not self._closing:
                reader = self._reader
                if reader is not None:
                    await asyncio.wait([reader])
                if self._closing:
                    return
                if self._replaced:
                    raise _Fatal("replaced by another connection with our session key")
                await self._reconnect()
        except _Fatal as exc:
            logger.warning("signaling: %s; not reconnecting", exc)
            self.state = "closed"
            self._end(str(exc), ConnectionState("closed", self._attempt, str(exc)))
        except Exception as exc:  # a bug: end the stream instead of hanging the consumer
            logger.exception("signaling reconnection failed")
            self.state = "closed"
            self._end(f"internal error: {exc!r}", ConnectionState("closed", error=repr(exc)))

    async def _reconnect(self) -> None:
        """Retry with backoff until connected (raises _Fatal when retrying cannot help)."""
        error: str | None = self._lost_reason or None
        attempt = self._attempt = 0
        while True:
            attempt = self._attempt = attempt + 1
            delay = self.backoff_delay(attempt)
            self.state = "reconnecting"
            self._put(ConnectionState("reconnecting", attempt, error, delay))
            logger.info("signaling: reconnecting to %s in %.2f s (attempt %d)",
                        self.url, delay, attempt)
            await asyncio.sleep(delay)
            try:
                _, joined = await self._open(resume=True)
            except _Fatal:
                raise
            except (SignalingError, LtTimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
                logger.info("signaling: attempt %d failed: %s", attempt, error)
                continue
            self._put(ConnectionState("connected", attempt))
            for answer in joined:
                self._put(answer)
            logger.info("signaling: reconnected after %d attempt(s), back in %d room(s)",
                        attempt, len(joined))
            return

    def backoff_delay(self, attempt: int) -> float:
        """Delay before reconnection attempt ``attempt`` (1, 2, ...): full jitter,
        uniform in ``[0, min(backoff_max, backoff_initial * 2 ** (attempt - 1))]``."""
        bound = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt - 1, 60))
        return self._rng.uniform(0.0, bound)

    async def _keep_alive(self, ws: ClientConnection, interval: float) -> None:
        """Ping every ``interval`` s; no pong within ``timeout`` drops the connection."""
        while True:
            await asyncio.sleep(interval)
            if ws is not self._ws or self.state != "connected":
                return
            try:
                await self.ping()
            except LtTimeoutError:
                logger.warning("signaling: no pong within %s s, dropping the connection",
                               self.timeout)
                ws.transport.abort()
                return
            except SignalingError:
                return

    # --- internals -------------------------------------------------------------------------

    def _check_usable(self) -> ClientConnection:
        ws = self._ws
        if self._closed_reason is not None or (not self.reconnect and ws is None):
            raise SignalingClosed(f"not connected ({self._closed_reason or 'never connected'})")
        if ws is None or self.state != "connected":
            raise SignalingError(f"not connected to {self.url} ({self.state})", "disconnected")
        return ws

    async def _send(self, message: Message, ws: ClientConnection | None = None) -> None:
        if ws is None:
            ws = self._check_usable()
        elif self._closed_reason is not None:
            raise SignalingClosed(f"not connected ({self._closed_reason})")
        text = message.serialize()
        logger.debug("> %s", message)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            if self.reconnect and not self._closing:
                raise SignalingError(f"connection lost: {exc}", "disconnected") from None
            raise SignalingClosed(f"signaling connection closed: {exc}") from None

    async def _request(
        self,
        message: Message,
        kind: str,
        match: Callable[[Message], bool] = lambda m: True,
        *,
        ws: ClientConnection | None = None,
    ) -> Message:
        if ws is None:
            self._check_usable()  # fail at once rather than after a queued request
        lock = self._locks.setdefault(kind, asyncio.Lock())
        async with lock:
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            self._pending[kind] = (future, match)
            try:
                await self._send(message, ws)
                async with asyncio.timeout(self.timeout):
                    return await future
            except TimeoutError:
                raise LtTimeoutError(
                    f"no reply to {message.TYPE} within {self.timeout} s"
                ) from None
            finally:
                if kind in self._pending and self._pending[kind][0] is future:
                    del self._pending[kind]

    async def _read(self, ws: ClientConnection) -> None:
        reason = "closed by the server"
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    logger.warning("ignoring a binary frame from the signaling server")
                    continue
                try:
                    message = parse_message(frame, sent_by="server")
                except MessageError as exc:
                    logger.warning("ignoring a bad message from the signaling server: %s", exc)
                    continue
                logger.debug("< %s", message)
                self._dispatch(message)
        except ConnectionClosed as exc:
            reason = f"connection lost: {exc}"
            if exc.rcvd is not None and exc.rcvd.code == REPLACED_CLOSE_CODE:
                self._replaced = True
        finally:
            self._lost(ws, reason)

    def _lost(self, ws: ClientConnection, reason: str) -> None:
        """The reader of ``ws`` stopped."""
        if ws is self._ws and self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if not self.reconnect:
            if not self._closing:
                self.state = "closed"
            self._finish(reason)
            return
        if ws is not self._ws or self._closing:
            return  # discarded or closed by us: nothing to report
        self._ws = None
        self._lost_reason = reason
        self._fail_pending(lambda: SignalingError(f"signaling {reason}", "disconnected"))
        if self.state == "connected":
            logger.warning("signaling %s", reason)
            self.state = "disconnected"
            self._put(ConnectionState("disconnected", error=reason))

    def _dispatch(self, message: Message) -> None:
        kind = _REPLY_TO.get(message.TYPE)
        if isinstance(message, Error) and message.ref in self._pending:
            kind = message.ref
        pending = self._pending.get(kind) if kind is not None else None
        if pending is not None and not pending[0].done() and pending[1](message):
            future = pending[0]
            if isinstance(message, Error):
                future.set_exception(SignalingError(message.message, message.code))
            else:
                future.set_result(message)
            return
        if kind is not None and not isinstance(message, Error):
            logger.debug("dropping a late reply: %s", message)
            return
        self._put(message)

    def _put(self, event: _Event) -> None:
        if self._closed_reason is None:
            self._events.put_nowait(event)

    def _fail_pending(self, make: Callable[[], SignalingError]) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(make())
        self._pending.clear()

    def _end(self, reason: str, state: ConnectionState) -> None:
        """End the event stream; a reconnecting client says so with ``state`` first."""
        if self._closed_reason is None and self.reconnect:
            self._put(state)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._fail_pending(lambda: SignalingClosed(f"signaling connection closed: {reason}"))
        self._events.put_nowait(_CLOSED)


def _same_room(room: InfoHash) -> Callable[[Message], bool]:
    return lambda m: getattr(m, "room", room) == room


def _local_infohash(room: str) -> InfoHash:
    try:
        return normalize_infohash(room)
    except MessageError as exc:
        raise LocalProtocolError(str(exc)) from None
