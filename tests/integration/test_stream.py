"""HTTP streaming (lt_punch.stream) of a file that is still downloading: Range, HEAD,
416, concurrent readers, a client that leaves mid-response, the Host check, the
listings (loopback)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lt_punch.stream import make_app, make_runner
from lt_punch.torrent.maketorrent import make_torrent, write_random_file

from .conftest import LT, PIECE, SIZE, Pair, communicate


class Server:
    def __init__(self, base: str, file_url: str) -> None:
        self.base = base
        self.file_url = file_url


@pytest.fixture
async def server(pair: Pair) -> AsyncIterator[Server]:
    runner = make_runner(make_app(pair.leech))
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


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=abc", "bytes=5-2", "bytes=-0",
                                    "bytes=", "bytes=-", "bytes=1", "bytes=0x1-2",
                                    "bytes=+1-2", f"bytes={'9' * 5000}-"])
async def test_bad_ranges_get_416(server: Server, http: aiohttp.ClientSession,
                                  header: str) -> None:
    async with http.get(server.file_url, headers={"Range": header}) as r:
        assert r.status == 416, header
        assert r.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("headers", [
    {"Range": "bytes=0-1,5-6"},  # several ranges: RFC 9110 §14.2, a server MAY ignore
    {"Range": "items=0-1"},  # §14.2: MUST ignore a unit it does not understand
    {"Range": "bytes=0-1", "If-Range": '"etag"'},  # §13.1.5: no validator of ours matches
])
async def test_ignored_ranges_get_the_whole_file(pair: Pair, server: Server,
                                                 http: aiohttp.ClientSession,
                                                 headers: dict[str, str]) -> None:
    async with http.get(server.file_url, headers=headers) as r:
        assert r.status == 200, headers
        assert "Content-Range" not in r.headers
        assert r.headers["Content-Length"] == str(SIZE)
        assert await r.content.readexactly(1000) == pair.data[:1000]


async def test_an_unknown_host_is_refused(server: Server, http: aiohttp.ClientSession) -> None:
    """DNS rebinding would let any page read the user's files through a player's URL."""
    port = server.base.rsplit(":", 1)[1]
    for url in (server.file_url, server.base + "/?format=json", server.base + "/playlist.m3u"):
        async with http.get(url, headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 403, url
            assert "Host 'evil.example:" in (await r.json())["error"]
    async with http.head(server.file_url, headers={"Host": f"localhost:{port}"}) as r:
        assert r.status == 200


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:  # noqa: ASYNC109
    """Wait for a piece priority to change: libtorrent has no alert for it."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


class _Lines(logging.Handler):
    """Sets ``done`` once ``count`` records containing ``text`` were logged."""

    def __init__(self, text: str, count: int) -> None:
        super().__init__()
        self.text, self.count, self.done = text, count, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count -= 1
            if self.count == 0:
                self.done.set()


