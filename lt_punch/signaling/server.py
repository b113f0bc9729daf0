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
``GET /metrics``, ``GET /whoami``, ``GET /rooms/{infohash}/peers``; ``GET /`` without an
upgrade gets a short text; other paths a JSON 404. With a ``secret``, the room listing
(peer ids, public endpoints, NAT kinds) needs the credential the websocket needs: a
peer id and its token, as ``Authorization: Basic`` (401 otherwise). The rest stays open:
counters only, or the caller's own address (docs/signaling.md, "Security model").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http
import ipaddress
import json
import logging
import os
import secrets
import time
import urllib.parse
from collections import Counter
from ssl import SSLContext
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..errors import LocalProtocolError
from ..types import Address, PeerId
from .protocol import (
    MAX_JOINED_PEERS,
    MAX_MESSAGE_SIZE,
    REPLACED_CLOSE_CODE,
    Error,
    Join,
    Joined,
    Leave,
    Message,
    MessageError,
    PeerJoined,
    PeerLeft,
    Ping,
    Pong,
    Register,
    Relay,
    Relayed,
    decode_frame,
    normalize_infohash,
    parse_object,
    peek_type,
)
from .reflector import ReflectorProtocol
from .rooms import RoomError, Rooms
from .security import (
    TokenBucket,
    candidates_of,
    check_authorization,
    check_candidate,
    check_token,
)
from .shared import SharedRooms
from .webtorrent import TrackerMessage, WebTorrentTracker, is_tracker_message

__all__ = ["SignalingServer"]

logger = logging.getLogger(__name__)

_HARD_LIMIT_FACTOR = 16
_TRUSTED = (Relayed, PeerJoined, PeerLeft, Pong)


def _address(raw: Any) -> Address:
    if isinstance(raw, tuple | list) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return ("", 0)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _json_response(status: http.HTTPStatus, body: Any,
                   extra: tuple[tuple[str, str], ...] = ()) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return _response(status, data, "application/json", extra)


