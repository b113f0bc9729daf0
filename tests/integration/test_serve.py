"""``lt-punch serve``: every endpoint of the API on loopback against a real seed found
through the signaling room; bad input; bearer token; restart from the state directory."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from lt_punch.serve import Daemon, make_api
from lt_punch.stream import make_runner

from .conftest import LT, Swarm, communicate
from .conftest import SWARM_SIZE as SIZE

TOKEN = "s3cret-token"


class Api:
    """A running daemon and its API on a loopback port."""

    def __init__(self, daemon: Daemon, url: str, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.url = url
        self.http = http

    async def json(self, method: str, path: str, status: int = 200,
                   **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, **kwargs) as r:
            body = await r.text()
            assert r.status == status, (r.status, body)
            return json.loads(body)


@pytest.fixture
async def start_api(swarm: Swarm, tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_api(token, state, save_every=..., idle_timeout=..., **make_api
    options)``: a daemon and its API (run as ``lt-punch serve`` runs it) on a loopback
    port; all stopped with the test."""
    runners: list[tuple[Daemon, web.AppRunner]] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(token: str | None = None, state: Path = tmp_path / "state", *,
                    save_every: float = 1.0, idle_timeout: float = 30.0,
                    **options: Any) -> Api:
        daemon = Daemon(state, swarm.config, lt_settings=LT, save_every=save_every)
        await daemon.start()
        runner = make_runner(make_api(daemon, token, **options), idle_timeout=idle_timeout)
        runners.append((daemon, runner))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return Api(daemon, f"http://{host}:{port}", http)

    try:
        yield start
    finally:
        for daemon, runner in reversed(runners):
            await runner.cleanup()
            await daemon.close()
        await http.close()


