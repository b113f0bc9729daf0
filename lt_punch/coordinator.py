"""P2PCoordinator: one object over NAT discovery, signaling, punching and libtorrent.

The unified API of the design we follow (a Node app's ``P2PCoordinator``), in Python
naming::

    async with P2PCoordinator(signaling_port=0, lt_settings=ISOLATED_SETTINGS) as p2p:
        torrent = await p2p.session.add(magnet)
        print(await p2p.get_nat_info(), p2p.get_recommended_strategy("symmetric"))
        await p2p.session.wait_finished(torrent.infohash, 60)

:meth:`P2PCoordinator.initialize` starts an embedded :class:`SignalingServer` when
signaling is enabled and no server URL is configured, then the
:class:`EnhancedTorrentSession`, which does the real work (rooms by infohash, punches,
``connect_peer`` injection). Peers known out of band (no signaling) are added with
:meth:`~P2PCoordinator.register_peer` and dialled directly.

:func:`~lt_punch.punch.strategy.recommend_strategy` is the pure rule behind
:meth:`~P2PCoordinator.get_recommended_strategy` (no I/O; same answer on both ends).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .errors import ConfigError, LtPunchError, LtTimeoutError, PunchError
from .nat.info import NATInfo
from .punch.record import SETTLED, PunchRecord, PunchState
from .punch.strategy import STRATEGY_METHODS, recommend_strategy
from .signaling.protocol import MessageError, validate_peer_id
from .signaling.server import SignalingServer
from .torrent.session import EnhancedTorrentSession, Torrent
from .types import Address

logger = logging.getLogger(__name__)

__all__ = ["STRATEGY_METHODS", "P2PCoordinator", "RegisteredPeer", "recommend_strategy"]


@dataclass(frozen=True)
class RegisteredPeer:
    """A peer known out of band (no signaling): dialled directly."""

    peer_id: str
    endpoint: Address
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, peer_id: object, address: object, port: object, metadata: object
    ) -> RegisteredPeer:
        """Validate the arguments of :meth:`P2PCoordinator.register_peer`."""
        try:
            pid = validate_peer_id(peer_id)
        except MessageError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(address, str):
            raise ConfigError(f"address: expected an IP address string, got {address!r}")
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ConfigError(f"address: not an IP address: {address!r}") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"address: {ip} cannot be dialled")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(f"port: expected 1..65535, got {port!r}")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata: expected a mapping, got {type(metadata).__name__}")
        return cls(str(pid), (str(ip), port), dict(metadata))

    def to_dict(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "endpoint": list(self.endpoint),
                "metadata": dict(self.metadata)}


# --- the coordinator -----------------------------------------------------------------------


class P2PCoordinator:
    """NAT discovery + signaling + punching + libtorrent behind one object.

    Args:
        config: settings; when None, ``Config.from_env(**overrides)`` (precedence:
            keyword arguments > ``P2P_*`` environment > defaults).
        session: an existing session to drive instead of creating one. Its config
            is used as is (no embedded server is started for it) and the caller
            keeps ownership: :meth:`close` does not close it.
        peer_id: our id on the signaling server (random when None).
        lt_settings: libtorrent settings applied over the session's own.
        save_path: default download directory.
        nat_info: a known NAT description (skips detection).
        session_state: an earlier run's
            :meth:`~lt_punch.torrent.session.EnhancedTorrentSession.session_state`.
        **overrides: :class:`~lt_punch.config.Config` fields.

    Raises:
        ConfigError: a setting, variable or argument is invalid (the message names it).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        session: EnhancedTorrentSession | None = None,
        peer_id: str | None = None,
        lt_settings: Mapping[str, Any] | None = None,
        save_path: str | os.PathLike[str] = ".",
        nat_info: NATInfo | None = None,
        session_state: bytes | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = session.config if session is not None and not overrides else (
                Config.from_env(**overrides)
            )
        elif overrides:
            known = {f.name for f in dataclasses.fields(Config)}
            for key in overrides:
                if key not in known:
                    raise ConfigError(f"unknown setting {key!r}")
            config = config.replace(**overrides)
        if peer_id is not None:
            try:
                validate_peer_id(peer_id)
            except MessageError as exc:
                raise ConfigError(str(exc)) from None
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._peer_id = peer_id
        self._lt_settings = dict(lt_settings or {})
        self._save_path = save_path
        self._nat_info = nat_info
        self._session_state = session_state
        self.signaling_server: SignalingServer | None = None
        """The embedded signaling server, when :meth:`initialize` started one."""
        self._peers: dict[str, RegisteredPeer] = {}
        self._initialized = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> P2PCoordinator:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> EnhancedTorrentSession:
        """The torrent session (after :meth:`initialize`)."""
        if self._session is None:
            raise LtPunchError("coordinator not initialized: await initialize() first")
        return self._session

    async def initialize(self) -> None:
        """Start the embedded signaling server (if needed) and the torrent session.

        Idempotent. On failure everything started so far is stopped again.

        Raises:
            LtPunchError: the coordinator is closed.
            OSError: the embedded server cannot bind its address.
        """
        if self._closed:
            raise LtPunchError("coordinator is closed")
        if self._initialized:
            return
        try:
            if self._owns_session:
                if self.config.signaling_enabled and not self.config.signaling_url:
                    await self._start_signaling_server()
                self._session = EnhancedTorrentSession(
                    self.config,
                    peer_id=self._peer_id,
                    lt_settings=self._lt_settings,
                    save_path=self._save_path,
                    nat_info=self._nat_info,
                    state=self._session_state,
                )
            await self.session.start()
        except BaseException:
            await self.close()
            raise
        self._initialized = True

    async def _start_signaling_server(self) -> None:
        cfg = self.config
        # The reflector answers on the URL's port number by default (one number to
        # open in a firewall); 0 lets the system pick both.
        dht_port = cfg.signaling_udp_port if cfg.signaling_udp_port is not None else (
            cfg.signaling_port
        )
        server = SignalingServer(cfg.signaling_host, cfg.signaling_port, dht_port=dht_port)
        await server.start()
        self.signaling_server = server
        host = cfg.signaling_host
        if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
            # A wildcard bind is reached locally through loopback.
            host = "::1" if ":" in host else "127.0.0.1"
        url_host = f"[{host}]" if ":" in host else host
        assert server.dht_address is not None
        self.config = cfg.replace(
            signaling_url=f"ws://{url_host}:{server.port}",
            signaling_udp_port=server.dht_address[1],
        )
        logger.info("embedded signaling server at %s (reflector udp %d)",
                    self.config.signaling_url, server.dht_address[1])

    async def close(self) -> None:
        """Stop the session (when we created it) and the embedded server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_session and self._session is not None:
                await self._session.close()
        finally:
            if self.signaling_server is not None:
                server, self.signaling_server = self.signaling_server, None
                await server.close()

    # -- NAT and strategy --------------------------------------------------------------------

    async def get_nat_info(self) -> dict[str, Any]:
        """Our NAT description (:meth:`NATInfo.to_dict`) plus ``public_endpoints`` and
        ``port_mappings`` (libtorrent's UPnP / NAT-PMP results, when those are enabled).

        When the session learnt nothing (signaling disabled) and STUN servers are
        configured, runs STUN discovery once.
        """
        session = self.session
        info = await session.discover_nat()
        if info is None:
            info = NATInfo(error="not measured: no signaling server and no STUN servers",
                           source="none")
        data = info.to_dict()
        data["public_endpoints"] = {
            "udp": list(session.public_udp) if session.public_udp else None,
            "tcp": list(session.public_tcp) if session.public_tcp else None,
        }
        data["port_mappings"] = list(session.port_mappings.values())
        return data

    def get_recommended_strategy(
        self, peer_nat: NATInfo | Mapping[str, Any] | str | None = None
    ) -> dict[str, Any]:
        """:func:`recommend_strategy` for our NAT (alone when ``peer_nat`` is None: the
        peer's NAT is then unknown) or for the pair with ``peer_nat`` (a NAT type, or
        the summary a peer sends in its signaling metadata)."""
        info = self._session.nat_info if self._session is not None else self._nat_info
        return recommend_strategy(info, peer_nat)

    # -- peers -------------------------------------------------------------------------------

    async def register_peer(
        self, peer_id: str, address: str, port: int, metadata: dict[str, Any] | None = None
    ) -> None:
        """Remember a peer known out of band; :meth:`connect_to_peer` dials it.

        Raises:
            ConfigError: a bad peer id, address, port or metadata (names which).
        """
        peer = RegisteredPeer.parse(peer_id, address, port, metadata)
        self._peers[peer.peer_id] = peer
        logger.info("registered peer %s at %s:%d", peer.peer_id, *peer.endpoint)

    @property
    def registered_peers(self) -> dict[str, RegisteredPeer]:
        return dict(self._peers)

    async def connect_to_peer(
        self, peer_id: str, infohash: str | None = None, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Connect to ``peer_id`` on ``infohash`` (None: every torrent).

        A peer punched through signaling: its punch record (``method`` ``tcp``,
        ``utp``, ``predict`` or ``relay``); a punch still in progress is awaited up to
        ``timeout`` seconds (default: the config's ``connection_timeout``), and a peer
        whose punched connection was lost is punched again (a punch through several
        methods may outlast ``timeout``: it goes on after the LtTimeoutError). A
        registered peer: its
        endpoint is given to libtorrent (``connect_peer``) and ``method`` is
        ``direct``.

        Raises:
            LtPunchError: unknown peer or torrent, or no torrent to connect on.
            PunchError: every punch to the peer failed (``reason`` = the last one).
            LtTimeoutError: the punch did not finish within ``timeout``.
        """
        torrents = self._torrents(infohash)
        records = [(t, t.punches[peer_id]) for t in torrents if peer_id in t.punches]
        for t, rec in records:
            if rec.state == PunchState.CONNECTED:
                return _punch_result(t, rec)
        registered = self._peers.get(peer_id)
        if registered is not None:
            if not torrents:
                raise LtPunchError(f"no torrent to connect {peer_id} on: add one first")
            for t in torrents:
                t.handle.connect_peer(registered.endpoint)
            logger.info("> connect_peer %s:%d (%s, direct) on %d torrent(s)",
                        *registered.endpoint, peer_id, len(torrents))
            return {
                "peer_id": peer_id,
                "method": "direct",
                "endpoint": list(registered.endpoint),
                "infohashes": [t.infohash for t in torrents],
            }
        if not records:
            where = f"torrent {infohash}" if infohash else "any torrent"
            raise LtPunchError(
                f"unknown peer {peer_id!r}: not registered and not met on {where} "
                "through signaling"
            )
        wait = self.config.connection_timeout if timeout is None else timeout
        t, rec = records[0]
        if rec.state == PunchState.DROPPED:
            # Its punched connection was lost and nobody punches again (our torrent
            # is complete): the caller asks for a connection, so punch.
            self.session.reconnect(t.infohash, peer_id)
        done = await _wait_settled(t, rec, wait)
        if rec.state == PunchState.CONNECTED:
            return _punch_result(t, rec)
        if not done:
            raise LtTimeoutError(f"punch to {peer_id} still {rec.state} after {wait:g} s")
        reason = rec.last_reason or str(rec.state)
        raise PunchError(f"punch to {peer_id} failed: {reason}", reason=reason)

    def _torrents(self, infohash: str | None) -> list[Torrent]:
        torrents = self.session.torrents
        if infohash is None:
            return list(torrents.values())
        key = infohash.strip().lower()
        if key not in torrents:
            raise LtPunchError(f"unknown torrent {infohash}")
        return [torrents[key]]

    # -- observation -------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """:meth:`EnhancedTorrentSession.stats` plus ``signaling_server`` and
        ``registered_peers``."""
        stats = self.session.stats()
        server = self.signaling_server
        stats["signaling_server"] = server.stats() if server is not None else None
        stats["registered_peers"] = len(self._peers)
        return stats

    async def health_check(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded"|"down", "checks": {...}, "details": {...}}``.

        ``down``: no running session. ``degraded``: the session runs but signaling
        (when enabled) is not connected, or NAT discovery (when possible) failed.
        """
        session = self._session
        details: dict[str, Any] = {}
        running = session is not None and session.session is not None
        details["session"] = "running" if running else "not running"

        if not self.config.signaling_enabled:
            signaling = True
            details["signaling"] = "disabled"
        else:
            client = session.client if session is not None else None
            signaling = bool(client is not None and client.connected)
            details["signaling"] = "connected" if signaling else (
                (session.signaling_error if session is not None else None) or "not connected"
            )
            if self.signaling_server is not None:
                details["signaling_server"] = self.signaling_server.url

        info = session.nat_info if session is not None else None
        measurable = bool(self.config.signaling_enabled or self.config.stun_servers)
        if info is not None:
            nat = info.error is None and info.nat_type != "blocked"
            details["nat"] = str(info)
        else:
            nat = not measurable
            details["nat"] = "not measured" + ("" if measurable else " (nothing to ask)")

        checks = {"session": running, "signaling": signaling, "nat": nat}
        status = "down" if not running else ("ok" if all(checks.values()) else "degraded")
        return {"status": status, "checks": checks, "details": details}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _punch_result(torrent: Torrent, rec: PunchRecord) -> dict[str, Any]:
    result = rec.to_dict()
    result["infohash"] = torrent.infohash
    return result


async def _wait_settled(torrent: Torrent, rec: PunchRecord, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until ``rec`` is connected or failed; False on timeout."""
    try:
        async with asyncio.timeout(timeout), torrent.changed:
            await torrent.changed.wait_for(lambda: rec.state in SETTLED)
    except TimeoutError:
        return rec.state in SETTLED
    return True
