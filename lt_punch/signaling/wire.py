"""The signaling server's websocket layer: RFC 6455 on an :class:`asyncio.Protocol`.

The server relays small JSON messages at tens of thousands per second, and with the
``websockets`` package a message cost more in its machinery (a generator-based frame
parser, a per-message assembler, an async send path) than in everything lt_punch does
with it. This module is the server side of the protocol and nothing else, written for
that load:

- frames are parsed in place from one buffer per connection (masks removed in C with
  ``websockets.speedups``), text checked as UTF-8, messages queued (at most
  :data:`MAX_QUEUE`; reading pauses beyond that) for ``async for message in conn``;
- :meth:`Connection.send` writes a frame at once (one ``write``) and waits only while
  the transport is paused; :meth:`Connection.send_nowait` (and :func:`broadcast`) never
  waits: a peer that stops reading cannot stall the others, its buffer grows until the
  keepalive drops it;
- the HTTP request before the upgrade goes to the server's ``process_request`` (HTTP
  routes on the same port), then the handshake is checked and answered here;
- keepalive pings every ``ping_interval``, close 1011 without a pong in
  ``ping_timeout``; fragments reassembled; a message over ``max_size`` closes with 1009
  without being read into memory; bad framing closes with 1002, bad UTF-8 with 1007.

The handshake's request and response are websockets' :class:`~websockets.http11.Request`
and :class:`~websockets.http11.Response`, so the HTTP routes work on both layers. The
client side stays on the ``websockets`` package.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import logging
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from ssl import SSLContext
from typing import Any, cast

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the C extension ships in websockets' wheels
    from websockets.utils import apply_mask as _apply_mask

__all__ = ["Closed", "Connection", "Handler", "ProcessRequest", "WireServer", "broadcast"]

logger = logging.getLogger(__name__)

MAX_QUEUE = 16
"""Messages received and not yet read before the connection stops reading."""
MAX_HEAD = 16 * 1024
"""Bytes of the HTTP request head (request line and headers)."""
OPEN_TIMEOUT = 10.0
"""Seconds for the HTTP request and handshake."""
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the client's close frame after ours, or for the last bytes to
drain once the TCP connection is closing; then it is aborted."""
MAX_FRAGMENTS = 1024
"""Frames of one fragmented message."""
WRITE_HIGH = 64 * 1024
"""Bytes queued for one connection in one loop iteration before they are written at
once (so that a burst of replies meets the transport's backpressure)."""
MAX_WRITE_BUFFER = 16 * 1024 * 1024
"""Bytes waiting to be sent to one client: beyond, it is not reading, and it is dropped
(relays to it never wait, so they would otherwise pile up)."""
_CLOSE_CODES = frozenset((*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)))
"""Close codes a client may send (RFC 6455 section 7.4)."""

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_MASK = b"\x00\x00\x00\x00"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_OPCODES = frozenset((_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG))
_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)

Handler = Callable[["Connection"], Awaitable[None]]
ProcessRequest = Callable[["Connection", Request], Awaitable[Response | None]]


class Closed(Exception):
    """The connection is closed (or closing): nothing more can be sent."""


