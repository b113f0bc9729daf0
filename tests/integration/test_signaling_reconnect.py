"""The reconnecting signaling client: real servers on loopback, restarted on the same port.

No blind sleeps: every wait is for an event (or a polled condition) under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from lt_punch.config import Config
from lt_punch.errors import SignalingError
from lt_punch.signaling import SignalingClient, SignalingClosed, SignalingServer
from lt_punch.signaling import protocol as p
from lt_punch.signaling.client import ConnectionState
from lt_punch.signaling.security import make_token
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession, Torrent
from lt_punch.types import InfoHash, PeerId

IH = "0123456789abcdef0123456789abcdef01234567"
WAIT = 5.0
LT = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}

Event = p.Message | ConnectionState


async def _start(port: int = 0, dht_port: int | None = None, **kw: Any) -> SignalingServer:
    """Start a server; a port just released may be briefly unavailable: retry for 5 s."""
    async with asyncio.timeout(5.0):
        while True:
            server = SignalingServer("127.0.0.1", port, dht_port=dht_port, **kw)
            try:
                await server.start()
            except OSError:
                await server.close()
                if not port:
                    raise
                await asyncio.sleep(0.1)
                continue
            return server


async def _restart(server: SignalingServer) -> SignalingServer:
    """Stop ``server`` and start a new one on the same TCP (and UDP) port."""
    dht = server.dht_address[1] if server.dht_address is not None else None
    await server.close()
    return await _start(server.port, dht, secret=server.secret)


def _client(server: SignalingServer, peer_id: str, **kw: Any) -> SignalingClient:
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return SignalingClient(server.url, peer_id, {"name": peer_id}, timeout=WAIT,
                           reconnect=True, **kw)


async def _until(client: SignalingClient, done: Callable[[Event], bool],
                 timeout: float = WAIT) -> list[Event]:  # noqa: ASYNC109
    """Events up to and including the first one for which ``done`` is true."""
    seen: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event()
            seen.append(event)
            if done(event):
                return seen


def _state(name: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, ConnectionState) and e.state == name


def _states(events: list[Event]) -> list[str]:
    return [e.state for e in events if isinstance(e, ConnectionState)]


def _client_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("signaling-")
            and not t.done()]


async def _poll(condition: Callable[[], bool], timeout: float = WAIT) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (server/session state has no event to await)
            await asyncio.sleep(0.02)


class _Recorder(random.Random):
    """A seeded Random that records the bounds it was asked for."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.bounds: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append(b)
        return super().uniform(a, b)


