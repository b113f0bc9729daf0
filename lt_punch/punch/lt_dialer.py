"""The libtorrent side of the punch engine (:class:`~lt_punch.punch.engine.Dialer`).

* ``open_nat``: one DHT query from libtorrent's own UDP socket (``add_dht_node``),
  which opens our NAT towards an endpoint for the socket uTP uses.
* ``dial``: ``connect_peer`` plus an immediate dial (:class:`Injector`). A TCP dial
  turns libtorrent's outgoing uTP off until the dial has started: ``connect_peer``
  would try uTP first (libtorrent assumes every peer supports it), and the
  simultaneous open must be TCP. TCP dials are serialised for that reason.
* ``expect`` / the returned watches: libtorrent's alerts about one endpoint until the
  connection is made or given up (:class:`ConnectionWatch`).
* ``open_relay``: the session's TURN relay (:class:`~lt_punch.punch.relay.TurnRelay`)
  for one peer, and a watch on the connection the relay will bridge in
  (:class:`RelayWatch`). A ``relay`` dial (to a relayed address the peer allocated) is
  a TCP dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from ..torrent import native
from ..types import Address
from .arq import StreamError
from .engine import Closable, DialFailed

if TYPE_CHECKING:
    from ..torrent.alerts import AlertPump
    from ..torrent.handle import Torrent
    from .predict import UdpBridge
    from .relay import TurnRelay

KICK_MIN_INTERVAL = 30.0
"""Seconds between two kicks of a torrent that has trackers."""

DIAL_START_WAIT = 1.5
"""Seconds a TCP dial keeps outgoing uTP off while waiting for libtorrent to dial."""

logger = logging.getLogger(__name__)

CARRY_CONNECT_TIMEOUT = 5.0
"""Seconds to connect a stream's local socket to libtorrent's listen port."""

# A failure in one of these operations is about the dial itself.
_CONNECT_OPS = {
    lt.operation_t.connect,
    lt.operation_t.sock_open,
    lt.operation_t.sock_bind,
    lt.operation_t.getpeername,
}

# Disconnect reasons that only come after a complete handshake: the torrent is done on
# one side (libtorrent's errors::torrent_finished / errors::upload_upload_connection).
DONE_MESSAGES = frozenset({"torrent finished", "upload to upload connection"})


def close_connections(session: lt.session, ip: str) -> None:
    """Close libtorrent's connections to ``ip`` (and forget that peer's entries):
    libtorrent has no call to close one peer, but a new IP filter closes every
    connection it blocks. The filter is restored at once (both calls run in order on
    libtorrent's thread)."""
    original = session.get_ip_filter()
    blocking = session.get_ip_filter()
    blocking.add_rule(ip, ip, 1)  # 1: lt.ip_filter.blocked
    session.set_ip_filter(blocking)
    session.set_ip_filter(original)


def alert_endpoint(alert: Any) -> Address | None:
    ep = getattr(alert, "endpoint", None)
    if ep is None:
        return None
    return str(ep[0]), int(ep[1])


class Injector:
    """``connect_peer`` with an immediate dial (rate-limited kick).

    ``connect_peer`` only queues the peer; libtorrent dials on the torrent's
    once-a-second tick. A graceful pause + resume makes it dial at once (measured
    0.001 s) but sends ``stopped``/``started`` to the torrent's trackers, so the kick
    is rate-limited for torrents that have trackers (:data:`KICK_MIN_INTERVAL`).
    """

    def __init__(self) -> None:
        self._last_kick: dict[str, float] = {}

    def inject(self, handle: lt.torrent_handle, endpoint: Address, *, utp: bool,
               now: float) -> bool:
        """Add ``endpoint`` as a peer; returns True when the dial was made immediate."""
        flags = 0x4 if utp else 0  # pex_flags: utp
        handle.connect_peer(endpoint, 0, flags)
        return self._maybe_kick(handle, now)

    def _maybe_kick(self, handle: lt.torrent_handle, now: float) -> bool:
        if handle.flags() & lt.torrent_flags.paused:
            return False  # the user paused it: never resume behind their back
        if handle.status().num_peers:
            # Pausing would drop the connected peers, and a graceful pause that is still
            # draining their requests completes *after* the resume: the torrent stays
            # paused. The dial waits for libtorrent's tick (~0.5 s) instead.
            return False
        key = str(handle.info_hashes().get_best())
        if handle.trackers():
            last = self._last_kick.get(key)
            if last is not None and now - last < KICK_MIN_INTERVAL:
                return False
        self._last_kick[key] = now
        handle.pause(lt.torrent_handle.graceful_pause)
        handle.resume()
        return True


class ConnectionWatch:
    """One expected connection, fed by alerts (all seen, even in one batch).

    libtorrent posts ``peer_connect_alert`` when it *starts* dialing and no alert
    when the handshake completes, so "connected" is: an incoming connection from
    the endpoint, the peer listed without the connecting/handshake flags, or a
    disconnect that happened after the connect phase (the data may be done).
    """

    def __init__(self, handle: lt.torrent_handle, endpoint: Address, *, incoming: bool,
                 any_port: bool = False) -> None:
        self.handle = handle
        self.endpoint = endpoint
        self.incoming = incoming
        # An initiator behind an endpoint-dependent (symmetric) NAT reaches us
        # from a port we could not know in advance: match its address only.
        self.any_port = any_port
        self.seen: Address = endpoint
        self.dialed = asyncio.Event()
        self.immediate = False
        self.future: asyncio.Future[Any] | None = None

    def match(self, a: Any) -> Any:
        ep = alert_endpoint(a)
        if ep is None:
            return None
        if isinstance(a, lt.incoming_connection_alert) and self.incoming:
            if ep == self.endpoint or (self.any_port and ep[0] == self.endpoint[0]):
                self.seen = ep
                return ("connected", "")
            return None
        if ep != self.endpoint:
            return None
        if isinstance(a, lt.peer_connect_alert):
            self.dialed.set()
            return None
        if isinstance(a, lt.peer_disconnected_alert | lt.peer_error_alert):
            if not self.incoming and not self.dialed.is_set():
                # About an earlier attempt's connection to the same endpoint, e.g. the
                # one our own pause + resume kick aborts ("torrent paused") just
                # before this attempt dials.
                return None
            message = a.error.message()
            if a.op not in _CONNECT_OPS and message in DONE_MESSAGES:
                # Connected, transferred everything and closed before we looked.
                return ("connected", "")
            return ("failed", message)
        return None

    def _listed(self) -> bool:
        for p in self.handle.get_peer_info():
            if (str(p.ip[0]), int(p.ip[1])) == self.endpoint and not (
                p.flags & (lt.peer_info.connecting | lt.peer_info.handshake)
            ):
                return True
        return False

    async def wait(self) -> Address:
        assert self.future is not None
        # No alert marks a completed handshake: while dialing, look at the peer
        # list every 10 ms (bounded by the caller's timeout).
        while not self.future.done():
            if self.dialed.is_set() and self._listed():
                self.future.cancel()
                return self.seen
            await asyncio.wait({self.future}, timeout=0.01)
        kind, detail = self.future.result()
        if kind == "failed":
            raise DialFailed(detail)
        return self.seen

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


class RelayWatch:
    """The connection a TURN relay will bridge into libtorrent for one peer: told the
    bridge's local endpoint (:meth:`bridged`), it watches libtorrent take that
    connection in."""

    immediate = False

    def __init__(self, dialer: LtDialer, infohash: str, relay: TurnRelay) -> None:
        self._dialer = dialer
        self._infohash = infohash
        self._relay = relay
        self._inner: ConnectionWatch | None = None
        self._bridged = asyncio.Event()

    def bridged(self, local: Address) -> None:
        if self._inner is None:
            self._inner = self._dialer.expect(self._infohash, local, any_port=False)
            self._bridged.set()

    async def wait(self) -> Address:
        await self._bridged.wait()
        assert self._inner is not None
        return await self._inner.wait()

    def cancel(self) -> None:
        self._relay.forget(self.bridged)
        if self._inner is not None:
            self._inner.cancel()


class PredictWatch:
    """A birthday punch (:mod:`lt_punch.punch.predict`) and then the connection through
    its bridge: the hard side watches libtorrent take the incoming connection from its
    bridge; the cone side dials its bridge once the pair is found. A failed or
    cancelled attempt closes its bridge; a connected one keeps it."""

    immediate = False

    def __init__(self, dialer: LtDialer, infohash: str) -> None:
        self._dialer = dialer
        self._infohash = infohash
        self.task: asyncio.Future[Any] | None = None
        self.bridge: UdpBridge | None = None
        self._inner: ConnectionWatch | None = None
        self._connected = False
        self.missed = "no port pair found (birthday punch)"
        """Why the punch failed when it timed out."""

    def found(self, bridge: UdpBridge) -> None:
        """The hard side's pair: the bridge's stream goes into libtorrent as an
        incoming TCP connection from a local socket of ours."""
        self.bridge = bridge
        self._dialer.keep(bridge)
        try:
            local = self._dialer.carry_in(bridge)
        except OSError as exc:
            logger.warning("predict: no local socket for the stream: %s", exc)
            bridge.close()
            return
        self._inner = self._dialer.expect(self._infohash, local, any_port=False)

    async def wait(self) -> Address:
        assert self.task is not None
        try:
            result = await self.task
        except TimeoutError:
            raise DialFailed(self.missed) from None
        except OSError as exc:  # 256 sockets: EMFILE, say
            raise DialFailed(f"birthday punch: {exc.strerror or exc}") from None
        if isinstance(result, ConnectionWatch):  # the cone side dialled its bridge
            self._inner = result
        if self._inner is None:
            raise DialFailed("the stream's path into libtorrent failed")
        endpoint = await self._inner.wait()
        self._connected = True
        return endpoint

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self._inner is not None:
            self._inner.cancel()
        if not self._connected and self.bridge is not None:
            self.bridge.close()


class LtDialer:
    """:class:`~lt_punch.punch.engine.Dialer` on a libtorrent session.

    Args:
        session: the libtorrent session.
        pump: its alert pump.
        torrent: the running torrent of an infohash (KeyError when unknown).
        utp: whether outgoing uTP is wanted (turned back on after each TCP dial).
    """

    def __init__(self, session: lt.session, pump: AlertPump,
                 torrent: Callable[[str], Torrent], *, utp: bool,
                 relay: TurnRelay | None = None, stun: Address | None = None,
                 listen: Callable[[], Address] | None = None) -> None:
        self._session = session
        self.relay = relay
        self.stun = stun
        """A STUN server, to map the probe socket of a birthday punch."""
        self._listen = listen
        self.bridges: set[UdpBridge] = set()
        self.streams: dict[Address, UdpBridge] = {}
        """The bridge of each stream by the endpoint libtorrent sees it at."""
        self._pump = pump
        self._torrent = torrent
        self._utp = utp
        self._injector = Injector()
        self._tcp_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def ready(self, infohash: str) -> None:
        await self._torrent(infohash).ready.wait()

    def open_nat(self, endpoint: Address) -> None:
        native.open_udp(self._session, endpoint)

    def disconnect(self, infohash: str, endpoint: Address) -> None:
        if not self.close_stream(endpoint):
            close_connections(self._session, endpoint[0])

    def close_stream(self, endpoint: Address) -> bool:
        """Close the stream libtorrent sees at ``endpoint`` (a loopback connection of
        ours), which closes that connection only; False when it is not one. (Closing by
        address would close every stream and relayed connection: all come from
        loopback.)"""
        bridge = self.streams.pop(endpoint, None)
        if bridge is None:
            return False
        bridge.close()
        return True

    def expect(self, infohash: str, endpoint: Address, *, any_port: bool) -> ConnectionWatch:
        return self._watch(infohash, endpoint, incoming=True, any_port=any_port)

    async def dial(self, infohash: str, method: str, endpoint: Address) -> ConnectionWatch:
        handle = self._torrent(infohash).handle
        watch = self._watch(infohash, endpoint, incoming=False)
        now = asyncio.get_running_loop().time()
        if method == "utp":
            watch.immediate = self._injector.inject(handle, endpoint, utp=True, now=now)
            return watch
        await self._tcp_lock.acquire()
        try:
            self._session.apply_settings({"enable_outgoing_utp": False})
            watch.immediate = self._injector.inject(handle, endpoint, utp=False, now=now)
        except BaseException:
            self._restore_utp()
            raise
        task = asyncio.get_running_loop().create_task(self._after_dial(watch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return watch

    async def open_relay(self, infohash: str, peer_ips: tuple[str, ...]
                         ) -> tuple[Address, RelayWatch]:
        """Our relayed address for a peer seen from ``peer_ips``, and a watch on its
        connection through it.

        Raises:
            DialFailed: no TURN server configured, or none granted a relay.
        """
        from .turn import TurnError

        if self.relay is None:
            raise DialFailed("no TURN server configured")
        watch = RelayWatch(self, infohash, self.relay)
        try:
            relayed = await self.relay.open(peer_ips, watch.bridged)
        except TurnError as exc:
            raise DialFailed(str(exc)) from None
        return relayed, watch

    def keep(self, bridge: UdpBridge) -> None:
        """Track a bridge until it closes (they are all closed with the dialer)."""
        self.bridges.add(bridge)
        bridge.closed.add_done_callback(lambda _: self.bridges.discard(bridge))

    def _libtorrent(self) -> Address:
        if self._listen is None:
            raise DialFailed("no listen endpoint to bridge to")
        return self._listen()

    async def predict_hard(self, infohash: str, secret: str, easy: Address,
                           within: float) -> PredictWatch:
        """The symmetric side of a birthday punch towards the cone side's probe
        mapping ``easy``; returns at once (the watch covers the punch)."""
        from .predict import hard_side

        self._libtorrent()  # the stream will need it
        watch = PredictWatch(self, infohash)
        watch.task = asyncio.ensure_future(hard_side(
            secret, easy, timeout=within, on_found=watch.found))
        return watch

    async def udp_socket(self, secret: str) -> tuple[Address, UdpBridge]:
        """The public mapping of a new socket of ours for a punch with ``secret``, and
        the socket.

        Raises:
            DialFailed: no STUN server, or it did not answer.
        """
        from .predict import open_bridge, stun_mapping

        if self.stun is None:
            raise DialFailed("no STUN server to map a probe socket")
        self._libtorrent()  # the stream will need it
        try:
            bridge = await open_bridge(secret)
        except OSError as exc:
            raise DialFailed(f"no probe socket: {exc.strerror or exc}") from None
        try:
            mapping = await stun_mapping(bridge, self.stun)
        except BaseException as exc:
            bridge.close()
            if isinstance(exc, TimeoutError):
                raise DialFailed(f"STUN server {self.stun[0]}:{self.stun[1]} did not map "
                                 "the probe socket") from None
            if isinstance(exc, OSError):
                raise DialFailed(f"probe socket: {exc.strerror or exc}") from None
            raise
        return mapping, bridge

    async def predict_easy(self, infohash: str, secret: str, hard_ip: str,
                           within: float) -> tuple[Address, PredictWatch]:
        """The cone side: a probe socket and its public mapping (for the answer), and a
        watch on the probing and then on libtorrent's dial through the bridge.

        Raises:
            DialFailed: no STUN server, or it did not answer.
        """
        from .predict import easy_side

        mapping, bridge = await self.udp_socket(secret)

        def probe() -> Coroutine[Any, Any, object]:
            return easy_side(bridge, hard_ip, timeout=within)

        return mapping, self._punched(infohash, bridge, probe, carry_out=True)

    def udp_punch(self, infohash: str, sock: Closable, peer: Address, within: float,
                  *, carry_out: bool) -> PredictWatch:
        """Punch from ``sock`` (:meth:`udp_socket`) to the peer's mapping ``peer``; the
        path's stream then goes out of libtorrent (``carry_out``: libtorrent dials it)
        or into it."""
        from .predict import UdpBridge, punch

        assert isinstance(sock, UdpBridge)
        bridge = sock

        watch = self._punched(infohash, bridge, lambda: punch(bridge, peer, timeout=within),
                              carry_out=carry_out)
        watch.missed = "no packet from the peer's mapping (udp punch)"
        return watch

    def _punched(self, infohash: str, bridge: UdpBridge,
                 punching: Callable[[], Coroutine[Any, Any, object]], *,
                 carry_out: bool) -> PredictWatch:
        watch = PredictWatch(self, infohash)
        watch.bridge = bridge
        self.keep(bridge)

        async def then_carry() -> ConnectionWatch | None:
            await punching()
            if carry_out:
                return await self.dial(infohash, "tcp", await self.carry_out(bridge))
            watch.found(bridge)
            return None

        watch.task = asyncio.ensure_future(then_carry())
        return watch

    def _local_host(self) -> str:
        return self._libtorrent()[0]

    def carry_in(self, bridge: UdpBridge) -> Address:
        """Carry ``bridge``'s stream into libtorrent as an incoming TCP connection;
        returns the local endpoint libtorrent will see it from (bound before the
        connection is made, so the watch is in place first).

        Raises:
            OSError: no local socket.
        """
        stream = bridge.carry()
        host = self._local_host()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setblocking(False)
            sock.bind((host, 0))
            local: Address = sock.getsockname()[:2]
        except BaseException:
            sock.close()
            raise

        async def run() -> None:
            try:
                async with asyncio.timeout(CARRY_CONNECT_TIMEOUT):
                    await asyncio.get_running_loop().sock_connect(sock, self._libtorrent())
                reader, writer = await asyncio.open_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
            await stream.join(reader, writer)

        self._carried(bridge, run, local)
        return local

    async def carry_out(self, bridge: UdpBridge) -> Address:
        """Carry ``bridge``'s stream out of libtorrent: a one-connection TCP listener
        for libtorrent to dial (returned); the first connection is joined to it."""
        stream = bridge.carry()
        joined: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future())

        async def entry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if joined.done():
                writer.close()  # one connection a stream (or the stream is gone)
            else:
                joined.set_result((reader, writer))

        server = await asyncio.start_server(entry, self._local_host(), 0)
        endpoint: Address = server.sockets[0].getsockname()[:2]

        async def run() -> None:
            try:
                reader, writer = await joined  # (cancelled: a late entry() closes it)
            except asyncio.CancelledError:
                if joined.done() and not joined.cancelled():
                    joined.result()[1].close()  # accepted, never joined
                raise
            finally:
                server.close()
            await stream.join(reader, writer)

        self._carried(bridge, run, endpoint)
        return endpoint

    def _carried(self, bridge: UdpBridge, run: Callable[[], Coroutine[Any, Any, None]],
                 seen_at: Address) -> None:
        """Run ``run()`` (a stream joined to libtorrent, which sees it at ``seen_at``)
        until it ends or the bridge closes; either way the bridge closes after it. (A
        function, not a coroutine: a bridge closed before the task starts leaves no
        coroutine never awaited.)"""
        self.streams[seen_at] = bridge

        def forget(_: object) -> None:
            if self.streams.get(seen_at) is bridge:
                del self.streams[seen_at]

        async def guarded() -> None:
            try:
                await run()
            except StreamError as exc:
                logger.info("predict stream %s: %s", bridge.local, exc)
            except OSError as exc:
                logger.info("predict stream %s: libtorrent: %s", bridge.local, exc)
            finally:
                bridge.close()

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        bridge.closed.add_done_callback(lambda _: task.cancel())
        bridge.closed.add_done_callback(forget)

    async def _after_dial(self, watch: ConnectionWatch) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DIAL_START_WAIT):
                    await watch.dialed.wait()
        finally:
            self._restore_utp()

    def _restore_utp(self) -> None:
        try:
            if self._utp:
                self._session.apply_settings({"enable_outgoing_utp": True})
        finally:
            self._tcp_lock.release()

    def _watch(self, infohash: str, endpoint: Address, *, incoming: bool,
               any_port: bool = False) -> ConnectionWatch:
        watch = ConnectionWatch(self._torrent(infohash).handle, endpoint, incoming=incoming,
                                any_port=any_port)
        watch.future = self._pump.wait_for(watch.match)
        return watch

    async def close(self) -> None:
        for bridge in list(self.bridges):
            bridge.close()
        self.bridges.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
