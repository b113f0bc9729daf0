"""HTTP streaming (lt_punch.stream) of a file that is still downloading: Range, HEAD,
416, concurrent readers, a client that leaves mid-response, the listings (loopback)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from lt_punch.stream import make_app

from .conftest import SIZE, Pair


class Server:
    def __init__(self, base: str, file_url: str) -> None:
        self.base = base
        self.file_url = file_url


@pytest.fixture
async def server(pair: Pair) -> AsyncIterator[Server]:
    runner = web.AppRunner(make_app(pair.leech))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    try:
        yield Server(base, f"{base}/files/{pair.infohash}/0")
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


async def test_head_and_full_get(pair: Pair, server: Server,
                                 http: aiohttp.ClientSession) -> None:
    async with http.head(server.file_url) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(SIZE)
        assert r.headers["Content-Type"] == "video/mp4"
        assert r.headers["Accept-Ranges"] == "bytes"
    async with http.get(server.file_url) as r:
        assert r.status == 200
        assert await r.read() == pair.data


async def test_random_ranges_are_exact(pair: Pair, server: Server,
                                       http: aiohttp.ClientSession) -> None:
    rng = random.Random(11)
    for _ in range(100):
        start = rng.randrange(SIZE)
        end = min(SIZE - 1, start + rng.randrange(1, 200_000))
        async with http.get(server.file_url, headers={"Range": f"bytes={start}-{end}"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
            assert r.headers["Content-Length"] == str(end - start + 1)
            assert await r.read() == pair.data[start:end + 1]
    for header, expected in ((f"bytes={SIZE - 10}-", pair.data[-10:]),
                             ("bytes=-500", pair.data[-500:]),
                             (f"bytes=0-{SIZE + 100}", pair.data)):
        async with http.get(server.file_url, headers={"Range": header}) as r:
            assert r.status == 206, header
            assert await r.read() == expected, header


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=abc", "bytes=5-2",
                                    "bytes=0-1,5-6", "items=0-1"])
async def test_bad_ranges_get_416(server: Server, http: aiohttp.ClientSession,
                                  header: str) -> None:
    async with http.get(server.file_url, headers={"Range": header}) as r:
        assert r.status == 416, header
        assert r.headers["Content-Range"] == f"bytes */{SIZE}"


async def test_concurrent_readers(pair: Pair, server: Server,
                                  http: aiohttp.ClientSession) -> None:
    async def fetch(start: int, end: int) -> bytes:
        async with http.get(server.file_url, headers={"Range": f"bytes={start}-{end}"}) as r:
            return await r.read()

    ranges = [(0, 999_999), (SIZE - 1_000_000, SIZE - 1), (3_000_000, 4_499_999),
              (6_000_000, 6_000_100)]
    bodies = await asyncio.gather(*(fetch(a, b) for a, b in ranges))
    for (a, b), body in zip(ranges, bodies, strict=True):
        assert body == pair.data[a:b + 1]


async def test_client_leaving_mid_response(pair: Pair, server: Server,
                                           http: aiohttp.ClientSession) -> None:
    async with http.get(server.file_url) as r:
        first = await r.content.readexactly(1000)
        assert first == pair.data[:1000]
        r.close()  # gone with most of the body unread
    async with http.get(server.file_url, headers={"Range": "bytes=100-199"}) as r:
        assert await r.read() == pair.data[100:200]


async def test_listing_playlist_and_404(pair: Pair, server: Server,
                                        http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.base}/?format=json") as r:
        files = (await r.json())["files"]
    assert files == [{"infohash": pair.infohash, "index": 0, "name": "video.mp4",
                      "size": SIZE, "url": server.file_url}]
    async with http.get(server.base + "/") as r:
        assert r.content_type == "text/html"
        assert server.file_url in await r.text()
    async with http.get(server.base + "/playlist.m3u") as r:
        text = await r.text()
    assert text.splitlines() == ["#EXTM3U", "#EXTINF:-1,video.mp4", server.file_url]
    for url in (f"{server.base}/files/{'0' * 40}/0", f"{server.base}/files/{pair.infohash}/9",
                f"{server.base}/files/{pair.infohash}/x"):
        async with http.get(url) as r:
            assert r.status == 404, url
