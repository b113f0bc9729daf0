"""The signaling server: websockets + HTTP on one TCP port, a DHT reflector on UDP.

:class:`SignalingServer` holds the settings, binds the sockets, runs the periodic
sweeps and reports :meth:`~SignalingServer.stats`; its parts do the work:

- :mod:`.connections`: the websocket handler -- admission, reading, sending, closing;
- :mod:`.dispatch`: one frame in, the messages to send out (via :mod:`.rooms`, the
  bookkeeping without I/O, :mod:`.shared` across processes with Redis, and
  :mod:`.webtorrent` for WebTorrent tracker frames);
- :mod:`.admission`: connection and rate limits per client address, without I/O;
- :mod:`.routes`: HTTP on the same port (``/health``, ``/stats``, ``/metrics``,
  ``/whoami``, ``/rooms/{infohash}/peers``); :mod:`.metrics`: counters, Prometheus;
- :mod:`.reflector`: the DHT reflector on UDP.

A bad frame is answered with an ``error`` message and the connection keeps being
served. Frames larger than ``max_message_size`` but within the websocket limit (16
times as large) get a ``too-large`` error; beyond that, websockets closes the connection
with code 1009 (message too big) without reading the frame into memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import time
from ssl import SSLContext
from typing import Any, Generic, TypeVar, cast, overload

from ..types import Address
from .admission import Admission, Network, address_of
from .connections import Connections
from .metrics import Counters
from .protocol import MAX_MESSAGE_SIZE
from .reflector import ReflectorProtocol
from .rooms import Rooms
from .routes import Routes
from .shared import SharedRooms
from .webtorrent import WebTorrentTracker
from .wire import WireServer

__all__ = ["SignalingServer"]

logger = logging.getLogger(__name__)

_HARD_LIMIT_FACTOR = 16

T = TypeVar("T")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Admitted(Generic[T]):
    """A server attribute kept on its :class:`~.admission.Admission`: one copy of the
    setting, read and written through the server as before the limits moved there."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, server: None, owner: type) -> _Admitted[T]: ...
    @overload
    def __get__(self, server: SignalingServer, owner: type) -> T: ...
    def __get__(self, server: SignalingServer | None, owner: type) -> T | _Admitted[T]:
        if server is None:
            return self
        return cast(T, getattr(server.admission, self._name))

    def __set__(self, server: SignalingServer, value: T) -> None:
        setattr(server.admission, self._name, value)


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

    rate = _Admitted[float]()
    burst = _Admitted[float]()
    address_rate = _Admitted[float]()
    address_burst = _Admitted[float]()
    max_connections_per_address = _Admitted[int]()
    trusted = _Admitted[tuple[Network, ...]]()
    max_refusals = _Admitted[int]()

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
        self.admission = Admission(
            rate=rate, burst=burst, address_rate=address_rate, address_burst=address_burst,
            max_connections_per_address=max_connections_per_address, trusted=trusted,
            max_refusals=max_refusals)
        """Connection and message limits per client address."""
        if not cleanup_interval > 0:
            raise ValueError("cleanup_interval must be > 0")
        if peer_timeout is not None and not peer_timeout > 0:
            raise ValueError("peer_timeout must be > 0 or None")
        self.ssl = ssl
        self.secret = secret
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
        self._server: WireServer | None = None
        self._reflector: ReflectorProtocol | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._dht_address: Address | None = None
        self._started = time.monotonic()
        self._counters = Counters()
        self._connections = Connections(self, self._counters)
        self._routes = Routes(self)
        self._cleaner: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the TCP port (and the UDP port when the reflector is enabled)."""
        if self._server is not None:
            return
        server = WireServer(
            self._connections.serve,
            self._routes.process_request,
            max_size=self.max_message_size * _HARD_LIMIT_FACTOR,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            receive_now=self._connections.receive_now,
        )
        # No compression extension is offered: small JSON, and no zip-bomb surface.
        await server.listen(self.host, self.port, ssl=self.ssl)
        self._server = server
        self.port = self._server.sockets[0].getsockname()[1]
        if self.shared is not None:
            try:
                await self.shared.start(self._connections.deliver, self._connections.evict,
                                        self._connections.deliver_tracker)
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
            self._dht_address = address_of(transport.get_extra_info("sockname"))
        self._started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._cleaner = loop.create_task(self._cleanup_loop())
        if self.freeze_gc:
            self._freezer = loop.create_task(self._freeze_loop())
        logger.info("signaling server on %s, DHT reflector on %s", self.url, self._dht_address)

    async def close(self) -> None:
        """Close every connection and both sockets; wait for the handlers to finish."""
        for task in [t for t in (self._cleaner, self._freezer) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._cleaner = self._freezer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.close()
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

    @property
    def uptime(self) -> float:
        """Seconds since :meth:`start` (or since construction, before it)."""
        return time.monotonic() - self._started

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
            "connections_total": self._counters.connections,
            "messages_received": self._counters.received,
            "messages_relayed": self._counters.relayed,
            "errors": dict(sorted(self._counters.errors.items())),
            "closed": dict(sorted(self._counters.closed.items())),
            "peer_states": self.rooms.states(time.monotonic()),
            "uptime": round(self.uptime, 3),
            "dht_reflector": reflector,
            "webtorrent": {"peers": self.webtorrent.peer_count,
                           "swarms": self.webtorrent.swarm_count,
                           **vars(self.webtorrent.stats)},
        }

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
                self._connections.close_idle(now, self.peer_timeout)
            self.admission.sweep()