class _Slow(random.Random):
    """Always the longest delay: the client sits in its backoff."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- against the real server ---------------------------------------------------------------


async def test_restart_reconnects_rejoins_and_relays() -> None:
    server = await _start()
    alice, bob = _client(server, "alice"), _client(server, "bob")
    try:
        await alice.connect()
        await bob.connect()
        await alice.join(IH)
        await bob.join(IH)
        await _until(alice, lambda e: isinstance(e, p.PeerJoined))
        await _until(bob, _state("connected"))

        server = await _restart(server)
        events = await _until(alice, _state("connected"))
        states = _states(events)
        assert states[0] == "disconnected" and states[-1] == "connected"
        assert "reconnecting" in states and set(states) == {
            "disconnected", "reconnecting", "connected"}
        connected = events[-1]
        assert isinstance(connected, ConnectionState) and connected.attempt >= 1
        # The re-join's reply reaches the consumer as an event.
        joined = await _until(alice, lambda e: isinstance(e, p.Joined))
        assert isinstance(joined[-1], p.Joined) and joined[-1].room == IH
        assert alice.connected and alice.rooms == {IH} and alice.observed is not None
        await _until(bob, lambda e: isinstance(e, p.Joined))
        assert {m.peer_id for m in server.rooms.members(InfoHash(IH))} == {"alice", "bob"}

        # Relays work again, both ways.
        await alice.relay("bob", IH, {"type": "hello"})
        got = await _until(bob, lambda e: isinstance(e, p.Relayed))
        assert got[-1] == p.Relayed(PeerId("alice"), InfoHash(IH), {"type": "hello"})
        await bob.relay("alice", IH, {"type": "back"})
        got = await _until(alice, lambda e: isinstance(e, p.Relayed))
        assert got[-1] == p.Relayed(PeerId("bob"), InfoHash(IH), {"type": "back"})
        assert await alice.ping() >= 0
    finally:
        await alice.close()
        await bob.close()
        await server.close()
    assert _client_tasks() == []


async def test_close_during_backoff_stops_promptly() -> None:
    server = await _start()
    client = _client(server, "alice", backoff_initial=30.0, backoff_max=30.0, rng=_Slow())
    try:
        await client.connect()
        await server.close()
        events = await _until(client, _state("reconnecting"))
        assert _states(events) == ["connected", "disconnected", "reconnecting"]
        reconnecting = events[-1]
        assert isinstance(reconnecting, ConnectionState) and reconnecting.delay == 30.0
        assert _client_tasks()  # the supervisor sleeps in its backoff
    finally:
        async with asyncio.timeout(2.0):
            await client.close()
    assert _client_tasks() == []
    assert _states(await _until(client, _state("closed"))) == ["closed"]
    with pytest.raises(SignalingClosed):
        await client.next_event(WAIT)
    await client.close()  # idempotent
    with pytest.raises(SignalingClosed):
        await client.connect()


async def test_requests_while_disconnected_fail_fast() -> None:
    server = await _start()
    client = _client(server, "alice", backoff_initial=30.0, backoff_max=30.0, rng=_Slow())
    try:
        await client.connect()
        await client.join(IH)
        await server.close()
        await _until(client, _state("disconnected"))
        assert not client.connected
        async with asyncio.timeout(1.0):
            for request in (client.join(IH), client.ping(),
                            client.relay("bob", IH, {"type": "x"})):
                with pytest.raises(SignalingError) as info:
                    await request
                assert info.value.code == "disconnected"
            # Leaving while away just forgets the room: it is not re-joined later.
            await client.leave(IH)
        assert client.rooms == set()
    finally:
        await client.close()


async def test_backoff_grows_with_jitter() -> None:
    server = await _start()
    rng = _Recorder(7)
    client = _client(server, "alice", backoff_initial=0.01, backoff_max=0.08, rng=rng)
    try:
        await client.connect()
        await server.close()  # nobody listens any more: every attempt is refused
        events = await _until(
            client, lambda e: isinstance(e, ConnectionState) and e.attempt == 6
        )
        tries = [e for e in events if isinstance(e, ConnectionState) and e.state == "reconnecting"]
        assert [e.attempt for e in tries] == [1, 2, 3, 4, 5, 6]
        assert rng.bounds == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
        assert all(0 <= e.delay <= b for e, b in zip(tries, rng.bounds, strict=True))
        assert len({e.delay for e in tries}) == len(tries)  # jittered, not the bound
        assert all(e.error for e in tries[1:])  # why the previous attempt failed
    finally:
        await client.close()
    assert _client_tasks() == []


async def test_without_reconnect_the_stream_ends() -> None:
    server = await _start()
    client = SignalingClient(server.url, "alice", timeout=WAIT)
    try:
        await client.connect()
        await server.close()
        async with asyncio.timeout(WAIT):
            events = [e async for e in client.events()]
        assert events == []  # no ConnectionState events without reconnect
        with pytest.raises(SignalingClosed):
            await client.ping()
    finally:
        await client.close()
    assert _client_tasks() == []


async def test_keepalive_pings_while_connected() -> None:
    server = await _start()
    client = _client(server, "alice", keepalive=0.05)
    try:
        await client.connect()
        await _poll(lambda: server.stats()["messages_received"] >= 4)
        assert client.connected
    finally:
        await client.close()
        await server.close()
    assert _client_tasks() == []


class _Proxy:
    """A TCP proxy to ``port``. :meth:`cut` closes the client side of the current
    connections but keeps their server side open and silent: the server still holds
    them (stale), as after a NAT dropped our mapping."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stale = bytearray()  # what the server sent on the cut connections
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[bool]]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for down, up, _ in self._pairs:
            down.close()
            up.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for down, _, cut in self._pairs:
            if not cut[0]:
                cut[0] = True
                down.close()

    async def _handle(self, reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        up_reader, up = await asyncio.open_connection("127.0.0.1", self.port)
        cut = [False]
        self._pairs.append((down, up, cut))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       from_server: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if cut[0]:
                        if from_server:
                            self.stale += data
                        continue
                    dst.write(data)
                    await dst.drain()
            if not cut[0]:
                dst.close()  # pass the end on; a cut pair stays open towards the server

        await asyncio.gather(pipe(reader, up, False), pipe(up_reader, down, True))


async def test_resume_replaces_a_stale_connection() -> None:
    server = await _start()
    watcher = _client(server, "bob")
    try:
        async with _Proxy(server.port) as proxy:
            client = SignalingClient(proxy.url, "alice", timeout=WAIT, reconnect=True,
                                     backoff_initial=0.05, backoff_max=0.2)
            try:
                await client.connect()
                await watcher.connect()
                await client.join(IH)
                await watcher.join(IH)
                first_key = client.session_key
                assert first_key is not None
                await _until(client, lambda e: isinstance(e, p.PeerJoined))
                # The server still holds "alice" on the cut connection: a plain register
                # would get peer-id-taken; resume replaces it at the first attempt.
                proxy.cut()
                events = await _until(client, _state("connected"))
                assert _states(events) == ["disconnected", "reconnecting", "connected"]
                assert client.session_key not in (None, first_key)
                await _poll(lambda: b"replaced" in proxy.stale)  # the stale one, closed
                assert p.REPLACED_CLOSE_CODE.to_bytes(2, "big") in proxy.stale  # the close frame
                await client.relay("bob", IH, {"type": "again"})
                got = await _until(watcher, lambda e: isinstance(e, p.Relayed))
                assert got[-1] == p.Relayed(PeerId("alice"), InfoHash(IH), {"type": "again"})
            finally:
                await client.close()
    finally:
        await watcher.close()
        await server.close()


async def test_token_refused_after_restart_stops_reconnecting() -> None:
    server = await _start(secret="one")
    client = _client(server, "alice", token=make_token("one", "alice"))
    try:
        with pytest.raises(SignalingError) as info:
            await SignalingClient(server.url, "carol", timeout=WAIT).connect()
        assert info.value.code == "auth-required"
        await client.connect()
        await server.close()
        server = await _start(server.port, secret="two")  # restarted with another secret
        events = await _until(client, _state("closed"))
        closed = events[-1]
        assert isinstance(closed, ConnectionState) and "bad-token" in str(closed.error)
        with pytest.raises(SignalingClosed):
            await client.next_event(WAIT)
        assert _client_tasks() == []
    finally:
        await client.close()
        await server.close()


# --- against a scripted server (resume, token, fatal errors) -------------------------------


class _Scripted:
    """Answers the n-th ``register`` with ``script[n]``: a session key or an error code."""

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = script
        self.registers: list[p.Register] = []
        self.conns: list[ServerConnection] = []
        self.registered = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.conns.append(ws)
        async for frame in ws:
            message = p.parse_message(frame, sent_by="client")
            reply: p.Message
            if isinstance(message, p.Register):
                kind, value = self.script[len(self.registers)]
                self.registers.append(message)
                if kind == "key":
                    reply = p.Registered(message.peer_id, ("127.0.0.1", 1), value)
                    self.registered.set()
                else:
                    reply = p.Error(value, f"refused: {value}", "register")
            elif isinstance(message, p.Join):
                reply = p.Joined(message.room)
            elif isinstance(message, p.Ping):
                reply = p.Pong(message.id)
            else:
                continue
            await ws.send(reply.serialize())


@contextlib.asynccontextmanager
async def _scripted(script: list[tuple[str, str]]) -> AsyncIterator[tuple[_Scripted, str]]:
    fake = _Scripted(script)
    async with serve(fake.handler, "127.0.0.1", 0, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield fake, f"ws://127.0.0.1:{port}"


async def _drop(fake: _Scripted, code: int = 1001, reason: str = "") -> None:
    fake.registered.clear()
    await fake.conns[-1].close(code, reason)


async def test_resume_token_and_fatal_error() -> None:
    script = [("key", "k1"), ("error", "peer-id-taken"), ("key", "k2"), ("error", "bad-token")]
    async with _scripted(script) as (fake, url):
        client = SignalingClient(url, "alice", timeout=WAIT, token="t0k", reconnect=True,
                                 backoff_initial=0.01, backoff_max=0.02)
        try:
            registered = await client.connect()
            assert registered.session_key == client.session_key == "k1"
            await _until(client, _state("connected"))
            await client.join(IH)
            await _drop(fake)
            events = await _until(client, _state("connected"))
            # peer-id-taken (the old connection still held): retried with backoff.
            assert [e.attempt for e in events if isinstance(e, ConnectionState)
                    and e.state == "reconnecting"] == [1, 2]
            assert "peer-id-taken" in str(events[-2])
            assert [r.resume for r in fake.registers] == [None, "k1", "k1"]
            assert client.session_key == "k2"
            await _drop(fake)
            events = await _until(client, _state("closed"))
            closed = events[-1]
            assert isinstance(closed, ConnectionState) and closed.error is not None
            assert "bad-token" in closed.error
            assert [r.resume for r in fake.registers] == [None, "k1", "k1", "k2"]
            assert {r.token for r in fake.registers} == {"t0k"}
            with pytest.raises(SignalingClosed):
                await client.next_event(WAIT)  # retrying cannot fix it: the stream ends
            assert _client_tasks() == []
        finally:
            await client.close()


async def test_replaced_connection_stops_reconnecting() -> None:
    async with _scripted([("key", "k1")]) as (fake, url):
        client = SignalingClient(url, "alice", timeout=WAIT, reconnect=True,
                                 backoff_initial=0.01, backoff_max=0.02)
        try:
            await client.connect()
            await _until(client, _state("connected"))
            await _drop(fake, p.REPLACED_CLOSE_CODE, "replaced")
            events = await _until(client, _state("closed"))
            assert _states(events) == ["disconnected", "closed"]
            assert len(fake.registers) == 1
        finally:
            await client.close()


# --- sessions ------------------------------------------------------------------------------


async def _wait_connected(torrent: Torrent, peer_id: str, timeout: float) -> None:  # noqa: ASYNC109
    def done() -> bool:
        rec = torrent.punches.get(peer_id)
        return rec is not None and rec.state == "connected"

    async with asyncio.timeout(timeout), torrent.changed:
        await torrent.changed.wait_for(done)


async def test_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    payload = tmp_path / "seed" / "clip.bin"
    write_random_file(payload, (1 << 20) + 99, seed=5)
    torrent = make_torrent(payload, piece_size=1 << 16)
    server = await _start(dht_port=0, secret="swarm-secret")
    assert server.dht_address is not None
    config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                    listen_host="127.0.0.1")
    sessions: list[EnhancedTorrentSession] = []

    async def session(peer_id: str, path: Path) -> EnhancedTorrentSession:
        token = make_token("swarm-secret", peer_id)  # also needed after the restart
        s = EnhancedTorrentSession(config.replace(signaling_token=token), peer_id=peer_id,
                                   lt_settings=LT, save_path=path)
        sessions.append(s)
        await s.start()
        return s

    try:
        seed = await session("seed", payload.parent)
        assert seed.client is not None and seed.client.connected
        leech = await session("leech1", tmp_path / "leech1")
        ih = (await seed.add(torrent)).infohash
        t1 = await leech.add(torrent)
        await _wait_connected(t1, "seed", 15)
        before = t1.punches["seed"]

        server = await _restart(server)
        room = InfoHash(ih)
        await _poll(lambda: {m.peer_id for m in server.rooms.members(room)} == {"seed", "leech1"},
                    10)
        await _poll(lambda: seed.signaling_error is None and leech.signaling_error is None)
        assert seed.stats()["signaling"]["connected"]
        # The pair punched before the restart is not punched again.
        assert t1.punches["seed"] is before and before.state == "connected"

        late = await session("leech2", tmp_path / "leech2")
        t2 = await late.add(torrent)
        await _wait_connected(t2, "seed", 15)
    finally:
        for s in reversed(sessions):
            await s.close()
        await server.close()



def test_token_from_the_environment() -> None:
    config = Config.from_env({"P2P_SIGNALING_TOKEN": " v1.1.abc "})
    assert config.signaling_token == "v1.1.abc"
    assert "v1.1.abc" not in repr(config)


async def test_a_server_down_at_start_is_joined_once_it_is_up(tmp_path: Path) -> None:
    """The first connection fails (nothing listens yet): the session goes on, says why,
    and keeps trying in the background; once the server is up it registers and joins
    the room of the torrent added meanwhile (a lossy network at start-up must not leave
    a session without signaling for good)."""
    payload = tmp_path / "seed" / "clip.bin"
    write_random_file(payload, (1 << 16) + 7, seed=6)
    torrent = make_torrent(payload, piece_size=1 << 16)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config(signaling_url=f"ws://127.0.0.1:{port}", listen_host="127.0.0.1",
                    connection_timeout=2.0)
    session = EnhancedTorrentSession(config, peer_id="late", lt_settings=LT,
                                     save_path=payload.parent)
    server: SignalingServer | None = None
    try:
        await session.start()
        assert session.signaling_error and "cannot connect" in session.signaling_error
        assert session.signaling_retrying
        ih = (await session.add(torrent)).infohash
        server = await _start(port)
        await _poll(lambda: session.signaling_error is None, 20)
        assert session.stats()["signaling"]["connected"] and not session.signaling_retrying
        await _poll(lambda: {m.peer_id for m in server.rooms.members(InfoHash(ih))} == {"late"})
    finally:
        await session.close()
        if server is not None:
            await server.close()
