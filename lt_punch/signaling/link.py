"""The signaling client's websocket to the server, kept open across reconnections.

:class:`Link` opens the websocket, registers and re-joins the client's rooms; a reader
task parses every frame and hands replies to :class:`~.pending.Pending` and the rest to
the :class:`~.events.EventStream`; a keepalive task pings while connected.

Without ``reconnect``, losing the connection fails the pending requests and ends the
event stream. With ``reconnect=True`` a supervisor task waits for the reader to stop,
then retries after a backoff (:mod:`.retry`), registering with ``resume`` = the last
``session_key`` and re-joining the rooms, and reports each step as a
:class:`~.events.ConnectionState` event. It stops on :meth:`Link.close`, when the
server replaced the connection by another with our session key, or on a ``register``
refusal in :data:`~.retry.FATAL_CODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from ssl import SSLContext
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from ..errors import LtTimeoutError, SignalingError
from ..types import Address, InfoHash, PeerId
from .events import ConnectionState, EventStream, SignalingClosed
from .pending import Match, Pending, same_room
from .protocol import (
    MAX_SERVER_MESSAGE_SIZE,
    REPLACED_CLOSE_CODE,
    Error,
    Join,
    Joined,
    Message,
    MessageError,
    Register,
    Registered,
    parse_message,
)
from .retry import FATAL_CODES, forgets_session

__all__ = ["Host", "Link"]

logger = logging.getLogger(__name__)


class Host(Protocol):
    """The client a link serves: its settings, read at each use, and the record of its
    session, which the link keeps up to date."""

    @property
    def peer_id(self) -> PeerId: ...
    @property
    def url(self) -> str: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def token(self) -> str | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def reconnect(self) -> bool: ...
    @property
    def keepalive(self) -> float | None: ...
    @property
    def rooms(self) -> set[InfoHash]: ...
    state: str
    observed: Address | None
    session_key: str | None

    def backoff_delay(self, attempt: int) -> float: ...
    async def ping(self) -> float: ...


class _Fatal(SignalingError):
    """Reconnecting cannot help (bad token, replaced by another connection, ...)."""


class Link:
    """One client's connection to the server (see the module docstring).

    Args:
        host: the client.
        events: where events and connection changes go.
        pending: the requests waiting for replies.
        ssl: TLS context for a ``wss://`` server (default: the system's CAs).
    """

    def __init__(self, host: Host, events: EventStream, pending: Pending,
                 ssl: SSLContext | None = None) -> None:
        self._host = host
        self._events = events
        self._pending = pending
        self._ssl = ssl
        self.ws: ClientConnection | None = None
        """The open websocket (``None`` while disconnected)."""
        self.closing = False
        """:meth:`close` was called: no more reconnections."""
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._stopped: set[asyncio.Task[None]] = set()
        """Keep-alive tasks cancelled when their connection was lost, not yet ended."""
        self._lost_reason = ""
        self._replaced = False
        self._attempt = 0  # of the reconnection under way

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> Registered:
        """Open the websocket and register (see :meth:`SignalingClient.connect`)."""
        host = self._host
        if self.closing:
            raise SignalingClosed("the client is closed")
        if self.ws is not None or self._supervisor is not None:
            raise SignalingError("already connected")
        host.state = "connecting"
        try:
            reply, _ = await self._open(resume=False)
        except BaseException:
            await self.close()
            raise
        if host.reconnect:
            self._events.put(ConnectionState("connected"))
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"signaling-reconnect-{host.peer_id}"
            )
        return reply

    async def close(self) -> None:
        """Close the connection and stop every task; no reconnection after it (idempotent)."""
        self.closing = True
        self._host.state = "closed"
        tasks = [t for t in (self._supervisor, self._pinger, *self._stopped) if t is not None]
        self._supervisor = self._pinger = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(self._host.timeout + 1.0):
                        await task
        self._end("closed by us", ConnectionState("closed"))
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @property
    def connected(self) -> bool:
        """True while the websocket is open and registered."""
        return (
            self._host.state == "connected"
            and self.ws is not None
            and self.ws.state is State.OPEN
            and self._reader is not None
            and not self._reader.done()
            and self._host.observed is not None
        )

    # --- sending ---------------------------------------------------------------------------

    async def send(self, message: Message, ws: ClientConnection | None = None) -> None:
        """Send ``message`` on ``ws`` (default: the current connection, if usable)."""
        if ws is None:
            ws = self._check_usable()
        elif self._events.closed_reason is not None:
            raise SignalingClosed(f"not connected ({self._events.closed_reason})")
        text = message.serialize()
        logger.debug("> %s", message)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            if self._host.reconnect and not self.closing:
                raise SignalingError(f"connection lost: {exc}", "disconnected") from None
            raise SignalingClosed(f"signaling connection closed: {exc}") from None

    async def request(self, message: Message, kind: str, match: Match = lambda m: True,
                      *, ws: ClientConnection | None = None) -> Message:
        """Send ``message`` and wait for its reply (see :class:`~.pending.Pending`)."""
        if ws is None:
            self._check_usable()  # fail at once rather than after a queued request
        return await self._pending.request(message, kind, match,
                                           lambda: self.send(message, ws), self._host.timeout)

    def _check_usable(self) -> ClientConnection:
        ws, closed_reason = self.ws, self._events.closed_reason
        if closed_reason is not None or (not self._host.reconnect and ws is None):
            raise SignalingClosed(f"not connected ({closed_reason or 'never connected'})")
        if ws is None or self._host.state != "connected":
            raise SignalingError(f"not connected to {self._host.url} ({self._host.state})",
                                 "disconnected")
        return ws

    # --- connection ------------------------------------------------------------------------

    def _tls_options(self) -> dict[str, Any]:
        # websockets refuses ssl=None for wss:// (and any ssl for ws://): pass it only
        # when set.
        return {"ssl": self._ssl} if self._ssl is not None else {}

    async def _open(self, *, resume: bool) -> tuple[Registered, list[Joined]]:
        """Connect, register and re-join the rooms; on success the state is
        ``connected``. On failure everything opened here is closed again."""
        host = self._host
        try:
            async with asyncio.timeout(host.timeout):
                ws = await ws_connect(
                    host.url,
                    open_timeout=None,  # the enclosing timeout covers it
                    max_size=MAX_SERVER_MESSAGE_SIZE,
                    compression=None,
                    close_timeout=host.timeout,
                    **self._tls_options(),
                )
        except TimeoutError:
            raise LtTimeoutError(f"connecting to {host.url} timed out") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SignalingError(f"cannot connect to {host.url}: {exc}") from None
        self.ws = ws
        self._lost_reason = ""
        self._reader = asyncio.create_task(self._read(ws), name=f"signaling-{host.peer_id}")
        try:
            key = host.session_key if resume else None
            register = Register(host.peer_id, host.metadata, host.token, key)
            try:
                reply = await self.request(register, "register", ws=ws)
            except SignalingError as exc:
                if exc.code in FATAL_CODES:
                    raise _Fatal(f"registration refused ({exc.code}): {exc}", exc.code) from None
                if key is not None and forgets_session(exc.code):
                    host.session_key = None  # the server does not know it: plain register
                raise
            assert isinstance(reply, Registered)
            joined = []
            for room in sorted(host.rooms):
                try:
                    answer = await self.request(Join(room), "join", same_room(room), ws=ws)
                except SignalingError as exc:
                    if exc.code in ("disconnected", "closed"):
                        raise
                    logger.warning("cannot re-join room %s: %s", room, exc)
                    self._events.put(Error(exc.code or "internal-error", str(exc), "join"))
                    continue
                assert isinstance(answer, Joined)
                joined.append(answer)
            if self.ws is not ws:  # lost after the last reply
                raise SignalingError(f"signaling {self._lost_reason}", "disconnected")
        except BaseException:
            await self._discard(ws)
            raise
        host.observed = reply.observed
        host.session_key = reply.session_key
        host.state = "connected"
        if host.keepalive is not None:
            self._pinger = asyncio.create_task(
                self._keep_alive(ws, host.keepalive), name=f"signaling-keepalive-{host.peer_id}"
            )
        logger.info("registered as %s, observed %s:%d", host.peer_id, *reply.observed)
        return reply, joined

    async def _discard(self, ws: ClientConnection) -> None:
        """Close a connection that did not make it to ``connected``."""
        if self.ws is ws:
            self.ws = None
        reader = self._reader
        await ws.close()
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then reconnect; until close or a fatal error."""
        try:
            while not self.closing:
                reader = self._reader
                if reader is not None:
                    await asyncio.wait([reader])
                if self.closing:
                    return
                if self._replaced:
                    raise _Fatal("replaced by another connection with our session key")
                await self._reconnect()
        except _Fatal as exc:
            logger.warning("signaling: %s; not reconnecting", exc)
            self._host.state = "closed"
            self._end(str(exc), ConnectionState("closed", self._attempt, str(exc)))
        except Exception as exc:  # a bug: end the stream instead of hanging the consumer
            logger.exception("signaling reconnection failed")
            self._host.state = "closed"
            self._end(f"internal error: {exc!r}", ConnectionState("closed", error=repr(exc)))

    async def _reconnect(self) -> None:
        """Retry with backoff until connected (raises _Fatal when retrying cannot help)."""
        host = self._host
        error: str | None = self._lost_reason or None
        attempt = self._attempt = 0
        while True:
            attempt = self._attempt = attempt + 1
            delay = host.backoff_delay(attempt)
            host.state = "reconnecting"
            self._events.put(ConnectionState("reconnecting", attempt, error, delay))
            logger.info("signaling: reconnecting to %s in %.2f s (attempt %d)",
                        host.url, delay, attempt)
            await asyncio.sleep(delay)
            try:
                _, joined = await self._open(resume=True)
            except _Fatal:
                raise
            except (SignalingError, LtTimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
                logger.info("signaling: attempt %d failed: %s", attempt, error)
                continue
            self._events.put(ConnectionState("connected", attempt))
            for answer in joined:
                self._events.put(answer)
            logger.info("signaling: reconnected after %d attempt(s), back in %d room(s)",
                        attempt, len(joined))
            return

    async def _keep_alive(self, ws: ClientConnection, interval: float) -> None:
        """Ping every ``interval`` s; no pong within ``timeout`` drops the connection."""
        while True:
            await asyncio.sleep(interval)
            if ws is not self.ws or self._host.state != "connected":
                return
            try:
                await self._host.ping()
            except LtTimeoutError:
                logger.warning("signaling: no pong within %s s, dropping the connection",
                               self._host.timeout)
                ws.transport.abort()
                return
            except SignalingError:
                return

    # --- receiving -------------------------------------------------------------------------

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
                if not self._pending.complete(message):
                    self._events.put(message)
        except ConnectionClosed as exc:
            reason = f"connection lost: {exc}"
            if exc.rcvd is not None and exc.rcvd.code == REPLACED_CLOSE_CODE:
                self._replaced = True
        finally:
            self._lost(ws, reason)

    def _lost(self, ws: ClientConnection, reason: str) -> None:
        """The reader of ``ws`` stopped."""
        host = self._host
        if ws is self.ws and self._pinger is not None:
            self._pinger.cancel()  # close() still waits for it to end
            self._stopped.add(self._pinger)
            self._pinger.add_done_callback(self._stopped.discard)
            self._pinger = None
        if not host.reconnect:
            if not self.closing:
                host.state = "closed"
            self._finish(reason)
            return
        if ws is not self.ws or self.closing:
            return  # discarded or closed by us: nothing to report
        self.ws = None
        self._lost_reason = reason
        self._pending.fail(lambda: SignalingError(f"signaling {reason}", "disconnected"))
        if host.state == "connected":
            logger.warning("signaling %s", reason)
            host.state = "disconnected"
            self._events.put(ConnectionState("disconnected", error=reason))

    def _end(self, reason: str, state: ConnectionState) -> None:
        """End the event stream; a reconnecting client says so with ``state`` first."""
        if self._events.closed_reason is None and self._host.reconnect:
            self._events.put(state)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._events.end(reason):
            self._pending.fail(lambda: SignalingClosed(f"signaling connection closed: {reason}"))
