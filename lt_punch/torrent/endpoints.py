"""Our public endpoints and NAT, as the peers of a room must know them.

* TCP: ``GET /whoami`` on the signaling server, sent from libtorrent's outgoing port
  (every TCP dial leaves from that one port), answers with its public mapping.
* UDP: a DHT query from libtorrent's own UDP socket to the signaling server's
  reflector; the reply's BEP 42 ``ip`` key is the public mapping of the socket uTP
  uses.
* NAT: STUN discovery when STUN servers are configured, else what the reflector
  shows (our address seen unchanged: no NAT).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import libtorrent as lt

from ..config import Config
from ..errors import ConfigError, LtTimeoutError, SignalingError
from ..nat.discover import discover_nat, route_local_ip
from ..nat.info import NATInfo
from ..types import Address
from . import native, settings
from .alerts import AlertPump

logger = logging.getLogger(__name__)


@dataclass
class PublicEndpoints:
    """What discovery learnt (each None when unknown)."""

    udp: Address | None = None
    tcp: Address | None = None
    nat: NATInfo | None = None
    reflector: Address | None = None
    """The reflector's resolved address (the keep-alives refresh our mapping to it)."""


def reflector_of(config: Config) -> Address | None:
    """The signaling server's DHT reflector (host, port), from its URL."""
    url = config.signaling_url
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        return None
    return parts.hostname, config.signaling_udp_port or parts.port or 80