async def test_add_magnet_download_stream_and_stats(swarm: Swarm, start_api: Any) -> None:
    api = await start_api()
    assert await api.json("GET", "/torrents") == {"torrents": []}
    async with api.http.post(api.url + "/torrents", json={"magnet": swarm.magnet}) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Location"] == f"/torrents/{swarm.infohash}"
        added = await r.json()
    assert added["infohash"] == swarm.infohash
    # Metadata and data from the seed found in the room (the magnet has no peers).
    await api.daemon.session.torrents[swarm.infohash].wait_finished(timeout=60)
    info = await api.json("GET", f"/torrents/{swarm.infohash.upper()}")
    assert info["progress"] == 1.0 and info["has_metadata"] and info["name"] == "clip.mp4"
    assert [p["peer_id"] for p in info["punches"] if p["state"] == "connected"] == ["seed"]
    [file] = info["files"]
    assert file["size"] == SIZE and file["url"] == \
        f"{api.url}/files/{swarm.infohash}/0"
    async with api.http.get(file["url"], headers={"Range": "bytes=1000-"}) as r:
        assert r.status == 206 and await r.read() == swarm.data[1000:]
    listed = await api.json("GET", "/torrents")
    assert [t["infohash"] for t in listed["torrents"]] == [swarm.infohash]
    # Adding it again is not an error: 200 and the same torrent.
    again = await api.json("POST", "/torrents", json={"magnet": swarm.infohash})
    assert again["infohash"] == swarm.infohash

    nat = await api.json("GET", "/p2p/nat")
    assert set(nat) == {"nat_info", "strategy"} and nat["strategy"]["nat"] == "open"
    assert nat["strategy"]["methods"][0] == "direct"
    stats = await api.json("GET", "/p2p/stats")
    assert stats["totals"]["torrents"] == 1 and stats["totals"]["connected"] == 1
    health = await api.json("GET", "/p2p/health")
    assert health["status"] == "ok" and health["checks"]["signaling"] is True

    async with api.http.get(api.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    [torrents] = families["lt_punch_torrents"].samples
    assert torrents.value == 1
    [progress] = families["lt_punch_torrent_progress"].samples
    assert progress.labels == {"infohash": swarm.infohash, "name": "clip.mp4"}
    assert progress.value == 1.0
    [received] = families["lt_punch_torrent_downloaded_bytes"].samples
    assert received.value >= SIZE
    punched = {(s.labels["method"], s.labels["result"]): s.value
               for s in families["lt_punch_punches"].samples}
    assert sum(v for (_, result), v in punched.items() if result == "connected") == 1
    [signaling] = families["lt_punch_signaling_connected"].samples
    assert signaling.value == 1


async def test_events_stream_peer_and_punch_events(swarm: Swarm, start_api: Any) -> None:
    """``GET /events``: Server-Sent Events of what happens, from the request on."""
    api = await start_api()
    async with api.http.get(api.url + "/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        async with api.http.post(api.url + "/torrents", json={"magnet": swarm.magnet}) as r:
            assert r.status == 201
        seen: dict[str, dict[str, Any]] = {}
        kind = None
        async with asyncio.timeout(60):
            while not {"punched", "peer-connected", "finished"} <= seen.keys():
                line = (await stream.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    assert data["type"] == kind
                    seen[data["type"]] = data
    assert seen["punched"]["peer_id"] == "seed"
    connected = seen["peer-connected"]
    assert connected["infohash"] == swarm.infohash
    assert connected["transport"] in ("utp", "tcp") and connected["since_start"] > 0
    stats = await api.json("GET", "/p2p/stats")
    assert 0 < stats["first_peer_after"] <= connected["since_start"] + 0.001


async def test_upload_torrent_file_raw_and_multipart(swarm: Swarm, start_api: Any) -> None:
    api = await start_api()
    added = await api.json("POST", "/torrents", status=201, data=swarm.torrent,
                           headers={"Content-Type": "application/x-bittorrent"})
    assert added["infohash"] == swarm.infohash and added["has_metadata"]
    assert added["files"][0]["name"] == "clip.mp4"
    await api.json("DELETE", f"/torrents/{swarm.infohash}")
    form = aiohttp.FormData()
    form.add_field("torrent", swarm.torrent, filename="clip.torrent",
                   content_type="application/x-bittorrent")
    again = await api.json("POST", "/torrents", status=201, data=form)
    assert again["infohash"] == swarm.infohash


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"json": {"magnet": "magnet:?xt=urn:btih:zz"}}, 400, "bad magnet link"),
    ({"json": {"magnet": "/etc/passwd"}}, 400, "not a magnet link or infohash"),
    ({"json": {"url": "x"}}, 400, 'expected {"magnet"'),
    ({"json": ["magnet"]}, 400, 'expected {"magnet"'),
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "not valid JSON"),
    ({"data": b"d4:spam", "headers": {"Content-Type": "application/x-bittorrent"}}, 400,
     "not a valid .torrent"),
    ({"data": b"magnet:?xt=urn:btih:" + b"ab" * 20, "headers": {"Content-Type": "text/plain"}},
     415, "unsupported Content-Type"),
    ({"data": aiohttp.FormData({"other": "x"})}, 400, "expected a 'torrent' file field"),
    ({"data": aiohttp.FormData({"magnet": "/etc/passwd"})}, 400,
     "not a magnet link or infohash"),
    ({"data": io.BytesIO(b"x" * (17 << 20)),
      "headers": {"Content-Type": "application/x-bittorrent"}}, 413, "over 16 MiB"),
])
async def test_add_rejects_bad_input(start_api: Any, kwargs: dict[str, Any], status: int,
                                     message: str) -> None:
    api = await start_api()
    async with api.http.post(api.url + "/torrents", **kwargs) as r:
        body = await r.text()
        assert r.status == status, body
        if message:
            assert message in (await r.json())["error"]
    assert api.daemon.session.torrents == {}
    assert list(api.daemon.torrent_dir.iterdir()) == []


async def test_unknown_torrent_and_bad_flags(swarm: Swarm, start_api: Any) -> None:
    api = await start_api()
    unknown = "cd" * 20
    for method in ("GET", "DELETE"):
        body = await api.json(method, f"/torrents/{unknown}", status=404)
        assert body == {"error": f"unknown torrent {unknown}"}
    await api.json("GET", "/torrents/not-a-hash", status=404)
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet})
    body = await api.json("DELETE", f"/torrents/{swarm.infohash}?delete_files=maybe",
                          status=400)
    assert "delete_files" in body["error"]
    assert swarm.infohash in api.daemon.session.torrents


async def test_delete_with_and_without_data(swarm: Swarm, start_api: Any) -> None:
    api = await start_api()
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet})
    torrent = api.daemon.session.torrents[swarm.infohash]
    await torrent.wait_finished(timeout=60)
    path = api.daemon.download_dir / "clip.mp4"
    resume = api.daemon.torrent_dir / f"{swarm.infohash}.resume"
    assert path.read_bytes() == swarm.data and resume.exists()
    removed = await api.json("DELETE", f"/torrents/{swarm.infohash}")
    assert removed == {"removed": swarm.infohash, "files_deleted": False}
    assert path.exists() and not resume.exists()
    await api.json("GET", f"/torrents/{swarm.infohash}", status=404)

    # Added again: the data on disk is checked, not downloaded; then removed with it.
    await api.json("POST", "/torrents", status=201, data=swarm.torrent,
                   headers={"Content-Type": "application/x-bittorrent"})
    torrent = api.daemon.session.torrents[swarm.infohash]
    await torrent.wait_finished(timeout=60)
    removed = await api.json("DELETE", f"/torrents/{swarm.infohash}?delete_files=true")
    assert removed["files_deleted"] is True
    assert not path.exists()  # the answer waits for libtorrent's disk thread


