"""The loss-tolerant stream (lt_punch.punch.arq) on real loopback sockets: local TCP
connections joined across two UDP sockets whose datagrams are dropped at random."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct

import pytest

from lt_punch.punch import arq
from lt_punch.punch.arq import ArqSocket, StreamError

SID = 0x1234ABCD


async def _pair(loss: float = 0.0, seed: int = 1) -> tuple[ArqSocket, ArqSocket]:
    rng = random.Random(seed)
    lossy = (lambda: rng.random() < loss) if loss else None
    a = await ArqSocket.open(SID, ("127.0.0.1", 0), lossy=lossy)
    b = await ArqSocket.open(SID, ("127.0.0.1", 0), lossy=lossy)
    a.peer, b.peer = b.local, a.local
    return a, b


class _Tunnel:
    """A TCP listener per end: whoever connects to ``ends[i]`` is joined to the stream
    of socket ``i``."""

    def __init__(self, a: ArqSocket, b: ArqSocket) -> None:
        self.socks = (a, b)
        self.servers: list[asyncio.Server] = []
        self.joins: list[asyncio.Future[None]] = []
        self.ends: list[tuple[str, int]] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _Tunnel:
        for sock in self.socks:
            joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             sock: ArqSocket = sock, joined: asyncio.Future[None] = joined
                             ) -> None:
                task = asyncio.current_task()
                assert task is not None
                self.handlers.add(task)
                try:
                    await sock.stream.join(reader, writer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to the test
                    joined.set_exception(exc)
                else:
                    joined.set_result(None)

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.servers.append(server)
            self.joins.append(joined)
            self.ends.append(server.sockets[0].getsockname()[:2])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()
        for sock in self.socks:
            sock.close()  # ends any join still running
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=10)
        for joined in self.joins:
            if joined.done() and not joined.cancelled():
                joined.exception()


async def _exchange(tunnel: _Tunnel, up: bytes, down: bytes) -> tuple[bytes, bytes]:
    """Send ``up`` from end 0 and ``down`` from end 1 at once, each half-closing after;
    what each end read."""
    r0, w0 = await asyncio.open_connection(*tunnel.ends[0])
    r1, w1 = await asyncio.open_connection(*tunnel.ends[1])

    async def send(w: asyncio.StreamWriter, data: bytes) -> None:
        w.write(data)
        await w.drain()
        w.write_eof()

    async with asyncio.timeout(60):
        _, _, got1, got0 = await asyncio.gather(send(w0, up), send(w1, down),
                                                r1.read(), r0.read())
    w0.close()
    w1.close()
    return got1, got0


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.2])
async def test_both_directions_arrive_whole_under_loss(loss: float) -> None:
    up, down = os.urandom(3 << 20), os.urandom(1 << 20)
    a, b = await _pair(loss)
    async with _Tunnel(a, b) as tunnel:
        got_up, got_down = await _exchange(tunnel, up, down)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        async with asyncio.timeout(10):
            await asyncio.gather(*tunnel.joins)  # both directions ended cleanly
        if loss:
            assert a.stream.stats["resent"] > 0


async def test_loss_does_not_collapse_the_window() -> None:
    """A fifth of the datagrams lost: the window stays at or above MIN_WINDOW and the
    retransmission timeout stays near the round trip (no 200 ms floor, no doubling
    for ever)."""
    a, b = await _pair(0.2, seed=7)
    async with _Tunnel(a, b) as tunnel:
        await _exchange(tunnel, os.urandom(2 << 20), b"")
        assert a.stream.window >= arq.MIN_WINDOW
        assert a.stream.rto < 0.2


async def test_an_abort_resets_the_other_end() -> None:
    a, b = await _pair()
    async with _Tunnel(a, b) as tunnel:
        r0, w0 = await asyncio.open_connection(*tunnel.ends[0])
        r1, w1 = await asyncio.open_connection(*tunnel.ends[1])
        w0.write(b"hello")
        async with asyncio.timeout(10):
            assert await r1.readexactly(5) == b"hello"
            a.stream.abort("test")
            with pytest.raises(StreamError, match="reset by the peer"):
                await tunnel.joins[1]
            assert await r1.read() == b""  # the local connection was closed
        w0.close()
        w1.close()


async def test_a_silent_peer_is_declared_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arq, "DEAD_AFTER", 0.5)
    a, b = await _pair()
    async with _Tunnel(a, b) as tunnel:
        r0, w0 = await asyncio.open_connection(*tunnel.ends[0])
        b.close()  # the peer is gone without a word
        w0.write(b"anyone?")
        async with asyncio.timeout(10):
            with pytest.raises(StreamError, match="no packet from the peer"):
                await tunnel.joins[0]
        w0.close()


@pytest.mark.parametrize("packet", [
    b"A", b"A\x12\x34\xab\xcd", bytes([arq.ACK]) + SID.to_bytes(4, "big"),
    bytes([arq.DATA]) + SID.to_bytes(4, "big") + b"\x00" * 10,
    bytes([arq.DATA]) + SID.to_bytes(4, "big") + b"\x00" * 20 + b"x" * (arq.MSS + 1),
    bytes([arq.FIN]) + SID.to_bytes(4, "big") + b"\x00" * 20 + b"data",
    struct.pack("!BIQIIB", arq.ACK, SID, 1 << 40, 10, 0, 0),  # acks what was never sent
    struct.pack("!BIQIIB", arq.ACK, SID, 0, 10, 0, 3),  # names 3 pairs, carries none
    bytes([0x7F]) + SID.to_bytes(4, "big"),
    bytes([arq.DATA]) + (SID + 1).to_bytes(4, "big") + b"\x00" * 20 + b"other stream",
])
async def test_bad_datagrams_are_dropped(packet: bytes) -> None:
    """Garbage from the peer's own endpoint is counted and dropped, never raised; the
    stream carries on."""
    a, b = await _pair()
    async with _Tunnel(a, b) as tunnel:
        assert b.transport is not None
        b.transport.sendto(packet, a.local)
        got, _ = await _exchange(tunnel, b"after the garbage", b"")
        assert got == b"after the garbage"
        assert a.stream.stats["ignored"] >= 1


async def test_an_empty_datagram_is_dropped() -> None:
    """(asyncio does not send empty datagrams, so this one is handed over directly.)"""
    a, b = await _pair()
    try:
        a.stream.datagram(b"")
        assert a.stream.stats["ignored"] == 1
    finally:
        a.close()
        b.close()


async def test_datagrams_from_elsewhere_are_dropped() -> None:
    a, b = await _pair()
    async with _Tunnel(a, b) as tunnel:
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            stranger.sendto(b"A" * 30, a.local)
            got, _ = await _exchange(tunnel, b"still fine", b"")
        finally:
            stranger.close()
        assert got == b"still fine"
        assert a.foreign == 1


async def test_a_segment_beyond_the_window_is_not_acknowledged() -> None:
    """The receiver holds RECEIVE_WINDOW segments past the first missing one; a segment
    beyond them is dropped and must not be named in an ACK (the sender would forget it
    and the stream freeze at the gap)."""
    sent: list[bytes] = []
    receiver = arq.ArqStream(SID, sent.append)
    try:
        for seq in range(1, arq.RECEIVE_WINDOW + 4):  # seq 0 lost
            receiver.datagram(arq._DATA.pack(arq.DATA, SID, seq, seq, 1) + b"x")
            await asyncio.sleep(0)  # each ACK goes out
        named = set()
        for packet in sent:
            _, _, cum, window, _, n = arq._ACK.unpack_from(packet)
            assert cum == 0
            for i in range(n):
                named.add(arq._PAIR.unpack_from(packet, arq._ACK.size + i * arq._PAIR.size)[0])
        assert max(named) < arq.RECEIVE_WINDOW
        assert window <= 1
    finally:
        receiver.close()
