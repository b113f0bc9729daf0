"""Signaling client (asyncio), and ``whoami``: the public mapping of a local TCP port.

:class:`SignalingClient` keeps one websocket to the server. A reader task parses every
frame: replies (``registered``, ``joined``, ``left``, ``pong``, and ``error`` whose
``ref`` names a pending request) complete the waiting request; everything else
(``peer-joined``, ``peer-left``, ``relay``, other ``error``) is queued as an event, in
arrival order. Requests of one type are serialised (one ``join`` in flight at a time)
so a reply always matches its request. When the connection is lost, pending requests
fail with :class:`~lt_punch.errors.SignalingError` and the event stream ends: after the
queued events, :meth:`SignalingClient.next_event` raises :class:`SignalingClosed` and
:meth:`SignalingClient.events` stops. There is no reconnection (yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from ..errors import LocalProtocolError, LtTimeoutError, SignalingError
from ..types import Address, InfoHash
from .protocol import (
    MAX_SERVER_MESSAGE_SIZE,
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

__all__ = ["SignalingClient", "SignalingClosed", "whoami"]

logger = logging.getLogger(__name__)

_REPLY_TO = {"registered": "register", "joined": "join", "left": "leave", "pong": "ping"}


class SignalingClosed(SignalingError):
    """The connection to the signaling server is closed; no more events will come."""

    def __init__(self, message: str = "signaling connection closed") -> None:
        super().__init__(message, code="closed")


class _Closed:
    """Queue sentinel: the event stream ended."""


_CLOSED = _Closed()


class SignalingClient:
    """One peer's connection to a signaling server.

    Args:
        url: ``ws://host:port`` of the server.
        peer_id: our id, 1..64 characters of ``[A-Za-z0-9._-]``.
        metadata: a JSON object (≤ 4 KiB) shown to room members.
        timeout: seconds for connecting and for each request.
    """

    def __init__(
        self,
        url: str,
        peer_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,
    ) -> None:
        try:
            self.peer_id = validate_peer_id(peer_id)
        except MessageError as exc:
            raise LocalProtocolError(str(exc)) from None
        self.url = url
        self.metadata = dict(metadata or {})
        self.timeout = timeout
        self.observed: Address | None = None
        """Our TCP source address as the server sees it (set by :meth:`connect`)."""
        self.rooms: set[InfoHash] = set()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        # request kind -> (future, predicate a reply must satisfy)
        self._pending: dict[str, tuple[asyncio.Future[Message], Callable[[Message], bool]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._events: asyncio.Queue[Message | _Closed] = asyncio.Queue()
        self._ping_ids = itertools.count(1)
        self._closed_reason: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> Registered:
        """Open the websocket and register.

        Raises:
            SignalingError: the server is unreachable, refused the handshake, or refused
                the registration (``code`` is the server's error code, e.g. ``peer-id-taken``).
            LtTimeoutError: no connection or no ``registered`` within ``timeout``.
        """
        if self._ws is not None:
            raise SignalingError("already connected")
        try:
            async with asyncio.timeout(self.timeout):
                self._ws = await ws_connect(
                    self.url,
                    open_timeout=None,  # the enclosing timeout covers it
                    max_size=MAX_SERVER_MESSAGE_SIZE,
                    compression=None,
                    close_timeout=self.timeout,
                )
        except TimeoutError:
            raise LtTimeoutError(f"connecting to {self.url} timed out") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SignalingError(f"cannot connect to {self.url}: {exc}") from None
        self._reader = asyncio.create_task(self._read(self._ws), name=f"signaling-{self.peer_id}")
        try:
            reply = await self._request(Register(self.peer_id, self.metadata), "register")
        except BaseException:
            await self.close()
            raise
        assert isinstance(reply, Registered)
        self.observed = reply.observed
        logger.info("registered as %s, observed %s:%d", self.peer_id, *reply.observed)
        return reply

    async def close(self) -> None:
        """Close the connection and stop the reader (idempotent)."""
        ws, self._ws = self._ws, None
        self._finish("closed by us")
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._finish("closed by us")

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the websocket is open and registered."""
        return (
            self._ws is not None
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
            SignalingError: the server refused (``code``) or the connection is lost.
            LtTimeoutError: no reply within ``timeout``.
        """
        infohash = _local_infohash(room)
        reply = await self._request(
            Join(infohash), "join", lambda m: getattr(m, "room", infohash) == infohash
        )
        assert isinstance(reply, Joined)
        self.rooms.add(infohash)
        return list(reply.peers)

    async def leave(self, room: str) -> None:
        """Leave a room (``not-in-room`` from the server raises SignalingError)."""
        infohash = _local_infohash(room)
        reply = await self._request(
            Leave(infohash), "leave", lambda m: getattr(m, "room", infohash) == infohash
        )
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
    async def next_event(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """The next ``peer-joined`` / ``peer-left`` / ``relay`` / ``error`` event.

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

    async def events(self) -> AsyncIterator[Message]:
        """Iterate over events until the connection closes."""
        while True:
            try:
                yield await self.next_event()
            except SignalingClosed:
                return

    # --- internals -------------------------------------------------------------------------

    async def _send(self, message: Message) -> None:
        ws = self._ws
        if ws is None or self._closed_reason is not None:
            raise SignalingClosed(f"not connected ({self._closed_reason or 'never connected'})")
        text = message.serialize()
        logger.debug("> %s", message)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise SignalingClosed(f"signaling connection closed: {exc}") from None

    async def _request(
        self,
        message: Message,
        kind: str,
        match: Callable[[Message], bool] = lambda m: True,
    ) -> Message:
        lock = self._locks.setdefault(kind, asyncio.Lock())
        async with lock:
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            self._pending[kind] = (future, match)
            try:
                await self._send(message)
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
        finally:
            self._finish(reason)

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
        self._events.put_nowait(message)

    def _finish(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(SignalingClosed(f"signaling connection closed: {reason}"))
        self._pending.clear()
        self._events.put_nowait(_CLOSED)


def _local_infohash(room: str) -> InfoHash:
    try:
        return normalize_infohash(room)
    except MessageError as exc:
        raise LocalProtocolError(str(exc)) from None


# --- whoami ------------------------------------------------------------------------------


def _http_target(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SignalingError(f"expected a ws://, wss://, http:// or https:// URL, got {url!r}")
    secure = scheme in ("wss", "https")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise SignalingError(f"bad port in URL {url!r}") from None
    return parts.hostname, port, secure


async def whoami(
    url: str,
    *,
    local_port: int | None = None,
    local_host: str = "0.0.0.0",
    timeout: float = 3.0,  # noqa: ASYNC109 (one deadline for resolve + connect + read)
) -> Address:
    """Ask the server which (ip, port) our TCP connection comes from.

    The request leaves from ``local_host:local_port`` (any port when ``None``), bound with
    ``SO_REUSEADDR``, so the answer is the public mapping of that local port. The server
    closes first (``Connection: close``), so the TIME_WAIT state stays on its side and
    the local port can be bound again at once.

    Args:
        url: the server's ``ws://`` URL or an ``http://`` base.

    Raises:
        SignalingError: unreachable, bad URL, non-200 status or a malformed answer.
        LtTimeoutError: no complete answer within ``timeout``.
    """
    host, port, secure = _http_target(url)
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            if not infos:
                raise SignalingError(f"cannot resolve {host!r}")
            family, type_, proto, _, address = infos[0]
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and local_host == "0.0.0.0":
                    local_host = "::"
                sock.bind((local_host, local_port or 0))
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=True if secure else None, server_hostname=host if secure else None
            )
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(
                f"GET /whoami HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/json\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read(65536 + 1)
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                raw += chunk
                if len(raw) > 65536:
                    raise SignalingError("whoami: answer larger than 64 KiB")
    except TimeoutError:
        raise LtTimeoutError(f"whoami {host}:{port} timed out after {timeout} s") from None
    except OSError as exc:
        raise SignalingError(f"whoami {host}:{port}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return _parse_whoami(raw)


def _parse_whoami(raw: bytes) -> Address:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise SignalingError("whoami: incomplete HTTP answer")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise SignalingError(f"whoami: bad HTTP status line {status_line[:80]!r}")
    if fields[1] != "200":
        raise SignalingError(f"whoami: HTTP {status_line[9:80]}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            body = body[: int(value.strip())]
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SignalingError("whoami: the answer is not JSON") from None
    ip = answer.get("ip") if isinstance(answer, dict) else None
    port = answer.get("port") if isinstance(answer, dict) else None
    if not isinstance(ip, str) or isinstance(port, bool) or not isinstance(port, int):
        raise SignalingError(f"whoami: expected {{'ip': str, 'port': int}}, got {answer!r:.80}")
    if not 0 < port <= 65535:
        raise SignalingError(f"whoami: port {port} out of range")
    return (ip, port)