async def test_bearer_token(swarm: Swarm, start_api: Any) -> None:
    api = await start_api(token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        async with api.http.get(api.url + "/torrents", headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in (await r.json())["error"]
    async with api.http.get(api.url + "/metrics?token=nope") as r:
        assert r.status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet},
                   headers=auth)
    await api.daemon.session.torrents[swarm.infohash].wait_metadata(timeout=30)
    # A player that cannot send headers: the token as a parameter, kept in the links.
    async with api.http.get(f"{api.url}/playlist.m3u?token={TOKEN}") as r:
        assert r.status == 200
        [url] = [line for line in (await r.text()).splitlines() if line.startswith("http")]
    assert url.endswith(f"/files/{swarm.infohash}/0?token={TOKEN}")
    async with api.http.get(url, headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 206 and await r.read() == swarm.data[:100]
    async with api.http.get(url.split("?")[0], headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 401


async def test_restart_brings_the_torrents_back(swarm: Swarm, start_api: Any,
                                                tmp_path: Path) -> None:
    state = tmp_path / "state"
    api = await start_api(state=state)
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet})
    await api.daemon.session.torrents[swarm.infohash].wait_finished(timeout=60)
    await api.daemon.close()
    assert (state / "session.state").stat().st_size > 0
    # A resume file that cannot be read does not keep the daemon from starting.
    (state / "torrents" / ("ef" * 20 + ".resume")).write_bytes(b"garbage")

    api = await start_api(state=state)
    assert api.daemon.restored == [swarm.infohash]
    assert (state / "torrents" / ("ef" * 20 + ".bad")).exists()
    torrent = api.daemon.session.torrents[swarm.infohash]
    # Finished from the data on disk and the resume data: nothing downloaded again.
    await torrent.wait_finished(timeout=30)
    info = await api.json("GET", f"/torrents/{swarm.infohash}")
    assert info["progress"] == 1.0 and info["name"] == "clip.mp4"
    assert info["total_download"] == 0


def _serve_argv(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lt_punch", "serve", "--port", "0", "--state-dir",
            str(state), *extra]


