"""EnhancedTorrentSession: one libtorrent session whose torrents meet peers by infohash.

Flow: :meth:`~EnhancedTorrentSession.start` creates the libtorrent session
(:mod:`.settings`), learns our public endpoints and NAT (:mod:`.endpoints`), and
registers on the signaling server with that profile. :meth:`~EnhancedTorrentSession.add`
adds a torrent (:mod:`.requests`) and joins the room named by its infohash
(:mod:`.rooms`); the punch engine (:mod:`lt_punch.punch.engine`) punches to every
lt_punch peer of the room and injects it into libtorrent with ``connect_peer``
(:mod:`lt_punch.punch.lt_dialer`). Payload never passes through Python: libtorrent's
own sockets carry it. Everything that happens is a typed event (:mod:`.events`).

This module only wires those parts together and owns their lifetimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from ..config import Config
from ..errors import LtPunchError, LtTimeoutError, SignalingError
from ..nat.info import NATInfo
from ..punch import plan
from ..punch.engine import MAX_REPUNCHES, REPUNCH_RESPONDER_DELAY, DialFailed, PunchEngine
from ..punch.lt_dialer import LtDialer
from ..punch.metrics import PunchMetrics
from ..punch.plan import PeerProfile
from ..punch.record import PunchRecord
from ..signaling.retry import FATAL_CODES
from ..types import Address
from . import requests, settings
from .alerts import AlertPump
from .dispatch import AlertDispatch
from .endpoints import Discovery, reflector_of, tls_context
from .events import Event, EventHub, EventStream, PeerPunched
from .handle import Torrent, infohash_of, make_params
from .reader import TorrentReader
from .settings import ISOLATED_SETTINGS, MIN_RECONNECT_TIME, STATE_NAMES
from .stall import REDIAL_PAUSE, REDIALS, PeerWatch
from .stats import session_stats

if TYPE_CHECKING:  # loaded when signaling is used: websockets and aiohttp cost ~0.25 s
    from ..punch.relay import TurnRelay
    from ..signaling.client import SignalingClient
    from .rooms import RoomLink

logger = logging.getLogger(__name__)

__all__ = [
    "ISOLATED_SETTINGS", "MAX_REPUNCHES", "MIN_RECONNECT_TIME", "REPUNCH_RESPONDER_DELAY",
    "STATE_NAMES", "EnhancedTorrentSession", "PunchRecord", "Torrent", "infohash_of",
    "make_params",
]


class EnhancedTorrentSession:
    """A libtorrent session whose torrents punch to the peers of their signaling room.

    Args:
        config: settings (defaults from ``P2P_*`` environment variables).
        peer_id: our id on the signaling server (``config.peer_id``, else random).
        lt_settings: libtorrent settings applied over ours (e.g. ``ISOLATED_SETTINGS``).
        save_path: default download directory.
        nat_info: a known NAT description (skips STUN detection).
        state: what :meth:`session_state` returned in an earlier run (the DHT's node id
            and nodes): the DHT starts from it instead of bootstrapping from nothing.
    """

    def __init__(self, config: Config | None = None, *, peer_id: str | None = None,
                 lt_settings: dict[str, Any] | None = None,
                 save_path: str | os.PathLike[str] = ".", nat_info: NATInfo | None = None,
                 state: bytes | None = None) -> None:
        self.config = config if config is not None else Config.from_env()
        self._state = state
        self.peer_id: str = peer_id or self.config.peer_id or "ltp-" + secrets.token_hex(6)
        self.save_path = str(save_path)
        self._lt_settings = dict(lt_settings or {})
        self.nat_info: NATInfo | None = nat_info
        self.public_udp: Address | None = None
        self.public_tcp: Address | None = None
        self.outgoing_port: int | None = None
        self.port_mappings: dict[tuple[str, str], dict[str, Any]] = {}
        """libtorrent's UPnP / NAT-PMP results by (transport, protocol)."""
        self.session: lt.session | None = None
        self.client: SignalingClient | None = None
        self.torrents: dict[str, Torrent] = {}
        self._pump: AlertPump | None = None
        self._dialer: LtDialer | None = None
        self.relay: TurnRelay | None = None
        """The TURN relay (``turn_servers`` configured), allocated when first needed."""
        self._engine: PunchEngine | None = None
        self._peers: PeerWatch | None = None
        self._rooms: RoomLink | None = None
        self._reflector: Address | None = None
        self._listening: dict[tuple[str, str], int] = {}
        self._metrics = PunchMetrics()
        self._hub = EventHub(self.torrents, self._metrics)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_at = time.monotonic()
        self._closed = False
        self._signaling_error: str | None = None
        self._signaling_retry: asyncio.Task[Any] | None = None
        self._tls: ssl.SSLContext | None = None
        self._bootstrapped: asyncio.Future[str] | None = None
        """The DHT bootstrap nodes handed to libtorrent, once resolved."""

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> EnhancedTorrentSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the libtorrent session, learn our endpoints and join signaling."""
        if self.session is not None:
            return
        cfg = self.config
        if settings.wants_outgoing_port(cfg):
            self.outgoing_port = settings.free_tcp_port(cfg.listen_host)
        pack = settings.build(cfg, self._lt_settings, self.outgoing_port)
        signaling = cfg.signaling_enabled and bool(cfg.signaling_url)
        bootstrap = settings.defer_bootstrap(pack)
        self.session = lt.session(settings.session_params(pack, self._state))
        self._pump = AlertPump(self.session)
        self._pump.start()
        self.relay = self._make_relay()
        self._dialer = LtDialer(self.session, self._pump, self.torrents.__getitem__,
                                utp="utp" in cfg.methods, relay=self.relay,
                                stun=cfg.stun_servers[0] if cfg.stun_servers else None,
                                listen=self._listen_endpoint)
        self._engine = PunchEngine(cfg, lambda: self.profile, None, self._dialer,
                                   self._engine_event, changed=self._on_punch_change)
        self._peers = PeerWatch(self.session, self.torrents, self._redial, self._hub.emit,
                                self._started_at, punched=self._engine.stalled,
                                degradable=self._engine.has_stream_alternative,
                                close_one=self._dialer.close_stream)
        self._spawn(self._peers.run(), "peers")
        self._pump.subscribe(AlertDispatch(self.torrents, self._engine, self._peers,
                                           self._hub.emit, self.port_mappings,
                                           self._listening))
        if signaling:
            try:
                began = time.monotonic()
                try:
                    await self._discover(int(pack["alert_mask"]))
                finally:
                    self._bootstrap_later(bootstrap)
                discovered = time.monotonic()
                await self._connect_signaling()
                logger.info("started: session %.3f s, discovery %.3f s, signaling %.3f s",
                            began - self._started_at, discovered - began,
                            time.monotonic() - discovered)
            except (SignalingError, LtTimeoutError, OSError) as exc:
                # Other peer sources keep working; say so once, clearly, and try again
                # in the background unless the server refused us for good.
                retry = self._signaling_failed(exc)
                logger.warning("signaling unavailable (%s): %s", self._signaling_error,
                               "continuing, and trying again in the background" if retry
                               else "continuing without it")
                if retry:
                    self._signaling_retry = self._spawn(self._connect_signaling_later(),
                                                        "signaling-retry")
        else:
            self._bootstrap_later(bootstrap)
        if self.relay is not None:
            self._spawn(self.relay.check(), "relay-check")
        if cfg.hole_punching_enabled and reflector_of(cfg) is not None:
            extra = lambda: [self._reflector] if self._reflector else []  # noqa: E731
            self._spawn(self._engine.keepalive(extra), "keepalive")

    def _bootstrap_later(self, nodes: str) -> None:
        """Give libtorrent the DHT bootstrap ``nodes`` (taken out of its settings at
        start: :func:`~lt_punch.torrent.settings.defer_bootstrap`) once resolved, by a
        daemon thread: a lookup that hangs neither delays anything nor the exit."""
        if not nodes:
            return
        loop = asyncio.get_running_loop()
        done = self._bootstrapped = loop.create_future()

        def apply(resolved: str) -> None:
            if self.session is not None and resolved:
                self.session.apply_settings({"dht_bootstrap_nodes": resolved})
                logger.info("DHT bootstrap nodes: %s", resolved)
            if not done.done():
                done.set_result(resolved)

        def resolve() -> None:
            resolved = settings.resolve_nodes(nodes)
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are done
                loop.call_soon_threadsafe(apply, resolved)

        threading.Thread(target=resolve, name="dht-bootstrap", daemon=True).start()

    async def close(self) -> None:
        """Leave rooms, stop tasks, close signaling and the libtorrent session."""
        if self._closed:
            return
        self._closed = True
        if self._rooms is not None:
            self._rooms.closing = True
        if self._engine is not None:
            await self._engine.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._dialer is not None:
            await self._dialer.close()
        if self.relay is not None:
            await self.relay.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._pump is not None:
            self._pump.close()
            self._pump = None
        if self.session is not None:
            holder = [self.session]
            self.session = None
            for t in self.torrents.values():
                t.finished.set()
                t.end_events()
            self._hub.end()
            # Destroying a session blocks while it says goodbye to peers and
            # trackers: do it off the event loop.
            await asyncio.to_thread(requests.destroy_session, holder)

    def _make_relay(self) -> TurnRelay | None:
        """The TURN relay when servers are configured and the relay method is on."""
        cfg = self.config
        if not cfg.turn_servers or "relay" not in cfg.methods:
            return None
        from ..punch.relay import TurnRelay
        from ..punch.turn import TurnServer

        servers = [TurnServer(host, port, cfg.turn_username, cfg.turn_password,
                              cfg.turn_secret) for host, port in cfg.turn_servers]
        return TurnRelay(servers, self._listen_endpoint,
                         timeout=min(5.0, cfg.connection_timeout))

    def _listen_endpoint(self) -> Address:
        """Where a local bridge reaches libtorrent: its listen port on the listen
        address (loopback when it listens on every address)."""
        session, _ = self._lt()
        host = self.config.listen_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return host, session.listen_port()

    def session_state(self) -> bytes:
        """The session state to keep for the next run (``state=``): the DHT's node id
        and routing table, bencoded."""
        return settings.saved_state(self._lt()[0])

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _redial(self, infohash: str, transport: str, endpoint: Address) -> None:
        """Dial one peer again on ``transport`` (stall recovery), up to
        :data:`~lt_punch.torrent.stall.REDIALS` times: a peer may refuse the new
        connection until it has noticed that the stalled one is gone (Transmission
        3.00 keeps one connection per address and closes a second at once)."""
        for attempt in range(1, REDIALS + 1):
            if self._dialer is None or self._peers is None or infohash not in self.torrents:
                return
            if attempt > 1:
                # libtorrent redials a peer whose dial failed only after
                # (failures + 1) x min_reconnect_time, and then over uTP: forget it
                # (the IP filter erases its entry) so that this dial goes out now.
                self._peers.drop(endpoint[0])
            watch = await self._dialer.dial(infohash, transport, endpoint)
            try:
                async with asyncio.timeout(self.config.connection_timeout):
                    await watch.wait()
                return
            except DialFailed:
                if attempt == REDIALS:
                    raise
            finally:
                watch.cancel()
            await asyncio.sleep(REDIAL_PAUSE * attempt)

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._tls is None and self.config.signaling_ca:
            self._tls = tls_context(self.config.signaling_ca)
        return self._tls

    # -- endpoints and signaling ---------------------------------------------------

    async def _discover(self, alert_mask: int) -> None:
        assert self.session is not None and self._pump is not None
        discovery = Discovery(self.session, self._pump, self.config,
                              outgoing_port=self.outgoing_port, alert_mask=alert_mask,
                              tls=self._tls_context(), listening=self._listening)
        try:
            found = await discovery.discover(self.nat_info)
        finally:
            self.outgoing_port = discovery.outgoing_port
        self._reflector = found.reflector
        self.public_udp, self.public_tcp, self.nat_info = found.udp, found.tcp, found.nat

    async def discover_nat(self) -> NATInfo | None:
        """Our NAT: what the session learnt, else (nothing learnt, STUN servers
        configured) a STUN discovery now, kept for the profile room peers see."""
        if self.nat_info is None and self.config.stun_servers:
            from ..nat.discover import discover_nat

            self.nat_info = await discover_nat(self.config.stun_servers)
        return self.nat_info

    @property
    def reflector(self) -> Address | None:
        """The signaling server's DHT reflector (host, port) from the config."""
        return reflector_of(self.config)

    @property
    def profile(self) -> PeerProfile:
        """What we tell the rooms about us."""
        return PeerProfile(
            peer_id=self.peer_id,
            nat=self.nat_info.nat_type if self.nat_info else "unknown",
            udp=self.public_udp,
            tcp=self.public_tcp,
            methods=tuple(self.config.methods) if self.config.hole_punching_enabled else (),
            nat_summary=plan.summarize(self.nat_info) if self.nat_info else None,
            turn=self.relay is not None,
        )

    @property
    def signaling_error(self) -> str | None:
        """Why signaling is not connected (None while it is, or when disabled)."""
        return self._rooms.error if self._rooms is not None else self._signaling_error

    @property
    def signaling_retrying(self) -> bool:
        """Whether the first connection to the signaling server failed and the session
        is still trying again in the background."""
        return self._signaling_retry is not None and not self._signaling_retry.done()

    def reconnect(self, infohash: str, peer_id: str) -> bool:
        """Punch again to a room peer whose punched connection was lost; returns
        whether a punch to it runs now (:meth:`PunchEngine.reconnect
        <lt_punch.punch.engine.PunchEngine.reconnect>`)."""
        return self._engine is not None and self._engine.reconnect(infohash, peer_id)

    @property
    def punch_tally(self) -> dict[tuple[str, str], int]:
        """Punch attempts since the session started, by (method, "connected"|"failed")."""
        return dict(self._metrics.counts)

    async def _connect_signaling(self) -> None:
        assert self.config.signaling_url and self._engine is not None
        from ..signaling.client import SignalingClient
        from .rooms import RoomLink

        client = SignalingClient(
            self.config.signaling_url, self.peer_id, self.profile.to_metadata(),
            timeout=min(10.0, self.config.connection_timeout),
            token=self.config.signaling_token, reconnect=True, ssl=self._tls_context(),
        )
        self.client = client  # (closed with the session, also while connecting)
        await client.connect()
        self._engine.relay = client
        self._rooms = RoomLink(client, self._engine, self.torrents, self._spawn)
        self._spawn(self._rooms.run(), "signaling")

    def _signaling_failed(self, exc: Exception) -> bool:
        """Say why signaling is not connected; whether trying again can help (not after
        a refusal for good, :data:`~lt_punch.signaling.retry.FATAL_CODES`)."""
        self._signaling_error = (f"cannot connect to {self.config.signaling_url}: "
                                 f"{str(exc) or type(exc).__name__}")
        return not (isinstance(exc, SignalingError) and exc.code in FATAL_CODES)

    async def _connect_signaling_later(self) -> None:
        """The first connection failed for a reason that may pass (a lossy or busy
        network, a server restarting): try again with the client's backoff (full
        jitter, 0.5 s doubling up to 30 s) until connected, refused for good
        (:data:`~lt_punch.signaling.retry.FATAL_CODES`) or closed. Once connected, the
        rooms of the torrents added meanwhile are joined (the client's ``connected``
        event)."""
        from ..signaling.retry import backoff_delay

        rng = random.Random()
        attempt = 0
        while not self._closed:
            attempt += 1
            await asyncio.sleep(backoff_delay(attempt, 0.5, 30.0, rng))
            try:
                await self._connect_signaling()
            except (SignalingError, LtTimeoutError, OSError) as exc:
                if not self._signaling_failed(exc):
                    logger.warning("signaling refused (%s): giving up", self._signaling_error)
                    return
                logger.info("signaling attempt %d failed: %s", attempt, self._signaling_error)
                continue
            self._signaling_error = None
            logger.info("signaling connected after %d more attempt(s)", attempt)
            return

    # -- torrents ----------------------------------------------------------------

    def _lt(self) -> tuple[lt.session, AlertPump]:
        if self.session is None or self._pump is None:
            raise LtPunchError("session not started")
        return self.session, self._pump

    def _get(self, infohash: str) -> Torrent:
        torrent = self.torrents.get(infohash)
        if torrent is None:
            raise LtPunchError(f"unknown torrent {infohash}")
        return torrent

    async def add(self, source: Any, save_path: str | os.PathLike[str] | None = None) -> Torrent:
        """Add a torrent and join its room.

        ``source``: a magnet URI, a path to a .torrent file, its bytes, a v1/v2
        hex infohash, an ``lt.torrent_info`` or ``lt.add_torrent_params``. Adding a
        torrent that is already there returns it, with the new source's peers and
        trackers added to it.
        """
        session, pump = self._lt()
        user_params = isinstance(source, lt.add_torrent_params)
        atp = make_params(source)
        if not user_params:
            # Start at once instead of waiting for the auto-manager's next tick
            # (~0.5 s); the torrent stays auto-managed for queueing.
            atp.flags &= ~lt.torrent_flags.paused
        atp.save_path = str(save_path if save_path is not None else self.save_path)
        handle = await requests.add(session, pump, atp)
        infohash = infohash_of(handle)
        if infohash in self.torrents:
            requests.merge_sources(self.torrents[infohash].handle, atp)
            return self.torrents[infohash]
        torrent = Torrent(infohash, handle, session=self, pump=pump)
        status = handle.status()
        if status.is_seeding:
            torrent.finished.set()
        if int(status.state) in settings.READY_STATES:
            torrent.ready.set()
        self.torrents[infohash] = torrent
        assert self._engine is not None
        self._engine.track(infohash, torrent.punches)
        if self._rooms is not None:
            await self._rooms.join(infohash)
        return torrent

    async def remove(self, infohash: str, *, delete_files: bool = False) -> None:
        """Remove a torrent and leave its room; with ``delete_files``, return once
        libtorrent has deleted them.

        Raises:
            LtPunchError: unknown torrent, or its files could not be deleted.
            LtTimeoutError: libtorrent did not confirm the deletion.
        """
        torrent = self.torrents.pop(infohash, None)
        if torrent is None:
            raise LtPunchError(f"unknown torrent {infohash}")
        if self._engine is not None:
            self._engine.forget(infohash)
        if self._peers is not None:
            self._peers.forget(infohash)
        torrent.end_events()
        if self._rooms is not None:
            await self._rooms.leave(infohash)
        if self.session is None or self._pump is None:
            return
        if not delete_files:
            self.session.remove_torrent(torrent.handle, 0)
            return
        await requests.delete(self.session, self._pump, torrent.handle, infohash)

    async def wait_metadata(self, infohash: str, timeout: float) -> None:  # noqa: ASYNC109
        """:meth:`Torrent.wait_metadata` of a torrent here."""
        await self._get(infohash).wait_metadata(timeout)

    def open(self, infohash: str, file_index: int = 0) -> TorrentReader:
        """An async, seekable reader of one file of a torrent, usable while it downloads
        (:class:`~lt_punch.torrent.reader.TorrentReader`)."""
        return TorrentReader(self, infohash, file_index)

    async def read_piece(self, infohash: str, piece: int, *, deadline_ms: int | None = 0,
                         timeout: float = 60.0) -> bytes:  # noqa: ASYNC109
        """:meth:`Torrent.read_piece` of a torrent here (LtPunchError when unknown)."""
        return await self._get(infohash).read_piece(piece, deadline_ms=deadline_ms,
                                                    timeout=timeout)

    async def resume_data(self, infohash: str, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
        """:meth:`Torrent.resume_data` of a torrent here."""
        return await self._get(infohash).resume_data(timeout)

    async def wait_finished(self, infohash: str, timeout: float) -> None:  # noqa: ASYNC109
        """:meth:`Torrent.wait_finished` of a torrent here."""
        await self._get(infohash).wait_finished(timeout)

    async def flush(self, infohash: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """:meth:`Torrent.flush` of a torrent here."""
        await self._get(infohash).flush(timeout)

    async def wait_punched(self, infohash: str, timeout: float) -> PunchRecord:  # noqa: ASYNC109
        """:meth:`Torrent.wait_punched` of a torrent here."""
        return await self._get(infohash).wait_punched(timeout)

    async def counters(self, timeout: float = 5.0) -> dict[str, int]:  # noqa: ASYNC109
        """libtorrent's session counters, by name (``lt.session_stats_metrics()``), e.g.
        ``ses.num_outgoing_cancel``.

        Raises:
            LtTimeoutError: no answer within ``timeout``.
        """
        return await requests.counters(*self._lt(), timeout)

    # -- events ------------------------------------------------------------------

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events as dicts (:meth:`~lt_punch.torrent.events.PeerPunched.to_dict`):
        ``{"type": "punched"|"punch-failed"|"connection-lost"|"finished"|"error"|
        "peer-left"|"port-mapping", ...}``."""
        return self._hub.events()

    def subscribe(self, maxsize: int = 1000) -> EventStream[dict[str, Any]]:
        """The session's events as dicts (as :meth:`events`), in a stream of their own:
        every subscriber gets every event from now on (an HTTP event stream per client,
        say). Buffers ``maxsize`` for a slow consumer, then drops the oldest (counted
        in ``dropped``); ends when the session closes. Use it as an async context
        manager to unsubscribe."""
        return self._hub.subscribe(maxsize)

    def drain_events(self) -> list[dict[str, Any]]:
        """The events queued so far, without waiting (what :meth:`events` would yield
        next); for a consumer that is about to stop and must not lose them."""
        return self._hub.drain()

    def _engine_event(self, event: Event) -> None:
        self._hub.emit(event)
        if isinstance(event, PeerPunched) and self._peers is not None:
            rec = self.torrents[event.infohash].punches.get(event.peer_id) \
                if event.infohash in self.torrents else None
            outgoing = rec is not None and (rec.role == "initiator" or event.method == "tcp")
            self._peers.punched(event.infohash, event.endpoint, event.method, outgoing)

    def _on_punch_change(self, infohash: str) -> None:
        torrent = self.torrents.get(infohash)
        if torrent is not None and not self._closed:
            self._spawn(torrent.notify(), "notify")

    # -- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Torrent metrics merged with P2P metrics."""
        return session_stats(
            peer_id=self.peer_id, uptime=time.monotonic() - self._started_at,
            nat=self.nat_info, udp=self.public_udp, tcp=self.public_tcp,
            listen_port=self.session.listen_port() if self.session else None,
            port_mappings=self.port_mappings.values(),
            signaling={
                "url": self.config.signaling_url,
                "connected": bool(self.client and self.client.connected),
                "rooms": len(self.torrents) if self.client else 0,
                "error": self.signaling_error,
            },
            torrents=[t.stats() for t in self.torrents.values()],
            first_peer=self._peers.first_connected if self._peers else None,
            stall_recoveries=self._peers.recoveries if self._peers else 0,
            relay=self.relay.stats() if self.relay is not None else None,
        )