def _header(opcode: int, length: int) -> bytes:
    """A server frame's header (FIN set, no mask)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _plain(status: int, phrase: str, text: str, *extra: tuple[str, str]) -> Response:
    body = text.encode()
    headers = Headers([("Connection", "close"), ("Content-Length", str(len(body))),
                       ("Content-Type", "text/plain; charset=utf-8"), *extra])
    return Response(status, phrase, headers, body)


def _parse_head(head: bytes) -> Request:
    """The request line and headers (``ValueError`` for anything malformed)."""
    lines = head.decode("iso-8859-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if method != "GET":
        raise ValueError(f"unsupported method {method[:16]!r}")
    if version != "HTTP/1.1":
        raise ValueError(f"unsupported version {version[:16]!r}")
    if not target.startswith("/"):
        raise ValueError("bad request target")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise ValueError("bad header line")
        headers[name] = value.strip(" \t")
    return Request(target, headers)


class Connection(asyncio.Protocol):
    """One client connection: the HTTP request, then websocket messages.

    Iterate it (``async for message in conn``) for its messages: ``str`` for text
    frames, ``bytes`` for binary ones; the iteration ends when the connection closes.
    """

    __slots__ = ("_buf", "_close_code", "_closed", "_drain", "_fragments", "_fragment_op",
                 "_fragments_size", "_handler_task", "_out", "_out_size", "_parsing",
                 "_ping", "_queue", "_reading_paused", "_server", "_state", "_timer",
                 "_transport", "_waiter", "last_ping", "ping_sent", "remote_address",
                 "request")

    def __init__(self, server: WireServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._state = _CONNECTING
        self._buf = bytearray()
        self._out: list[bytes] | None = None  # frames for the next flush
        self._out_size = 0
        self._parsing = False
        self._ping = b""  # the payload of the keepalive ping waiting for its pong
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._fragments: list[bytes] | None = None
        self._fragment_op = 0
        self._fragments_size = 0
        self._closed: asyncio.Future[None] = server.loop.create_future()
        self._close_code: int | None = None
        self._handler_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.remote_address: Any = None
        """The client's address as the socket reports it: ``(host, port, ...)``."""
        self.request: Request | None = None
        """The HTTP request of the handshake."""
        self.ping_sent: float | None = None
        """When the unanswered keepalive ping went out (None: none outstanding)."""
        self.last_ping = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.remote_address = transport.get_extra_info("peername")
        self._server._connecting.add(self)
        self._timer = self._server.loop.call_later(OPEN_TIMEOUT, self._open_timeout)

    def data_received(self, data: bytes) -> None:
        if self._state == _OPEN or self._state == _CLOSING:
            self._buf += data
            self._frames()
        elif self._state == _CONNECTING and self.request is None:
            self._buf += data
            self._head()
        # else: a request being processed (reading paused) or closed: nothing to do

    def eof_received(self) -> bool | None:
        self._abort(1006)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_code is None:
            self._close_code = 1006
        self._state = _CLOSED
        self._server._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._server.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- the handshake ----------------------------------------------------------------

    def _head(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._respond(_plain(431, "Request Header Fields Too Large",
                                     "request head too large\n"))
            return
        head, rest = bytes(self._buf[:end]), bytes(self._buf[end + 4:])
        self._buf = bytearray(rest)
        try:
            self.request = _parse_head(head)
        except (ValueError, UnicodeDecodeError) as exc:
            self._respond(_plain(400, "Bad Request", f"bad HTTP request: {exc}\n"))
            return
        assert self._transport is not None
        self._transport.pause_reading()  # until the request is answered
        self._handler_task = self._server.loop.create_task(self._process(self.request))

    async def _process(self, request: Request) -> None:
        try:
            response = await self._server.process_request(self, request)
        except Exception:
            logger.exception("failed to process %s", request.path[:100])
            response = _plain(500, "Internal Server Error", "internal server error\n")
        if self._state != _CONNECTING:
            return
        if response is not None:
            self._respond(response)
            return
        refusal, key = self._check_upgrade(request.headers)
        if refusal is not None:
            self._respond(refusal)
            return
        assert self._transport is not None and key is not None
        self._transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + _accept_key(key).encode() + b"\r\n\r\n")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _OPEN
        # The first ping at a random point of the first interval: connections opened
        # together (a restart, a load test) would otherwise all be pinged in one tick
        # (1,000 sends at once stalled every relay by 20-30 ms).
        self.last_ping = time.monotonic() - random.random() * (self._server.ping_interval or 0)
        self._server._opened(self)
        self._transport.resume_reading()
        if self._buf:
            self._frames()
        try:
            await self._server.handler(self)
        except Exception:
            logger.exception("connection handler failed for %s", self.remote_address)
            self._fail(1011, "internal error")
        if self._state == _OPEN:
            await self.close(1000)

    @staticmethod
    def _check_upgrade(headers: Headers) -> tuple[Response | None, str | None]:
        connection = {t.strip().lower() for v in headers.get_all("Connection")
                      for t in v.split(",")}
        upgrade = [v.strip().lower() for v in headers.get_all("Upgrade")]
        if "upgrade" not in connection or upgrade != ["websocket"]:
            return _plain(426, "Upgrade Required", "this is a websocket endpoint\n",
                          ("Upgrade", "websocket")), None
        if headers.get_all("Sec-WebSocket-Version") != ["13"]:
            return _plain(426, "Upgrade Required", "unsupported websocket version\n",
                          ("Sec-WebSocket-Version", "13")), None
        keys = headers.get_all("Sec-WebSocket-Key")
        try:
            if len(keys) != 1 or len(base64.b64decode(keys[0], validate=True)) != 16:
                raise ValueError
        except (ValueError, binascii.Error):
            return _plain(400, "Bad Request", "invalid Sec-WebSocket-Key\n"), None
        return None, keys[0]

    def _respond(self, response: Response) -> None:
        """Answer the HTTP request and close (no upgrade)."""
        self._state = _CLOSED
        self._close_code = 1006
        if self._transport is not None:
            self._transport.write(response.serialize())
            self._close_transport()

    def _open_timeout(self) -> None:
        self._timer = None
        if self._state == _CONNECTING and self._transport is not None:
            self._transport.abort()

    # --- frames in --------------------------------------------------------------------

    def _frames(self) -> None:
        if self._parsing:
            return  # re-entered (a close resumed reading): the running loop goes on
        self._parsing = True
        try:
            self._parse()
        finally:
            self._parsing = False

    def _parse(self) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        limit = self._server.max_size
        while size - pos >= 2 and self._state != _CLOSED and not self._reading_paused:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if size - head < 2:
                    break
                length = int.from_bytes(buf[head:head + 2], "big")
                head += 2
            elif length == 127:
                if size - head < 8:
                    break
                length = int.from_bytes(buf[head:head + 8], "big")
                head += 8
            if b0 & 0x70 or not b1 & 0x80 or length >> 63 or opcode not in _OPCODES:
                self._fail(1002, "unmasked frame" if not b1 & 0x80 else "bad frame header")
                return
            if opcode >= 8:
                if not b0 & 0x80 or length > 125:
                    self._fail(1002, "fragmented or long control frame")
                    return
            elif length + self._fragments_size > limit:
                self._fail(1009, f"message over {limit} bytes")
                return
            end = head + 4 + length
            if size < end:
                break
            mask = bytes(buf[head:head + 4])
            payload = bytes(buf[head + 4:end])
            if mask != _NO_MASK:
                payload = _apply_mask(payload, mask)
            pos = end
            if opcode >= 8:
                self._control(opcode, payload)
            else:
                self._data(opcode, bool(b0 & 0x80), payload)
        if pos:
            del buf[:pos]

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == _OP_CONT:
            if self._fragments is None:
                self._fail(1002, "continuation without a first fragment")
                return
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                if len(self._fragments) >= MAX_FRAGMENTS:
                    self._fail(1009, f"message in over {MAX_FRAGMENTS} fragments")
                return
            payload, opcode = b"".join(self._fragments), self._fragment_op
            self._fragments, self._fragments_size = None, 0
        elif opcode in (_OP_TEXT, _OP_BINARY):
            if self._fragments is not None:
                self._fail(1002, "new message inside a fragmented one")
                return
            if not fin:
                self._fragments, self._fragment_op = [payload], opcode
                self._fragments_size = len(payload)
                return
        else:  # pragma: no cover - _frames refuses other opcodes
            self._fail(1002, f"unknown opcode {opcode}")
            return
        if self._state != _OPEN:
            return  # closing: data after our close frame is dropped
        message: str | bytes = payload
        if opcode == _OP_TEXT:
            try:
                message = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in a text message")
                return
        if self._waiter is not None and not self._queue:
            try:
                if self._server.receive_now(self, message):
                    return  # handled at once: the handler was idle, so the order is kept
            except Exception:
                logger.exception("failed to handle a message from %s", self.remote_address)
                self._fail(1011, "internal error")
                return
        self._queue.append(message)
        if len(self._queue) >= MAX_QUEUE and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake()

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            # Not while the client leaves our writes unread (nor after our close).
            if self._state == _OPEN and self.writable:
                self._write(_OP_PONG, payload)
        elif opcode == _OP_PONG:
            if self.ping_sent is not None and payload == self._ping:
                self.ping_sent = None
        else:  # close
            code = 1005
            if len(payload) == 1:
                self._fail(1002, "close frame of one byte")
                return
            if len(payload) >= 2:
                code = int.from_bytes(payload[:2], "big")
                if code not in _CLOSE_CODES:
                    self._fail(1002, f"close code {code}")
                    return
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(1007, "close reason not UTF-8")
                    return
            if self._state == _OPEN:
                # Their close first: echo the code, then we close the TCP connection.
                self._close_code = code
                self._write(_OP_CLOSE, payload[:2])
            self._state = _CLOSED
            self._wake()
            self._close_transport()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error: close with ``code`` and stop reading."""
        logger.debug("closing %s: %s", self.remote_address, reason)
        if self._state == _OPEN:
            self._close_code = code
            self._write(_OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])
        self._state = _CLOSED
        self._buf.clear()
        self._wake()
        self._close_transport()

    def _abort(self, code: int) -> None:
        if self._close_code is None:
            self._close_code = code
        self._state = _CLOSED
        self._wake()
        self._close_transport()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the application's side -------------------------------------------------------

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> str | bytes:
        while not self._queue:
            if self._state != _OPEN:
                raise StopAsyncIteration
            self._waiter = self._server.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._queue.popleft()
        if self._reading_paused and len(self._queue) < MAX_QUEUE // 2:
            self._resume_reading()
        return message

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._state in (_OPEN, _CLOSING) and self._transport is not None:
            self._transport.resume_reading()
            self._frames()  # what was read before the pause

    @property
    def open(self) -> bool:
        """Whether messages can be sent."""
        return self._state == _OPEN

    @property
    def writable(self) -> bool:
        """Open, and the client reads what it is sent (the transport is not paused)."""
        return self._state == _OPEN and (self._drain is None or self._drain.done())

    @property
    def close_code(self) -> int | None:
        """The close code once the connection closed (1006: no close frame)."""
        return self._close_code

    def send_nowait(self, message: str | bytes) -> None:
        """Send a text message without waiting (dropped once the connection is
        closing); ``bytes`` are text already encoded in UTF-8 (the server sends no
        binary messages)."""
        if self._state == _OPEN:
            self._write(_OP_TEXT, message.encode() if isinstance(message, str) else message)

    async def send(self, message: str | bytes) -> None:
        """Send a message; waits while the client does not read (``Closed`` once the
        connection is closing)."""
        if self._state != _OPEN:
            raise Closed(f"connection closed ({self._close_code})")
        self.send_nowait(message)
        drain = self._drain
        if drain is not None and not drain.done():
            await drain

    def ping(self) -> None:
        """Send a keepalive ping (its pong clears :attr:`ping_sent`)."""
        if self._state == _OPEN:
            self.ping_sent = self.last_ping = time.monotonic()
            self._ping = os.urandom(4)
            self._write(_OP_PING, self._ping)

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send our close frame now (nothing more is read or sent); the connection
        ends with the client's close frame, or is aborted after :data:`CLOSE_TIMEOUT`."""
        if self._state == _OPEN:
            self._close_code = code
            self._write(_OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:120])
            self._flush()
            self._state = _CLOSING
            self._wake()
            self._deadline()
            if self._reading_paused:  # the client's close frame must be read
                self._resume_reading()
        elif self._state == _CONNECTING:
            self._state = _CLOSED
            self._close_transport()

    def _deadline(self) -> None:
        """Abort the connection if it has not ended in :data:`CLOSE_TIMEOUT` (a client
        that neither answers our close nor reads what is left to send)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._server.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: our close frame, then wait (bounded) for the client's."""
        self.start_close(code, reason)
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _write(self, opcode: int, payload: bytes) -> None:
        self._push(_header(opcode, len(payload)) + payload)

    def _push(self, frame: bytes) -> None:
        """Queue ``frame`` for this loop iteration's flush: the frames one connection
        gets in one iteration go out in one system call (a send on loopback costs more
        than the rest of a relay). Past :data:`WRITE_HIGH` they are written at once,
        so that the transport's backpressure (:attr:`writable`) sees them."""
        if self._out is None:
            self._out = [frame]
            self._out_size = len(frame)
            self._server._dirty(self)
        else:
            self._out.append(frame)
            self._out_size += len(frame)
        if self._out_size > WRITE_HIGH:
            self._flush()

    def _flush(self) -> None:
        out, self._out = self._out, None
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            logger.info("dropping %s: %d bytes unread", self.remote_address,
                        transport.get_write_buffer_size())
            self._close_code = 1006
            self._state = _CLOSED
            self._wake()
            transport.abort()

    def _close_transport(self) -> None:
        """Flush and close the TCP connection; abort it if it has not ended in
        :data:`CLOSE_TIMEOUT` (a client that does not read what is left)."""
        self._flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._deadline()


