"""Several signaling servers sharing rooms through a real redis-server (started here):
peers on different servers meet, relay, leave, resume; two server processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lt_punch.signaling import SignalingClient, SignalingServer
from lt_punch.signaling import protocol as p
from lt_punch.types import PeerId

from .conftest import http_get

IH = "0123456789abcdef0123456789abcdef01234567"
WAIT = 5.0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed (make test installs it "
                                       "as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_pong(port: int, timeout: float = 15.0) -> None:
    """Redis answers PING (its "ready" log line came once before a server that then
    did not accept within 5 s, in one CI run)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"redis-server on port {port} does not answer PING")
        time.sleep(0.05)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at exit: a failed start fails here
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail(f"redis-server did not start (exit {proc.wait(timeout=10)})")
        _wait_for_pong(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def two(redis_url: str) -> AsyncIterator[tuple[SignalingServer, SignalingServer]]:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, redis_url=redis_url) as a, \
            SignalingServer("127.0.0.1", 0, dht_port=None, redis_url=redis_url) as b:
        yield a, b


CONNECT_WAIT = 15.0
"""Opening a connection: twice in CI (once per stop, in a full run only, never alone in
hundreds of runs) the first connection to a server just started with Redis took over
5 s, as a lost SYN retried after 1 and 3 s would; the cause is not known yet."""


async def _raw(srv: SignalingServer) -> ClientConnection:
    return await connect(srv.url, open_timeout=CONNECT_WAIT, compression=None)


async def _ask(ws: ClientConnection, message: p.Message) -> p.Message:
    await ws.send(message.serialize())
    return await _next(ws)


async def _next(ws: ClientConnection) -> p.Message:
    async with asyncio.timeout(WAIT):
        return p.parse_message(await ws.recv(), sent_by="server")


async def test_peers_on_two_servers_meet_relay_and_leave(
    two: tuple[SignalingServer, SignalingServer]
) -> None:
    a, b = two
    async with await _raw(a) as alice, await _raw(b) as bob, await _raw(b) as imposter:
        await _ask(alice, p.Register(PeerId("alice"), {"n": 1}))
        await _ask(bob, p.Register(PeerId("bob"), {"n": 2}))
        # One peer id across every server.
        taken = await _ask(imposter, p.Register(PeerId("alice")))
        assert isinstance(taken, p.Error) and taken.code == "peer-id-taken"
        assert await _ask(alice, p.Join(IH)) == p.Joined(IH, ())
        joined = await _ask(bob, p.Join(IH))
        assert joined == p.Joined(IH, (p.PeerInfo(PeerId("alice"), {"n": 1}),))
        assert await _next(alice) == p.PeerJoined(IH, PeerId("bob"), {"n": 2})
        # Joining again lists the members and notifies nobody.
        assert await _ask(bob, p.Join(IH)) == joined
        await alice.send(p.Relay(PeerId("bob"), IH, {"t": "offer"}).serialize())
        assert await _next(bob) == p.Relayed(PeerId("alice"), IH, {"t": "offer"})
        await bob.send(p.Relay(PeerId("alice"), IH, {"t": "answer"}).serialize())
        assert await _next(alice) == p.Relayed(PeerId("bob"), IH, {"t": "answer"})
        ghost = await _ask(alice, p.Relay(PeerId("ghost"), IH, {}))
        assert isinstance(ghost, p.Error) and ghost.code == "unknown-peer"
        assert await _ask(bob, p.Leave(IH)) == p.Left(IH)
        assert await _next(alice) == p.PeerLeft(IH, PeerId("bob"))
        await _ask(bob, p.Join(IH))
        assert await _next(alice) == p.PeerJoined(IH, PeerId("bob"), {"n": 2})
    # alice and bob disconnected: their ids are free on every server.
    async with await _raw(b) as again:
        assert isinstance(await _ask(again, p.Register(PeerId("alice"))), p.Registered)
    assert a.shared is not None and b.shared is not None
    assert a.shared.published > 0 and b.shared.published > 0


async def test_disconnect_tells_the_other_server(
    two: tuple[SignalingServer, SignalingServer]
) -> None:
    a, b = two
    async with await _raw(a) as alice:
        await _ask(alice, p.Register(PeerId("alice")))
        await _ask(alice, p.Join(IH))
        async with await _raw(b) as bob:
            await _ask(bob, p.Register(PeerId("bob")))
            await _ask(bob, p.Join(IH))
            assert isinstance(await _next(alice), p.PeerJoined)
        assert await _next(alice) == p.PeerLeft(IH, PeerId("bob"))
        assert a.shared is not None
        assert [m.peer_id for m in await a.shared.members(IH)] == ["alice"]


async def test_http_room_listing_covers_every_server(
    two: tuple[SignalingServer, SignalingServer]
) -> None:
    a, b = two
    async with await _raw(a) as alice, await _raw(b) as bob:
        await _ask(alice, p.Register(PeerId("alice")))
        await _ask(alice, p.Join(IH))
        await _ask(bob, p.Register(PeerId("bob")))
        await _ask(bob, p.Join(IH))
        status, _, body = await http_get(a, f"/rooms/{IH}/peers")
    assert status == 200
    members = json.loads(body)
    assert [(m["peer_id"], m["state"]) for m in members] == [("alice", "connected"),
                                                             ("bob", "remote")]