async def test_serve_command_starts_answers_and_stops(swarm: Swarm, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env["P2P_API_TOKEN"] = TOKEN
    env["P2P_API_ALLOW_HOST"] = "media.example tv.example"
    assert swarm.config.signaling_url is not None
    proc = await asyncio.create_subprocess_exec(
        # On loopback, libtorrent bound to 0.0.0.0 gets no DHT reply from a reflector on
        # 127.0.0.1 (NAT detection would fail: health "degraded"), so bind loopback.
        *_serve_argv(tmp_path / "state", "--isolated", "--signal", swarm.config.signaling_url,
                     "--listen-host", "127.0.0.1"),
        env={**env, "P2P_SIGNALING_UDP_PORT": str(swarm.config.signaling_udp_port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
            match = re.match(r"serving (http://\S+)/ \(state in .*, 0 torrent\(s\) restored\)",
                             line)
            assert match, line + (await proc.stderr.read()).decode()
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession() as http:
                async with http.get(match[1] + "/p2p/health", headers=auth) as r:
                    health = await r.json()
                    assert r.status == 200 and health["status"] == "ok", health
                for host, status in (("tv.example", 200), ("evil.example", 403)):
                    async with http.get(match[1] + "/torrents",
                                        headers={**auth, "Host": host}) as r:
                        assert r.status == status, host
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert "stopping" in (await proc.stdout.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (tmp_path / "state" / "session.state").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--token", " "], "--token: empty"),
    (["--port", "70000"], "70000 is not in the range"),
    (["--signal", "http://x"], "--signal"),
    (["--save-every", "0"], "--save-every"),
    (["--listen-host", "nowhere"], "listen_host: not an IP address"),
    (["--allow-origin", "ftp://x"], "--allow-origin 'ftp://x': expected"),
    (["--allow-host", "a:b"], "--allow-host 'a:b': not a host name"),
    (["--signal", "ws://"], "--signal: no host in 'ws://'"),
    (["--signal", "ws://:80"], "--signal: no host in 'ws://:80'"),
    (["--signal", "ws://[::1"], "--signal: bad URL 'ws://[::1'"),
    (["--signal", "ws://127.0.0.1:99999"], "Port out of range"),
    (["--peer-id", "my box"], "--peer-id must be 1..64 characters"),
])
async def test_serve_command_bad_options(tmp_path: Path, extra: list[str],
                                         message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_serve_argv(tmp_path / "state", *extra), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    err = await communicate(proc)
    assert proc.returncode == 2
    assert message in err.decode() and "Traceback" not in err.decode()


@pytest.mark.parametrize(("option", "message"), [
    ("--port", "cannot serve on 127.0.0.1:{port}"),
    ("--listen-port", "cannot listen on port {port} for peers"),
])
async def test_serve_command_port_in_use(tmp_path: Path, option: str, message: str) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "0.0.0.0", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            *_serve_argv(tmp_path / "state", option, str(port)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert proc.returncode == 2, err
    assert message.format(port=port) in err.decode()
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: (s / "torrents").write_text(""), "torrents is a file, not a directory"),
    (lambda s: (s / "session.state").mkdir(), "cannot read session.state: Is a directory"),
    (lambda s: (s / "peer_id").write_text("my box\n"), "peer_id must be 1..64 characters"),
])
async def test_serve_command_says_what_is_wrong_with_the_state_dir(
        tmp_path: Path, make: Any, message: str) -> None:
    # It said "cannot serve on 127.0.0.1:0: File exists" (or a traceback).
    state = tmp_path / "state"
    state.mkdir()
    make(state)
    proc = await asyncio.create_subprocess_exec(
        *_serve_argv(state, "--isolated"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    err = await communicate(proc)
    assert proc.returncode == 2, err
    assert f"error: state directory {state}: " in err.decode()
    assert message in err.decode() and "Traceback" not in err.decode()


async def test_peer_id_is_kept_in_the_state_dir(swarm: Swarm, tmp_path: Path) -> None:
    """Without a peer id the daemon makes one once and keeps it: a signaling token made
    for it stays valid across restarts. A given one wins and is not stored."""
    from lt_punch import Config

    state = tmp_path / "state"
    config = Config(signaling_enabled=False, listen_host="127.0.0.1")
    first = Daemon(state, config, lt_settings=LT)
    again = Daemon(state, config, lt_settings=LT)
    assert first.peer_id == again.peer_id
    assert (state / "peer_id").read_text().strip() == first.peer_id
    assert Daemon(state, config.replace(peer_id="mybox")).peer_id == "mybox"
    assert Daemon(state, config, peer_id="other").peer_id == "other"
    assert (state / "peer_id").read_text().strip() == first.peer_id
    async with first:
        assert first.session.peer_id == first.peer_id


async def test_a_copied_resume_file_is_restored_once(swarm: Swarm, start_api: Any,
                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    api = await start_api(state=state)
    await api.json("POST", "/torrents", status=201, json={"magnet": swarm.magnet})
    await api.daemon.close()
    resume = state / "torrents" / f"{swarm.infohash}.resume"
    (state / "torrents" / "backup.resume").write_bytes(resume.read_bytes())
    api = await start_api(state=state)
    assert api.daemon.restored == [swarm.infohash]
    assert len((await api.json("GET", "/torrents"))["torrents"]) == 1


async def test_restart_adds_a_magnets_peers_again(swarm: Swarm, start_api: Any,
                                                  tmp_path: Path) -> None:
    """The peers and trackers of an added magnet are kept with its resume data, and
    come back with it after a restart."""
    import libtorrent as lt

    state = tmp_path / "state"
    api = await start_api(state=state)
    magnet = swarm.magnet + "&x.pe=127.0.0.1:45678&tr=http%3A%2F%2F127.0.0.1%3A45679%2Fa"
    await api.json("POST", "/torrents", status=201, json={"magnet": magnet})
    await api.daemon.close()
    resume = state / "torrents" / f"{swarm.infohash}.resume"
    # As libtorrent's resume data is once the dials to the peer failed: without it.
    data = lt.bdecode(resume.read_bytes())
    assert isinstance(data, dict)
    data[b"peers"] = b""
    data[b"trackers"] = []
    resume.write_bytes(lt.bencode(data))
    api = await start_api(state=state)
    assert api.daemon.restored == [swarm.infohash]
    entry = api.daemon.store.load(swarm.infohash)
    assert entry is not None and ("127.0.0.1", 45678) in entry.params.peers
    handle = api.daemon.session.torrents[swarm.infohash].handle
    assert "http://127.0.0.1:45679/a" in [t["url"] for t in handle.trackers()]
