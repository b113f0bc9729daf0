"""discover_nat, NATInfo and ``lt-punch nat`` on loopback (the lab tests the NATs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lt_punch.errors import ConfigError
from lt_punch.nat.cli import format_table, nat_command, to_json
from lt_punch.nat.discover import (
    FILTERING_MIN_WAIT,
    Retransmission,
    _allocation_pattern,
    _classic,
    _Client,
    discover_nat,
    route_local_ip,
)
from lt_punch.nat.info import CLASSIC_NAMES, NAT_TYPES, PYSTUN_TYPES, NATInfo, from_pystun
from lt_punch.nat.server import StunServer
from lt_punch.nat.stun import (
    MessageClass,
    StunMessage,
    binding_error,
    binding_request,
    binding_success,
)
from lt_punch.types import Address


@pytest.fixture
def silent_server() -> Iterator[Address]:
    """A bound UDP socket on loopback that never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with sock:
        yield sock.getsockname()


def _full_server() -> StunServer:
    return StunServer(("127.0.0.1", 0), alternate_port=0, alternate_host="127.0.0.2")


FAST = Retransmission(rto=0.02, count=3, rm=4)
"""A short schedule for loopback: gives up after 0.02 + 0.04 + 0.08 = 0.14 s."""


class Hostile(asyncio.DatagramProtocol):
    """A "server" answering every request with ``reply(request_bytes)`` (None: silence)."""

    def __init__(self, reply: Callable[[bytes], list[bytes]]) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received += 1
        assert self.transport is not None
        for packet in self.reply(data):
            self.transport.sendto(packet, addr)


@contextlib.asynccontextmanager
async def hostile(reply: Callable[[bytes], list[bytes]]) -> AsyncIterator[tuple[Address, Hostile]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Hostile(reply), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[:2], protocol
    finally:
        transport.close()


async def test_no_servers() -> None:
    info = await discover_nat([])
    assert info.nat_type == "unknown"
    assert info.error == "no STUN servers configured"
    assert info.stun_server is None


async def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="overall_timeout: expected seconds > 0"):
        await discover_nat([("127.0.0.1", 3478)], overall_timeout=-1)
    with pytest.raises(ConfigError, match="rto: expected seconds > 0, got 0"):
        Retransmission(rto=0)
    with pytest.raises(ConfigError, match="count: expected an integer >= 1, got 0"):
        Retransmission(count=0)
    with pytest.raises(ConfigError, match="rm: expected a factor > 0"):
        Retransmission(rm=-1)


def test_retransmission_schedule() -> None:
    # RFC 8489 section 6.2.1: intervals double; the wait after the last send is Rm x RTO.
    assert Retransmission().waits() == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert Retransmission().total == pytest.approx(1.1)
    # The RFC's own example: RTO 500 ms, Rc 7, Rm 16 -> gives up at 39.5 s.
    assert Retransmission(rto=0.5, count=7, rm=16).total == pytest.approx(39.5)


async def test_unreachable_server_is_blocked(silent_server: Address) -> None:
    info = await discover_nat([silent_server], retransmission=FAST)
    assert info.nat_type == "blocked"
    assert info.error == f"no answer from any STUN server (127.0.0.1:{silent_server[1]})"
    assert info.stun_server == silent_server
    assert info.local_ip == "127.0.0.1" and info.local_port
    assert info.public_endpoint is None
    assert FAST.total <= info.duration < FAST.total + 1.0
    assert [t.outcome for t in info.tests if t.name == "binding"] == ["no answer"]


