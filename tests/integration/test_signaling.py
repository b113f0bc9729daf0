"""The signaling server and client over loopback: real sockets, port 0, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect as sync_connect

from lt_punch.bencode import decode, encode
from lt_punch.errors import LocalProtocolError, LtTimeoutError, SignalingError
from lt_punch.signaling import SignalingClient, SignalingClosed, SignalingServer, whoami
from lt_punch.signaling import protocol as p
from lt_punch.types import InfoHash, PeerId

from .conftest import http_get

IH = "0123456789abcdef0123456789abcdef01234567"
IH2 = "ab" * 32
WAIT = 5.0


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    async with SignalingServer("127.0.0.1", 0, ping_interval=None) as srv:
        yield srv


async def _client(srv: SignalingServer, peer_id: str, **metadata: Any) -> SignalingClient:
    client = SignalingClient(srv.url, peer_id, metadata, timeout=WAIT)
    await client.connect()
    return client


@pytest.fixture
async def clients(server: SignalingServer) -> AsyncIterator[list[SignalingClient]]:
    made = [await _client(server, name, name=name) for name in ("alice", "bob", "carol")]
    yield made
    for client in made:
        await client.close()


async def _raw(srv: SignalingServer) -> ClientConnection:
    return await connect(srv.url, open_timeout=WAIT, compression=None)


async def _ask(ws: ClientConnection, text: str | bytes) -> p.Message:
    await ws.send(text)
    async with asyncio.timeout(WAIT):
        reply = await ws.recv()
    return p.parse_message(reply, sent_by="server")


# --- register / rooms --------------------------------------------------------------------


async def test_register_reports_observed_address(server: SignalingServer) -> None:
    async with SignalingClient(server.url, "alice", timeout=WAIT) as client:
        assert client.connected
        assert client._ws is not None
        assert client.observed == client._ws.local_address[:2]
    assert not client.connected


async def test_peer_id_taken(clients: list[SignalingClient], server: SignalingServer) -> None:
    with pytest.raises(SignalingError) as info:
        await _client(server, "alice")
    assert info.value.code == "peer-id-taken"
    assert await clients[0].ping() >= 0  # the holder is untouched


async def test_join_and_notifications(clients: list[SignalingClient]) -> None:
    alice, bob, carol = clients
    assert await alice.join(IH) == []
    peers = await bob.join(IH.upper())
    assert peers == [p.PeerInfo(PeerId("alice"), {"name": "alice"})]
    event = await alice.next_event(WAIT)
    assert event == p.PeerJoined(InfoHash(IH), PeerId("bob"), {"name": "bob"})
    peers = await carol.join(f"urn:btih:{IH}")
    assert [x.peer_id for x in peers] == ["alice", "bob"]
    for client in (alice, bob):
        event = await client.next_event(WAIT)
        assert isinstance(event, p.PeerJoined) and event.peer_id == "carol"


async def test_relay_between_room_members_and_refusal(
    clients: list[SignalingClient], server: SignalingServer
) -> None:
    alice, bob, carol = clients
    await alice.join(IH)
    await bob.join(IH)
    await carol.join(IH2)
    await alice.next_event(WAIT)  # peer-joined bob
    offer = {"type": "punch-offer", "endpoints": [["203.0.113.1", 6881]]}
    await alice.relay("bob", IH, offer)
    assert await bob.next_event(WAIT) == p.Relayed(PeerId("alice"), InfoHash(IH), offer)
    await bob.relay("alice", IH, {"type": "punch-answer"})
    event = await alice.next_event(WAIT)
    assert isinstance(event, p.Relayed) and event.from_ == "bob"
    # carol shares no room with alice: refused, and carol hears nothing
    await alice.relay("carol", IH, {"type": "punch-offer"})
    error = await alice.next_event(WAIT)
    assert isinstance(error, p.Error) and error.code == "unknown-peer" and error.ref == "relay"
    await carol.relay("alice", IH, {})
    error = await carol.next_event(WAIT)
    assert isinstance(error, p.Error) and error.code == "not-in-room"
    with pytest.raises(LtTimeoutError):
        await carol.next_event(0.05)
    assert server.stats()["messages_relayed"] == 2
    assert server.stats()["errors"] == {"not-in-room": 1, "unknown-peer": 1}


async def test_leave_and_disconnect_notify(clients: list[SignalingClient]) -> None:
    alice, bob, carol = clients
    for client in clients:
        await client.join(IH)
    for _ in range(2):
        await alice.next_event(WAIT)
    await bob.next_event(WAIT)
    await bob.leave(IH)
    for client in (alice, carol):
        assert await client.next_event(WAIT) == p.PeerLeft(InfoHash(IH), PeerId("bob"))
    with pytest.raises(SignalingError) as info:
        await bob.leave(IH)
    assert info.value.code == "not-in-room"
    await carol.close()
    assert await alice.next_event(WAIT) == p.PeerLeft(InfoHash(IH), PeerId("carol"))


async def test_client_rejects_bad_room_locally(clients: list[SignalingClient]) -> None:
    with pytest.raises(LocalProtocolError, match="bad infohash"):
        await clients[0].join("not-a-hash")
    with pytest.raises(LocalProtocolError):
        await clients[0].relay("bob", IH, {"k": "x" * 20000})


async def test_server_close_ends_client(server: SignalingServer) -> None:
    client = await _client(server, "alice")
    await client.join(IH)
    events: list[p.Message] = []

    async def consume() -> None:
        async for event in client.events():
            events.append(event)

    consumer = asyncio.create_task(consume())
    await server.close()
    async with asyncio.timeout(WAIT):
        await consumer  # the stream ends instead of hanging
    assert events == [] and not client.connected
    with pytest.raises(SignalingClosed):
        await client.next_event(WAIT)
    with pytest.raises(SignalingError):
        await client.ping()
    await client.close()


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(SignalingError, match="cannot connect"):
            await SignalingClient(f"ws://127.0.0.1:{port}", "alice", timeout=WAIT).connect()


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("{not json", "bad-json", None),
        (b"\x00\x01binary", "bad-frame", None),
        ('{"v":1,"type":"teleport"}', "unknown-type", "teleport"),
        ('{"v":1,"type":"join","room":"xyz"}', "bad-infohash", "join"),
        ('{"v":1,"type":"join","room":"' + IH + '"}', "not-registered", "join"),
        ('{"v":9,"type":"ping"}', "bad-version", "ping"),
        ('{"v":1,"type":"ping","pad":"' + "x" * 70_000 + '"}', "too-large", "ping"),
        ("[]", "bad-message", None),
    ],
)
async def test_bad_frames_get_error_and_connection_survives(
    server: SignalingServer, frame: str | bytes, code: str, ref: str | None
) -> None:
    ws = await _raw(server)
    try:
        reply = await _ask(ws, frame)
        assert isinstance(reply, p.Error)
        assert (reply.code, reply.ref) == (code, ref)
        assert await _ask(ws, p.Ping("still-there").serialize()) == p.Pong("still-there")
        assert server.stats()["errors"] == {code: 1}
    finally:
        await ws.close()


async def test_register_twice_on_one_connection(server: SignalingServer) -> None:
    ws = await _raw(server)
    try:
        assert isinstance(await _ask(ws, p.Register(PeerId("a")).serialize()), p.Registered)
        reply = await _ask(ws, p.Register(PeerId("b")).serialize())
        assert isinstance(reply, p.Error) and reply.code == "already-registered"
    finally:
        await ws.close()


async def test_frame_over_hard_limit_closes_with_1009(server: SignalingServer) -> None:
    ws = await connect(server.url, max_size=None, compression=None)
    await ws.send("x" * (server.max_message_size * 16 + 1))
    with pytest.raises(ConnectionClosedError) as info:
        async with asyncio.timeout(WAIT):
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# --- HTTP --------------------------------------------------------------------------------


async def test_http_endpoints(server: SignalingServer, clients: list[SignalingClient]) -> None:
    await clients[0].join(IH)
    status, ctype, body = await http_get(server, "/health")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["status"] == "ok"
    status, _, body = await http_get(server, "/stats")
    stats = json.loads(body)
    assert status == 200 and stats["peers"] == 3 and stats["rooms"] == 1
    assert {"messages_relayed", "errors", "uptime", "dht_reflector"} <= set(stats)
    status, _, body = await http_get(server, f"/rooms/{IH.upper()}/peers")
    [alice] = json.loads(body)
    assert status == 200 and alice.pop("idle_for") < 60
    assert alice == {"peer_id": "alice", "metadata": {"name": "alice"}, "state": "connected"}
    status, _, body = await http_get(server, f"/rooms/{IH2}/peers")
    assert status == 200 and json.loads(body) == []
    status, _, body = await http_get(server, "/rooms/nothex/peers")
    assert status == 400 and json.loads(body)["error"] == "bad-infohash"
    status, _, body = await http_get(server, "/nope")
    assert status == 404 and json.loads(body)["error"] == "not-found"
    status, ctype, body = await http_get(server, "/")
    assert status == 200 and ctype.startswith("text/plain") and b"signaling" in body


async def test_whoami_from_a_chosen_local_port(server: SignalingServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for _ in range(2):  # the port can be bound again at once
        assert await whoami(server.url, local_port=port, local_host="127.0.0.1") == (
            "127.0.0.1",
            port,
        )
    ip, any_port = await whoami(f"http://127.0.0.1:{server.port}")
    assert ip == "127.0.0.1" and any_port > 0


async def test_whoami_frees_and_shares_its_port(server: SignalingServer) -> None:
    """libtorrent dials from the port whoami used: nothing of whoami may hold it after,
    and a socket bound with SO_REUSEADDR (as libtorrent's outgoing ones) may share it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await whoami(server.url, local_port=port, local_host="127.0.0.1")
    # A bind without SO_REUSEADDR fails while any socket, even one in TIME_WAIT, holds
    # the port: the connection is closed, and the server closed first.
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))
    with socket.socket() as sharer:
        sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sharer.bind(("127.0.0.1", port))
        assert await whoami(server.url, local_port=port, local_host="127.0.0.1") == (
            "127.0.0.1", port)
        # A listening socket on the port cannot be shared: EADDRINUSE, chained, for the
        # session's retry from another port.
        sharer.listen()
        with pytest.raises(SignalingError) as info:
            await whoami(server.url, local_port=port, local_host="127.0.0.1")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EADDRINUSE