def broadcast(connections: Iterable[Connection], message: str | bytes) -> None:
    """Send the text ``message`` (``bytes``: already UTF-8) to each open connection,
    never waiting (a client that does not read only grows its own buffer)."""
    data = message.encode() if isinstance(message, str) else message
    frame = _header(_OP_TEXT, len(data)) + data
    for conn in connections:
        if conn._state == _OPEN:
            conn._push(frame)


class WireServer:
    """A listening socket whose connections speak websocket (or plain HTTP).

    Args:
        handler: runs for each websocket connection; the connection is closed (1000)
            when it returns.
        receive_now: a message of a connection whose handler is idle (waiting for the
            next one), before it is queued: True if it was handled then and there (no
            task switch per message), False to queue it for the handler.
        process_request: every HTTP request first: a response answers it (and the
            connection closes), ``None`` goes on with the websocket handshake.
        max_size: the largest message, in bytes (1009 above it).
        ping_interval, ping_timeout: keepalive (``None``: none).
    """

    def __init__(self, handler: Handler, process_request: ProcessRequest, *,
                 max_size: int, ping_interval: float | None,
                 ping_timeout: float | None,
                 receive_now: Callable[[Connection, str | bytes], bool] | None = None,
                 ) -> None:
        self.handler = handler
        self.receive_now = receive_now or (lambda conn, message: False)
        self.process_request = process_request
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connections: set[Connection] = set()
        """The open websocket connections."""
        self._connecting: set[Connection] = set()
        self._pending: list[Connection] = []  # with frames to flush
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    async def listen(self, host: str, port: int, ssl: SSLContext | None = None) -> None:
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl, reuse_address=True, backlog=1024)
        if self.ping_interval is not None:
            self._keepalive = self.loop.create_task(self._keepalive_loop())

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    def _opened(self, conn: Connection) -> None:
        self._connecting.discard(conn)
        self.connections.add(conn)

    def _dirty(self, conn: Connection) -> None:
        if not self._pending:
            self.loop.call_soon(self._flush)
        self._pending.append(conn)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for conn in pending:
            conn._flush()

    def _forget(self, conn: Connection) -> None:
        self._connecting.discard(conn)
        self.connections.discard(conn)

    async def _keepalive_loop(self) -> None:
        assert self.ping_interval is not None
        interval = self.ping_interval
        timeout = self.ping_timeout
        tick = min(0.25, interval / 2, timeout / 2 if timeout else 0.25)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.ping_sent is not None:
                    if timeout is not None and now - conn.ping_sent >= timeout:
                        conn.ping_sent = None
                        conn._fail(1011, "keepalive ping timeout")  # aborts if unread
                elif now - conn.last_ping >= interval:
                    conn.ping()

    async def close(self) -> None:
        """Stop listening; close every connection (1001) and wait for their handlers
        (cancelled after :data:`CLOSE_TIMEOUT`)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if self._server is not None:
            self._server.close()
        connecting = list(self._connecting)
        for conn in connecting:
            if conn._transport is not None:
                conn._transport.abort()
        conns = list(self.connections)
        await asyncio.gather(*(c.close(1001, "server shutting down") for c in conns),
                             return_exceptions=True)
        tasks = [c._handler_task for c in (*connecting, *conns)
                 if c._handler_task is not None and not c._handler_task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()