async def test_requests_are_retransmitted_on_schedule() -> None:
    # The server drops the first two sends of every request, then answers.
    seen: dict[bytes, int] = {}

    def reply(data: bytes) -> list[bytes]:
        request = StunMessage.parse(data)
        seen[request.transaction_id] = seen.get(request.transaction_id, 0) + 1
        if seen[request.transaction_id] < 3:
            return []
        return [bytes(binding_success(request, ("198.51.100.7", 4000)))]

    async with hostile(reply) as (address, server):
        info = await discover_nat([address], retransmission=Retransmission(rto=0.05))
    binding = next(t for t in info.tests if t.name == "binding")
    assert binding.outcome.startswith("mapped 198.51.100.7:4000 from 127.0.0.1:")
    assert 0.05 + 0.1 <= binding.duration < 0.05 + 0.1 + 0.2 + 0.5  # answered after send 3
    assert seen[next(iter(seen))] == 3


async def test_overall_timeout_bounds_the_wait(silent_server: Address) -> None:
    started = time.monotonic()
    info = await discover_nat([silent_server], overall_timeout=0.3)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert info.nat_type == "unknown"
    assert info.error == "NAT discovery timed out after 0.3 s"


async def test_open_on_loopback_with_a_full_rfc5780_server() -> None:
    async with _full_server() as server:
        info = await discover_nat([server.address])
    assert info.error is None
    assert (info.nat_type, info.mapping, info.filtering) == (
        "open", "no-nat", "endpoint-independent")
    assert info.classic_name == "Open Internet"
    assert info.public_endpoint == info.local_endpoint  # no NAT on loopback
    assert info.port_preserved is True and info.allocation == "preserved"
    assert info.confidence == 1.0 and info.skipped == ()
    assert info.stun_server == server.address
    names = sorted(t.name for t in info.tests)
    assert names == ["binding", "filtering-change-ip-port", "filtering-change-port"]
    # Both change-request answers came from the asked-for addresses.
    other = server.other_address
    assert other is not None
    outcomes = {t.name: t.outcome for t in info.tests}
    assert outcomes["filtering-change-ip-port"].endswith(f"from {other[0]}:{other[1]}")
    assert outcomes["filtering-change-port"].endswith(f"from 127.0.0.1:{other[1]}")
    assert info.duration < 0.5  # a few loopback round trips, no timeouts


class _FilteredServer(StunServer):
    """A full RFC 5780 server whose answers from another address or port never arrive:
    what a client behind an address-and-port-dependent filter sees."""

    def _receive(self, data: bytes, source: Address, slot: tuple[int, int]) -> None:
        assert self._responder is not None
        result = self._responder.receive_datagram(data, source, slot)
        if result is not None and result[1] == slot:
            super()._receive(data, source, slot)


async def test_an_unanswered_filtering_test_gives_up_after_a_few_round_trips() -> None:
    """Behind a restrictive filter the change-request answers never come: discovery
    stops waiting for them after a few round trips of Test I (at least
    FILTERING_MIN_WAIT), not after the whole retransmission schedule (1.1 s)."""
    server = _FilteredServer(("127.0.0.1", 0), alternate_port=0, alternate_host="127.0.0.2")
    async with server:
        info = await discover_nat([server.address])
    assert (info.mapping, info.filtering) == ("no-nat", "address-and-port-dependent")
    outcomes = {t.name: t for t in info.tests}
    for name in ("filtering-change-ip-port", "filtering-change-port"):
        assert outcomes[name].outcome.startswith(f"no answer within {FILTERING_MIN_WAIT:.2f} s")
        assert FILTERING_MIN_WAIT <= outcomes[name].duration < Retransmission().total
    assert info.duration < Retransmission().total


async def test_server_ignoring_change_request_leaves_filtering_unknown() -> None:
    server = StunServer(("127.0.0.1", 0), alternate_port=0, alternate_host="127.0.0.2",
                        ignore_change_request=True)
    async with server:
        info = await discover_nat([server.address])
    assert info.mapping == "no-nat"
    assert info.filtering == "unknown"
    assert info.nat_type == "open" and info.confidence == 0.5
    ((test, reason),) = info.skipped
    assert test == "filtering"
    assert reason.startswith("the server ignores CHANGE-REQUEST (answered from 127.0.0.1:")