async def test_whoami_errors(server: SignalingServer) -> None:
    with pytest.raises(SignalingError, match="expected a ws://"):
        await whoami("ftp://127.0.0.1:1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(SignalingError) as info:
            await whoami(f"ws://127.0.0.1:{port}")
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    async with _http_once(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n") as url:
        with pytest.raises(SignalingError, match="HTTP 403 Forbidden"):
            await whoami(url)
    async with _http_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"ip\": 1}") as url:
        with pytest.raises(SignalingError, match="expected"):
            await whoami(url)
    async with _http_once(b"SSH-2.0-OpenSSH\r\n\r\n") as url:
        with pytest.raises(SignalingError, match="whoami"):
            await whoami(url)
    async with _http_once(b"") as url:  # accepts and never answers
        with pytest.raises(LtTimeoutError):
            await whoami(url, timeout=0.3)


@contextlib.asynccontextmanager
async def _http_once(answer: bytes) -> AsyncIterator[str]:
    """A TCP server on loopback that sends ``answer`` to each request and closes (or,
    with an empty ``answer``, holds the connection open); yields its http:// URL."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if not answer:
            held.append(writer)
            return
        writer.write(answer)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        srv.close()
        await srv.wait_closed()


# --- UDP reflector -----------------------------------------------------------------------


async def _udp_exchange(sock: socket.socket, data: bytes, dest: tuple[str, int]) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, dest)
    async with asyncio.timeout(WAIT):
        return await loop.sock_recv(sock, 2048)


async def test_dht_reflector(server: SignalingServer) -> None:
    assert server.dht_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        ip, port = sock.getsockname()
        expected_ip = socket.inet_aton(ip) + port.to_bytes(2, "big")
        query = {b"t": b"t1", b"y": b"q", b"q": b"ping", b"a": {b"id": b"q" * 20}}
        reply = decode(await _udp_exchange(sock, encode(query), server.dht_address))
        assert reply[b"t"] == b"t1" and reply[b"y"] == b"r" and reply[b"ip"] == expected_ip
        assert reply[b"r"][b"id"] == server.node_id
        # garbage and a response are ignored; the next query is still answered
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(sock, b"\xffgarbage", server.dht_address)
        await loop.sock_sendto(sock, b"d1:t2:zz1:y1:re", server.dht_address)
        query = {b"t": b"t2", b"y": b"q", b"q": b"get_peers", b"a": {b"id": b"q" * 20}}
        reply = decode(await _udp_exchange(sock, encode(query), server.dht_address))
        assert reply[b"t"] == b"t2" and reply[b"ip"] == expected_ip
        assert reply[b"r"][b"nodes"] == b"" and len(reply[b"r"][b"token"]) == 8
    assert server.stats()["dht_reflector"] == {"answered": 2, "ignored": 2}


async def test_dht_reflector_disabled() -> None:
    async with SignalingServer(dht_port=None) as srv:
        assert srv.dht_address is None and srv.stats()["dht_reflector"] is None


# --- fuzzing a live server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[SignalingServer]:
    """A server on its own loop in a thread, so that hypothesis can drive sync clients."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        async with SignalingServer(ping_interval=None, dht_port=None) as srv:
            holder["server"], holder["stop"] = srv, asyncio.Event()
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    try:
        yield holder["server"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(WAIT)
        loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=10,
)
message_like = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, "1"]),
        "type": st.sampled_from(["register", "join", "leave", "relay", "ping", "pong", "x"]),
    },
    optional={
        "peer_id": st.sampled_from(["fuzz", "witness", "", "a b"]) | st.text(max_size=5),
        "metadata": json_values,
        "room": st.sampled_from([IH, IH2, "zz"]) | st.text(max_size=5),
        "to": st.sampled_from(["fuzz", "witness", "ghost"]),
        "data": json_values,
        "id": json_values,
    },
).map(json.dumps)
tracker_like = st.fixed_dictionaries(
    {"action": st.sampled_from(["announce", "scrape", "x", 1])},
    optional={"info_hash": st.text(min_size=19, max_size=21), "peer_id": st.text(max_size=21),
              "numwant": json_values, "offers": json_values, "event": json_values},
).map(json.dumps)
frames = (st.text(max_size=200) | message_like | tracker_like | st.binary(max_size=200)
          | st.integers(65_000, 200_000).map(lambda n: "x" * n))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(frames, min_size=1, max_size=5))
