"""The signaling server: websockets + HTTP on one TCP port, a DHT reflector on UDP.

The asyncio shell around :mod:`.protocol` (parsing) and :mod:`.rooms` (bookkeeping):
it reads frames, turns each into messages to send, and sends them. A bad frame is
answered with an ``error`` message and the connection keeps being served. Frames
larger than ``max_message_size`` but within the websocket limit (16 times as large)
get a ``too-large`` error; beyond that, websockets closes the connection with code
1009 (message too big) without reading the frame into memory.

Messages to the requester are sent with ``await send()`` (backpressure on the sender
of the request); notifications and relays to other peers go through
:func:`websockets.asyncio.server.broadcast`, so a peer that stops reading cannot stall
the others -- its buffer grows until the websocket keepalive drops it.

HTTP on the same port (``process_request``): ``GET /health``, ``GET /stats``,
``GET /whoami``, ``GET /rooms/{infohash}/peers``; ``GET /`` without an upgrade gets a
short text; other paths a JSON 404.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import os
import time
import urllib.parse
from collections import Counter
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..errors import LocalProtocolError
from ..types import Address
from .protocol import (
    MAX_MESSAGE_SIZE,
    Error,
    Join,
    Leave,
    Message,
    MessageError,
    Ping,
    Pong,
    Register,
    Relay,
    normalize_infohash,
    parse_message,
    peek_type,
)
from .reflector import ReflectorProtocol
from .rooms import Outgoing, RoomError, Rooms

__all__ = ["SignalingServer"]

logger = logging.getLogger(__name__)

_HARD_LIMIT_FACTOR = 16


def _address(raw: Any) -> Address:
    if isinstance(raw, tuple | list) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return ("", 0)


def _json_response(status: http.HTTPStatus, body: Any) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return _response(status, data, "application/json")


def _response(status: http.HTTPStatus, data: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


class SignalingServer:
    """Rendezvous server: rooms by infohash, relay between room members, endpoint echo.

    Args:
        host: address to bind (TCP and UDP).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        dht_port: UDP port of the DHT reflector; 0 picks a free one; ``None`` disables it.
        max_message_size: largest accepted message in bytes.
        ping_interval: seconds between websocket keepalive pings (``None`` disables).
        ping_timeout: seconds to wait for a keepalive pong before dropping a connection.
        node_id: the reflector's 20-byte DHT node id (random by default).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        dht_port: int | None = 0,
        max_message_size: int = MAX_MESSAGE_SIZE,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        node_id: bytes | None = None,
    ) -> None:
        if not 0 < max_message_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be in 1..{MAX_MESSAGE_SIZE}")
        self.host = host
        self.port = port
        self.dht_port = dht_port
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.node_id = node_id if node_id is not None else os.urandom(20)
        self.rooms = Rooms()
        self._server: Server | None = None
        self._reflector: ReflectorProtocol | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._dht_address: Address | None = None
        self._started = time.monotonic()
        self._connections = 0
        self._received = 0
        self._relayed = 0
        self._errors: Counter[str] = Counter()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the TCP port (and the UDP port when the reflector is enabled)."""
        if self._server is not None:
            return
        self._server = await serve(
            self._serve_connection,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_message_size * _HARD_LIMIT_FACTOR,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            compression=None,  # small JSON; avoids the cost and the zip-bomb surface
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.dht_port is not None:
            loop = asyncio.get_running_loop()
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: ReflectorProtocol(self.node_id), local_addr=(self.host, self.dht_port)
                )
            except BaseException:
                await self.close()
                raise
            self._udp = transport
            self._reflector = protocol
            self._dht_address = _address(transport.get_extra_info("sockname"))
        self._started = time.monotonic()
        logger.info("signaling server on %s, DHT reflector on %s", self.url, self._dht_address)

    async def close(self) -> None:
        """Close every connection and both sockets; wait for the handlers to finish."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    @property
    def url(self) -> str:
        """``ws://host:port`` (brackets around an IPv6 host)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def dht_address(self) -> Address | None:
        """(host, udp_port) of the DHT reflector, or ``None`` when disabled or not started."""
        return self._dht_address

    def stats(self) -> dict[str, Any]:
        """Counters since :meth:`start`, as served by ``GET /stats``."""
        reflector = None
        if self._reflector is not None:
            reflector = {
                "answered": self._reflector.stats.answered,
                "ignored": self._reflector.stats.ignored,
            }
        return {
            "peers": self.rooms.peer_count,
            "rooms": self.rooms.room_count,
            "connections": len(self._server.connections) if self._server else 0,
            "connections_total": self._connections,
            "messages_received": self._received,
            "messages_relayed": self._relayed,
            "errors": dict(sorted(self._errors.items())),
            "uptime": round(time.monotonic() - self._started, 3),
            "dht_reflector": reflector,
        }

    # --- websocket -------------------------------------------------------------------------

    async def _serve_connection(self, ws: ServerConnection) -> None:
        observed = _address(ws.remote_address)
        self._connections += 1
        logger.debug("connection from %s:%d", *observed)
        try:
            async for frame in ws:
                await self._send_all(ws, self._receive(ws, frame, observed))
        except ConnectionClosed:
            pass
        finally:
            peer = self.rooms.peer_of(ws)
            out = self.rooms.disconnect(ws)
            if peer is not None:
                logger.info("peer %s disconnected", peer)
            await self._send_all(ws, out)

    def _receive(self, ws: ServerConnection, frame: str | bytes, observed: Address) -> list[Any]:
        """Turn one frame into ``(peer_id | ws, message)`` pairs to send."""
        self._received += 1
        if isinstance(frame, bytes):
            error = self._error("bad-frame", "binary frames are not accepted; send JSON text")
            return [(ws, error)]
        try:
            message = parse_message(frame, sent_by="client", max_size=self.max_message_size)
        except MessageError as exc:
            return [(ws, self._error(exc.code, str(exc), peek_type(frame)))]
        logger.debug("< %s", message)
        try:
            return list(self._apply(ws, message, observed))
        except RoomError as exc:
            return [(ws, self._error(exc.code, str(exc), message.TYPE))]
        except Exception:
            # Internal details stay in the log; the peer learns only that we failed.
            logger.exception("failed to handle %s", message)
            return [(ws, self._error("internal-error", "internal server error", message.TYPE))]

    def _apply(self, ws: ServerConnection, message: Message, observed: Address) -> list[Any]:
        if isinstance(message, Ping):
            return [(ws, Pong(message.id))]
        if isinstance(message, Register):
            out: list[Outgoing] = self.rooms.register(
                ws, message.peer_id, message.metadata, observed
            )
            logger.info("peer %s registered from %s:%d", message.peer_id, *observed)
            return list(out)
        peer = self.rooms.peer_of(ws)
        if peer is None:
            raise RoomError("not-registered", f"register before {message.TYPE}")
        if isinstance(message, Join):
            return list(self.rooms.join(peer, message.room))
        if isinstance(message, Leave):
            return list(self.rooms.leave(peer, message.room))
        if isinstance(message, Relay):
            out = self.rooms.relay(peer, message.to, message.room, message.data)
            self._relayed += 1
            return list(out)
        raise RoomError("unknown-type", f"unexpected message type {message.TYPE!r}")

    def _error(self, code: str, text: str, ref: str | None = None) -> Error:
        self._errors[code] += 1
        if len(text) > 1000:
            text = text[:997] + "..."
        logger.debug("error %s: %s", code, text)
        return Error(code, text, ref)

    async def _send_all(self, ws: ServerConnection, out: list[Any]) -> None:
        for target, message in out:
            try:
                text = message.serialize()
            except LocalProtocolError:
                logger.exception("not sending an invalid message to %s", target)
                continue
            conn = target if isinstance(target, ServerConnection) else self.rooms.conn_of(target)
            if conn is ws:
                logger.debug("> %s", message)
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    return
            elif isinstance(conn, ServerConnection):
                logger.debug("> %s: %s", target, message)
                broadcast([conn], text)

    # --- HTTP ------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == "/health":
            return _json_response(
                http.HTTPStatus.OK,
                {
                    "status": "ok",
                    "peers": self.rooms.peer_count,
                    "rooms": self.rooms.room_count,
                    "uptime": round(time.monotonic() - self._started, 3),
                },
            )
        if path == "/stats":
            return _json_response(http.HTTPStatus.OK, self.stats())
        if path == "/whoami":
            ip, port = _address(connection.remote_address)
            return _json_response(http.HTTPStatus.OK, {"ip": ip, "port": port})
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "rooms" and parts[3] == "peers":
            try:
                room = normalize_infohash(urllib.parse.unquote(parts[2]))
            except MessageError as exc:
                return _json_response(
                    http.HTTPStatus.BAD_REQUEST, {"error": exc.code, "message": str(exc)}
                )
            return _json_response(
                http.HTTPStatus.OK, [p.to_json() for p in self.rooms.members(room)]
            )
        if upgrade:
            return None  # a websocket client: go on with the handshake
        if path == "/":
            text = (
                "lt-punch signaling server. Connect a WebSocket client to "
                f"{self.url}; HTTP: /health /stats /whoami /rooms/<infohash>/peers\n"
            )
            return _response(http.HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8")
        return _json_response(
            http.HTTPStatus.NOT_FOUND, {"error": "not-found", "message": f"no such path {path!r}"}
        )