async def test_server_without_other_address_leaves_filtering_unknown() -> None:
    async with StunServer(("127.0.0.1", 0)) as server:
        info = await discover_nat([server.address])
        # Test I only: the filtering answers could not be judged, so nobody waits for them.
        assert info.duration < 0.5
    assert (info.mapping, info.filtering) == ("no-nat", "unknown")
    assert info.skipped == (("filtering", "the server sends no OTHER-ADDRESS, so it cannot "
                             "answer from another address (RFC 5780 section 4.4 needs one)"),)


async def test_two_port_server_tests_filtering_partly() -> None:
    async with StunServer(("127.0.0.1", 0), alternate_port=0) as server:
        info = await discover_nat([server.address], retransmission=FAST)
    assert info.filtering == "unknown"
    assert info.skipped == (("filtering", "the server has no second address: filtering "
                             "only partly testable"),)


async def test_tries_next_server_after_silent_one(silent_server: Address) -> None:
    async with _full_server() as server:
        info = await discover_nat([silent_server, server.address], retransmission=FAST)
    assert info.nat_type == "open" and info.filtering == "endpoint-independent"
    assert info.stun_server == server.address


async def test_unresolvable_server() -> None:
    info = await discover_nat([("name.invalid", 3478)], overall_timeout=5.0)
    assert info.nat_type == "unknown"
    assert info.error is not None
    assert info.error.startswith("cannot resolve STUN server name.invalid:3478: ")


def _mutations(request: bytes) -> list[bytes]:
    """Broken answers that carry the request's transaction id."""
    msg = StunMessage.parse(request)
    good = bytes(binding_success(msg, ("198.51.100.7", 4000)))
    no_mapped = bytes(StunMessage(msg.method, MessageClass.SUCCESS, msg.transaction_id))
    return [
        good[:-3],  # truncated
        good[:2] + b"\xff\xff" + good[4:],  # length lies
        b"\xc0" + good[1:],  # not STUN
        bytes(binding_error(msg, 500, "Server Error")),
        no_mapped,
        bytes(binding_success(msg, ("0.0.0.0", 4000))),
        bytes(binding_success(msg, ("198.51.100.7", 0))),
    ]


async def test_hostile_answers_never_crash() -> None:
    async with hostile(_mutations) as (address, server):
        info = await discover_nat([address], retransmission=FAST)
    # The error answer came first in a valid form: it is reported, nothing raised.
    binding = next(t for t in info.tests if t.name == "binding")
    assert binding.outcome in ("error 500 Server Error", "answer without a mapped address")
    assert info.nat_type == "blocked"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_client_survives_any_datagram(data: st.DataObject) -> None:
    """Random and mutated responses to a pending request: parsed or dropped, never raised."""
    client = _Client()
    tid = bytes(12)
    request = binding_request(tid)
    good = bytes(binding_success(request, ("198.51.100.7", 4000), other_address=("1.2.3.4", 5)))
    kind = data.draw(st.sampled_from(["random", "flip", "cut", "splice"]))
    if kind == "random":
        packet = data.draw(st.binary(max_size=200))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        packet = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
    elif kind == "cut":
        packet = good[: data.draw(st.integers(0, len(good)))]
    else:
        packet = good[:20] + data.draw(st.binary(max_size=100))
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        client.pending[tid] = future
        client.datagram_received(packet, ("127.0.0.1", 3478))
        if future.done():
            message, source = future.result()
            assert message.transaction_id == tid and source == ("127.0.0.1", 3478)
        else:
            assert client.dropped == 1 or not packet
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("mapping", "filtering", "nat_type"),
    [
        ("no-nat", "endpoint-independent", "open"),
        ("no-nat", "address-and-port-dependent", "symmetric-firewall"),
        ("no-nat", "address-dependent", "symmetric-firewall"),
        ("no-nat", "unknown", "open"),
        ("endpoint-independent", "endpoint-independent", "full"),
        ("endpoint-independent", "address-dependent", "restricted"),
        ("endpoint-independent", "address-and-port-dependent", "port"),
        ("endpoint-independent", "unknown", "unknown"),
        ("address-dependent", "address-and-port-dependent", "symmetric"),
        ("address-and-port-dependent", "unknown", "symmetric"),
        ("endpoint-dependent", "unknown", "symmetric"),
        ("unknown", "endpoint-independent", "unknown"),
    ],
)
def test_classic_name_from_behaviours(mapping: str, filtering: str, nat_type: str) -> None:
    assert _classic(mapping, filtering) == nat_type


