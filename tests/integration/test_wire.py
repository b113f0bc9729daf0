"""The signaling server's own websocket layer (:mod:`lt_punch.signaling.wire`) over raw
sockets: the handshake and its refusals, framing errors and their close codes,
fragments, control frames, the size limit, keepalive, and shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from lt_punch.signaling import SignalingServer, wire

WAIT = 5.0
PING = json.dumps({"v": 1, "type": "ping", "id": "w1"}).encode()


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    async with SignalingServer(dht_port=None, ping_interval=None) as srv:
        yield srv


class Raw:
    """A websocket client written out by hand, to send what a library would not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, srv: SignalingServer, head: bytes | None = None) -> tuple[Raw, bytes]:
        """Connect and send ``head`` (a valid upgrade request by default); returns the
        client and the response head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        if head is None:
            key = base64.b64encode(os.urandom(16))
            head = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        writer.write(head)
        async with asyncio.timeout(WAIT):
            response = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer), response

    def frame(self, opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
              length: int | None = None) -> None:
        n = len(payload) if length is None else length
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if masked else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if masked else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if masked else 0) | 127, n)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            head += mask
        self.writer.write(head + payload)

    async def read(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload); servers never mask."""
        async with asyncio.timeout(WAIT):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server frame was masked"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read to the server's close frame; its code. The server then closes TCP."""
        while True:
            opcode, payload = await self.read()
            if opcode == 8:
                # Echo it, as clients do; the server may have closed (a protocol error)
                # while this client was still sending (then: reset).
                with contextlib.suppress(ConnectionError):
                    self.frame(8, payload[:2])
                async with asyncio.timeout(WAIT):
                    with contextlib.suppress(ConnectionError):
                        assert await self.reader.read() == b""  # the TCP connection ends
                return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self.writer.close()


def _json(payload: bytes) -> dict[str, Any]:
    obj = json.loads(payload)
    assert isinstance(obj, dict)
    return obj


async def test_a_message_is_answered_and_a_client_close_is_echoed(
        server: SignalingServer) -> None:
    raw, response = await Raw.open(server)
    assert response.startswith(b"HTTP/1.1 101 ")
    raw.frame(1, PING)
    opcode, payload = await raw.read()
    assert (opcode, _json(payload)["type"]) == (1, "pong")
    raw.frame(8, (1000).to_bytes(2, "big") + b"bye")
    assert await raw.close_code() == 1000
    raw.close()


async def test_fragments_are_joined_and_pings_answered_between_them(
        server: SignalingServer) -> None:
    raw, _ = await Raw.open(server)
    raw.frame(1, PING[:10], fin=False)
    raw.frame(9, b"hello")  # a control frame may come between fragments
    raw.frame(0, PING[10:20], fin=False)
    raw.frame(0, PING[20:])
    assert await raw.read() == (10, b"hello")
    opcode, payload = await raw.read()
    assert (opcode, _json(payload)["id"]) == (1, "w1")
    raw.close()


@pytest.mark.parametrize(("frames", "code"), [
    ([dict(opcode=1, payload=PING, masked=False)], 1002),  # clients must mask
    ([dict(opcode=8, payload=b"\x03")], 1002),  # a close frame of one byte
    ([dict(opcode=8, payload=(1005).to_bytes(2, "big"))], 1002),  # never on the wire
    ([dict(opcode=8, payload=(999).to_bytes(2, "big"))], 1002),
    ([dict(opcode=8, payload=(1000).to_bytes(2, "big") + b"\xff")], 1007),
    ([dict(opcode=1, payload=b"", fin=False)]
     + [dict(opcode=0, payload=b"", fin=False)] * (wire.MAX_FRAGMENTS + 1), 1009),
    ([dict(opcode=1, payload=b'"\xff\xfe"')], 1007),  # not UTF-8
    ([dict(opcode=0, payload=PING)], 1002),  # a continuation of nothing
    ([dict(opcode=1, payload=PING, fin=False), dict(opcode=1, payload=PING)], 1002),
    ([dict(opcode=9, payload=b"x" * 126)], 1002),  # control frames are short
    ([dict(opcode=9, payload=b"x", fin=False)], 1002),  # and never fragmented
    ([dict(opcode=3, payload=b"")], 1002),  # reserved opcode
])
async def test_bad_framing_closes_with_its_code(server: SignalingServer,
                                                frames: list[dict[str, Any]],
                                                code: int) -> None:
    raw, _ = await Raw.open(server)
    for f in frames:
        raw.frame(**f)
    assert await raw.close_code() == code
    raw.close()
    # The server goes on serving others.
    async with connect(server.url, open_timeout=WAIT) as ws:
        await ws.send(PING.decode())
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "pong"


