"""Property: whatever a client sends - random JSON bodies, headers, Range values - the
daemon (``lt-punch serve``'s API) and the stream app answer below 500, log no traceback
and still answer ``/p2p/health`` afterwards (real sessions, loopback)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lt_punch.serve import Daemon, make_api
from lt_punch.stream import make_app, make_runner

from .conftest import LT, Swarm

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_NAMES = st.sampled_from(["Host", "Origin", "Range", "If-Range", "Content-Type", "Accept",
                          "Authorization", "Cookie", "Sec-Fetch-Site", "X-Forwarded-Host"])
_HEADERS = st.dictionaries(_NAMES | st.text(_TOKEN_CHARS, min_size=1, max_size=12),
                           _VALUE, max_size=4)
_RANGE = st.one_of(
    _VALUE,
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 1 << 23) | st.just(""),
              st.integers(0, 1 << 23) | st.just("")),
    st.lists(st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 99), st.integers(0, 99)),
             min_size=1, max_size=3).map(lambda specs: "bytes=" + ",".join(specs)),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _VALUE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_VALUE, inner, max_size=4),
    max_leaves=20)
_MAGNET = st.builds(lambda ih, rest: f"magnet:?xt=urn:btih:{ih}{rest}",
                    st.text("0123456789abcdef", min_size=40, max_size=40), _VALUE)
_BODY = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda m: json.dumps({"magnet": m}).encode(), _MAGNET | _VALUE),
    st.binary(max_size=200),
)
_CTYPE = st.sampled_from(["application/json", "application/json; charset=utf-8",
                          "application/json; charset=latin-1", "application/x-bittorrent",
                          "multipart/form-data", "multipart/form-data; boundary=x",
                          "application/x-www-form-urlencoded", "text/plain"]) | _VALUE


@dataclass
class Servers:
    api: str
    stream: str
    file: str
    http: aiohttp.ClientSession


@pytest.fixture
async def servers(swarm: Swarm, tmp_path: Path) -> AsyncIterator[Servers]:
    """The daemon's API and a stream app on its session, a finished torrent in both."""
    async with Daemon(tmp_path / "state", swarm.config, lt_settings=LT,
                      save_every=3600) as daemon:
        torrent, _ = await daemon.add(swarm.torrent)
        await torrent.wait_finished(timeout=60)
        runners = [make_runner(make_api(daemon)), make_runner(make_app(daemon.session))]
        urls = []
        try:
            for runner in runners:
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                host, port = runner.addresses[0][:2]
                urls.append(f"http://{host}:{port}")
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=20)) as http:
                yield Servers(*urls, f"/files/{swarm.infohash}/0", http)
        finally:
            for runner in runners:
                await runner.cleanup()


async def _send(srv: Servers, base: str, method: str, path: str, headers: dict[str, str],
                body: bytes | None = None) -> int:
    async with srv.http.request(method, base + path, headers=headers, data=body,
                                allow_redirects=False) as r:
        await r.content.read(1 << 16)  # enough to see it flow; the rest is cut off
        return r.status


async def _still_healthy(srv: Servers, caplog: pytest.LogCaptureFixture) -> None:
    async with srv.http.get(srv.api + "/p2p/health") as r:
        assert "status" in await r.json()
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad][:5]


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "POST", "DELETE", "PUT", "OPTIONS"]),
       path=st.sampled_from(["/torrents", "/torrents/" + "ab" * 20, "/", "/metrics",
                             "/torrents/x?delete_files=maybe"]),
       headers=_HEADERS, ctype=_CTYPE, body=_BODY)
async def test_the_api_survives_random_requests(
        servers: Servers, caplog: pytest.LogCaptureFixture, method: str, path: str,
        headers: dict[str, str], ctype: str, body: bytes) -> None:
    headers = {**headers, "Content-Type": ctype} if method == "POST" else headers
    status = await _send(servers, servers.api, method, path, headers,
                         body if method == "POST" else None)
    assert status < 500, (method, path, headers, body)
    await _still_healthy(servers, caplog)


@FUZZ
@given(on_api=st.booleans(), method=st.sampled_from(["GET", "HEAD"]), range_=_RANGE,
       headers=_HEADERS)
async def test_files_survive_random_ranges_and_headers(
        servers: Servers, caplog: pytest.LogCaptureFixture, on_api: bool, method: str,
        range_: str, headers: dict[str, str]) -> None:
    base = servers.api if on_api else servers.stream
    status = await _send(servers, base, method, servers.file, {**headers, "Range": range_})
    assert status in (200, 206, 403, 416), (range_, headers, status)
    await _still_healthy(servers, caplog)