def test_random_frames_never_break_the_server(
    threaded_server: SignalingServer, frames: list[str | bytes]
) -> None:
    with (
        sync_connect(threaded_server.url, open_timeout=WAIT, compression=None) as fuzz,
        sync_connect(threaded_server.url, open_timeout=WAIT, compression=None) as witness,
    ):
        witness.send(p.Register(PeerId("witness")).serialize())
        assert isinstance(p.parse_message(witness.recv(timeout=WAIT)), p.Registered)
        for frame in frames:
            fuzz.send(frame)
            # every frame gets exactly one reply: a valid server message, or a tracker
            # reply ("failure reason") for a frame that looks like a WebTorrent one
            raw = fuzz.recv(timeout=WAIT)
            if '"failure reason"' in raw or '"action"' in raw:
                assert isinstance(json.loads(raw), dict)
            else:
                reply = p.parse_message(raw, sent_by="server")
                if isinstance(reply, p.Error):
                    assert reply.code in p.ERROR_CODES and reply.code != "internal-error"
            witness.send(p.Ping("w").serialize())
            assert p.parse_message(witness.recv(timeout=WAIT)) == p.Pong("w")


# --- command line ------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serve_runs_until_signal(signum: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lt_punch",
        "signal",
        "serve",
        "--port",
        "0",
        env={**os.environ, "P2P_SIGNALING_HOST": "127.0.0.1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("signaling server listening on ws://127.0.0.1:"), line
        url = line.split()[-1]
        async with SignalingClient(url, "cli-check", timeout=WAIT) as client:
            assert await client.ping() >= 0
        proc.send_signal(signum)
        async with asyncio.timeout(WAIT):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"shutting down" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