class Discovery:
    """Learns :class:`PublicEndpoints` for one libtorrent session.

    Args:
        session, pump: the libtorrent session and its alert pump.
        config: ``signaling_url``, ``listen_host``, ``stun_servers`` are used.
        outgoing_port: libtorrent's outgoing TCP port (None: TCP punching off); a new
            one is chosen when it was taken meanwhile (:attr:`outgoing_port`).
        alert_mask: the session's alert mask (the reflector query adds dht_log).
        tls: the client TLS context for a ``wss://`` server.
        listening: libtorrent's listen sockets, ``(address, "tcp"|"udp") -> port``.
    """

    def __init__(self, session: lt.session, pump: AlertPump, config: Config, *,
                 outgoing_port: int | None, alert_mask: int,
                 tls: ssl.SSLContext | None,
                 listening: Mapping[tuple[str, str], int] | None = None) -> None:
        self._listening = listening if listening is not None else {}
        self.whoami_timeout = 3.0
        """Seconds one ``/whoami`` request may take."""
        self._session = session
        self._pump = pump
        self._config = config
        self.outgoing_port = outgoing_port
        self._alert_mask = alert_mask
        self._tls = tls

    async def discover(self, known_nat: NATInfo | None) -> PublicEndpoints:
        """Ask the signaling server (and STUN servers) about us.

        Raises:
            SignalingError, LtTimeoutError, OSError: the server cannot be reached.
        """
        reflector = reflector_of(self._config)
        assert reflector is not None
        reflector = (socket.gethostbyname(reflector[0]), reflector[1])
        found = PublicEndpoints(reflector=reflector, nat=known_nat)
        # Three things at once, each bounded: the signaling code (aiohttp, websockets:
        # ~0.2 s of imports) loads in a thread; STUN discovery (its filtering tests wait
        # ~0.35 s for answers a restrictive NAT drops) runs on the loop; whoami, then the
        # reflector, as soon as the imports are done. STUN starts first so its mapping
        # tests (a few ms) are over before libtorrent's socket makes its own mapping.
        t0 = time.monotonic()
        loaded = asyncio.ensure_future(asyncio.to_thread(_load_signaling))
        stun: asyncio.Future[NATInfo] | None = None
        if found.nat is None and self._config.stun_servers:
            stun = asyncio.ensure_future(discover_nat(self._config.stun_servers,
                                                      local_ip=route_local_ip(reflector)))
        try:
            await loaded
            t1 = time.monotonic()
            # TCP first: an unreachable server fails here at once (connection
            # refused) instead of after the reflector's retries.
            observed_tcp = await self._whoami()
            if self.outgoing_port is not None:
                found.tcp = observed_tcp
            t2 = time.monotonic()
            found.udp = (self._loopback_udp(reflector)
                         or await self._query_reflector(reflector))
            t3 = time.monotonic()
            if found.nat is None:
                found.nat = await self._detect_nat(reflector, found.udp, stun)
        finally:
            for task in (loaded, stun):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        logger.info("discovery: imports %.3f s, whoami %.3f s, reflector %.3f s, NAT %.3f s "
                    "after the reflector (%.3f s in all)", t1 - t0, t2 - t1, t3 - t2,
                    time.monotonic() - t3, time.monotonic() - t0)
        return found

    async def _whoami(self, tries: int = 3) -> Address:
        """Our TCP endpoint as the signaling server sees it, asked from libtorrent's
        outgoing port. That port was free when the session picked it, but another
        socket can take it meanwhile (CI saw EADDRINUSE): then we pick a new one. A
        request that got no answer is asked once more (CI saw one TLS request stall for
        3 s among a thousand): a server that is really gone costs two timeouts."""
        from ..signaling.mapping import whoami  # loaded by _load_signaling

        url = self._config.signaling_url
        assert url is not None
        timeouts = 0
        for attempt in range(1, tries + 1):
            try:
                return await whoami(url, local_port=self.outgoing_port,
                                    local_host=self._config.listen_host,
                                    timeout=self.whoami_timeout, ssl=self._tls)
            except LtTimeoutError:
                timeouts += 1
                if timeouts == 2 or attempt == tries:
                    raise
                logger.info("whoami got no answer in %g s: asking again", self.whoami_timeout)
            except SignalingError as exc:
                cause = exc.__cause__
                if (self.outgoing_port is None or attempt == tries
                        or not isinstance(cause, OSError)
                        or cause.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)):
                    raise
                logger.info("outgoing port %d taken (%s): picking another",
                            self.outgoing_port, cause)
                self.outgoing_port = settings.free_tcp_port(self._config.listen_host)
                self._session.apply_settings({"outgoing_port": self.outgoing_port})
        raise AssertionError("unreachable")

    def _loopback_udp(self, reflector: Address) -> Address | None:
        """A reflector on loopback: our endpoint is libtorrent's loopback UDP socket.

        Listening on a wildcard address, libtorrent opens one socket per interface and
        runs its DHT only on the non-loopback ones, which do not send to 127.0.0.1 (it
        cannot be routed from them): the reflector would never hear from us. Peers that
        share a loopback signaling server are on this machine and reach that socket.
        """
        if not ipaddress.ip_address(reflector[0]).is_loopback:
            return None
        port = self._listening.get(("127.0.0.1", "udp"))
        if port is None:
            return None
        logger.info("public UDP endpoint 127.0.0.1:%d (libtorrent's loopback socket; "
                    "the reflector is on loopback)", port)
        return "127.0.0.1", port

    async def _query_reflector(self, reflector: Address, tries: int = 3) -> Address | None:
        self._session.apply_settings(
            {"alert_mask": self._alert_mask | lt.alert_category.dht_log})
        try:
            for attempt in range(tries):
                fut = self._pump.wait_for(lambda a: native.dht_reply_ip(a, reflector))
                native.open_udp(self._session, reflector)
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
            self._session.apply_settings({"alert_mask": self._alert_mask})

    async def _detect_nat(self, reflector: Address, udp: Address | None,
                          stun: asyncio.Future[NATInfo] | None) -> NATInfo:
        local_ip = route_local_ip(reflector)
        if stun is not None:
            info = await stun
            if info.public_endpoint is not None:
                return info
            logger.warning("STUN discovery failed (%s); asking the reflector", info.error)
        # Without STUN: the reflector tells whether our address is public.
        nat_type = "open" if udp is not None and udp[0] == local_ip else "unknown"
        return NATInfo(
            nat_type=nat_type,
            public_ip=udp[0] if udp else None,
            public_port=udp[1] if udp else None,
            local_ip=local_ip,
            local_port=self._session.listen_port(),
            stun_server=None,
            duration=0.0,
            error=None if udp else "no reply from the reflector",
            source="signaling",
        )


def _load_signaling() -> None:
    """Import what talking to the signaling server needs (aiohttp for whoami,
    websockets for the client): run in a thread, so the loop goes on meanwhile."""
    import importlib

    for name in ("lt_punch.signaling.mapping", "lt_punch.signaling.client",
                 "lt_punch.torrent.rooms"):
        importlib.import_module(name)


def tls_context(cafile: str) -> ssl.SSLContext:
    """A client TLS context that also trusts the CAs in ``cafile`` (PEM).

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"signaling_ca: cannot load {cafile}: {exc}") from None