async def test_a_message_over_the_limit_is_refused_before_it_is_read(
        server: SignalingServer) -> None:
    raw, _ = await Raw.open(server)
    limit = server.max_message_size * 16
    raw.frame(1, b"", length=limit + 1)  # only the header: the server must not wait
    assert await raw.close_code() == 1009
    raw.close()
    raw, _ = await Raw.open(server)  # the same over fragments
    raw.frame(1, b"x" * (limit // 2), fin=False)
    raw.frame(0, b"x" * (limit // 2 + 1))
    assert await raw.close_code() == 1009
    raw.close()


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n", b"426"),  # no Connection
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
     b"426"),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\n\r\n", b"400"),
    (b"GET / HTTP/1.0\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET /nothing-here HTTP/1.1\r\n\r\n", b"404"),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * (wire.MAX_HEAD + 10), b"431"),
])
async def test_a_bad_handshake_gets_an_http_error(server: SignalingServer, head: bytes,
                                                  status: bytes) -> None:
    raw, response = await Raw.open(server, head)
    assert response.split(b" ")[1] == status, response
    async with asyncio.timeout(WAIT):
        await raw.reader.read()  # then the connection closes
    raw.close()


async def test_a_silent_connection_is_dropped_after_the_open_timeout(
        server: SignalingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "OPEN_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    async with asyncio.timeout(WAIT):
        assert await reader.read() == b""
    writer.close()


async def test_keepalive_closes_a_client_that_does_not_answer_pings() -> None:
    async with SignalingServer(dht_port=None, ping_interval=0.2, ping_timeout=0.3) as srv:
        raw, _ = await Raw.open(srv)
        assert (await raw.read())[0] == 9  # a ping, left unanswered
        assert await raw.close_code() == 1011
        raw.close()
        # A client that answers stays (websockets' client answers pings by itself).
        async with connect(srv.url, open_timeout=WAIT) as ws:
            await asyncio.sleep(1.0)  # several ping intervals and timeouts
            await ws.send(PING.decode())
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "pong"


async def test_server_close_sends_going_away() -> None:
    srv = SignalingServer(dht_port=None, ping_interval=None)
    await srv.start()
    raw, _ = await Raw.open(srv)
    raw.frame(1, PING)
    await raw.read()
    closing = asyncio.ensure_future(srv.close())
    assert await raw.close_code() == 1001
    raw.close()
    async with asyncio.timeout(WAIT):
        await closing


async def test_a_lone_surrogate_is_refused_and_the_connection_kept(
        server: SignalingServer) -> None:
    raw, _ = await Raw.open(server)
    raw.frame(1, b'{"v":1,"type":"ping","id":"\\ud800"}')
    opcode, payload = await raw.read()
    assert _json(payload)["code"] == "bad-json"
    raw.frame(1, PING)
    assert _json((await raw.read())[1])["type"] == "pong"
    raw.close()


async def test_keepalive_is_not_fooled_by_an_unsolicited_pong() -> None:
    async with SignalingServer(dht_port=None, ping_interval=0.2, ping_timeout=0.5) as srv:
        raw, _ = await Raw.open(srv)
        assert (await raw.read())[0] == 9  # a ping, left unanswered
        raw.frame(10, b"not your ping")
        assert await raw.close_code() == 1011
        raw.close()


async def test_a_client_that_stops_reading_is_dropped(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(wire, "CLOSE_TIMEOUT", 0.5)
    async with SignalingServer(dht_port=None, ping_interval=0.2, ping_timeout=0.3,
                               rate=1e6, burst=1e6) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, limit=1024)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw = Raw(reader, writer)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        async with asyncio.timeout(WAIT):
            await reader.readuntil(b"\r\n\r\n")
        # WebTorrent scrapes of 64 torrents: ~5 KB of reply each, 12 MB in all, more
        # than the kernel's socket buffers hold, never read.
        asked = json.dumps({"action": "scrape",
                            "info_hash": [f"{i:020d}" for i in range(64)]}).encode()
        for _ in range(2500):
            raw.frame(1, asked)
        # Its replies and the close frame stay unread: the server aborts it.
        async with asyncio.timeout(WAIT):
            while srv.stats()["connections"]:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.05)
        writer.close()
