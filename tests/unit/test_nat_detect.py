"""detect_nat, NATInfo and ``lt-punch nat`` on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from lt_punch.errors import ConfigError
from lt_punch.nat.cli import nat_command
from lt_punch.nat.detect import classify_local, detect_nat, route_local_ip
from lt_punch.nat.info import CLASSIC_NAMES, NAT_TYPES, PYSTUN_TYPES, NATInfo, from_pystun
from lt_punch.nat.server import StunServer
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


async def test_no_servers() -> None:
    info = await detect_nat([])
    assert info.nat_type == "unknown"
    assert info.error == "no STUN servers configured"
    assert info.stun_server is None


async def test_bad_timeouts_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="timeout: expected seconds > 0"):
        await detect_nat([("127.0.0.1", 3478)], timeout=0)
    with pytest.raises(ConfigError, match="overall_timeout: expected seconds > 0"):
        await detect_nat([("127.0.0.1", 3478)], overall_timeout=-1)


async def test_unreachable_server_is_blocked(silent_server: Address) -> None:
    started = time.monotonic()
    info = await detect_nat([silent_server], timeout=0.1, overall_timeout=3.0)
    elapsed = time.monotonic() - started
    assert info.nat_type == "blocked"
    assert info.error == (
        f"no answer from STUN server 127.0.0.1:{silent_server[1]} (3 tries, 0.1 s each)"
    )
    assert info.stun_server == silent_server
    assert info.local_ip == "127.0.0.1" and info.local_port
    assert info.public_endpoint is None
    assert elapsed < 3.0
    assert 0.25 < info.duration < 3.0  # three sends, 0.1 s each


async def test_overall_timeout_bounds_the_wait(silent_server: Address) -> None:
    started = time.monotonic()
    info = await detect_nat([silent_server], timeout=1.0, overall_timeout=0.3)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert info.nat_type == "unknown"
    assert info.error == (
        f"NAT detection timed out after 0.3 s (STUN server 127.0.0.1:{silent_server[1]})"
    )


async def test_open_on_loopback_with_our_server() -> None:
    async with _full_server() as server:
        info = await detect_nat([server.address], timeout=0.5, overall_timeout=5.0)
    assert info.error is None
    assert info.nat_type == "open"
    assert info.classic_name == "Open Internet"
    assert info.public_ip == "127.0.0.1"
    assert info.public_endpoint == info.local_endpoint  # no NAT on loopback
    assert info.stun_server == server.address
    assert info.source == "stun"
    assert info.duration < 1.0  # a few loopback round trips


async def test_tries_next_server_after_silent_one(silent_server: Address) -> None:
    async with _full_server() as server:
        info = await detect_nat([silent_server, server.address], timeout=0.1)
    assert info.nat_type == "open"
    assert info.stun_server == server.address


async def test_two_port_server_gives_symmetric_firewall() -> None:
    # The server cannot change IP, so Test II stays silent (see test_stun_server.py).
    async with StunServer(("127.0.0.1", 0), alternate_port=0) as server:
        info = await detect_nat([server.address], timeout=0.1)
    assert info.nat_type == "symmetric-firewall"
    assert info.error is None
    assert info.public_endpoint == info.local_endpoint  # from our own first request


async def test_server_without_alternate_cannot_classify() -> None:
    # Without OTHER-/CHANGED-ADDRESS the server cannot answer CHANGE-REQUEST; pystun3
    # would misread a server that ignores it as a full cone, so it is not run.
    async with StunServer(("127.0.0.1", 0)) as server:
        info = await detect_nat([server.address], timeout=0.1)
        assert server.stats.requests == 1  # our own first request only
    assert info.nat_type == "unknown"
    assert info.error == (
        f"STUN server 127.0.0.1:{server.address[1]} sends no OTHER-ADDRESS/CHANGED-ADDRESS: "
        "it cannot run the RFC 3489 tests (public endpoint only)"
    )
    assert info.public_endpoint == info.local_endpoint  # the endpoint is still reported
    assert info.public_ip == "127.0.0.1"


async def test_prefers_a_complete_result() -> None:
    async with StunServer(("127.0.0.1", 0)) as partial, _full_server() as full:
        info = await detect_nat([partial.address, full.address], timeout=0.1)
        assert info.nat_type == "open" and info.stun_server == full.address
        info = await detect_nat([full.address, partial.address], timeout=0.1)
        assert info.nat_type == "open" and info.stun_server == full.address
        assert partial.stats.requests == 1


async def test_unresolvable_server() -> None:
    info = await detect_nat([("name.invalid", 3478)], timeout=0.1, overall_timeout=5.0)
    assert info.nat_type == "unknown"
    assert info.error is not None
    assert info.error.startswith("cannot resolve STUN server name.invalid:3478: ")


async def test_detect_does_not_block_the_loop(silent_server: Address) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(tick())
    try:
        await detect_nat([silent_server], timeout=0.1)
    finally:
        task.cancel()
    assert ticks > 5


def test_route_local_ip() -> None:
    assert route_local_ip(("127.0.0.1", 9)) == "127.0.0.1"


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("203.0.114.1", True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.1.1", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("not an ip", False),
    ],
)
def test_classify_local(ip: str, public: bool) -> None:
    assert classify_local(ip) is public


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
        rows = {line[:15].strip(): line[15:].strip() for line in out.splitlines()}
        assert rows["NAT type"] == "open"
        assert rows["classic name"] == "Open Internet"
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
        ["--stun", target, "--timeout", "0.05", "--json"], {"P2P_STUN_SERVERS": ""}
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