async def test_resume_on_another_server_replaces_the_old_connection(
    two: tuple[SignalingServer, SignalingServer]
) -> None:
    a, b = two
    async with await _raw(a) as old, await _raw(b) as watcher, await _raw(b) as new:
        first = await _ask(old, p.Register(PeerId("alice")))
        assert isinstance(first, p.Registered) and first.session_key
        await _ask(old, p.Join(IH))
        await _ask(watcher, p.Register(PeerId("watcher")))
        await _ask(watcher, p.Join(IH))
        assert isinstance(await _next(old), p.PeerJoined)
        again = await _ask(new, p.Register(PeerId("alice"), resume=first.session_key))
        assert isinstance(again, p.Registered)
        error = await _next(old)
        assert isinstance(error, p.Error) and error.code == "replaced"
        with pytest.raises(ConnectionClosed):
            await _next(old)
        assert old.close_code == p.REPLACED_CLOSE_CODE
        # The old connection's end does not free the id or the rooms of the new one.
        assert await _next(watcher) == p.PeerLeft(IH, PeerId("alice"))
        await _ask(new, p.Join(IH))
        assert await _next(watcher) == p.PeerJoined(IH, PeerId("alice"), {})
        async with await _raw(a) as thief:
            taken = await _ask(thief, p.Register(PeerId("alice")))
            assert isinstance(taken, p.Error) and taken.code == "peer-id-taken"


async def test_unreachable_redis_fails_start_clearly() -> None:
    server = SignalingServer("127.0.0.1", 0, dht_port=None,
                             redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(OSError, match="cannot use Redis at redis://127.0.0.1"):
        await server.start()
    assert server.stats()["connections"] == 0


async def _start_cli(redis_url: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", "serve", "--port", "0", "--no-dht",
        "--redis-url", redis_url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("signaling server listening on ws://"), line
    return proc, line.split()[-1]


async def test_two_server_processes_share_rooms(redis_url: str) -> None:
    procs: list[asyncio.subprocess.Process] = []
    clients: list[SignalingClient] = []
    try:
        for _ in range(2):
            proc, url = await _start_cli(redis_url)
            procs.append(proc)
            client = SignalingClient(url, f"peer{len(procs)}", timeout=WAIT)
            clients.append(client)
            await client.connect()
        first, second = clients
        assert await first.join(IH) == []
        assert [i.peer_id for i in await second.join(IH)] == ["peer1"]
        assert isinstance(await first.next_event(WAIT), p.PeerJoined)
        await second.relay("peer1", IH, {"hello": 1})
        relayed = await first.next_event(WAIT)
        assert isinstance(relayed, p.Relayed) and relayed.data == {"hello": 1}
    finally:
        for client in clients:
            await client.close()
        for proc in procs:
            proc.terminate()
            async with asyncio.timeout(20):
                await proc.wait()


async def test_cli_rejects_a_bad_redis_url() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", "serve", "--port", "0",
        "--redis-url", "http://x", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 2 and b"--redis-url" in err


async def test_cli_unreachable_redis_exits_2() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", "serve", "--port", "0", "--no-dht",
        "--redis-url", f"redis://127.0.0.1:{_free_port()}/0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"cannot use Redis at redis://127.0.0.1" in err and b"Traceback" not in err


# -- WebTorrent swarms across servers --------------------------------------------------------

WT_HASH = "\x12\x34" + "w" * 18  # binary strings: one character per byte
WT_A = "-WW0001-" + "\x00\xffaaaaaaaaaa"
WT_B = "-WW0001-" + "\x01\xfebbbbbbbbbb"
WT_SDP = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}


def _wt_announce(peer_id: str, offers: int = 0, **fields: object) -> str:
    return json.dumps({
        "action": "announce", "info_hash": WT_HASH, "peer_id": peer_id, "numwant": offers,
        "left": 1000, "event": "started", "uploaded": 0, "downloaded": 0,
        "offers": [{"offer": WT_SDP, "offer_id": f"offer-{i}" + "o" * 12}
                   for i in range(offers)], **fields})


async def _wt_next(ws: ClientConnection) -> dict:
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())


async def test_webtorrent_peers_on_two_servers_exchange_offers_and_answers(
    two: tuple[SignalingServer, SignalingServer]
) -> None:
    """Two browsers (or libtorrent WebRTC sessions) behind a load balancer, each on its
    own server: the offers of one reach the other and the answer comes back; the swarm
    counts both; leaving one server takes the peer out of the other's offers."""
    a, b = two
    async with await _raw(a) as alice, await _raw(b) as bob:
        await alice.send(_wt_announce(WT_A))
        reply = await _wt_next(alice)
        assert (reply["complete"], reply["incomplete"]) == (0, 1)
        await bob.send(_wt_announce(WT_B, offers=3))
        reply = await _wt_next(bob)
        assert (reply["complete"], reply["incomplete"]) == (0, 2)  # alice, on server a
        offer = await _wt_next(alice)  # one offer: one other member
        assert offer == {"action": "announce", "info_hash": WT_HASH, "peer_id": WT_B,
                         "offer": WT_SDP, "offer_id": "offer-0" + "o" * 12}
        answer = {"type": "answer", "sdp": "v=0\r\n"}
        await alice.send(json.dumps({
            "action": "announce", "info_hash": WT_HASH, "peer_id": WT_A,
            "to_peer_id": WT_B, "answer": answer, "offer_id": offer["offer_id"]}))
        assert await _wt_next(bob) == {"action": "announce", "info_hash": WT_HASH,
                                       "peer_id": WT_A, "answer": answer,
                                       "offer_id": offer["offer_id"]}
        assert a.webtorrent.stats.answers_relayed == 1
    # Both gone: the swarm is empty on every server.
    async with await _raw(a) as carol:
        async with asyncio.timeout(WAIT):
            while True:  # each server takes its peer out as its connection closes
                await carol.send(_wt_announce("-WW0001-" + "c" * 12))
                reply = await _wt_next(carol)
                if reply["incomplete"] == 1:
                    break
        assert reply["complete"] == 0
