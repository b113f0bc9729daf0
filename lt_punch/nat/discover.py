"""NAT behaviour discovery (RFC 5780) with asyncio: mapping, filtering, allocation.

Theory of operation
-------------------
RFC 4787 describes a NAT by two independent behaviours, and RFC 5780 section 4 tests
each with a STUN server that owns two addresses (A1, A2) and two ports (P1, P2) and
says so in OTHER-ADDRESS:

* **Mapping** (section 4.3), from one socket: Test I sends a Binding request to
  A1:P1 and learns the mapped address M1. If M1 is our own local address there is no
  NAT. Otherwise Test II (to A2:P1) gives M2: M2 == M1 means endpoint-independent
  mapping (EIM); else Test III (to A2:P2) gives M3: M3 == M2 means address-dependent,
  otherwise address-and-port-dependent mapping. Tests II and III run concurrently.
* **Filtering** (section 4.4), from a *second* socket so that the mapping tests'
  packets to A2 cannot open its filter: a request to A1:P1 asking for the answer from
  A2:P2 (CHANGE-REQUEST ip+port) arrives only through endpoint-independent filtering
  (EIF); one asking for A1:P2 (change port) arrives through EIF or address-dependent
  filtering (ADF); neither: address-and-port-dependent filtering (APDF). Both requests
  go out at once, at the same time as Test I. An answer from another source than the
  one asked for means the server ignores CHANGE-REQUEST: filtering is then *unknown*.
* **Allocation** (for port prediction): whether the mapped port equals the local port
  (port preservation), and, for endpoint-dependent mapping, the ports of a few fresh
  sockets probed one after another: a constant step is ``sequential`` (with its
  ``port_delta``), anything else ``random``.

Without OTHER-ADDRESS (most public servers), mapping is measured by comparing the
mappings two *different* servers see from one socket (section 4.3's fallback): equal
means EIM, different means endpoint-dependent (which of its two kinds is then not
known); filtering is unknown.

The classic RFC 3489 name follows: no NAT + EIF is "open", no NAT + filtering is a
"symmetric UDP firewall", EIM + EIF/ADF/APDF are full/restricted/port-restricted
cone, endpoint-dependent mapping is "symmetric"; an EIM NAT whose filtering could not
be tested is "unknown" (the strategy then assumes the strictest cone). No answer from
any server is "blocked". ``confidence`` drops for every test that could not run, and
``skipped`` says which and why.

Every request has its own retransmission schedule (RFC 8489 section 6.2.1 style,
:class:`Retransmission`; shorter than the RFC's defaults, which would spend 39.5 s on
each unanswered filtering test), the whole discovery has ``overall_timeout``, and a
hostile or truncated datagram is dropped, never raised. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ..errors import ConfigError, RemoteProtocolError
from ..types import Address
from .info import NATInfo, NATTest
from .stun import MessageClass, Method, StunMessage, binding_request, new_transaction_id

logger = logging.getLogger(__name__)

INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_PORT_DEPENDENT = "address-and-port-dependent"
ENDPOINT_DEPENDENT = "endpoint-dependent"
"""Endpoint-dependent, but whether address- or address-and-port- is not known."""
NO_NAT = "no-nat"
UNKNOWN = "unknown"

def route_local_ip(server: Address) -> str:
    """The local IPv4 address the kernel would use to reach ``server`` (no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server)
        return str(sock.getsockname()[0])


ALLOCATION_PROBES = 4
"""Fresh sockets probed one after another to see how an ENDPOINT_DEPENDENT NAT picks ports."""


@dataclass(frozen=True)
class Retransmission:
    """When a STUN request is re-sent and when it is given up (RFC 8489 section 6.2.1).

    Sends happen at 0, ``rto``, 3 ``rto``, 7 ``rto``... (the interval doubles), ``count``
    sends in all (the RFC's Rc); after the last one the client waits ``rm`` x ``rto``
    (the RFC's Rm). The RFC's defaults (RTO 0.5 s, Rc 7, Rm 16) give up after 39.5 s;
    ours after 1.1 s: enough for any responsive server, short enough that an unanswered
    filtering test (the normal outcome behind a restrictive NAT) keeps discovery under
    1.5 s.
    """

    rto: float = 0.1
    count: int = 4
    rm: float = 4.0

    def __post_init__(self) -> None:
        if not self.rto > 0:
            raise ConfigError(f"rto: expected seconds > 0, got {self.rto!r}")
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ConfigError(f"count: expected an integer >= 1, got {self.count!r}")
        if not self.rm > 0:
            raise ConfigError(f"rm: expected a factor > 0, got {self.rm!r}")

    def waits(self) -> list[float]:
        """Seconds to wait after each send before the next one (or giving up)."""
        return [self.rto * 2**i for i in range(self.count - 1)] + [self.rto * self.rm]

    @property
    def total(self) -> float:
        """Seconds from the first send to giving up."""
        return sum(self.waits())


