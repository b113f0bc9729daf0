"""The TURN client (TCP allocations, RFC 6062) and the splice bridge against a real
coturn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lt_punch.errors import LtTimeoutError
from lt_punch.netlab import stop_process, turn_argv
from lt_punch.netlab.probe import tcp_wait
from lt_punch.punch.bridge import Bridge
from lt_punch.punch.turn import TurnAllocation, TurnError, TurnServer

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None,
                                reason="coturn (turnserver) is not installed")

SECRET = "rest-api-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def coturn(**options: object) -> Iterator[int]:
    """coturn on 127.0.0.1 (loopback peers allowed); yields its port once it accepts
    TCP connections."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ltp-turn-") as tmp:
        argv = turn_argv("127.0.0.1", port, tmp, loopback_peers=True, **options)  # type: ignore[arg-type]
        log = open(os.path.join(tmp, "log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc, os.path.join(tmp, "log"))
            yield port
        finally:
            stop_process(proc)
            log.close()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: str) -> None:
    if tcp_wait([("127.0.0.1", port)], timeout=10.0) != 0 or proc.poll() is not None:
        with open(log, errors="replace") as f:
            raise RuntimeError(f"coturn did not listen on {port}:\n{f.read()[-2000:]}")


@pytest.fixture(scope="module")
def long_term() -> Iterator[int]:
    with coturn(users=["alice:wonderland"]) as port:
        yield port


@pytest.fixture(scope="module")
def rest() -> Iterator[int]:
    with coturn(secret=SECRET) as port:
        yield port


@contextlib.asynccontextmanager
async def allocated(server: TurnServer) -> AsyncIterator[TurnAllocation]:
    allocation = await TurnAllocation.open(server)
    try:
        yield allocation
    finally:
        await allocation.close()


async def _relay_roundtrip(allocation: TurnAllocation) -> None:
    """A peer connects to the relayed address; its bytes arrive on the bound data
    connection and ours reach it."""
    assert allocation.relayed is not None
    await allocation.permit("127.0.0.1")
    reader, writer = await asyncio.open_connection(*allocation.relayed)
    try:
        writer.write(b"hello through the relay")
        await writer.drain()
        async with asyncio.timeout(10):
            sock, peer = await allocation.accept()
        with sock:
            assert peer[0] == "127.0.0.1"
            assert peer[1] == writer.get_extra_info("sockname")[1]
            loop = asyncio.get_running_loop()
            sock.setblocking(False)
            data = b""
            async with asyncio.timeout(10):
                while len(data) < 23:
                    data += await loop.sock_recv(sock, 100)
            assert data == b"hello through the relay"
            await loop.sock_sendall(sock, b"and back")
            async with asyncio.timeout(10):
                assert await reader.readexactly(8) == b"and back"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_long_term_allocation_relays_a_peer_connection(long_term: int) -> None:
    server = TurnServer("127.0.0.1", long_term, "alice", "wonderland")
    async with allocated(server) as allocation:
        assert allocation.relayed is not None and allocation.relayed[0] == "127.0.0.1"
        assert allocation.mapped is not None and allocation.mapped[0] == "127.0.0.1"
        assert allocation.lifetime > 0
        await _relay_roundtrip(allocation)
        assert allocation.connections == 1


async def test_rest_api_credentials(rest: int) -> None:
    server = TurnServer("127.0.0.1", rest, "lt-punch", secret=SECRET)
    async with allocated(server) as allocation:
        await _relay_roundtrip(allocation)


@pytest.mark.parametrize("server", [
    TurnServer("127.0.0.1", 0, "alice", "not-the-password"),
    TurnServer("127.0.0.1", 0, "bob", "wonderland"),
    TurnServer("127.0.0.1", 0),
], ids=["wrong password", "unknown user", "no credentials"])
async def test_refused_credentials_are_one_clear_error(long_term: int,
                                                       server: TurnServer) -> None:
    server = TurnServer(server.host, long_term, server.username, server.password)
    with pytest.raises(TurnError) as info:
        await TurnAllocation.open(server)
    message = str(info.value)
    assert f"127.0.0.1:{long_term}" in message
    if server.username:
        assert f"refused the credentials of {server.username!r} (401" in message
    else:
        assert "asks for credentials and none are configured" in message


async def test_a_wrong_rest_secret_is_refused(rest: int) -> None:
    with pytest.raises(TurnError, match="refused the credentials"):
        await TurnAllocation.open(TurnServer("127.0.0.1", rest, "x", secret="wrong"))


async def test_an_unreachable_server_is_a_turn_error() -> None:
    with pytest.raises(TurnError, match=r"TURN server 127\.0\.0\.1:\d+: "):
        await TurnAllocation.open(TurnServer("127.0.0.1", _free_port(), "a", "b"))


async def test_only_the_permitted_peer_gets_through(long_term: int) -> None:
    """No permission for the peer's address: coturn refuses its connection and we
    are never told of it."""
    server = TurnServer("127.0.0.1", long_term, "alice", "wonderland")
    async with allocated(server) as allocation:
        assert allocation.relayed is not None
        await allocation.permit("127.0.0.2")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(*allocation.relayed)
            writer.close()
        with pytest.raises(LtTimeoutError):
            await allocation.accept(timeout=1.0)


async def _next_refresh(allocation: TurnAllocation) -> None:
    allocation.refreshed.clear()
    waits = [asyncio.ensure_future(allocation.refreshed.wait()),
             asyncio.ensure_future(allocation.wait_closed())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def test_refreshes_keep_the_allocation_through_stale_nonces() -> None:
    """coturn grants 600 s at least, too long to wait for here: refreshes every 0.3 s,
    and nonces that go stale after 1 s (a 438 answer, then the request again with the
    new nonce), and the relay still works after several of both."""
    with coturn(users=["alice:wonderland"], stale_nonce=1) as port:
        server = TurnServer("127.0.0.1", port, "alice", "wonderland")
        allocation = await TurnAllocation.open(server, refresh_every=0.3)
        try:
            assert allocation.lifetime >= 600
            async with asyncio.timeout(15):
                while allocation.refreshes < 8 and not allocation.closed:  # 2.4 s
                    await _next_refresh(allocation)
            assert not allocation.closed, allocation.error
            assert allocation.stale_nonces >= 1
            await _relay_roundtrip(allocation)
        finally:
            await allocation.close()


async def test_close_releases_the_allocation(long_term: int) -> None:
    server = TurnServer("127.0.0.1", long_term, "alice", "wonderland")
    allocation = await TurnAllocation.open(server)
    relayed = allocation.relayed
    assert relayed is not None
    await allocation.close()
    assert allocation.closed and allocation.released
    # The relayed port goes (coturn closes it just after its answer; in CI once it still
    # took a connection right after): nothing listens there within a second.
    for _ in range(20):
        try:
            _, writer = await asyncio.open_connection(*relayed)
        except OSError:
            break
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"relayed port {relayed[1]} still open a second after the release")


async def test_a_bridge_splices_two_connections(tmp_path: object) -> None:
    """Bytes both ways, a half-close passed on, counters right, sockets closed."""
    left_a, left_b = socket.socketpair()
    right_a, right_b = socket.socketpair()
    bridge = Bridge(left_b, right_a)
    payload = os.urandom(3 << 20)
    loop = asyncio.get_running_loop()

    def send_and_close() -> None:
        left_a.sendall(payload)
        left_a.shutdown(socket.SHUT_WR)

    def read_all(sock: socket.socket) -> bytes:
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        async with asyncio.timeout(20):
            sent = loop.run_in_executor(None, send_and_close)
            got = await loop.run_in_executor(None, read_all, right_b)
            await sent
            assert got == payload
            right_b.sendall(b"reply")
            right_b.shutdown(socket.SHUT_WR)
            assert await loop.run_in_executor(None, read_all, left_a) == b"reply"
            await bridge.wait()
        assert bridge.bytes == [len(payload), 5]
        assert left_b.fileno() == -1 and right_a.fileno() == -1
    finally:
        await bridge.close()
        for sock in (left_a, right_b):
            sock.close()


@pytest.mark.parametrize("allocator", ["responder", "initiator"])
async def test_two_sessions_that_can_only_relay_download_through_coturn(
        long_term: int, tmp_path: Path, allocator: str) -> None:
    """``methods=("relay",)``: no punch, the pair meets through coturn only. The TURN
    server is configured on one side (the responder, "seed", answers with its relayed
    address; or the initiator, "leech", offers its own); the other side dials it."""
    from lt_punch import Config
    from lt_punch.signaling import SignalingServer
    from lt_punch.torrent.maketorrent import make_torrent, write_random_file
    from lt_punch.torrent.session import EnhancedTorrentSession

    from .conftest import LT

    payload = tmp_path / "seed" / "file.bin"
    write_random_file(payload, 6 << 20, seed=8)
    torrent = make_torrent(payload)
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        plain = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                       listen_host="127.0.0.1", methods=("relay",))
        turn = plain.replace(turn_servers=(("127.0.0.1", long_term),),
                             turn_username="alice", turn_password="wonderland")
        # Peer ids decide the roles of two equal NATs: "leech" < "seed" initiates.
        seed_cfg, leech_cfg = (turn, plain) if allocator == "responder" else (plain, turn)
        async with EnhancedTorrentSession(seed_cfg, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as seed, \
                EnhancedTorrentSession(leech_cfg, peer_id="leech", lt_settings=LT,
                                       save_path=tmp_path / "leech") as leech:
            await seed.add(torrent)
            added = await leech.add(torrent)
            await added.wait_finished(timeout=60)
            assert (tmp_path / "leech" / "file.bin").read_bytes() == payload.read_bytes()
            allocating = seed if allocator == "responder" else leech
            relay = allocating.stats()["relay"]
            assert relay["allocated"] and relay["allocations"] == 1
            assert relay["bytes_relayed"] >= 6 << 20
            for session in (seed, leech):
                totals = session.stats()["totals"]
                assert totals["by_method"] == {"relay": 1}, totals


@pytest.mark.parametrize("password", ["wonderland", "wrong"])
async def test_lt_punch_nat_says_whether_the_relay_works(long_term: int,
                                                         password: str) -> None:
    import json
    import sys

    from lt_punch.nat.server import StunServer

    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env.update(P2P_TURN_USERNAME="alice", P2P_TURN_PASSWORD=password)
    async with StunServer(("127.0.0.1", 0)) as stun:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lt_punch", "nat", "--json", "--stun",
            f"127.0.0.1:{stun.address[1]}", "--turn", f"127.0.0.1:{long_term}", env=env,
            stdout=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    (relay,) = json.loads(out)["relay"]
    assert relay["server"] == f"127.0.0.1:{long_term}"
    if password == "wrong":
        assert proc.returncode == 1
        assert not relay["ok"] and "refused the credentials of 'alice'" in relay["error"]
    else:
        assert proc.returncode == 0, relay
        assert relay["ok"] and relay["relayed"][0] == "127.0.0.1" and relay["rtt"] > 0
