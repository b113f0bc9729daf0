"""NAT type detection with pystun3 on a socket we own.

Theory of operation
-------------------
RFC 3489 section 10.1 classifies a NAT with up to four Binding tests against a
server that owns two IP addresses and two ports:

1. Test I to the primary address. No answer: UDP is blocked. Mapped address equal
   to our bound address: no NAT; then Test II (answer from the other IP and port)
   tells "Open Internet" from "Symmetric UDP Firewall".
2. Behind a NAT, Test II answered means "Full Cone".
3. Otherwise Test I to the server's CHANGED-ADDRESS: a different mapping means
   "Symmetric NAT"; the same mapping, then Test III (answer from the other port
   only) tells "Restricted" from "Port Restricted".

pystun3 2.0.0 implements exactly that in ``get_nat_type(sock, source_ip, source_port,
stun_host=, stun_port=)`` with blocking calls: each test sends up to 4 times and
waits ``sock.gettimeout()`` each time (``count = 3`` retries in ``stun_test``), so an
unanswered test costs 4 x ``timeout``. It compares the mapped address with
``source_ip``, so the socket must be bound to the real local address that routes to
the server (a socket on 0.0.0.0 can never be "Open Internet"); we learn that address
from a connected UDP socket's ``getsockname()``. It reads MAPPED-ADDRESS only and
reports the address of its *last* test (None when that one timed out), so before
handing the socket to pystun3 we send one Binding request of our own on it and take
the public endpoint from that answer (XOR-MAPPED-ADDRESS preferred). That probe also
spares the 4 x timeout of pystun3's Test I when the server is silent.

Everything blocking runs in a worker thread (``asyncio.to_thread``) under
``asyncio.timeout(overall_timeout)``. A thread cannot be cancelled, so on timeout we
shut down and close its socket: that wakes the blocked ``recvfrom``, pystun3's next
call fails and the thread ends at once (at worst after one per-request timeout).
Network failures never raise: they come back as a :class:`NATInfo` with ``error`` set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence

import stun as pystun

from ..errors import ConfigError, RemoteProtocolError
from ..types import Address
from .info import NATInfo, from_pystun
from .stun import StunMessage, binding_request, new_transaction_id

logger = logging.getLogger(__name__)

_PROBE_ATTEMPTS = 3
"""Sends of our own first Binding request before a server counts as silent."""

_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 shared address space


def classify_local(ip: str) -> bool:
    """True when ``ip`` is already a public address (so the host is "open").

    Private (RFC 1918), loopback, link-local, CGNAT (100.64.0.0/10), unspecified,
    multicast and reserved addresses are not public. Unparsable input is not public.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def route_local_ip(server: Address) -> str:
    """The local IPv4 address the kernel would use to reach ``server`` (no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server)
        return str(sock.getsockname()[0])


class _Probe:
    """One server's detection, run in a worker thread; ``abort()`` from the loop."""

    def __init__(self, server: Address, local_ip: str | None, timeout: float) -> None:
        self.server = server
        self.local_ip = local_ip
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.public: Address | None = None
        self.local: Address | None = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        if self.sock is not None:
            # Linux wakes a thread blocked on a UDP socket on shutdown() (it still
            # returns ENOTCONN for an unconnected one); its next call then fails.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def info(self, nat_type: str, error: str | None) -> NATInfo:
        return NATInfo(
            nat_type=nat_type,
            public_ip=self.public[0] if self.public else None,
            public_port=self.public[1] if self.public else None,
            local_ip=self.local[0] if self.local else self.local_ip,
            local_port=self.local[1] if self.local else None,
            stun_server=self.server,
            error=error,
            source="stun",
        )

    def run(self) -> NATInfo:
        host, port = self.server
        name = f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
            server_ip = str(infos[0][4][0])
        except (OSError, IndexError) as exc:
            return self.info("unknown", f"cannot resolve STUN server {name}: {exc}")
        try:
            local_ip = self.local_ip or route_local_ip((server_ip, port))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock = sock
            if self.aborted:  # abort() ran before the socket existed
                sock.close()
                return self.info("unknown", "aborted")
            with sock:
                sock.bind((local_ip, 0))
                bound = sock.getsockname()
                self.local = (str(bound[0]), int(bound[1]))
                sock.settimeout(self.timeout)
                reply = self._first_request(sock, (server_ip, port))
                if reply is None:
                    return self.info(
                        "blocked",
                        f"no answer from STUN server {name} "
                        f"({_PROBE_ATTEMPTS} tries, {self.timeout:g} s each)",
                    )
                self.public = reply.mapped_address
                if reply.other_address is None:
                    # Such a server (most RFC 5389-only ones) ignores CHANGE-REQUEST and
                    # answers from the same address, which pystun3 would take for a
                    # full cone: do not run the tests against it.
                    return self.info(
                        "unknown",
                        f"STUN server {name} sends no OTHER-ADDRESS/CHANGED-ADDRESS: "
                        "it cannot run the RFC 3489 tests (public endpoint only)",
                    )
                return self._classify(sock, server_ip, port)
        except OSError as exc:
            if self.aborted:
                return self.info("unknown", "aborted")
            return self.info("unknown", f"network error with STUN server {name}: {exc}")

    def _first_request(self, sock: socket.socket, server: Address) -> StunMessage | None:
        request = binding_request(new_transaction_id())
        data = bytes(request)
        for _ in range(_PROBE_ATTEMPTS):
            sock.sendto(data, server)
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    packet, _source = sock.recvfrom(2048)
                except TimeoutError:
                    break
                if self.aborted:
                    raise OSError("aborted")
                try:
                    reply = StunMessage.parse(packet)
                except RemoteProtocolError as exc:
                    logger.debug("< %s: dropped: %s", server, exc)
                    continue
                if reply.transaction_id == request.transaction_id:
                    logger.debug("< %s %s", server, reply)
                    sock.settimeout(self.timeout)
                    return reply
        sock.settimeout(self.timeout)
        return None

    def _classify(self, sock: socket.socket, server_ip: str, port: int) -> NATInfo:
        name = f"{self.server[0]}:{port}"
        assert self.local is not None
        try:
            result, _details = pystun.get_nat_type(
                sock, self.local[0], self.local[1], stun_host=server_ip, stun_port=port
            )
        except Exception as exc:  # pystun3 trusts the server's bytes; anything can fail
            if self.aborted:
                return self.info("unknown", "aborted")
            return self.info(
                "unknown",
                f"STUN server {name} answered but pystun3 failed: {type(exc).__name__}: {exc}",
            )
        nat_type = from_pystun(result)
        logger.debug("pystun3 says %r for %s", result, name)
        if result == pystun.Blocked:
            return self.info("unknown", f"STUN server {name} answered once, then stopped")
        if nat_type == "unknown":
            return self.info("unknown", f"STUN server {name}: {result}")
        return self.info(nat_type, None)