@pytest.mark.parametrize(
    ("ports", "pattern"),
    [
        ([5000, 5001, 5002, 5003], ("sequential", 1)),
        ([5000, 5002, 5004, 5006], ("sequential", 2)),
        ([5006, 5004, 5002], ("sequential", -2)),
        ([5000, 5001, 5003, 5004], ("random", None)),
        ([41000, 13211, 22476, 56811], ("random", None)),
        ([5000, 5000, 5000], ("random", None)),
        ([5000], ("random", None)),
    ],
)
def test_allocation_pattern(ports: list[int], pattern: tuple[str, int | None]) -> None:
    assert _allocation_pattern(ports) == pattern


async def test_discovery_does_not_block_the_loop(silent_server: Address) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(tick())
    try:
        await discover_nat([silent_server], retransmission=FAST)
    finally:
        task.cancel()
    assert ticks > 5


def test_route_local_ip() -> None:
    assert route_local_ip(("127.0.0.1", 9)) == "127.0.0.1"


def test_pystun_names_map() -> None:
    assert from_pystun("Open Internet") == "open"
    assert from_pystun("Full Cone") == "full"
    assert from_pystun("Restric NAT") == "restricted"  # pystun3 2.0.0's spelling
    assert from_pystun("Restricted NAT") == "restricted"
    assert from_pystun("Restric Port NAT") == "port"
    assert from_pystun("Restricted Port NAT") == "port"
    assert from_pystun("Symmetric NAT") == "symmetric"
    assert from_pystun("Blocked") == "blocked"
    assert from_pystun("Symmetric UDP Firewall") == "symmetric-firewall"
    assert from_pystun("Meet an error, when do Test1 on Changed IP and Port") == "unknown"
    assert set(PYSTUN_TYPES.values()) <= set(NAT_TYPES)
    assert set(CLASSIC_NAMES) == set(NAT_TYPES)


def test_pystun_constants_are_what_we_map() -> None:
    import stun as pystun

    for name in (
        pystun.OpenInternet,
        pystun.FullCone,
        pystun.RestricNAT,
        pystun.RestricPortNAT,
        pystun.SymmetricNAT,
        pystun.Blocked,
        pystun.SymmetricUDPFirewall,
    ):
        assert name in PYSTUN_TYPES


def test_natinfo() -> None:
    info = NATInfo(
        nat_type="port",
        public_ip="203.0.113.5",
        public_port=40000,
        local_ip="192.168.1.2",
        local_port=6881,
        stun_server=("stun.example", 3478),
        duration=0.25,
    )
    assert info.classic_name == "Port-Restricted Cone"
    assert info.is_behind_nat is True
    assert str(info) == "port (Port-Restricted Cone) public 203.0.113.5:40000"
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "nat_type": "port",
        "classic_name": "Port-Restricted Cone",
        "public_ip": "203.0.113.5",
        "public_port": 40000,
        "local_ip": "192.168.1.2",
        "local_port": 6881,
        "stun_server": ["stun.example", 3478],
        "duration": 0.25,
        "error": None,
        "source": "stun",
        "mapping": None,
        "filtering": None,
        "port_preserved": None,
        "allocation": None,
        "port_delta": None,
        "confidence": 1.0,
        "tests": [],
        "skipped": [],
    }
    assert NATInfo().is_behind_nat is None
    assert NATInfo(nat_type="open").is_behind_nat is False
    assert str(NATInfo(error="x")) == "unknown (Unknown) public ? error: x"
    with pytest.raises(ValueError, match="nat_type: 'cone'"):
        NATInfo(nat_type="cone")