@dataclass(frozen=True)
class Answer:
    """A matched Binding success response."""

    mapped: Address
    source: Address
    other: Address | None
    rtt: float


class _Client(asyncio.DatagramProtocol):
    """One UDP socket; requests matched to responses by transaction id."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[bytes, asyncio.Future[tuple[StunMessage, Address]]] = {}
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        try:
            message = StunMessage.parse(data, require_cookie=True)
        except RemoteProtocolError as exc:
            self.dropped += 1
            logger.debug("< %s: dropped %d bytes: %s", source, len(data), exc)
            return
        future = self.pending.get(message.transaction_id)
        if (
            future is None
            or future.done()
            or message.method != Method.BINDING
            or message.message_class not in (MessageClass.SUCCESS, MessageClass.ERROR)
        ):
            self.dropped += 1
            logger.debug("< %s: not an answer to a pending request: %s", source, message)
            return
        future.set_result((message, source))

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable on Linux; the request simply goes unanswered.
        logger.debug("socket error: %s", exc)

    @property
    def local(self) -> Address:
        assert self.transport is not None
        name = self.transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    async def request(
        self,
        server: Address,
        schedule: Retransmission,
        *,
        change_ip: bool = False,
        change_port: bool = False,
    ) -> tuple[StunMessage, Address, float] | None:
        """Send a Binding request with retransmissions; the answer or None on timeout."""
        assert self.transport is not None
        request = binding_request(
            new_transaction_id(), change_ip=change_ip, change_port=change_port
        )
        data = bytes(request)
        future: asyncio.Future[tuple[StunMessage, Address]] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending[request.transaction_id] = future
        started = time.monotonic()
        try:
            for wait in schedule.waits():
                self.transport.sendto(data, server)
                try:
                    message, source = await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    continue
                return message, source, time.monotonic() - started
            return None
        finally:
            del self.pending[request.transaction_id]
            future.cancel()


async def _open_client(local_ip: str) -> _Client:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        _Client, local_addr=(local_ip, 0), family=socket.AF_INET
    )
    return protocol


def _close(client: _Client) -> None:
    if client.transport is not None:
        client.transport.close()


def _plausible(address: Address) -> bool:
    """A mapped address a NAT could have given us: unicast, port not 0."""
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    return address[1] != 0 and not (ip.is_unspecified or ip.is_multicast)


class _Run:
    """State of one discovery: the tests done so far and their outcomes."""

    def __init__(self, schedule: Retransmission) -> None:
        self.schedule = schedule
        self.tests: list[NATTest] = []
        self.skipped: list[tuple[str, str]] = []
        self.clients: list[_Client] = []

    async def client(self, local_ip: str) -> _Client:
        client = await _open_client(local_ip)
        self.clients.append(client)
        return client

    async def binding(
        self,
        name: str,
        client: _Client,
        server: Address,
        *,
        change_ip: bool = False,
        change_port: bool = False,
    ) -> Answer | None:
        """One test: a Binding request, recorded in :attr:`tests`."""
        started = time.monotonic()
        result = await client.request(
            server, self.schedule, change_ip=change_ip, change_port=change_port
        )
        duration = time.monotonic() - started
        answer: Answer | None = None
        if result is None:
            outcome = "no answer"
        else:
            message, source, rtt = result
            if message.message_class == MessageClass.ERROR:
                error = message.error_code
                outcome = f"error {error}" if error else "error response"
            elif (mapped := message.mapped_address) is None:
                outcome = "answer without a mapped address"
            elif not _plausible(mapped):
                outcome = f"answer with an impossible mapped address {mapped[0]}:{mapped[1]}"
            else:
                answer = Answer(mapped, source, message.other_address, rtt)
                outcome = f"mapped {mapped[0]}:{mapped[1]} from {source[0]}:{source[1]}"
        self.tests.append(NATTest(name, f"{server[0]}:{server[1]}", duration, outcome))
        logger.debug("%s -> %s: %s (%.3f s)", name, server, self.tests[-1].outcome, duration)
        return answer

    def close(self) -> None:
        for client in self.clients:
            _close(client)


async def _resolve(host: str, port: int) -> Address:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
    )
    return str(infos[0][4][0]), port


FILTERING_RTTS = 8
"""An unanswered filtering test is given up after this many round trips of the first
test's answer (at least :data:`FILTERING_MIN_WAIT`), instead of the full schedule: an
answer that the NAT lets in comes within one round trip, so the rest of the wait
(0.75 s of the 1.1 s schedule) was the whole start-up delay behind a restrictive NAT."""

FILTERING_MIN_WAIT = 0.35
"""Seconds: long enough for three sends of the default schedule (0, 0.1, 0.3 s), so a
lost request or answer is retried twice before the test counts as filtered."""


class _Filtering:
    """The two CHANGE-REQUEST tests (RFC 5780 section 4.4), run from the start."""

    def __init__(self, run: _Run, client: _Client, server: Address) -> None:
        self.run = run
        self.server = server
        self.started = time.monotonic()
        self.tasks = {
            "filtering-change-ip-port": asyncio.ensure_future(run.binding(
                "filtering-change-ip-port", client, server, change_ip=True,
                change_port=True)),
            "filtering-change-port": asyncio.ensure_future(run.binding(
                "filtering-change-port", client, server, change_port=True)),
        }

    async def results(self, rtt: float) -> tuple[Answer | None, Answer | None]:
        """Both answers, a test still unanswered after ``FILTERING_RTTS`` x ``rtt``
        (from their start) counting as filtered."""
        wait = max(FILTERING_MIN_WAIT, FILTERING_RTTS * rtt)
        remaining = self.started + wait - time.monotonic()
        await asyncio.wait(self.tasks.values(), timeout=max(0.0, remaining))
        for name, task in self.tasks.items():
            if not task.done():
                self.run.tests.append(NATTest(
                    name, f"{self.server[0]}:{self.server[1]}", time.monotonic() - self.started,
                    f"no answer within {wait:.2f} s ({FILTERING_RTTS} round trips of "
                    f"{rtt * 1000:.1f} ms, at least {FILTERING_MIN_WAIT:g} s)"))
        await self.cancel()
        both, port = (t.result() if t.done() and not t.cancelled() else None
                      for t in self.tasks.values())
        return both, port

    async def cancel(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def _judge_filtering(
    run: _Run, primary: Address, other: Address | None,
    both: Answer | None, port: Answer | None,
) -> str:
    """EIF / ADF / APDF from the two change-request tests, or UNKNOWN (with a reason)."""
    if other is None:
        run.skipped.append(("filtering", "the server sends no OTHER-ADDRESS, so it cannot "
                            "answer from another address (RFC 5780 section 4.4 needs one)"))
        return UNKNOWN
    for answer, expected in ((both, other), (port, (primary[0], other[1]))):
        if answer is not None and answer.source != expected:
            run.skipped.append((
                "filtering",
                f"the server ignores CHANGE-REQUEST (answered from {answer.source[0]}:"
                f"{answer.source[1]}, not {expected[0]}:{expected[1]})",
            ))
            return UNKNOWN
    if other[0] == primary[0] or other[1] == primary[1]:
        # One address (or one port) only: a changed-IP-and-port answer cannot come.
        if other[1] != primary[1] and port is None:
            return ADDRESS_PORT_DEPENDENT  # not even another port of the same address gets through
        run.skipped.append(("filtering", "the server has no second "
                            f"{'address' if other[0] == primary[0] else 'port'}: "
                            "filtering only partly testable"))
        return UNKNOWN
    if both is not None:
        return INDEPENDENT
    if port is not None:
        return ADDRESS_DEPENDENT
    return ADDRESS_PORT_DEPENDENT


def _allocation_pattern(ports: Sequence[int]) -> tuple[str, int | None]:
    deltas = [b - a for a, b in zip(ports, ports[1:], strict=False)]
    if deltas and all(d == deltas[0] for d in deltas) and deltas[0] != 0:
        return "sequential", deltas[0]
    return "random", None


async def _probe_allocation(run: _Run, local_ip: str, server: Address) -> list[int]:
    ports: list[int] = []
    for i in range(ALLOCATION_PROBES):
        client = await run.client(local_ip)
        answer = await run.binding(f"allocation-{i + 1}", client, server)
        if answer is None:
            break
        ports.append(answer.mapped[1])
    return ports


def _classic(mapping: str, filtering: str) -> str:
    if mapping == NO_NAT:
        if filtering == INDEPENDENT:
            return "open"
        if filtering == UNKNOWN:
            return "open"  # reachable by mapping; confidence says filtering is untested
        return "symmetric-firewall"
    if mapping in (ADDRESS_DEPENDENT, ADDRESS_PORT_DEPENDENT, ENDPOINT_DEPENDENT):
        return "symmetric"
    if mapping == INDEPENDENT:
        cones = {INDEPENDENT: "full", ADDRESS_DEPENDENT: "restricted",
                 ADDRESS_PORT_DEPENDENT: "port"}
        return cones.get(filtering, "unknown")
    return "unknown"


async def _discover(
    servers: Sequence[Address], local_ip: str | None, run: _Run
) -> NATInfo:
    resolved: list[Address] = []
    for host, port in servers:
        try:
            resolved.append(await _resolve(host, port))
        except OSError as exc:
            run.skipped.append(("resolve", f"cannot resolve STUN server {host}:{port}: {exc}"))
    if not resolved:
        return NATInfo(nat_type="unknown", error="; ".join(r for _, r in run.skipped))
    primary = resolved[0]
    if local_ip is None:
        local_ip = route_local_ip(primary)
    mapper = await run.client(local_ip)
    filterer = await run.client(local_ip)

    # Test I to every server at once (the first that answers leads), filtering in parallel.
    filtering: list[_Filtering] = []  # started by _measure, perhaps twice
    try:
        return await _measure(run, resolved, local_ip, mapper, filterer, filtering)
    finally:
        for tests in filtering:
            await tests.cancel()


NEXT_SERVER_HEAD_START = 0.2
"""Seconds a STUN server gets to answer before the next configured one is asked too.
Until then only the first server is contacted: the next one may be the first's other
address, and a router that filters per host would then let the first server's
change-IP answer in (an address-restricted NAT taken for a full cone)."""


async def _after(previous: asyncio.Future[Any] | None,
                 test: Coroutine[Any, Any, Answer | None]) -> Answer | None:
    """``test`` once ``previous`` is over or has had its head start."""
    if previous is not None:
        try:
            await asyncio.wait({previous}, timeout=NEXT_SERVER_HEAD_START)
        except BaseException:
            test.close()  # never started: no request was sent
            raise
    return await test


async def _measure(
    run: _Run,
    resolved: list[Address],
    local_ip: str,
    mapper: _Client,
    filterer: _Client,
    tests: list[_Filtering],
) -> NATInfo:
    primary = resolved[0]
    tasks: list[asyncio.Future[Answer | None]] = []
    for i, server in enumerate(resolved):
        name = "binding" if i == 0 else f"binding-server-{i + 1}"
        tasks.append(asyncio.ensure_future(
            _after(tasks[-1] if tasks else None, run.binding(name, mapper, server))))
    tests.append(_Filtering(run, filterer, primary))
    answered: list[tuple[Address, Answer]] = []
    try:
        # In the order given: stop at a server with OTHER-ADDRESS, at two plain ones, or
        # when there is no NAT to measure.
        for candidate, task in zip(resolved, tasks, strict=True):
            answer = await task
            if answer is not None:
                answered.append((candidate, answer))
                if (answer.other is not None or len(answered) == 2
                        or answer.mapped == mapper.local):
                    break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    local = mapper.local
    if not answered:
        return NATInfo(
            nat_type="blocked", local_ip=local[0], local_port=local[1],
            stun_server=primary, confidence=0.7,
            error=f"no answer from any STUN server ({', '.join(f'{h}:{p}' for h, p in resolved)})",
        )
    server, first = next(((s, a) for s, a in answered if a.other is not None), answered[0])
    if first.other is None:
        await tests[0].cancel()  # without OTHER-ADDRESS the answers cannot be judged
    elif server != primary:  # the filtering tests went to a silent or a plain server
        await tests[0].cancel()
        tests.insert(0, _Filtering(run, filterer, server))

    # Filtering first: its change-IP answer comes from OTHER-ADDRESS, which the mapping
    # tests below contact. A router that filters per host (an address any of the host's
    # mappings sent to may reach them all) lets that answer in once the mapping socket
    # has sent there, and discovery took such an address-restricted NAT for a full cone
    # (the lab's "host-restricted" kind, 5 of 5). Its tests started with the first one.
    both = port = None
    if first.other is not None:
        both, port = await tests[0].results(first.rtt)
    filtering = _judge_filtering(run, server, first.other, both, port)

    # Mapping.
    mapping = UNKNOWN
    confidence = 1.0
    if first.mapped == local:
        mapping = NO_NAT
    elif first.other is not None:
        other = first.other
        second, third = await asyncio.gather(
            run.binding("mapping-other-address", mapper, (other[0], server[1])),
            run.binding("mapping-other-address-port", mapper, other),
        )
        if second is None:
            run.skipped.append(("mapping", f"no answer from OTHER-ADDRESS {other[0]}"))
        elif second.mapped == first.mapped:
            mapping = INDEPENDENT
        elif third is None:
            mapping = ENDPOINT_DEPENDENT
            confidence *= 0.9
            run.skipped.append(("mapping", "no answer from OTHER-ADDRESS's port: "
                                "address- or address-and-port-dependent not told apart"))
        else:
            mapping = ADDRESS_DEPENDENT if third.mapped == second.mapped else ADDRESS_PORT_DEPENDENT
    else:
        others = [(s, a) for s, a in answered if s != server]
        if others:
            mapping = INDEPENDENT if others[0][1].mapped == first.mapped else ENDPOINT_DEPENDENT
            confidence *= 0.9
            run.skipped.append(("mapping", "no OTHER-ADDRESS: mapping compared across two "
                                "servers; port dependence not tested"))
        else:
            run.skipped.append(("mapping", "the server sends no OTHER-ADDRESS and no second "
                                "server answered (give two --stun servers)"))

    allocation: str | None = None
    delta: int | None = None
    preserved = first.mapped[1] == local[1]
    if mapping in (ADDRESS_DEPENDENT, ADDRESS_PORT_DEPENDENT, ENDPOINT_DEPENDENT):
        ports = await _probe_allocation(run, local_ip, server)
        if len(ports) >= 3:
            allocation, delta = _allocation_pattern(ports)
        else:
            run.skipped.append(("allocation", "too few answers to see a pattern"))
    elif mapping in (INDEPENDENT, NO_NAT):
        allocation = "preserved" if preserved else "stable"

    nat_type = _classic(mapping, filtering)
    if filtering == UNKNOWN:
        confidence *= 0.5
    if mapping == UNKNOWN:
        confidence *= 0.3
    return NATInfo(
        nat_type=nat_type,
        public_ip=first.mapped[0],
        public_port=first.mapped[1],
        local_ip=local[0],
        local_port=local[1],
        stun_server=server,
        mapping=mapping,
        filtering=filtering,
        port_preserved=preserved,
        allocation=allocation,
        port_delta=delta,
        confidence=round(confidence, 3),
        error=None if nat_type != "unknown" else "; ".join(r for _, r in run.skipped) or None,
    )


async def discover_nat(
    stun_servers: Sequence[Address],
    *,
    local_ip: str | None = None,
    retransmission: Retransmission | None = None,
    overall_timeout: float = 5.0,  # noqa: ASYNC109 (a deadline for the whole discovery)
) -> NATInfo:
    """Measure the NAT in front of this host (see the module docstring).

    Args:
        stun_servers: ``(host, port)`` of STUN servers; the first that answers leads.
            One server with OTHER-ADDRESS/CHANGE-REQUEST support (e.g. coturn with two
            listening IPs) gives the full picture; two plain servers give the mapping.
        local_ip: address to bind; default: the one that routes to the first server.
        retransmission: per-request schedule; default :class:`Retransmission()`.
        overall_timeout: seconds for the whole discovery.

    Returns:
        A :class:`NATInfo` with ``tests`` (each test, its duration and outcome) and
        ``skipped``; never raises for network failures or hostile answers (``error``
        says what went wrong).

    Raises:
        ConfigError: a bad timeout or schedule.
    """
    if not overall_timeout > 0:
        raise ConfigError(f"overall_timeout: expected seconds > 0, got {overall_timeout!r}")
    schedule = retransmission if retransmission is not None else Retransmission()
    started = time.monotonic()
    servers = [(str(host), int(port)) for host, port in stun_servers]
    if not servers:
        return NATInfo(nat_type="unknown", error="no STUN servers configured")
    run = _Run(schedule)
    try:
        async with asyncio.timeout(overall_timeout):
            info = await _discover(servers, local_ip, run)
    except TimeoutError:
        info = NATInfo(nat_type="unknown",
                       error=f"NAT discovery timed out after {overall_timeout:g} s")
    except OSError as exc:
        info = NATInfo(nat_type="unknown", error=f"network error during NAT discovery: {exc}")
    finally:
        run.close()
    return dataclasses.replace(
        info,
        duration=time.monotonic() - started,
        tests=tuple(run.tests),
        skipped=tuple(run.skipped),
    )


__all__ = ["Answer", "Retransmission", "discover_nat", "route_local_ip"]