async def test_a_client_that_leaves_takes_its_read_and_deadline_along(
        pair: Pair, server: Server, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    """Players that seek and leave while their piece is missing: each read used to wait
    (up to 60 s) with its piece deadline, ahead of the next reader's."""
    caplog.set_level(logging.INFO, logger="lt_punch.stream")
    torrent = pair.leech.torrents[pair.infohash]
    handle = torrent.handle
    handle.set_download_limit(1000)  # nothing more arrives while they wait
    missing = [p for p in range(handle.torrent_file().num_pieces() - 1, -1, -1)
               if not handle.have_piece(p)][:10]
    assert len(missing) == 10, "the download finished too soon"
    host, port = server.base.removeprefix("http://").split(":")
    clients = []
    for piece in missing:
        reader, writer = await asyncio.open_connection(host, int(port))
        start = piece * PIECE + 5
        writer.write(f"GET /files/{pair.infohash}/0 HTTP/1.1\r\nHost: {host}\r\n"
                     f"Range: bytes={start}-{start + 65535}\r\n\r\n".encode())
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 206")
        clients.append(writer)
    await _until(lambda: all(handle.piece_priority(p) == 7 for p in missing),
                 "every read waits for its piece")
    lines = _Lines("left video.mp4", len(missing))
    logging.getLogger("lt_punch.stream").addHandler(lines)
    try:
        for writer in clients:  # gone with a reset, as a player killed mid-seek
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        async with asyncio.timeout(10):  # one line per client, once its read is over
            await lines.done.wait()
    finally:
        logging.getLogger("lt_punch.stream").removeHandler(lines)
    assert len(torrent.claims) == 0  # each read gave its deadline and priority back
    assert {handle.piece_priority(p) for p in missing} == {4}
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    handle.set_download_limit(0)
    async with http.get(server.file_url, headers={"Range": f"bytes={missing[0] * PIECE}-"
                                                            f"{missing[0] * PIECE + 9}"}) as r:
        start = missing[0] * PIECE
        assert await r.read() == pair.data[start:start + 10]


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


async def test_stream_command_serves_a_file(tmp_path: Path) -> None:
    """``lt-punch stream`` as a user runs it: prints the URL, serves ranges, stops on SIGINT."""
    payload = tmp_path / "movie.mp4"
    write_random_file(payload, 3 << 20, seed=2)
    torrent = tmp_path / "movie.torrent"
    torrent.write_bytes(make_torrent(payload))
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "stream", str(torrent), "-o", str(tmp_path),
        "--port", "0", "--isolated", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("streaming movie.mp4 at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
                http.get(url, headers={"Range": "bytes=1000-1999"}) as r:
            assert r.status == 206
            assert await r.read() == payload.read_bytes()[1000:2000]
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _stream_argv(tmp_path: Path, *extra: str) -> list[str]:
    # An infohash nobody has: the command waits for its metadata.
    return [sys.executable, "-m", "lt_punch", "stream", "ab" * 20, "-o", str(tmp_path),
            "--port", "0", "--isolated", *extra]


async def test_stream_metadata_timeout_is_a_failure_not_bad_input(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    proc = await asyncio.create_subprocess_exec(
        *_stream_argv(tmp_path, "--metadata-timeout", "0.5"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    err = await communicate(proc)
    assert proc.returncode == 1, err  # it was 2, "bad input"
    assert err.decode().strip() == f"error: no metadata for {'ab' * 20} after 0.5 s"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_stream_stops_on_sigterm_while_waiting_for_metadata(tmp_path: Path) -> None:
    """Started from a script with SIGINT ignored (a background job), SIGTERM stops the
    command at once, cleanly, even before the metadata came (it was killed outright, or
    with SIGINT handled, waited up to 120 s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *_stream_argv(tmp_path), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=_ignore_sigint)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
            assert line.startswith(f"fetching the metadata of {'ab' * 20}"), line
            proc.send_signal(signal.SIGINT)  # ignored
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0


@pytest.mark.parametrize("url", ["ws://", "ws://:80", "ws://[::1", "ws://127.0.0.1:99999"])
async def test_stream_bad_signal_url_exits_2(tmp_path: Path, url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_stream_argv(tmp_path, "--signal", url), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    err = await communicate(proc)
    assert proc.returncode == 2, err
    assert "--signal: " in err.decode() and "Traceback" not in err.decode()


async def test_a_streamed_magnet_downloads_its_first_piece_first(tmp_path: Path) -> None:
    """``lt-punch stream`` adds a magnet link so that the requests libtorrent sends the
    moment the metadata arrives go to the first piece. They went to random pieces
    (libtorrent's first picks ignore priorities), and a rate-capped seeder served those
    before the first bytes a player asks for."""
    import libtorrent as lt

    from lt_punch import Config
    from lt_punch.stream_cli import stream_params
    from lt_punch.torrent.events import PieceFinished
    from lt_punch.torrent.session import EnhancedTorrentSession

    payload = tmp_path / "seed" / "movie.mp4"
    write_random_file(payload, 8 << 20, seed=5)
    ti = lt.torrent_info(lt.bdecode(make_torrent(payload, piece_size=1 << 16)))  # 128 pieces
    seeder = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                         "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False})
    try:
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(payload.parent)
        atp.flags |= lt.torrent_flags.seed_mode  # a seed at once, no check
        handle = seeder.add_torrent(atp)
        handle.set_upload_limit(2_000_000)  # its first bytes come on its rate limiter's tick
        magnet = f"magnet:?xt=urn:btih:{ti.info_hash()}&x.pe=127.0.0.1:{seeder.listen_port()}"
        config = Config(signaling_enabled=False, listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, lt_settings=LT,
                                          save_path=tmp_path / "leech") as leech:
            torrent = await leech.add(stream_params(magnet))
            events = torrent.events()
            finished: list[int] = []
            async with asyncio.timeout(30):
                async for event in events:
                    if isinstance(event, PieceFinished):
                        finished.append(event.piece)
                        if len(finished) == 2:
                            break
            assert 0 in finished, finished
    finally:
        seeder.pause()
        del seeder
