"""``lt-punch serve``'s HTTP layer against hostile clients, on loopback: Host and Origin
(DNS rebinding, cross-site forms), bodies that break parsers, bodies and headers that
never finish, a full state directory, deleting a torrent without metadata."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from .conftest import Swarm
from .test_serve import Api, start_api  # noqa: F401 (a fixture)

EVIL = "http://evil.example"


@pytest.fixture
def start(start_api: Any) -> Any:  # noqa: F811 (the fixture imported above)
    """``await start(**make_api options)``: a daemon (no periodic saves) and its API."""
    return functools.partial(start_api, save_every=3600)


def _port(api: Api) -> int:
    return int(api.url.rsplit(":", 1)[1])


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# -- 1. Host and Origin ----------------------------------------------------------------------

async def test_a_cross_origin_form_cannot_add_or_remove(swarm: Swarm, start: Any) -> None:
    api = await start()
    magnet = {"magnet": swarm.magnet}
    for origin in (EVIL, "null", f"http://localhost:{_port(api) + 1}"):
        # What a page's <form method=post> sends: no preflight, the browser's Origin.
        body = await api.json("POST", "/torrents", status=403, data=magnet,
                              headers={"Origin": origin})
        assert body["error"].startswith(f"cross-origin POST from '{origin}' refused")
        await api.json("POST", "/torrents", status=403, json=magnet,
                       headers={"Origin": origin})
    assert api.daemon.session.torrents == {}
    # The server's own pages (same scheme, host and port) may.
    await api.json("POST", "/torrents", status=201, json=magnet,
                   headers={"Origin": api.url})
    await api.json("DELETE", f"/torrents/{swarm.infohash}", status=403,
                   headers={"Origin": EVIL})
    # Reading is allowed (the page cannot read the answer: no CORS header for it).
    async with api.http.get(api.url + "/torrents", headers={"Origin": EVIL}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    await api.json("DELETE", f"/torrents/{swarm.infohash}")


async def test_an_unknown_host_is_refused(start: Any) -> None:
    """DNS rebinding: evil.example now resolves to 127.0.0.1; the browser sends its name."""
    api = await start()
    port = _port(api)
    for host in (f"evil.example:{port}", "evil.example", "localhost.evil.example",
                 "127.0.0.1.evil.example", "[::1", f"a:{port}:{port}"):
        async with api.http.get(api.url + "/p2p/health", headers={"Host": host}) as r:
            assert r.status == 403, host
            assert "not allowed" in (await r.json())["error"]
    async with api.http.post(api.url + "/torrents", json={"magnet": "ab" * 20},
                             headers={"Host": "evil.example"}) as r:
        assert r.status == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST.",
                 f"192.168.1.5:{port}"):
        async with api.http.get(api.url + "/p2p/health", headers={"Host": host}) as r:
            assert r.status in (200, 503), host  # 503: the health check, not the Host


async def test_allowed_hosts_and_origins(swarm: Swarm, start: Any) -> None:
    ui = "http://ui.example:3000"
    api = await start(token="t", allow_hosts=["media.example"], allow_origins=[ui])
    auth = {"Authorization": "Bearer t"}
    async with api.http.get(api.url + "/torrents", headers={"Host": "Media.Example:80",
                                                           **auth}) as r:
        assert r.status == 200
    # A web UI at an allowed origin: its preflight needs no token, then CORS answers.
    async with api.http.options(api.url + "/torrents", headers={
            "Origin": ui, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ui
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    async with api.http.post(api.url + "/torrents", json={"magnet": swarm.magnet},
                             headers={"Origin": ui, **auth}) as r:
        assert r.status == 201 and r.headers["Access-Control-Allow-Origin"] == ui
    await api.daemon.session.torrents[swarm.infohash].wait_metadata(timeout=30)
    async with api.http.get(f"{api.url}/files/{swarm.infohash}/0",  # a streamed answer
                            headers={"Origin": ui, "Range": "bytes=0-9", **auth}) as r:
        assert r.status == 206 and r.headers["Access-Control-Allow-Origin"] == ui
        assert await r.read() == swarm.data[:10]
    # The token is still needed; the refusal is readable by the page.
    async with api.http.delete(f"{api.url}/torrents/{swarm.infohash}",
                               headers={"Origin": ui}) as r:
        assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == ui
    await api.json("DELETE", f"/torrents/{swarm.infohash}", status=403,
                   headers={"Origin": EVIL, **auth})


# -- 3. bodies that break parsers --------------------------------------------------------------

@pytest.mark.parametrize(("body", "ctype", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "body is not valid JSON"),
    (b'{"magnet": "' + b"ab" * 20 + b'"}', "application/json; charset=bogus-cs",
     "charset 'bogus-cs': JSON must be UTF-8"),
    (b'{"magnet": "\xff"}', "application/json", "body is not valid JSON"),
    (b"magnet=x", "application/x-www-form-urlencoded; charset=bogus-cs", "malformed form"),
    (b"--x\r\n", "multipart/form-data", "malformed form"),
])
async def test_bad_bodies_get_400_without_traceback(
        start: Any, caplog: pytest.LogCaptureFixture, body: bytes, ctype: str,
        message: str) -> None:
    api = await start()
    got = await api.json("POST", "/torrents", status=400, data=body,
                         headers={"Content-Type": ctype})
    assert set(got) == {"error"} and got["error"].startswith(message), got
    _no_tracebacks(caplog)


async def test_too_large_and_unknown_routes_answer_json(start: Any) -> None:
    api = await start()
    body = await api.json("POST", "/torrents", status=413, data=io.BytesIO(b"x" * (17 << 20)),
                          headers={"Content-Type": "application/x-bittorrent"})
    assert body == {"error": "request body over 16 MiB"}
    assert "error" in await api.json("GET", "/nowhere", status=404)
    assert "error" in await api.json("PUT", "/torrents", status=405)


# -- 2. requests that never finish -------------------------------------------------------------

async def _raw(api: Api, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(api))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_headers_that_never_end_are_cut_off(start: Any) -> None:
    api = await start(idle_timeout=0.5)
    reader, writer = await _raw(api, b"GET /p2p/health HTTP/1.1\r\nHost: localhost\r\n")
    try:
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed, no answer
    finally:
        writer.close()


async def test_a_body_that_never_ends_gets_408(start: Any) -> None:
    api = await start(body_timeout=0.5)
    reader, writer = await _raw(api, b"POST /torrents HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Content-Type: application/json\r\n"
                                     b"Content-Length: 100\r\n\r\n{\"magnet\":")
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"Connection: close" in head
    finally:
        writer.close()


# -- 5. a full disk, a torrent without metadata ----------------------------------------------


def _fill(path: Path) -> None:
    """Write until the disk is full (unbuffered: the last write fails here, not in a
    flush at close)."""
    with contextlib.suppress(OSError), path.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)


async def test_a_full_state_directory_gives_507_and_adds_nothing(
        swarm: Swarm, start: Any, small_disk: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    api = await start(state=small_disk / "state")
    _fill(small_disk / "filler")
    body = await api.json("POST", "/torrents", status=507, json={"magnet": swarm.magnet})
    assert body == {"error": "cannot save the torrent in the state directory: "
                             "No space left on device; not added"}
    assert await api.json("GET", "/torrents") == {"torrents": []}
    assert api.daemon.session.torrents == {}
    _no_tracebacks(caplog)
    (small_disk / "filler").unlink()
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet})


async def test_delete_files_of_a_torrent_without_metadata(start: Any) -> None:
    api = await start()
    nobody = "12" * 20  # no peer has it: no metadata ever
    await api.json("POST", "/torrents", status=201, json={"magnet": nobody})
    assert api.daemon.session.torrents[nobody].handle.torrent_file() is None
    body = await api.json("DELETE", f"/torrents/{nobody}?delete_files=true")
    assert body == {"removed": nobody, "files_deleted": True}
    assert api.daemon.session.torrents == {}