# --- lt-punch nat ----------------------------------------------------------------------


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(nat_command, args, env=env or {"P2P_STUN_SERVERS": ""})
    return result.exit_code, result.stdout, result.stderr


def test_cli_without_servers_exits_2() -> None:
    code, out, err = _run_cli([])
    assert code == 2
    assert "no STUN server configured: pass --stun host:port or set P2P_STUN_SERVERS" in err


def test_cli_bad_server_exits_2() -> None:
    code, _, err = _run_cli(["--stun", "nohostport"])
    assert code == 2
    assert "--stun: expected host:port, got 'nohostport'" in err
    code, _, err = _run_cli([], env={"P2P_STUN_SERVERS": "a:1,b:99999"})
    assert code == 2
    assert "P2P_STUN_SERVERS: port 99999 out of range" in err


async def _cli_in_thread(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    # The command runs its own event loop (asyncio.run): give it a thread, with a bound.
    async with asyncio.timeout(10):
        return await asyncio.to_thread(_run_cli, args, env)


async def test_cli_table_and_json() -> None:
    async with _full_server() as server:
        target = f"127.0.0.1:{server.address[1]}"
        code, out, _ = await _cli_in_thread(["--stun", target], {"P2P_STUN_SERVERS": ""})
        assert code == 0
        table, _, tests = out.partition("\ntests:\n")
        rows = {line[:17].strip(): line[17:].strip() for line in table.splitlines()}
        assert rows["NAT type"] == "open (Open Internet)"
        assert rows["mapping"] == "no-nat"
        assert rows["filtering"] == "endpoint-independent"
        assert rows["port allocation"] == "preserved"
        assert rows["confidence"] == "1.00"
        assert [line.split()[0] for line in tests.splitlines()] == [
            "binding", "filtering-change-ip-port", "filtering-change-port"]
        assert all(" ms " in line for line in tests.splitlines())
        assert rows["public endpoint"].startswith("127.0.0.1:")
        assert rows["local endpoint"] == rows["public endpoint"]
        assert rows["STUN server"] == target
        assert rows["duration"].endswith(" s")
        assert "error" not in rows

        # Servers from the environment, JSON output.
        code, out, _ = await _cli_in_thread(["--json"], {"P2P_STUN_SERVERS": target})
        assert code == 0
        data = json.loads(out)
        assert data["nat_type"] == "open"
        assert data["stun_server"] == ["127.0.0.1", server.address[1]]


async def test_cli_failure_exits_1(silent_server: Address) -> None:
    target = f"127.0.0.1:{silent_server[1]}"
    code, out, _ = await _cli_in_thread(
        ["--stun", target, "--rto", "0.02", "--sends", "2", "--json"], {"P2P_STUN_SERVERS": ""}
    )
    assert code == 1
    assert json.loads(out)["nat_type"] == "blocked"


def test_cli_registered_and_without_libtorrent() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lt_punch.cli import main\n"
        "r = CliRunner().invoke(main, ['nat', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert '--stun' in r.output\n"
        "assert 'libtorrent' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_failed_detection_claims_no_confidence() -> None:
    # It printed "confidence 1.00" beside the error.
    info = NATInfo(nat_type="unknown", error="cannot resolve STUN server x:1")
    table = format_table(info)
    assert any(line.split() == ["confidence", "-"] for line in table.splitlines()), table
    assert to_json(info)["confidence"] is None
    blocked = NATInfo(nat_type="blocked", error="no answer", confidence=0.7)
    assert to_json(blocked)["confidence"] == 0.7
    assert "0.70" in format_table(blocked)