async def detect_nat(
    stun_servers: Sequence[Address],
    *,
    local_ip: str | None = None,
    # The brief's name: a per-request socket timeout for pystun3 inside the worker
    # thread; the await itself is bounded by asyncio.timeout(overall_timeout).
    timeout: float = 0.5,  # noqa: ASYNC109
    overall_timeout: float = 5.0,
) -> NATInfo:
    """Classify the NAT in front of this host with the RFC 3489 tests.

    Tries each server in turn until one answers and the tests complete.

    Args:
        stun_servers: ``(host, port)`` of servers that honour CHANGE-REQUEST.
        local_ip: address to bind; default: the one that routes to each server.
        timeout: seconds to wait for each answer (pystun3 sends each test 4 times).
        overall_timeout: seconds for the whole detection.

    Returns:
        A :class:`NATInfo`; on failure its ``error`` says why (never raises for
        network failures).

    Raises:
        ConfigError: a timeout is not positive.
    """
    if not timeout > 0:
        raise ConfigError(f"timeout: expected seconds > 0, got {timeout!r}")
    if not overall_timeout > 0:
        raise ConfigError(f"overall_timeout: expected seconds > 0, got {overall_timeout!r}")
    started = time.monotonic()
    servers = [(str(host), int(port)) for host, port in stun_servers]
    if not servers:
        return NATInfo(nat_type="unknown", error="no STUN servers configured", source="stun")

    results: list[NATInfo] = []
    probe: _Probe | None = None
    try:
        async with asyncio.timeout(overall_timeout):
            for host, port in servers:
                probe = _Probe((host, port), local_ip, timeout)
                info = await asyncio.to_thread(probe.run)
                results.append(info)
                if info.error is None:
                    break
    except TimeoutError:
        assert probe is not None
        probe.abort()
        results.append(
            probe.info(
                "unknown",
                f"NAT detection timed out after {overall_timeout:g} s "
                f"(STUN server {probe.server[0]}:{probe.server[1]})",
            )
        )
    best = _best(results)
    return dataclasses.replace(best, duration=time.monotonic() - started)


def _best(results: list[NATInfo]) -> NATInfo:
    # A complete result; else one from a server that answered; else the last failure.
    for info in results:
        if info.error is None:
            return info
    for info in reversed(results):
        if info.public_endpoint is not None:
            return info
    return results[-1]


__all__ = ["classify_local", "detect_nat", "route_local_ip"]
