"""The UDP bridge of port prediction on real loopback sockets: control packets without
the attempt's HMAC, or from another address than the peer's, are ignored; once the path
is set, it carries a stream both ways. (The birthday exchange itself needs NATs: the lab's
tests/lab/test_predict.py.)"""

from __future__ import annotations

import asyncio
import socket

from lt_punch.punch import predict


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    async def receive(self) -> tuple[bytes, tuple[str, int]]:
        async with asyncio.timeout(5):
            return await self.queue.get()


async def endpoint(host: str = "127.0.0.1") -> Endpoint:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Endpoint, local_addr=(host, 0), family=socket.AF_INET)
    return proto


async def test_the_bridge_ignores_what_is_not_the_attempt_and_carries_a_stream() -> None:
    secret = predict.new_secret()
    peer, stranger = await endpoint(), await endpoint("127.0.0.2")
    controls: asyncio.Queue[int] = asyncio.Queue()
    bridge = await predict.open_bridge(secret, lambda kind, source, b: controls.put_nowait(kind))
    other = await predict.open_bridge(secret)
    target = ("127.0.0.1", bridge.local[1])
    try:
        bridge.peer_ip = "127.0.0.1"
        assert peer.transport is not None and stranger.transport is not None
        peer.transport.sendto(predict.packet(predict.PROBE, "0" * 32), target)  # wrong key
        peer.transport.sendto(b"LTPB" + bytes(25), target)  # our magic, no valid mac
        stranger.transport.sendto(predict.packet(predict.PROBE, secret), target)  # elsewhere
        peer.transport.sendto(b"A" * 40, target)  # no stream yet: dropped
        peer.transport.sendto(predict.packet(predict.PROBE, secret), target)
        async with asyncio.timeout(5):
            assert await controls.get() == predict.PROBE
        assert controls.empty()  # the four before it were ignored, in order
        assert bridge.ignored == 4
        # The path: both ends carry a stream with the same id (from the secret).
        bridge.connect(("127.0.0.1", other.local[1]))
        other.connect(target)
        near, far = bridge.carry(), other.carry()
        assert near.sid == far.sid
        near.write(b"handshake")
        async with asyncio.timeout(5):
            assert await far.read() == b"handshake"
        peer.transport.sendto(b"A" * 40, target)  # not the path's endpoint: dropped
        far.write(b"reply")
        async with asyncio.timeout(5):
            assert await near.read() == b"reply"
        assert bridge.ignored == 5
        assert bridge.packets[0] >= 1 and bridge.packets[1] >= 1
    finally:
        bridge.close()
        other.close()
        for e in (peer, stranger):
            assert e.transport is not None
            e.transport.close()
