"""EnhancedTorrentSession: one libtorrent session whose torrents meet peers by infohash.

Flow: :meth:`start` creates the libtorrent session and learns our public
endpoints (UDP from the signaling server's DHT reflector, BEP 42; TCP from
``GET /whoami`` on libtorrent's outgoing port) and NAT type (STUN when
configured), then registers on the signaling server with that profile.
:meth:`add` adds a torrent and joins the room named by its infohash; every
lt_punch peer of the room is punched to (see :mod:`lt_punch.punch.plan`) and
injected into libtorrent with ``connect_peer``. Payload never passes through
Python: libtorrent's own sockets carry it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import secrets
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from ..config import Config
from ..errors import ConfigError, LtPunchError, LtTimeoutError, ProtocolError, SignalingError
from ..nat.info import NATInfo
from ..punch import plan
from ..punch.plan import PeerProfile, PunchMessage
from ..punch.strategy import recommend_strategy
from ..signaling import protocol as sp
from ..signaling.client import ConnectionState, SignalingClient, whoami
from ..types import Address
from . import native
from .alerts import AlertPump
from .events import (
    EventStream,
    Finished,
    MetadataReceived,
    PeerPunched,
    PieceFinished,
    PunchFailed,
    TorrentError,
    TorrentEvent,
)
from .reader import WAIT_PRIORITY, PieceClaims, TorrentReader

logger = logging.getLogger(__name__)

ISOLATED_SETTINGS: dict[str, Any] = {
    # No public DHT bootstrap, no LSD, no UPnP / NAT-PMP: peers only come from
    # the signaling room (tests, the demo and the lab use this).
    "dht_bootstrap_nodes": "",
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
}

# States in which a torrent accepts peer connections (not queued or checking).
_READY_STATES = {2, 3, 4, 5}
_STATE_FLAGS = lt.save_state_flags_t.save_dht_state

MIN_RECONNECT_TIME = 2
"""Seconds before libtorrent redials a peer it lost (its default is 60)."""

MAX_REPUNCHES = 5
"""Punches again to one peer after its punched TCP connection was lost."""

REPUNCH_RESPONDER_DELAY = 3.0
"""Seconds a responder waits for the initiator to punch again before it does."""

STATE_NAMES = {
    0: "queued",
    1: "checking",
    2: "downloading_metadata",
    3: "downloading",
    4: "finished",
    5: "seeding",
    6: "allocating",
    7: "checking_resume",
}


def _free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _local_ip_towards(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        ip: str = s.getsockname()[0]
        return ip


@dataclass
class PunchRecord:
    """What happened between us and one peer of one torrent."""

    infohash: str
    peer_id: str
    role: str
    started_at: float
    peer_nat: str = "unknown"
    state: str = "pending"  # pending | punching | connected | dropped | failed | skipped
    repunches: int = 0
    """Punches again after a punched TCP connection was lost."""
    method: str | None = None
    endpoint: Address | None = None
    attempts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    connected_at: float | None = None
    immediate: bool = False
    strategy: dict[str, Any] | None = None
    """:func:`~lt_punch.punch.strategy.recommend_strategy` for the pair (same on both ends)."""
    tally: collections.Counter[tuple[str, str]] | None = field(default=None, repr=False)
    """The session's running count of attempts by (method, result), outliving the record."""

    @property
    def time_to_connect(self) -> float | None:
        if self.connected_at is None:
            return None
        return self.connected_at - self.started_at

    def fail(self, method: str, attempt: int, reason: str) -> None:
        self.failures.append({"method": method, "attempt": attempt, "reason": reason})
        if self.tally is not None:
            self.tally[(method, "failed")] += 1
        logger.info("punch %s %s attempt %d failed: %s", self.peer_id, method, attempt, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "role": self.role,
            "peer_nat": self.peer_nat,
            "state": self.state,
            "method": self.method,
            "endpoint": list(self.endpoint) if self.endpoint else None,
            "attempts": self.attempts,
            "repunches": self.repunches,
            "failures": list(self.failures),
            "time_to_connect": self.time_to_connect,
            "immediate": self.immediate,
            "difficulty": self.strategy["difficulty"] if self.strategy else None,
            "expected_success": self.strategy["expected_success"] if self.strategy else None,
        }