def _response(status: http.HTTPStatus, data: bytes, content_type: str,
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            *extra,
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
        ssl: a server-side TLS context: the server speaks ``wss://`` (and HTTPS).
        secret: shared secret of the authentication tokens; when set, ``register`` needs
            a valid ``token`` (:func:`~lt_punch.signaling.security.make_token`), and
            ``GET /rooms/{infohash}/peers`` a peer id and its token as
            ``Authorization: Basic``.
        rate, burst: per-connection limit on messages (per second, burst).
        address_rate, address_burst: the same per client address (not for ``trusted``).
        max_connections_per_address: concurrent connections per client address (0: no
            limit; not for ``trusted`` addresses).
        trusted: networks exempt from the per-address limits (default: loopback, where
            a reverse proxy terminating TLS would connect from).
        max_refusals: messages refused for rate in a row before the connection is closed.
        lan_mode: accept loopback and link-local candidate addresses (default: when the
            server itself is bound to loopback, since its peers are then local).
        peer_timeout: seconds without any message after which a connection is closed
            (``None``: never; clients ``ping`` to stay).
        cleanup_interval: seconds between idle-connection sweeps.
        freeze_gc: for a process that runs only this server (``lt-punch signal
            serve``): move long-lived objects out of the garbage collector's reach
            every second (:func:`gc.freeze`), so that full collections do not walk every
            connection's objects (350-560 ms pauses at 10,000 peers); a full collection
            of everything runs every ``cleanup_interval`` x 10 s instead.
        redis_url: share rooms with the other servers using this Redis
            (:mod:`.shared`): peers connected to different processes meet and relay.
        max_rooms_per_peer: rooms one peer may be in (``too-many-rooms``).
        max_peers_per_room: members of one room on this server (``room-full``).
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
        ssl: SSLContext | None = None,
        secret: str | None = None,
        rate: float = 50.0,
        burst: float = 200.0,
        address_rate: float = 500.0,
        address_burst: float = 2000.0,
        max_connections_per_address: int = 256,
        trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128"),
        max_refusals: int = 20,
        lan_mode: bool | None = None,
        peer_timeout: float | None = 300.0,
        cleanup_interval: float = 30.0,
        freeze_gc: bool = False,
        redis_url: str | None = None,
        max_rooms_per_peer: int = 1000,
        max_peers_per_room: int = 5000,
    ) -> None:
        if not 0 < max_message_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be in 1..{MAX_MESSAGE_SIZE}")
        if secret is not None and not secret:
            raise ValueError("secret must not be empty")
        for name, value in (("rate", rate), ("burst", burst), ("address_rate", address_rate),
                            ("address_burst", address_burst),
                            ("cleanup_interval", cleanup_interval)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0")
        if max_connections_per_address < 0 or max_refusals < 1:
            raise ValueError("max_connections_per_address must be >= 0, max_refusals >= 1")
        if peer_timeout is not None and not peer_timeout > 0:
            raise ValueError("peer_timeout must be > 0 or None")
        self.ssl = ssl
        self.secret = secret
        self.rate, self.burst = rate, burst
        self.address_rate, self.address_burst = address_rate, address_burst
        self.max_connections_per_address = max_connections_per_address
        self.trusted = tuple(ipaddress.ip_network(n) for n in trusted)
        self.max_refusals = max_refusals
        self.lan_mode = lan_mode if lan_mode is not None else _is_loopback(host)
        self.peer_timeout = peer_timeout
        self.cleanup_interval = cleanup_interval
        self.freeze_gc = freeze_gc
        self.shared = SharedRooms(redis_url) if redis_url else None
        """Rooms shared with other server processes through Redis (``redis_url``)."""
        self.webtorrent = WebTorrentTracker()
        """The WebTorrent tracker on the same websocket (frames with ``action``, no ``v``)."""
        self.host = host
        self.port = port
        self.dht_port = dht_port
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.node_id = node_id if node_id is not None else os.urandom(20)
        self.rooms = Rooms(max_rooms_per_peer=max_rooms_per_peer,
                           max_peers_per_room=max_peers_per_room)
        self._server: Server | None = None
        self._reflector: ReflectorProtocol | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._dht_address: Address | None = None
        self._started = time.monotonic()
        self._connections = 0
        self._received = 0
        self._relayed = 0
        self._errors: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._address_buckets: dict[str, TokenBucket] = {}
        self._last_seen: dict[ServerConnection, float] = {}
        self._closed_for: Counter[str] = Counter()
        self._cleaner: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._metrics = _metrics_registry(self)

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
            ssl=self.ssl,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.shared is not None:
            try:
                await self.shared.start(self._deliver_local, self._evict_local)
            except BaseException:
                await self.close()
                raise
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
        loop = asyncio.get_running_loop()
        self._cleaner = loop.create_task(self._cleanup_loop())
        if self.freeze_gc:
            self._background.add(loop.create_task(self._freeze_loop()))
        logger.info("signaling server on %s, DHT reflector on %s", self.url, self._dht_address)

    async def close(self) -> None:
        """Close every connection and both sockets; wait for the handlers to finish."""
        for task in [t for t in (self._cleaner, *self._background) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._cleaner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()
        if self.shared is not None:
            await self.shared.close()

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
        """``ws://host:port`` (``wss://`` with TLS; brackets around an IPv6 host)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl else 'ws'}://{host}:{self.port}"

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
            "closed": dict(sorted(self._closed_for.items())),
            "peer_states": self.rooms.states(time.monotonic()),
            "uptime": round(time.monotonic() - self._started, 3),
            "dht_reflector": reflector,
            "webtorrent": {"peers": self.webtorrent.peer_count,
                           "swarms": self.webtorrent.swarm_count,
                           **vars(self.webtorrent.stats)},
        }

    # --- websocket -------------------------------------------------------------------------

    async def _serve_connection(self, ws: ServerConnection) -> None:
        observed = _address(ws.remote_address)
        ip = observed[0]
        self._connections += 1
        logger.debug("connection from %s:%d", *observed)
        limited = not self._is_trusted(ip)
        if limited and self.max_connections_per_address and \
                self._per_address[ip] >= self.max_connections_per_address:
            await self._refuse(ws, "too-many-connections", f"more than "
                               f"{self.max_connections_per_address} connections from {ip}")
            return
        self._per_address[ip] += 1
        bucket = TokenBucket(self.rate, self.burst)
        address_bucket = self._address_bucket(ip) if limited else None
        refusals = 0
        self._last_seen[ws] = time.monotonic()
        try:
            async for frame in ws:
                now = self._last_seen[ws] = time.monotonic()
                self._received += 1
                if not (bucket.take() and (address_bucket is None or address_bucket.take())):
                    refusals += 1
                    if refusals >= self.max_refusals:
                        await self._refuse(ws, "rate-limited", f"over {self.rate:g} messages "
                                           f"per second, {refusals} times in a row: closing")
                        break
                    await self._send_all(ws, [(ws, self._error(
                        "rate-limited", f"over {self.rate:g} messages per second; slow "
                        "down", peek_type(frame) if isinstance(frame, str) else None))])
                    continue
                refusals = 0
                await self._send_all(ws, await self._receive(ws, frame, observed, now))
        except ConnectionClosed:
            pass
        finally:
            self._last_seen.pop(ws, None)
            self._per_address[ip] -= 1
            if self._per_address[ip] <= 0:
                del self._per_address[ip]
            peer = self.rooms.peer_of(ws)
            key = self.rooms.session_key_of(ws)
            rooms = self.rooms.rooms_of(peer) if peer is not None else set()
            out = self.rooms.disconnect(ws)
            self.webtorrent.disconnect(ws)
            if peer is not None:
                logger.info("peer %s disconnected", peer)
            await self._send_all(ws, out)
            if self.shared is not None and peer is not None:
                try:
                    await self.shared.release(peer, key, sorted(rooms),
                                              lambda room: PeerLeft(room, peer))
                except (RedisError, OSError) as exc:
                    logger.warning("cannot release %s in Redis: %s", peer, exc)

    def _deliver_local(self, peer_id: PeerId, text: str) -> None:
        """A message from another node for a peer of ours."""
        conn = self.rooms.conn_of(peer_id)
        if isinstance(conn, ServerConnection):
            broadcast([conn], text)

    def _evict_local(self, peer_id: PeerId) -> None:
        """Our peer registered again on another node (with its session key)."""
        conn = self.rooms.conn_of(peer_id)
        if isinstance(conn, ServerConnection):
            self._spawn_refusal(conn, "replaced", f"peer id {peer_id!r} registered again "
                                "on another server", REPLACED_CLOSE_CODE)

    def _is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def _address_bucket(self, ip: str) -> TokenBucket:
        bucket = self._address_buckets.get(ip)
        if bucket is None:
            bucket = self._address_buckets[ip] = TokenBucket(self.address_rate,
                                                              self.address_burst)
        return bucket

    async def _refuse(self, ws: ServerConnection, code: str, text: str,
                      close_code: int = 1008) -> None:
        """Send an error with ``code``, then close the connection."""
        self._closed_for[code] += 1
        logger.info("closing %s:%d: %s", *_address(ws.remote_address), text)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(self._error(code, text).serialize())
        await ws.close(close_code, code)

    async def _freeze_loop(self) -> None:
        sweeps = 0
        try:
            while True:
                await asyncio.sleep(1.0)
                sweeps += 1
                if sweeps % int(self.cleanup_interval * 10) == 0:
                    gc.unfreeze()  # collect what became garbage since, cycles included
                    gc.collect()
                gc.freeze()
        finally:
            gc.unfreeze()

    async def _cleanup_loop(self) -> None:
        """Close connections silent for ``peer_timeout``; forget idle address buckets."""
        while True:
            await asyncio.sleep(self.cleanup_interval)
            now = time.monotonic()
            if self.peer_timeout is not None:
                stale = [ws for ws, seen in self._last_seen.items()
                         if now - seen >= self.peer_timeout]
                for ws in stale:
                    self._spawn_refusal(ws, "idle-timeout", f"no message for "
                                        f"{self.peer_timeout:g} s", 1000)
            for ip in [ip for ip, b in self._address_buckets.items()
                       if b.full and ip not in self._per_address]:
                del self._address_buckets[ip]

    def _spawn_refusal(self, ws: ServerConnection, code: str, text: str,
                       close_code: int) -> None:
        self._last_seen.pop(ws, None)  # once
        task = asyncio.get_running_loop().create_task(
            self._refuse(ws, code, text, close_code))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _receive(self, ws: ServerConnection, frame: str | bytes, observed: Address,
                       now: float = 0.0) -> list[Any]:
        """Turn one frame into ``(peer_id | ws, message)`` pairs to send."""
        if isinstance(frame, bytes):
            error = self._error("bad-frame", "binary frames are not accepted; send JSON text")
            return [(ws, error)]
        try:
            # Decoded once: WebTorrent tracker messages go to the tracker, the rest on.
            obj, size = decode_frame(frame, max_size=self.max_message_size)
            if is_tracker_message(obj):
                return self._track(ws, obj, now)
            message = parse_object(obj, size, sent_by="client", max_size=self.max_message_size)
        except MessageError as exc:
            return [(ws, self._error(exc.code, str(exc), peek_type(frame)))]
        logger.debug("< %s", message)
        self.rooms.touch(ws, now, relay=isinstance(message, Relay))
        try:
            return list(await self._apply(ws, message, observed, now))
        except RoomError as exc:
            return [(ws, self._error(exc.code, str(exc), message.TYPE))]
        except (RedisError, OSError) as exc:
            logger.warning("shared state unavailable while handling %s: %s", message, exc)
            return [(ws, self._error("internal-error", "shared state unavailable; retry",
                                     message.TYPE))]
        except Exception:
            # Internal details stay in the log; the peer learns only that we failed.
            logger.exception("failed to handle %s", message)
            return [(ws, self._error("internal-error", "internal server error", message.TYPE))]

    def _track(self, ws: ServerConnection, obj: dict[str, Any], now: float) -> list[Any]:
        """A WebTorrent tracker message: the tracker's answers (no ``register`` needed)."""
        logger.debug("< webtorrent %s", obj.get("action"))
        try:
            out = self.webtorrent.receive(ws, obj, now)
        except Exception:
            logger.exception("failed to handle a webtorrent %r", obj.get("action"))
            out = [(ws, {"failure reason": "internal server error"})]
        return [(conn, TrackerMessage(body)) for conn, body in out]

    async def _apply(self, ws: ServerConnection, message: Message, observed: Address,
                     now: float) -> list[Any]:
        if isinstance(message, Ping):
            return [(ws, Pong(message.id))]
        if isinstance(message, Register):
            return await self._register(ws, message, observed, now)
        peer = self.rooms.peer_of(ws)
        if peer is None:
            raise RoomError("not-registered", f"register before {message.TYPE}")
        shared = self.shared
        if isinstance(message, Join):
            room = message.room
            rejoin = room in self.rooms.rooms_of(peer)
            out = list(self.rooms.join(peer, room))
            if shared is not None:
                # The listing covers every node; other nodes notify their own members.
                if rejoin:
                    others = [m for m in await shared.members(room) if m.peer_id != peer]
                    others = others[-MAX_JOINED_PEERS:]
                else:
                    others = await shared.join(
                        peer, self.rooms.session_key_of(ws), room,
                        PeerJoined(room, peer, self.rooms.info_of(peer).metadata))
                out[0] = (peer, Joined(room, tuple(others)))
            return out
        if isinstance(message, Leave):
            out = list(self.rooms.leave(peer, message.room))
            if shared is not None:
                await shared.leave(peer, self.rooms.session_key_of(ws), message.room,
                                   PeerLeft(message.room, peer))
            return out
        if isinstance(message, Relay):
            self._check_candidates(message.data, "relay data")
            if shared is not None and self.rooms.conn_of(message.to) is None:
                if message.room not in self.rooms.rooms_of(peer):
                    raise RoomError("not-in-room", f"not in room {message.room}")
                await shared.relay(message.to, message.room,
                                   Relayed(peer, message.room, message.data))
                self._relayed += 1
                return []
            out = self.rooms.relay(peer, message.to, message.room, message.data)
            self._relayed += 1
            return list(out)
        raise RoomError("unknown-type", f"unexpected message type {message.TYPE!r}")

    async def _register(self, ws: ServerConnection, message: Register, observed: Address,
                        now: float) -> list[Any]:
        if self.secret is not None:
            check_token(self.secret, message.token, message.peer_id)
        self._check_candidates(message.metadata, "metadata")
        out: list[Any] = []
        holder = self.rooms.conn_of(message.peer_id)
        if message.resume is not None and holder is not None and holder is not ws \
                and self.rooms.peer_of(ws) is None:
            old, notes = self.rooms.evict(message.peer_id, message.resume)
            out.extend(notes)
            if isinstance(old, ServerConnection):
                self._spawn_refusal(old, "replaced", f"peer id {message.peer_id!r} "
                                    "registered again on a new connection", REPLACED_CLOSE_CODE)
        key = secrets.token_hex(16)
        if self.shared is not None and self.rooms.peer_of(ws) is None \
                and self.rooms.conn_of(message.peer_id) is None:
            await self.shared.claim(message.peer_id, message.metadata, key, message.resume)
        out.extend(self.rooms.register(ws, message.peer_id, message.metadata, observed,
                                       key, now))
        logger.info("peer %s registered from %s:%d", message.peer_id, *observed)
        return out

    def _check_candidates(self, data: dict[str, Any], where: str) -> None:
        for key, host in candidates_of(data):
            check_candidate(host, lan_mode=self.lan_mode, where=f"{where} {key}")

    def _error(self, code: str, text: str, ref: str | None = None) -> Error:
        self._errors[code] += 1
        if len(text) > 1000:
            text = text[:997] + "..."
        logger.debug("error %s: %s", code, text)
        return Error(code, text, ref)

    async def _send_all(self, ws: ServerConnection, out: list[Any]) -> None:
        for target, message in out:
            try:
                # Relays and notifications carry fields that passed parse_message on the
                # way in: skip the re-parse (a third of the relay cost at saturation).
                text = message.encode() if isinstance(message, _TRUSTED) \
                    else message.serialize()
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

    async def _process_request(self, connection: ServerConnection, request: Request
                               ) -> Response | None:
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
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, generate_latest(self._metrics),
                             CONTENT_TYPE_LATEST)
        if path == "/whoami":
            ip, port = _address(connection.remote_address)
            return _json_response(http.HTTPStatus.OK, {"ip": ip, "port": port})
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "rooms" and parts[3] == "peers":
            refusal = self._authorize(connection, request)
            if refusal is not None:
                return refusal
            try:
                room = normalize_infohash(urllib.parse.unquote(parts[2]))
            except MessageError as exc:
                return _json_response(
                    http.HTTPStatus.BAD_REQUEST, {"error": exc.code, "message": str(exc)}
                )
            now = time.monotonic()
            # lt_punch members, then WebTorrent peers (metadata.agent "webtorrent").
            members = self.rooms.member_states(room, now)
            if self.shared is not None:  # and those connected to the other servers
                local = {m["peer_id"] for m in members}
                try:
                    remote = [m for m in await self.shared.members(room)
                              if m.peer_id not in local]
                except (RedisError, OSError) as exc:
                    return _json_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {
                        "error": "unavailable", "message": f"shared state: {exc}"})
                members += [{**m.to_json(), "state": "remote"} for m in remote]
            return _json_response(http.HTTPStatus.OK,
                                  members + self.webtorrent.member_states(room, now))
        if upgrade:
            return None  # a websocket client: go on with the handshake
        if path == "/":
            text = (
                "lt-punch signaling server. Connect a WebSocket client to "
                f"{self.url}; HTTP: /health /stats /metrics /whoami /rooms/<infohash>/peers\n"
            )
            return _response(http.HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8")
        return _json_response(
            http.HTTPStatus.NOT_FOUND, {"error": "not-found", "message": f"no such path {path!r}"}
        )

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """``None`` if the request may read the address book, else the 401 to send.

        Any peer id with a valid token may list any room: over the websocket the same
        token may ``join`` any room and read the same list in ``joined``, so requiring
        membership here would protect nothing and would lock out operators' tools
        (they mint a token for a peer id of their own). Checked before the path is
        parsed, so a caller without a credential learns nothing else.
        """
        if self.secret is None:
            return None
        try:
            check_authorization(self.secret, request.headers.get("Authorization"))
        except RoomError as exc:
            # The message names the problem, never the header's content.
            logger.info("refused GET %s from %s:%d: %s", request.path.split("?")[0][:100],
                        *_address(connection.remote_address), exc.code)
            return _json_response(
                http.HTTPStatus.UNAUTHORIZED, {"error": exc.code, "message": str(exc)},
                # RFC 9110 section 11.6.1: a 401 carries the scheme it wants.
                (("WWW-Authenticate", 'Basic realm="lt-punch signaling", charset="UTF-8"'),))
        return None


def _metrics_registry(server: SignalingServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(server))
    return registry


def _by_label(family: Any, name: str, documentation: str, label: str,
              counts: dict[str, Any]) -> Any:
    """A metric family (gauge or counter) with one sample per ``counts`` key."""
    metric = family(name, documentation, labels=[label])
    for key, count in counts.items():
        metric.add_metric([key], count)
    return metric


class _ServerCollector(Collector):
    """``GET /metrics``: the counters of :meth:`SignalingServer.stats`."""

    def __init__(self, server: SignalingServer) -> None:
        self._server = server

    def collect(self) -> Any:
        stats = self._server.stats()
        yield GaugeMetricFamily("lt_punch_signaling_peers", "Registered peers.",
                                value=stats["peers"])
        yield GaugeMetricFamily("lt_punch_signaling_rooms", "Rooms with members.",
                                value=stats["rooms"])
        yield GaugeMetricFamily("lt_punch_signaling_connections", "Open connections.",
                                value=stats["connections"])
        yield _by_label(GaugeMetricFamily, "lt_punch_signaling_peer_states", "Peers by state.",
                        "state", stats["peer_states"])
        yield CounterMetricFamily("lt_punch_signaling_connections_accepted",
                                  "Connections accepted since start.",
                                  value=stats["connections_total"])
        yield CounterMetricFamily("lt_punch_signaling_messages_received",
                                  "Messages received since start.",
                                  value=stats["messages_received"])
        yield CounterMetricFamily("lt_punch_signaling_messages_relayed",
                                  "Relay messages delivered since start.",
                                  value=stats["messages_relayed"])
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_errors",
                        "Error replies by code.", "code", stats["errors"])
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_closed",
                        "Connections closed by the server, by reason.", "reason",
                        stats["closed"])
        yield GaugeMetricFamily("lt_punch_signaling_uptime_seconds", "Seconds since start.",
                                value=stats["uptime"])
        webtorrent = stats["webtorrent"]
        yield GaugeMetricFamily("lt_punch_signaling_webtorrent_peers",
                                "WebTorrent tracker peers.", value=webtorrent["peers"])
        yield GaugeMetricFamily("lt_punch_signaling_webtorrent_swarms",
                                "WebTorrent tracker swarms.", value=webtorrent["swarms"])
        kinds = ("announces", "offers_forwarded", "answers_relayed", "answers_dropped",
                 "scrapes", "failures")
        yield _by_label(CounterMetricFamily, "lt_punch_signaling_webtorrent_messages",
                        "WebTorrent tracker messages since start, by kind.", "kind",
                        {kind: webtorrent[kind] for kind in kinds})