@dataclass
class Torrent:
    """A torrent in an :class:`EnhancedTorrentSession`."""

    infohash: str
    handle: lt.torrent_handle
    punches: dict[str, PunchRecord] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    error: str | None = None
    session: EnhancedTorrentSession | None = field(default=None, repr=False)
    _streams: set[EventStream] = field(default_factory=set, repr=False)
    claims: PieceClaims = field(init=False, repr=False)
    """Piece priorities raised by readers and waiting reads."""

    def __post_init__(self) -> None:
        self.claims = PieceClaims(self.handle)

    # -- the handle API: what a media server uses ------------------------------------

    def _owner(self) -> EnhancedTorrentSession:
        if self.session is None or self.session.torrents.get(self.infohash) is not self:
            raise LtPunchError(f"torrent {self.infohash} is not in a running session")
        return self.session

    async def wait_metadata(self, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Wait until the metadata is known (at once for a .torrent file).

        Raises:
            LtTimeoutError: no metadata within ``timeout`` seconds.
        """
        await self._owner().wait_metadata(self.infohash, timeout)

    async def wait_finished(self, timeout: float = 3600.0) -> None:  # noqa: ASYNC109
        """Wait until every wanted piece is downloaded and on disk.

        Raises:
            LtTimeoutError: not finished within ``timeout`` seconds.
        """
        await self._owner().wait_finished(self.infohash, timeout)

    def open(self, file: int | str = 0) -> TorrentReader:
        """An async reader (``read``, ``seek``) of one file, by index or by its path in
        the torrent; reads wait for their pieces (no polling). Needs the metadata.

        Raises:
            LtPunchError: no metadata yet, or no such file.
        """
        session = self._owner()
        if isinstance(file, str):
            ti = self.handle.torrent_file()
            if ti is None:
                raise LtPunchError(f"torrent {self.infohash} has no metadata yet")
            layout = ti.layout()
            names = [layout.file_path(i) for i in range(layout.num_files())]
            if file not in names:
                raise LtPunchError(f"no file {file!r} in torrent {self.infohash}")
            file = names.index(file)
        return session.open(self.infohash, file)

    def events(self, maxsize: int = 10_000) -> EventStream:
        """An async iterator of this torrent's typed events (:mod:`.events`), from now
        until the torrent is removed or the session closes."""
        stream = EventStream(self._streams, maxsize)
        if self.session is None or self.session.torrents.get(self.infohash) is not self:
            stream.end()
        return stream

    def publish(self, event: TorrentEvent) -> None:
        for stream in list(self._streams):
            stream.put(event)

    def end_events(self) -> None:
        for stream in list(self._streams):
            stream.end()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def stats(self) -> dict[str, Any]:
        st = self.handle.status()
        punched = {
            rec.endpoint: rec.method for rec in self.punches.values()
            if rec.state == "connected" and rec.endpoint
        }
        by_source: dict[str, int] = {}
        peers = self.handle.get_peer_info()
        for p in peers:
            ep = (str(p.ip[0]), int(p.ip[1]))
            if ep in punched:
                key = f"punched_{punched[ep]}"
            else:
                names = [n for bit, n in native.SOURCE_NAMES.items() if p.source & bit]
                key = names[0] if names else "other"
            by_source[key] = by_source.get(key, 0) + 1
        return {
            "infohash": self.infohash,
            "name": st.name,
            "state": STATE_NAMES.get(int(st.state), str(st.state)),
            "paused": bool(self.handle.flags() & lt.torrent_flags.paused),
            "has_metadata": bool(st.has_metadata),
            "save_path": st.save_path,
            "progress": st.progress,
            "download_rate": st.download_payload_rate,
            "upload_rate": st.upload_payload_rate,
            "total_download": st.total_payload_download,
            "total_upload": st.total_payload_upload,
            "total_wanted": st.total_wanted,
            "num_peers": len(peers),
            "peers_by_source": by_source,
            "punches": [rec.to_dict() for rec in self.punches.values()],
            "error": self.error,
        }


def _why_stalled(handle: lt.torrent_handle, piece: int) -> str:
    """What a read that timed out can tell the user: the torrent's state and peers."""
    try:
        st = handle.status()
        paused = bool(handle.flags() & lt.torrent_flags.paused)
        priority = handle.piece_priority(piece)
    except RuntimeError:  # the torrent was removed meanwhile
        return "torrent removed"
    state = STATE_NAMES.get(int(st.state), str(st.state))
    return (f"torrent {state}{', paused' if paused else ''}, {st.num_peers} peers, "
            f"{st.progress:.0%} done, piece priority {priority}")


class EnhancedTorrentSession:
    """A libtorrent session whose torrents punch to the peers of their signaling room.

    Args:
        config: settings (defaults from ``P2P_*`` environment variables).
        peer_id: our id on the signaling server (random when None).
        lt_settings: libtorrent settings applied over ours (e.g. ``ISOLATED_SETTINGS``).
        save_path: default download directory.
        nat_info: a known NAT description (skips STUN detection).
        state: what :meth:`session_state` returned in an earlier run (the DHT's node id
            and nodes): the DHT starts from it instead of bootstrapping from nothing.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        peer_id: str | None = None,
        lt_settings: dict[str, Any] | None = None,
        save_path: str | os.PathLike[str] = ".",
        nat_info: NATInfo | None = None,
        state: bytes | None = None,
    ) -> None:
        self.config = config if config is not None else Config.from_env()
        self._state = state
        self.peer_id = peer_id or "ltp-" + secrets.token_hex(6)
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
        self._injector = native.Injector()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: dict[str, asyncio.Future[PunchMessage]] = {}
        self._profiles: dict[str, PeerProfile] = {}
        self._alert_mask = 0
        self._reflector_ip: Address | None = None
        self._tcp_lock = asyncio.Lock()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._started_at = time.monotonic()
        self._closed = False
        self.signaling_error: str | None = None
        self._tls: ssl.SSLContext | None = None
        self.punch_tally: collections.Counter[tuple[str, str]] = collections.Counter()
        """Punch attempts since the session started, by (method, "connected"|"failed"):
        monotonic, unlike the records of :meth:`stats` (gone with their torrent)."""

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> EnhancedTorrentSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def reflector(self) -> Address | None:
        url = self.config.signaling_url
        if not url:
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.hostname is None:
            return None
        port = self.config.signaling_udp_port or parts.port or 80
        return parts.hostname, port

    def _settings(self) -> dict[str, Any]:
        cfg = self.config
        settings: dict[str, Any] = {
            "listen_interfaces": f"{cfg.listen_host}:{cfg.listen_port}",
            "enable_dht": True,
            "alert_mask": (
                lt.alert_category.error
                | lt.alert_category.status
                | lt.alert_category.peer
                | lt.alert_category.connect
                | lt.alert_category.storage
                | lt.alert_category.dht
                | lt.alert_category.port_mapping
                | lt.alert_category.piece_progress
            ),
            "user_agent": "lt_punch/0.1 libtorrent/" + lt.__version__,
            # Peers behind one NAT share its public address: libtorrent's default (one
            # connection per IP) refuses all but the first of them.
            "allow_multiple_connections_per_ip": True,
            # libtorrent waits (failures + 1) x min_reconnect_time before it dials a peer
            # again, 60 s by default, even when connect_peer names it again: one dropped
            # uTP connection (a starved process, a pause) stalled a stream for a minute.
            # A punched peer is rare and known good; redial it within seconds.
            "min_reconnect_time": MIN_RECONNECT_TIME,
        }
        if "tcp" in cfg.methods and cfg.hole_punching_enabled:
            self.outgoing_port = _free_tcp_port(cfg.listen_host)
            settings["outgoing_port"] = self.outgoing_port
            # Every dial from this one port (the one whoami mapped): libtorrent's range
            # is [outgoing_port, outgoing_port + num_outgoing_ports], both ends in, so
            # 1 would alternate with the next port and break every other punch.
            settings["num_outgoing_ports"] = 0
            # TCP simultaneous open makes both ends "outgoing": MSE/PE cannot
            # work (both send the initiator's half), so outgoing handshakes are
            # plaintext; incoming ones still accept encryption.
            settings["out_enc_policy"] = 2  # pe_disabled
            settings["in_enc_policy"] = 1  # pe_enabled
        if cfg.isolated:
            settings.update(ISOLATED_SETTINGS)
        settings.update(self._lt_settings)
        self._alert_mask = int(settings["alert_mask"])
        return settings

    async def start(self) -> None:
        """Create the libtorrent session, learn our endpoints and join signaling."""
        if self.session is not None:
            return
        # The binding takes a plain dict of settings; its stubs only know settings_pack.
        settings = cast(Any, self._settings())
        params = lt.session_params()
        if self._state:
            try:
                params = lt.read_session_params(self._state, _STATE_FLAGS)
            except RuntimeError as exc:
                logger.warning("ignoring the saved session state (%s): starting afresh", exc)
        params.settings = settings
        self.session = lt.session(params)
        self._pump = AlertPump(self.session)
        self._pump.start()
        self._pump.subscribe(self._on_alert)
        if self.config.signaling_enabled and self.config.signaling_url:
            try:
                await self._discover()
                await self._connect_signaling()
            except (SignalingError, LtTimeoutError, OSError) as exc:
                # Other peer sources keep working; say so once, clearly.
                self.signaling_error = (
                    f"cannot connect to {self.config.signaling_url}: "
                    f"{str(exc) or type(exc).__name__}"
                )
                logger.warning("signaling unavailable (%s): continuing without it",
                               self.signaling_error)
        if self.config.hole_punching_enabled and self.reflector is not None:
            self._spawn(self._keepalive(), "keepalive")

    async def close(self) -> None:
        """Leave rooms, stop tasks, close signaling and the libtorrent session."""
        if self._closed:
            return
        self._closed = True
        for t in self.torrents.values():
            for task in t.tasks.values():
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *[
            task for t in self.torrents.values() for task in t.tasks.values()
        ], return_exceptions=True)
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
            # Destroying a session blocks while it says goodbye to peers and
            # trackers: do it off the event loop.
            await asyncio.to_thread(_drop_session, holder)

    def session_state(self) -> bytes:
        """The session state to keep for the next run (``state=``): the DHT's node id
        and routing table, bencoded."""
        if self.session is None:
            raise LtPunchError("session not started")
        return bytes(lt.write_session_params_buf(self.session.session_state(_STATE_FLAGS),
                                                 _STATE_FLAGS))

    def _tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context when ``signaling_ca`` names extra CAs to trust.

        Raises:
            ConfigError: the CA file cannot be read.
        """
        cafile = self.config.signaling_ca
        if not cafile or self._tls is not None:
            return self._tls
        try:
            self._tls = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"signaling_ca: cannot load {cafile}: {exc}") from None
        return self._tls

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- discovery ---------------------------------------------------------------

    async def _discover(self) -> None:
        assert self.session is not None and self._pump is not None
        reflector = self.reflector
        assert reflector is not None and self.config.signaling_url
        host = socket.gethostbyname(reflector[0])
        reflector = (host, reflector[1])
        self._reflector_ip = reflector
        # TCP first: an unreachable server fails here at once (connection
        # refused) instead of after the reflector's retries.
        observed_tcp = await self._whoami()
        if self.outgoing_port is not None:
            self.public_tcp = observed_tcp
        self.public_udp = await self._query_reflector(reflector)
        if self.nat_info is None:
            self.nat_info = await self._detect_nat(reflector)

    async def _whoami(self, tries: int = 3) -> Address:
        """Our TCP endpoint as the signaling server sees it, asked from libtorrent's
        outgoing port. That port was free when the session picked it, but another
        socket can take it meanwhile (CI saw EADDRINUSE): then we pick a new one."""
        assert self.session is not None and self.config.signaling_url
        for attempt in range(1, tries + 1):
            try:
                return await whoami(self.config.signaling_url, local_port=self.outgoing_port,
                                    local_host=self.config.listen_host, timeout=3.0,
                                    ssl=self._tls_context())
            except SignalingError as exc:
                cause = exc.__cause__
                if (self.outgoing_port is None or attempt == tries
                        or not isinstance(cause, OSError)
                        or cause.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)):
                    raise
                logger.info("outgoing port %d taken (%s): picking another",
                            self.outgoing_port, cause)
                self.outgoing_port = _free_tcp_port(self.config.listen_host)
                self.session.apply_settings({"outgoing_port": self.outgoing_port})
        raise AssertionError("unreachable")

    async def _query_reflector(self, reflector: Address, tries: int = 3) -> Address | None:
        assert self.session is not None and self._pump is not None
        self.session.apply_settings({"alert_mask": self._alert_mask | lt.alert_category.dht_log})
        try:
            for attempt in range(tries):
                fut = self._pump.wait_for(lambda a: native.dht_reply_ip(a, reflector))
                native.open_udp(self.session, reflector)
                try:
                    async with asyncio.timeout(1.0 * (attempt + 1)):
                        ep: Address = await fut
                        logger.info("public UDP endpoint %s:%d (BEP 42 via %s:%d)",
                                    *ep, *reflector)
                        return ep
                except TimeoutError:
                    fut.cancel()
            logger.warning("no DHT reply from reflector %s:%d", *reflector)
            return None
        finally:
            self.session.apply_settings({"alert_mask": self._alert_mask})

    async def _detect_nat(self, reflector: Address) -> NATInfo:
        local_ip = _local_ip_towards(*reflector)
        if self.config.stun_servers:
            from ..nat.discover import discover_nat

            info = await discover_nat(self.config.stun_servers, local_ip=local_ip)
            if info.public_endpoint is not None:
                return info
            logger.warning("STUN discovery failed (%s); asking the reflector", info.error)
        # Without STUN: the reflector tells whether our address is public.
        nat_type = "unknown"
        if self.public_udp is not None and self.public_udp[0] == local_ip:
            nat_type = "open"
        return NATInfo(
            nat_type=nat_type,
            public_ip=self.public_udp[0] if self.public_udp else None,
            public_port=self.public_udp[1] if self.public_udp else None,
            local_ip=local_ip,
            local_port=self.session.listen_port() if self.session else None,
            stun_server=None,
            duration=0.0,
            error=None if self.public_udp else "no reply from the reflector",
            source="signaling",
        )

    @property
    def profile(self) -> PeerProfile:
        return PeerProfile(
            peer_id=self.peer_id,
            nat=self.nat_info.nat_type if self.nat_info else "unknown",
            udp=self.public_udp,
            tcp=self.public_tcp,
            methods=tuple(self.config.methods) if self.config.hole_punching_enabled else (),
            nat_summary=plan.summarize(self.nat_info) if self.nat_info else None,
        )

    async def _connect_signaling(self) -> None:
        assert self.config.signaling_url
        self.client = SignalingClient(
            self.config.signaling_url,
            self.peer_id,
            self.profile.to_metadata(),
            timeout=min(10.0, self.config.connection_timeout),
            token=self.config.signaling_token,
            reconnect=True,
            ssl=self._tls_context(),
        )
        await self.client.connect()
        self._spawn(self._signaling_loop(), "signaling")

    # -- torrents ----------------------------------------------------------------

    async def add(self, source: Any, save_path: str | os.PathLike[str] | None = None) -> Torrent:
        """Add a torrent and join its room.

        ``source``: a magnet URI, a path to a .torrent file, its bytes, a v1/v2
        hex infohash, an ``lt.torrent_info`` or ``lt.add_torrent_params``.
        """
        if self.session is None or self._pump is None:
            raise LtPunchError("session not started")
        user_params = isinstance(source, lt.add_torrent_params)
        atp = make_params(source)
        if not user_params:
            # Start at once instead of waiting for the auto-manager's next tick
            # (~0.5 s); the torrent stays auto-managed for queueing.
            atp.flags &= ~lt.torrent_flags.paused
        atp.save_path = str(save_path if save_path is not None else self.save_path)
        fut = self._pump.wait_for(
            lambda a: (a.error, a.handle) if isinstance(a, lt.add_torrent_alert) else None
        )
        self.session.async_add_torrent(atp)
        try:
            async with asyncio.timeout(30):
                error, handle = await fut
        except TimeoutError:
            raise LtTimeoutError("libtorrent did not confirm the added torrent") from None
        if error.value():
            raise LtPunchError(f"cannot add torrent: {error.message()}")
        infohash = infohash_of(handle)
        if infohash in self.torrents:
            return self.torrents[infohash]
        torrent = Torrent(infohash, handle, session=self)
        status = handle.status()
        if status.is_seeding:
            torrent.finished.set()
        if int(status.state) in _READY_STATES:
            torrent.ready.set()
        self.torrents[infohash] = torrent
        if self.client is not None and self.client.connected:
            try:
                peers = await self.client.join(infohash)
            except (SignalingError, LtTimeoutError) as exc:
                logger.warning("cannot join room %s: %s", infohash, exc)
            else:
                for info in peers:
                    self._on_room_peer(torrent, str(info.peer_id), info.metadata)
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
        for task in torrent.tasks.values():
            task.cancel()
        torrent.end_events()
        if self.client is not None and self.client.connected:
            with contextlib.suppress(SignalingError, LtTimeoutError):
                await self.client.leave(infohash)
        if self.session is None:
            return
        if not delete_files:
            self.session.remove_torrent(torrent.handle, 0)
            return
        assert self._pump is not None
        # The files go on libtorrent's disk thread: wait for its word on them.
        digest = torrent.handle.info_hashes()

        def deleted(a: Any) -> tuple[str | None] | None:
            if isinstance(a, lt.torrent_deleted_alert) and a.info_hashes == digest:
                return (None,)
            if isinstance(a, lt.torrent_delete_failed_alert) and a.info_hashes == digest:
                return (a.error.message(),)
            return None

        fut = self._pump.wait_for(deleted)
        self.session.remove_torrent(torrent.handle, lt.session.delete_files)
        try:
            async with asyncio.timeout(30):
                (error,) = await fut
        except TimeoutError:
            raise LtTimeoutError(f"torrent {infohash} removed; its files not deleted "
                                 "after 30 s") from None
        finally:
            fut.cancel()
        if error is not None:
            raise LtPunchError(f"torrent {infohash} removed; cannot delete its files: {error}")

    async def wait_metadata(self, infohash: str, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the torrent's metadata is known (at once for a .torrent)."""
        torrent = self.torrents.get(infohash)
        if torrent is None:
            raise LtPunchError(f"unknown torrent {infohash}")
        assert self._pump is not None
        handle = torrent.handle
        fut = self._pump.wait_for(
            lambda a: True if isinstance(a, lt.metadata_received_alert) and a.handle == handle
            else None
        )
        try:
            if handle.status().has_metadata:
                return
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise LtTimeoutError(f"no metadata for {infohash} after {timeout:g} s") from None
        finally:
            fut.cancel()

    def open(self, infohash: str, file_index: int = 0) -> TorrentReader:
        """An async, seekable reader of one file of a torrent, usable while it downloads
        (:class:`~lt_punch.torrent.reader.TorrentReader`)."""
        return TorrentReader(self, infohash, file_index)

    async def read_piece(
        self, infohash: str, piece: int, *, deadline_ms: int | None = 0,
        timeout: float = 60.0,  # noqa: ASYNC109
    ) -> bytes:
        """The bytes of one piece, waiting for it to be downloaded (never polls).

        A piece we have is read from disk; a missing one gets a piece deadline
        (``deadline_ms`` from now, 0: most urgent) while this waits, and libtorrent hands
        its bytes over once it is downloaded and checked. The first deadline of a torrent
        with none makes libtorrent cancel the requests queued at its peers for other
        pieces (a seek then does not wait behind them). ``deadline_ms=None`` waits
        without a deadline, at the top piece priority, and cancels nothing (for reads
        that follow on from the previous one).

        Raises:
            LtPunchError: unknown torrent, no metadata, bad piece index, or a read error.
            LtTimeoutError: not available within ``timeout``.
        """
        torrent = self.torrents.get(infohash)
        if torrent is None:
            raise LtPunchError(f"unknown torrent {infohash}")
        handle = torrent.handle
        ti = handle.torrent_file()
        if ti is None:
            raise LtPunchError(f"torrent {infohash} has no metadata yet")
        if not 0 <= piece < ti.num_pieces():
            raise LtPunchError(f"piece {piece} out of range (0..{ti.num_pieces() - 1})")
        assert self._pump is not None
        def extract(a: Any) -> tuple[str | None, bytes] | None:
            # Alerts die at the next pop: take plain values out now.
            if not (isinstance(a, lt.read_piece_alert) and a.piece == piece
                    and a.handle == handle):
                return None
            if a.error.value():
                return a.error.message(), b""
            return None, bytes(a.buffer)

        fut = self._pump.wait_for(extract)
        # A later set_piece_deadline on this piece (another read's) replaces ours and its
        # alert_when_available flag: the piece_finished_alert is the safety net.
        finished = self._pump.wait_for(
            lambda a: isinstance(a, lt.piece_finished_alert) and a.piece_index == piece
            and a.handle == handle
        )
        waiting = False
        try:
            async with asyncio.timeout(timeout):
                if handle.have_piece(piece):
                    handle.read_piece(piece)
                else:
                    waiting = True
                    torrent.claims.claim(piece, WAIT_PRIORITY)
                    if deadline_ms is not None:
                        handle.set_piece_deadline(piece, deadline_ms,
                                                  lt.deadline_flags_t.alert_when_available)
                    await asyncio.wait({fut, finished}, return_when=asyncio.FIRST_COMPLETED)
                    if not fut.done():
                        handle.read_piece(piece)
                error, data = await fut
        except TimeoutError:
            raise LtTimeoutError(f"piece {piece} of {infohash} not available after "
                                 f"{timeout:g} s ({_why_stalled(handle, piece)})") from None
        finally:
            fut.cancel()
            finished.cancel()
            if waiting:
                torrent.claims.release(piece, WAIT_PRIORITY)
        if error is not None:
            raise LtPunchError(f"cannot read piece {piece}: {error}")
        return bytes(data)

    async def counters(self, timeout: float = 5.0) -> dict[str, int]:  # noqa: ASYNC109
        """libtorrent's session counters, by name (``lt.session_stats_metrics()``), e.g.
        ``ses.num_outgoing_cancel``.

        Raises:
            LtTimeoutError: no answer within ``timeout``.
        """
        assert self.session is not None and self._pump is not None
        fut = self._pump.wait_for(
            lambda a: dict(a.values) if isinstance(a, lt.session_stats_alert) else None)
        self.session.post_session_stats()
        try:
            async with asyncio.timeout(timeout):
                values: dict[str, int] = await fut
        except TimeoutError:
            raise LtTimeoutError(f"no session counters after {timeout:g} s") from None
        finally:
            fut.cancel()
        return values

    async def resume_data(self, infohash: str, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
        """libtorrent's resume data of a torrent (bencoded, with the info dict when known),
        for ``lt.read_resume_data`` on a later start.

        Raises:
            LtPunchError: libtorrent could not produce it.
            LtTimeoutError: no answer within ``timeout``.
        """
        torrent = self.torrents[infohash]
        assert self._pump is not None
        handle = torrent.handle
        def extract(a: Any) -> tuple[str | None, bytes] | None:
            # Alerts die at the next pop: take plain values out now.
            if isinstance(a, lt.save_resume_data_alert) and a.handle == handle:
                return None, bytes(lt.write_resume_data_buf(a.params))
            if isinstance(a, lt.save_resume_data_failed_alert) and a.handle == handle:
                return a.error.message(), b""
            return None

        fut = self._pump.wait_for(extract)
        handle.save_resume_data(lt.torrent_handle.save_info_dict)
        try:
            async with asyncio.timeout(timeout):
                error, data = await fut
        except TimeoutError:
            raise LtTimeoutError(f"no resume data for {infohash} after {timeout:g} s") from None
        finally:
            fut.cancel()
        if error is not None:
            raise LtPunchError(f"cannot save resume data: {error}")
        return bytes(data)

    async def wait_finished(self, infohash: str, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every wanted piece is downloaded *and* written to disk."""
        torrent = self.torrents[infohash]
        try:
            async with asyncio.timeout(timeout):
                await torrent.finished.wait()
                await self.flush(infohash)
        except TimeoutError:
            raise LtTimeoutError(f"torrent {infohash} not finished after {timeout:.0f} s") from None

    async def flush(self, infohash: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Write libtorrent's buffered blocks of a torrent to disk and wait for it.

        ``torrent_finished_alert`` can come before the last pieces are readable
        from the file (FIELD-NOTES), so readers of the file flush first.

        Raises:
            LtTimeoutError: libtorrent did not confirm within ``timeout``.
        """
        assert self._pump is not None
        torrent = self.torrents[infohash]
        fut = self._pump.wait_for(
            lambda a: isinstance(a, lt.cache_flushed_alert)
            and infohash_of(a.handle) == infohash
        )
        torrent.handle.flush_cache()
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise LtTimeoutError(f"torrent {infohash}: no cache flush after {timeout:g} s") \
                from None
        finally:
            fut.cancel()

    async def wait_punched(self, infohash: str, timeout: float) -> PunchRecord:  # noqa: ASYNC109
        """Wait for the first connected punch on a torrent."""
        torrent = self.torrents[infohash]

        def connected() -> PunchRecord | None:
            return next((r for r in torrent.punches.values() if r.state == "connected"), None)

        try:
            async with asyncio.timeout(timeout), torrent.changed:
                await torrent.changed.wait_for(lambda: connected() is not None)
        except TimeoutError:
            raise LtTimeoutError(f"no punched peer on {infohash} after {timeout:g} s") from None
        rec = connected()
        assert rec is not None
        return rec

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events: ``{"type": "punched"|"punch-failed"|"connection-lost"|"finished"|
        "peer-left"|"port-mapping", ...}``."""
        while True:
            yield await self._events.get()

    def drain_events(self) -> list[dict[str, Any]]:
        """The events queued so far, without waiting (what :meth:`events` would yield
        next); for a consumer that is about to stop and must not lose them."""
        drained = []
        while not self._events.empty():
            drained.append(self._events.get_nowait())
        return drained

    def _emit(self, event: dict[str, Any]) -> None:
        torrent = self.torrents.get(event.get("infohash", ""))
        if torrent is not None and torrent._streams:
            typed = _typed_event(event)
            if typed is not None:
                torrent.publish(typed)
        if self._events.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
        self._events.put_nowait(event)

    # -- alerts ------------------------------------------------------------------

    def _on_alert(self, alert: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("alert %s: %s", alert.what(), alert.message())
        if isinstance(alert, lt.state_changed_alert):
            t = self.torrents.get(infohash_of(alert.handle))
            if t is not None:
                if int(alert.state) in _READY_STATES:
                    t.ready.set()
                else:
                    t.ready.clear()
        elif isinstance(alert, lt.torrent_finished_alert):
            ih = infohash_of(alert.handle)
            t = self.torrents.get(ih)
            if t is not None and not t.finished.is_set():
                t.finished.set()
                self._emit({"type": "finished", "infohash": ih})
        elif isinstance(alert, lt.piece_finished_alert):
            t = self.torrents.get(infohash_of(alert.handle))
            if t is not None and t._streams:
                t.publish(PieceFinished(t.infohash, int(alert.piece_index)))
        elif isinstance(alert, lt.metadata_received_alert):
            t = self.torrents.get(infohash_of(alert.handle))
            ti = alert.handle.torrent_file()
            if t is not None and t._streams and ti is not None:
                t.publish(MetadataReceived(t.infohash, ti.name(), ti.num_files(),
                                           ti.total_size()))
        elif isinstance(alert, lt.portmap_alert | lt.portmap_error_alert):
            self._on_portmap(alert)
        elif isinstance(alert, lt.peer_disconnected_alert):
            self._on_peer_lost(alert)
        elif isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
            ih = infohash_of(alert.handle)
            t = self.torrents.get(ih)
            if t is not None and t.error is None:
                # A full disk is a file_error_alert only: libtorrent then puts the
                # torrent in upload mode and retries much later, which looks like a stall.
                t.error = (f"{alert.filename()}: {alert.error.message()}"
                           if isinstance(alert, lt.file_error_alert) else alert.message())
                self._emit({"type": "error", "infohash": ih, "message": t.error})

    def _on_peer_lost(self, alert: Any) -> None:
        """A punched TCP connection was lost: punch again.

        libtorrent redials a lost peer by itself (after ``MIN_RECONNECT_TIME``), which
        is enough for uTP (our keep-alives hold the NAT mappings open) but not for TCP:
        a plain dial to a peer behind a NAT is dropped there, it takes a new
        simultaneous open. Not when both ends are done with each other.
        """
        t = self.torrents.get(infohash_of(alert.handle))
        ep = _alert_endpoint(alert)
        if t is None or ep is None or alert.error.message() in _DONE_MESSAGES:
            return
        rec = next((r for r in t.punches.values() if r.state == "connected"
                    and r.method == "tcp" and r.endpoint == ep), None)
        if rec is None:
            return
        rec.state = "dropped"
        logger.info("punched TCP connection to %s lost: %s", rec.peer_id,
                    alert.error.message())
        self._emit({"type": "connection-lost", "infohash": t.infohash,
                    "peer_id": rec.peer_id, "method": "tcp",
                    "reason": alert.error.message()})
        task = t.tasks.get(rec.peer_id)
        if task is None or task.done():
            t.tasks[rec.peer_id] = asyncio.get_running_loop().create_task(
                self._repunch(t, rec), name=f"repunch-{rec.peer_id}")

    async def _repunch(self, torrent: Torrent, rec: PunchRecord) -> None:
        if rec.role != "initiator":
            # The initiator punches again if it saw the loss too; if it did not (the
            # connection died on our side only), we do, as initiator of this punch.
            await asyncio.sleep(REPUNCH_RESPONDER_DELAY)
            if rec.state != "dropped":
                return
        peer = self._profiles.get(rec.peer_id)
        if peer is None or rec.repunches >= MAX_REPUNCHES or self.client is None:
            return
        rec.repunches += 1
        await self._initiate(torrent, rec, self.profile, peer)

    def _on_portmap(self, alert: Any) -> None:
        """Record libtorrent's UPnP / NAT-PMP results (when those are enabled)."""
        transport = native.portmap_transport_name(alert.map_transport)
        if isinstance(alert, lt.portmap_alert):
            protocol = native.portmap_protocol_name(alert.map_protocol)
            self.port_mappings[(transport, protocol)] = {
                "transport": transport, "protocol": protocol,
                "external_port": int(alert.external_port), "error": None,
            }
            logger.info("port mapping: %s %s external port %d", transport, protocol,
                        alert.external_port)
            self._emit({"type": "port-mapping", **self.port_mappings[(transport, protocol)]})
        else:
            # The error alert does not say which protocol: it is about the mapping index.
            key = (transport, f"mapping-{int(alert.mapping)}")
            self.port_mappings[key] = {
                "transport": transport, "protocol": None, "external_port": None,
                "error": alert.error.message(),
            }
            logger.info("port mapping via %s failed: %s", transport, alert.error.message())
            self._emit({"type": "port-mapping", **self.port_mappings[key]})

    # -- signaling ---------------------------------------------------------------

    async def _signaling_loop(self) -> None:
        client = self.client
        assert client is not None
        try:
            async for event in client.events():
                if isinstance(event, ConnectionState):
                    self._on_connection_state(event)
                    continue
                try:
                    self._on_signal(event)
                except ProtocolError as exc:
                    logger.warning("ignored bad signaling event %s: %s", event, exc)
        except SignalingError as exc:
            self.signaling_error = str(exc)
            logger.warning("signaling connection lost: %s", exc)
        else:
            if not self._closed and self.signaling_error is None:
                self.signaling_error = "signaling connection closed"
                logger.warning("signaling connection closed")

    def _on_connection_state(self, event: ConnectionState) -> None:
        """Track the signaling connection; after a reconnection, join rooms missed."""
        assert self.client is not None
        if event.state == "connected":
            self.signaling_error = None
            if event.attempt:
                logger.info("signaling reconnected (attempt %d)", event.attempt)
            for infohash in set(self.torrents) ^ self.client.rooms:
                self._spawn(self._sync_room(infohash), "sync-room")
        elif event.state == "disconnected":
            self.signaling_error = f"signaling disconnected: {event.error}"
            logger.warning("%s; reconnecting", self.signaling_error)
        elif event.state == "reconnecting":
            logger.info("signaling: reconnection attempt %d in %.1f s (%s)",
                        event.attempt, event.delay, event.error)
        elif event.state == "closed" and not self._closed:
            self.signaling_error = f"signaling closed: {event.error or 'closed'}"
            logger.warning("%s; not reconnecting", self.signaling_error)

    async def _sync_room(self, infohash: str) -> None:
        """Join the room of a torrent added while disconnected, or leave the room of
        one removed meanwhile (the client re-joined it)."""
        client = self.client
        if client is None:
            return
        try:
            torrent = self.torrents.get(infohash)
            if torrent is None:
                if infohash in client.rooms:
                    await client.leave(infohash)
                return
            if infohash not in client.rooms:
                peers = await client.join(infohash)
                self._on_signal(sp.Joined(sp.normalize_infohash(infohash), tuple(peers)))
        except (SignalingError, LtTimeoutError, ProtocolError) as exc:
            logger.warning("cannot sync room %s after reconnecting: %s", infohash, exc)

    def _on_signal(self, event: sp.Message) -> None:
        if isinstance(event, sp.PeerJoined | sp.Joined):
            # Joined: the reply to a re-join after a reconnection (or _sync_room).
            t = self.torrents.get(event.room)
            if t is None:
                if isinstance(event, sp.Joined):  # removed while we were away
                    self._spawn(self._sync_room(event.room), "sync-room")
                return
            members = ([(str(event.peer_id), event.metadata)] if isinstance(event, sp.PeerJoined)
                       else [(str(p.peer_id), p.metadata) for p in event.peers])
            for peer_id, metadata in members:
                rec = t.punches.get(peer_id)
                task = t.tasks.get(peer_id)
                if task is not None and not task.done():
                    continue  # our punch to it is under way
                if rec is not None and rec.state in ("connected", "punching"):
                    try:
                        same = self._profiles.get(peer_id) == PeerProfile.from_metadata(
                            peer_id, metadata)
                    except ProtocolError:
                        same = False
                    if same:
                        continue  # the same peer seen again after a reconnection
                self._on_room_peer(t, peer_id, metadata)
        elif isinstance(event, sp.PeerLeft):
            t = self.torrents.get(event.room)
            if t is not None:
                task = t.tasks.pop(str(event.peer_id), None)
                if task is not None:
                    task.cancel()
                self._emit({"type": "peer-left", "infohash": event.room,
                            "peer_id": str(event.peer_id)})
        elif isinstance(event, sp.Relayed):
            msg = PunchMessage.from_data(event.data)
            if msg.kind == plan.OFFER:
                self._spawn(self._respond(str(event.from_), event.room, msg), "respond")
            else:
                fut = self._answers.pop(msg.punch_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        elif isinstance(event, sp.Error):
            logger.warning("signaling error: %s", event)

    def _on_room_peer(self, torrent: Torrent, peer_id: str, metadata: dict[str, Any]) -> None:
        now = time.monotonic()
        try:
            peer = PeerProfile.from_metadata(peer_id, metadata)
        except ProtocolError as exc:
            logger.info("room peer %s not usable: %s", peer_id, exc)
            return
        if not peer.is_lt_punch() or not self.config.hole_punching_enabled:
            return
        self._profiles[peer_id] = peer
        me = self.profile
        role = "initiator" if plan.is_initiator(me, peer) else "responder"
        rec = PunchRecord(torrent.infohash, peer_id, role, now, peer_nat=peer.nat,
                          tally=self.punch_tally)
        rec.strategy = recommend_strategy(me.nat_summary or me.nat,
                                          peer.nat_summary or peer.nat)
        torrent.punches[peer_id] = rec
        self._spawn(torrent.notify(), "notify")
        if role == "initiator":
            old = torrent.tasks.pop(peer_id, None)
            if old is not None:
                old.cancel()
            torrent.tasks[peer_id] = asyncio.get_running_loop().create_task(
                self._initiate(torrent, rec, me, peer), name=f"punch-{peer_id}"
            )

    # -- punching ----------------------------------------------------------------

    async def _initiate(
        self, torrent: Torrent, rec: PunchRecord, me: PeerProfile, peer: PeerProfile
    ) -> None:
        assert self.client is not None
        methods = plan.plan_methods(me, peer, self.config.methods)
        if not methods:
            rec.state = "failed"
            rec.fail("none", 0, "no punch method fits this pair of NATs")
            await torrent.notify()
            self._emit({"type": "punch-failed", "infohash": torrent.infohash,
                        "peer_id": rec.peer_id, "reason": rec.failures[-1]["reason"]})
            return
        rec.state = "punching"
        if not await self._until_ready(torrent):
            rec.state = "failed"
            rec.fail(methods[0], 0, "torrent not ready for peers (still checking?)")
            await torrent.notify()
            return
        for attempt in range(1, self.config.punch_attempts + 1):
            delay = plan.retry_delay(attempt)
            if delay:
                await asyncio.sleep(delay)
            for method in methods:
                rec.attempts += 1
                endpoint = _endpoint_for(method, peer)
                assert endpoint is not None
                offer = PunchMessage(plan.OFFER, torrent.infohash, method, attempt,
                                     f"{self.peer_id}:{secrets.token_hex(4)}")
                fut: asyncio.Future[PunchMessage] = asyncio.get_running_loop().create_future()
                self._answers[offer.punch_id] = fut
                try:
                    await self.client.relay(peer.peer_id, torrent.infohash, offer.to_data())
                    async with asyncio.timeout(min(5.0, self.config.connection_timeout)):
                        answer = await fut
                except TimeoutError:
                    rec.fail(method, attempt, "no punch-answer from peer")
                    continue
                except SignalingError as exc:
                    rec.fail(method, attempt, f"signaling: {exc}")
                    continue
                finally:
                    self._answers.pop(offer.punch_id, None)
                if answer.kind != plan.ANSWER:
                    rec.fail(method, attempt, f"peer refused: {answer.reason}")
                    continue
                reason = await self._connect(torrent, rec, method, endpoint, outgoing=True)
                if reason is None:
                    return
                rec.fail(method, attempt, reason)
        rec.state = "failed"
        self._emit({"type": "punch-failed", "infohash": torrent.infohash,
                    "peer_id": rec.peer_id, "reason": rec.failures[-1]["reason"]})
        await torrent.notify()

    async def _respond(self, peer_id: str, room: str, offer: PunchMessage) -> None:
        assert self.client is not None and self.session is not None
        torrent = self.torrents.get(offer.infohash)
        rec = torrent.punches.get(peer_id) if torrent is not None else None
        if rec is None and torrent is not None:
            # The offer can overtake our own processing of the room's member list.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0), torrent.changed:
                    await torrent.changed.wait_for(lambda: peer_id in torrent.punches)
            rec = torrent.punches.get(peer_id)
        peer: PeerProfile | None = self._profiles.get(peer_id)
        refusal = None
        if torrent is None or offer.infohash != room:
            refusal = "no such torrent here"
        elif offer.method not in self.config.methods or not self.config.hole_punching_enabled:
            refusal = f"method {offer.method} disabled"
        elif rec is None or peer is None:
            refusal = "unknown peer"
        elif not await self._until_ready(torrent):
            refusal = "torrent not ready for peers"
        if refusal is not None or torrent is None or rec is None or peer is None:
            with contextlib.suppress(SignalingError):
                await self.client.relay(peer_id, room, offer.reply(plan.FAILED, refusal).to_data())
            return
        rec.state = "punching"
        rec.attempts += 1
        endpoint = _endpoint_for(offer.method, peer)
        if endpoint is None:
            rec.state = "failed"
            rec.fail(offer.method, offer.attempt, "no endpoint for method")
            await torrent.notify()
            with contextlib.suppress(SignalingError):
                await self.client.relay(
                    peer_id, room, offer.reply(plan.FAILED, "no endpoint for method").to_data()
                )
            return
        answer = offer.reply(plan.ANSWER).to_data()
        reason: str | None
        if offer.method == "utp" or self.profile.nat == "open":
            if offer.method == "utp":
                # Open our NAT towards the initiator from libtorrent's UDP socket,
                # then answer: its uTP SYN will find the hole open.
                native.open_udp(self.session, endpoint)
                source = endpoint
            else:
                # We are directly reachable: the initiator connects to our listen
                # port, nothing to open here.
                source = peer.tcp or endpoint  # it dials from its outgoing port
            watch = self._connection_waiter(
                torrent, source, incoming=True, any_port=peer.nat == "symmetric"
            )
            try:
                await self.client.relay(peer_id, room, answer)
            except SignalingError as exc:
                watch.cancel()
                reason = f"signaling: {exc}"
            else:
                reason = await self._await_connection(rec, offer.method, source, watch,
                                                      torrent)
        else:
            # TCP simultaneous open: our SYN first (opens our NAT), then answer.
            waiter_task = asyncio.ensure_future(
                self._connect(torrent, rec, "tcp", endpoint, outgoing=True)
            )
            await asyncio.sleep(0)
            try:
                await self.client.relay(peer_id, room, answer)
            except SignalingError as exc:
                # The peer never hears of this attempt; let our SYN run its course.
                logger.info("punch answer to %s not sent: %s", peer_id, exc)
            reason = await waiter_task
        if reason is not None:
            rec.fail(offer.method, offer.attempt, reason)
            if rec.state != "connected":
                rec.state = "failed"
                self._emit({"type": "punch-failed", "infohash": torrent.infohash,
                            "peer_id": rec.peer_id, "reason": reason})
                await torrent.notify()

    async def _until_ready(self, torrent: Torrent) -> bool:
        """Wait until the torrent accepts peers (a checking torrent rejects them)."""
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await torrent.ready.wait()
        except TimeoutError:
            return False
        return True

    def _connection_waiter(
        self, torrent: Torrent, endpoint: Address, *, incoming: bool, any_port: bool = False
    ) -> _ConnectionWatch:
        """Watch the alerts about ``endpoint`` on ``torrent`` until connected or failed."""
        assert self._pump is not None
        watch = _ConnectionWatch(torrent, endpoint, incoming=incoming, any_port=any_port)
        watch.future = self._pump.wait_for(watch.match)
        return watch

    async def _connect(
        self, torrent: Torrent, rec: PunchRecord, method: str, endpoint: Address,
        *, outgoing: bool,
    ) -> str | None:
        """Inject ``endpoint`` and wait for the connection; None on success, else why not."""
        assert self.session is not None
        waiter = self._connection_waiter(torrent, endpoint, incoming=False)
        if method == "tcp":
            async with self._tcp_lock:
                # connect_peer would try uTP first (libtorrent assumes every peer
                # supports it); for the simultaneous open this dial must be TCP.
                self.session.apply_settings({"enable_outgoing_utp": False})
                try:
                    rec.immediate = self._injector.inject(torrent.handle, endpoint, utp=False)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.5):
                            await waiter.dialed.wait()
                finally:
                    if "utp" in self.config.methods:
                        self.session.apply_settings({"enable_outgoing_utp": True})
        else:
            rec.immediate = self._injector.inject(torrent.handle, endpoint, utp=True)
        return await self._await_connection(rec, method, endpoint, waiter, torrent)

    async def _await_connection(
        self, rec: PunchRecord, method: str, endpoint: Address,
        watch: _ConnectionWatch, torrent: Torrent,
    ) -> str | None:
        timeout = self.config.connection_timeout
        try:
            async with asyncio.timeout(timeout):
                kind, detail = await watch.wait()
        except TimeoutError:
            watch.cancel()
            return f"no connection within {timeout:g} s"
        if kind == "failed":
            return f"libtorrent: {detail}"
        rec.state = "connected"
        rec.method = method
        self.punch_tally[(method, "connected")] += 1
        rec.endpoint = endpoint = watch.seen
        rec.connected_at = time.monotonic()
        logger.info("punched %s via %s to %s:%d in %.3f s", rec.peer_id, method,
                    endpoint[0], endpoint[1], rec.time_to_connect or 0.0)
        self._emit({"type": "punched", "infohash": torrent.infohash, "peer_id": rec.peer_id,
                    "method": method, "endpoint": list(endpoint),
                    "time_to_connect": rec.time_to_connect})
        await torrent.notify()
        return None

    # -- keep-alive --------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Refresh NAT mappings: the reflector's and every punched uTP peer's."""
        while True:
            await asyncio.sleep(self.config.keep_alive_interval)
            if self.session is None:
                return
            reflector = self._reflector_ip
            if reflector is not None:
                native.open_udp(self.session, reflector)
            for t in self.torrents.values():
                for rec in t.punches.values():
                    if rec.state == "connected" and rec.method == "utp" and rec.endpoint:
                        native.open_udp(self.session, rec.endpoint)

    # -- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Torrent metrics merged with P2P metrics."""
        torrents = [t.stats() for t in self.torrents.values()]
        punches = [p for t in torrents for p in t["punches"]]
        by_method: dict[str, int] = {}
        for p in punches:
            if p["state"] == "connected" and p["method"]:
                by_method[p["method"]] = by_method.get(p["method"], 0) + 1
        times = sorted(p["time_to_connect"] for p in punches if p["time_to_connect"] is not None)
        return {
            "peer_id": self.peer_id,
            "uptime": time.monotonic() - self._started_at,
            "nat": self.nat_info.to_dict() if self.nat_info else None,
            "public_endpoints": {
                "udp": list(self.public_udp) if self.public_udp else None,
                "tcp": list(self.public_tcp) if self.public_tcp else None,
            },
            "listen_port": self.session.listen_port() if self.session else None,
            "port_mappings": list(self.port_mappings.values()),
            "signaling": {
                "url": self.config.signaling_url,
                "connected": bool(self.client and self.client.connected),
                "rooms": len(self.torrents) if self.client else 0,
                "error": self.signaling_error,
            },
            "totals": {
                "torrents": len(torrents),
                "punches": len(punches),
                "connected": sum(1 for p in punches if p["state"] == "connected"),
                "failed": sum(1 for p in punches if p["state"] == "failed"),
                "failures": sum(len(p["failures"]) for p in punches),
                "by_method": by_method,
                "median_time_to_connect": times[len(times) // 2] if times else None,
                "download_rate": sum(t["download_rate"] for t in torrents),
                "upload_rate": sum(t["upload_rate"] for t in torrents),
            },
            "torrents": torrents,
        }


_CONNECT_OPS = {
    lt.operation_t.connect,
    lt.operation_t.sock_open,
    lt.operation_t.sock_bind,
    lt.operation_t.getpeername,
}


def _typed_event(event: dict[str, Any]) -> TorrentEvent | None:
    """The typed form of a session event about one torrent (None: not a torrent event)."""
    kind, ih = event["type"], event["infohash"]
    if kind == "punched":
        host, port = event["endpoint"]
        return PeerPunched(ih, event["peer_id"], event["method"], (host, port),
                           event["time_to_connect"])
    if kind == "punch-failed":
        return PunchFailed(ih, event["peer_id"], event["reason"])
    if kind == "finished":
        return Finished(ih)
    if kind == "error":
        return TorrentError(ih, event["message"])
    return None


def _alert_endpoint(alert: Any) -> Address | None:
    ep = getattr(alert, "endpoint", None)
    if ep is None:
        return None
    return str(ep[0]), int(ep[1])


# Disconnect reasons that only come after a complete handshake: the torrent is done on
# one side (libtorrent's errors::torrent_finished / errors::upload_upload_connection).
_DONE_MESSAGES = frozenset({"torrent finished", "upload to upload connection"})


class _ConnectionWatch:
    """State of one expected connection, fed by alerts (all seen, even in one batch).

    libtorrent posts ``peer_connect_alert`` when it *starts* dialing and no alert
    when the handshake completes, so "connected" is: an incoming connection from
    the endpoint, the peer listed without the connecting/handshake flags, or a
    disconnect that happened after the connect phase (the data may be done).
    """

    def __init__(
        self, torrent: Torrent, endpoint: Address, *, incoming: bool, any_port: bool = False
    ) -> None:
        self.torrent = torrent
        self.endpoint = endpoint
        self.incoming = incoming
        # An initiator behind an endpoint-dependent (symmetric) NAT reaches us
        # from a port we could not know in advance: match its address only.
        self.any_port = any_port
        self.seen: Address = endpoint
        self.dialed = asyncio.Event()
        self.socket_type = "?"
        self.future: asyncio.Future[Any] | None = None

    def match(self, a: Any) -> Any:
        ep = _alert_endpoint(a)
        if ep is None:
            return None
        if isinstance(a, lt.incoming_connection_alert) and self.incoming:
            if ep == self.endpoint or (self.any_port and ep[0] == self.endpoint[0]):
                self.seen = ep
                return ("connected", native.socket_type_name(a))
            return None
        if ep != self.endpoint:
            return None
        if isinstance(a, lt.peer_connect_alert):
            self.socket_type = native.socket_type_name(a)
            self.dialed.set()
            return None
        if isinstance(a, lt.peer_disconnected_alert | lt.peer_error_alert):
            if not self.incoming and not self.dialed.is_set():
                # About an earlier attempt's connection to the same endpoint, e.g. the
                # one our own pause + resume kick aborts ("torrent paused") just
                # before this attempt dials.
                return None
            message = a.error.message()
            if a.op not in _CONNECT_OPS and message in _DONE_MESSAGES:
                # Connected, transferred everything and closed before we looked.
                return ("connected", self.socket_type)
            return ("failed", message)
        return None

    def _listed(self) -> bool:
        for p in self.torrent.handle.get_peer_info():
            if (str(p.ip[0]), int(p.ip[1])) == self.endpoint and not (
                p.flags & (lt.peer_info.connecting | lt.peer_info.handshake)
            ):
                return True
        return False

    async def wait(self) -> tuple[str, str]:
        assert self.future is not None
        # No alert marks a completed handshake: while dialing, look at the peer
        # list every 10 ms (bounded by the caller's timeout).
        while not self.future.done():
            if self.dialed.is_set() and self._listed():
                self.future.cancel()
                return "connected", self.socket_type
            await asyncio.wait({self.future}, timeout=0.01)
        result: tuple[str, str] = self.future.result()
        return result

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


def _endpoint_for(method: str, peer: PeerProfile) -> Address | None:
    """Where to send packets of ``method`` to ``peer``.

    uTP goes to libtorrent's UDP listen mapping. TCP goes to the mapping of the
    peer's outgoing port (simultaneous open) unless the peer is directly
    reachable, whose TCP listen port has the number of its UDP one.
    """
    if method == "utp":
        return peer.udp
    if peer.nat == "open" and peer.udp is not None:
        return peer.udp
    return peer.tcp


def _drop_session(holder: list[lt.session]) -> None:
    session = holder.pop()
    session.pause()
    del session


def infohash_of(handle: lt.torrent_handle) -> str:
    ih = handle.info_hashes()
    if ih.has_v1():
        return str(ih.v1)
    return str(ih.v2)


def make_params(source: Any) -> lt.add_torrent_params:
    """``add_torrent_params`` from a magnet URI, .torrent path or bytes, hex infohash,
    ``torrent_info`` or params; ConfigError naming the problem otherwise."""
    if isinstance(source, lt.add_torrent_params):
        return source
    if isinstance(source, lt.torrent_info):
        atp = lt.add_torrent_params()
        atp.ti = source
        return atp
    if isinstance(source, bytes | bytearray):
        try:
            return lt.load_torrent_buffer(bytes(source))
        except RuntimeError as exc:
            raise ConfigError(f"not a valid .torrent: {exc}") from None
    if isinstance(source, Path):
        source = str(source)
    if not isinstance(source, str):
        raise ConfigError(f"cannot add a torrent from {type(source).__name__}")
    text = source.strip()
    if text.startswith("magnet:"):
        try:
            return lt.parse_magnet_uri(text)
        except RuntimeError as exc:
            raise ConfigError(f"bad magnet link: {exc}") from None
    lowered = text.lower()
    if len(lowered) in (40, 64) and all(c in "0123456789abcdef" for c in lowered):
        prefix = "urn:btih:" if len(lowered) == 40 else "urn:btmh:1220"
        return lt.parse_magnet_uri(f"magnet:?xt={prefix}{lowered}")
    if os.path.exists(text):
        try:
            return lt.load_torrent_file(text)
        except RuntimeError as exc:
            raise ConfigError(f"{text}: not a valid .torrent file: {exc}") from None
    raise ConfigError(f"not a magnet link, infohash or .torrent file: {text!r}")
