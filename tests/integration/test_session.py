"""EnhancedTorrentSession on loopback: real libtorrent sessions, real signaling server."""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lt_punch.config import Config
from lt_punch.errors import ConfigError
from lt_punch.signaling.server import SignalingServer
from lt_punch.torrent import settings as settings_module
from lt_punch.torrent.events import PieceFinished
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

from .conftest import Pair

SETTINGS = dict(ISOLATED_SETTINGS, allow_multiple_connections_per_ip=True)


@pytest.fixture
async def server():
    async with SignalingServer("127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture
def payload(tmp_path: Path) -> tuple[bytes, str]:
    sha = write_random_file(tmp_path / "seed" / "data.bin", 4 << 20)
    return make_torrent(tmp_path / "seed" / "data.bin"), sha


def config_for(srv: SignalingServer, **kw) -> Config:
    assert srv.dht_address is not None
    return Config(signaling_url=srv.url, signaling_udp_port=srv.dht_address[1],
                  listen_host="127.0.0.1", **kw)


@pytest.mark.parametrize("methods", [("utp",), ("tcp",)])
async def test_two_sessions_meet_by_infohash_and_download(server, payload, tmp_path, methods):
    torrent, sha = payload
    cfg = config_for(server, methods=methods)
    async with EnhancedTorrentSession(cfg, peer_id="b-seed", lt_settings=SETTINGS,
                                      save_path=tmp_path / "seed") as seed, \
            EnhancedTorrentSession(cfg, peer_id="a-leech", lt_settings=SETTINGS,
                                   save_path=tmp_path / "leech") as leech:
        # Public endpoints come from the reflector (BEP 42) and /whoami.
        assert leech.public_udp == ("127.0.0.1", leech.session.listen_port())
        if "tcp" in methods:
            assert leech.public_tcp == ("127.0.0.1", leech.outgoing_port)
        await seed.add(torrent)
        t = await leech.add(torrent)
        rec = await leech.wait_punched(t.infohash, 15)
        assert rec.method == methods[0]
        # "a-leech" < "b-seed" and both are open: the leech initiates.
        assert rec.role == "initiator"
        assert rec.endpoint is not None and rec.endpoint[0] == "127.0.0.1"
        await leech.wait_finished(t.infohash, 30)
        assert sha256_file(tmp_path / "leech" / "data.bin") == sha
        stats = leech.stats()
        assert stats["totals"]["connected"] == 1
        assert stats["totals"]["by_method"] == {methods[0]: 1}
        assert stats["signaling"]["connected"] is True
        (ts,) = stats["torrents"]
        assert ts["progress"] == 1.0 and ts["total_download"] >= 4 << 20
        # The server sees both in the room, then only the seed after remove.
        assert len(server.rooms.members(t.infohash)) == 2
        await leech.remove(t.infohash)
        assert [p.peer_id for p in server.rooms.members(t.infohash)] == ["b-seed"]


async def test_bad_sources_are_clear_errors(server, tmp_path):
    async with EnhancedTorrentSession(config_for(server), lt_settings=SETTINGS,
                                      save_path=tmp_path) as s:
        with pytest.raises(ConfigError, match="not a magnet link"):
            await s.add("definitely not a torrent")
        with pytest.raises(ConfigError, match="bad magnet"):
            await s.add("magnet:?xt=urn:btih:zz")
        with pytest.raises(ConfigError, match="not a valid .torrent"):
            await s.add(b"d4:infoi3ee")
        bad = tmp_path / "bad.torrent"
        bad.write_bytes(b"garbage")
        with pytest.raises(ConfigError, match="not a valid .torrent file"):
            await s.add(bad)


async def test_unreachable_signaling_is_reported_and_session_still_works(tmp_path, payload):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on ``port`` any more: connection refused.
    cfg = Config(signaling_url=f"ws://127.0.0.1:{port}", listen_host="127.0.0.1",
                 connection_timeout=2.0)
    async with EnhancedTorrentSession(cfg, lt_settings=SETTINGS, save_path=tmp_path) as s:
        assert s.signaling_error
        t = await s.add(payload[0])
        assert s.stats()["signaling"]["connected"] is False
        assert t.infohash in s.torrents


async def test_a_dropped_peer_is_redialed_within_seconds(pair: Pair, tmp_path: Path) -> None:
    """libtorrent waits min_reconnect_time (60 s by default) before it dials a lost
    peer again, even one connect_peer names again: the session sets a short one."""
    torrent = pair.leech.torrents[pair.infohash]
    events = torrent.events()
    async with asyncio.timeout(30):
        async for event in events:
            if isinstance(event, PieceFinished):
                break
    assert torrent.handle.status().num_peers == 1
    # An immediate pause closes every connection (what a dropped uTP flow also does).
    torrent.handle.pause()
    torrent.handle.resume()
    await torrent.wait_finished(timeout=30)
    assert (tmp_path / "leech" / "video.mp4").read_bytes() == pair.data


async def test_an_outgoing_port_taken_meanwhile_is_replaced(server, tmp_path, monkeypatch):
    """The session picks libtorrent's outgoing TCP port when it starts; a socket that
    takes it before the whoami request (EADDRINUSE in one CI run) makes it pick another."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    picks = iter([taken])
    real = settings_module.free_tcp_port
    monkeypatch.setattr(settings_module, "free_tcp_port", lambda host: next(picks, 0) or real(host))
    try:
        async with EnhancedTorrentSession(config_for(server), lt_settings=SETTINGS,
                                          save_path=tmp_path) as s:
            assert s.outgoing_port not in (None, taken)
            assert s.public_tcp == ("127.0.0.1", s.outgoing_port)
            assert s.session.get_settings()["outgoing_port"] == s.outgoing_port
    finally:
        holder.close()


async def test_concurrent_adds_each_get_their_own_torrent(tmp_path: Path) -> None:
    """Each add waits for the add_torrent_alert of its own parameters (it used to take
    any: parallel adds were answered with each other's torrent)."""
    config = Config(signaling_enabled=False, listen_host="127.0.0.1")
    wanted = [f"{n:02x}" * 20 for n in range(1, 9)]
    async with EnhancedTorrentSession(config, lt_settings=SETTINGS, save_path=tmp_path) as s:
        added = await asyncio.gather(*(s.add(f"magnet:?xt=urn:btih:{ih}") for ih in wanted))
        assert [t.infohash for t in added] == wanted
        assert sorted(s.torrents) == sorted(wanted)


async def test_adding_a_torrent_again_adds_the_new_peers_and_trackers(tmp_path: Path) -> None:
    """A second source of the same torrent (a magnet with other x.pe peers and trackers)
    gives them to the torrent already there: libtorrent dials the new peer."""
    dialled = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.set()
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    ih = "cd" * 20
    config = Config(signaling_enabled=False, listen_host="127.0.0.1")
    try:
        async with EnhancedTorrentSession(config, lt_settings=SETTINGS,
                                          save_path=tmp_path) as s:
            first = await s.add(f"magnet:?xt=urn:btih:{ih}&tr=http://127.0.0.1:9/a")
            again = await s.add(f"magnet:?xt=urn:btih:{ih}&tr=http://127.0.0.1:9/b"
                                f"&x.pe=127.0.0.1:{port}")
            assert again is first
            urls = {entry["url"] for entry in first.handle.trackers()}
            assert urls == {"http://127.0.0.1:9/a", "http://127.0.0.1:9/b"}
            async with asyncio.timeout(10):
                await dialled.wait()
    finally:
        listener.close()
        await listener.wait_closed()


def test_a_fifo_or_a_directory_is_not_a_torrent_file(tmp_path: Path) -> None:
    """Reading a FIFO would block for ever: refused at once, like a directory."""
    from lt_punch.torrent.handle import make_params

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        make_params(str(fifo))
    with pytest.raises(ConfigError, match="a directory"):
        make_params(str(tmp_path))


async def test_a_whoami_without_answer_is_asked_once_more() -> None:
    """One request that stalls (seen once in CI, over TLS) costs a retry, not the
    session's signaling; a server that never answers fails after the second try."""
    from aiohttp import web

    from lt_punch.errors import LtTimeoutError
    from lt_punch.torrent.endpoints import Discovery

    calls: list[int] = []
    stall = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1 or stall.is_set():
            await asyncio.Event().wait()  # never answers
        host, port = request.transport.get_extra_info("peername")[:2]
        return web.json_response({"ip": host, "port": port})

    app = web.Application()
    app.router.add_get("/whoami", answer)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = Config(signaling_url=f"ws://127.0.0.1:{port}", listen_host="127.0.0.1")
        discovery = Discovery(None, None, config, outgoing_port=None,  # type: ignore[arg-type]
                              alert_mask=0, tls=None)
        discovery.whoami_timeout = 0.3
        ip, _ = await discovery._whoami()
        assert ip == "127.0.0.1" and len(calls) == 2
        stall.set()
        with pytest.raises(LtTimeoutError):
            await discovery._whoami()
        assert len(calls) == 4
    finally:
        await runner.cleanup()


def test_a_session_without_signaling_does_not_load_it() -> None:
    """websockets and aiohttp cost ~0.25 s of start-up: a download without a signaling
    server (``--isolated``, no URL) must not pay for them."""
    code = (
        "import asyncio, sys\n"
        "from lt_punch.config import Config\n"
        "from lt_punch.torrent.session import EnhancedTorrentSession, ISOLATED_SETTINGS\n"
        "async def main():\n"
        "    cfg = Config(signaling_url=None, isolated=True, listen_host='127.0.0.1')\n"
        "    async with EnhancedTorrentSession(cfg, lt_settings=ISOLATED_SETTINGS):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, env=env).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert "libtorrent" in loaded
    assert not loaded & {"websockets", "aiohttp"}, loaded & {"websockets", "aiohttp"}


async def test_dht_bootstrap_nodes_are_resolved_and_handed_back(server, tmp_path):
    # The session starts libtorrent's DHT without its bootstrap nodes (their lookups
    # would hold up the reflector query) and gives them back resolved; an entry that
    # does not parse is left out.
    lt_settings = dict(SETTINGS, dht_bootstrap_nodes="127.0.0.1:6881, [::1]:6882,no-port")
    async with EnhancedTorrentSession(config_for(server), lt_settings=lt_settings,
                                      save_path=tmp_path) as s:
        assert s.public_udp is not None  # the reflector answered
        assert s.session is not None and s._bootstrapped is not None
        async with asyncio.timeout(10):
            await s._bootstrapped
        assert s.session.get_settings()["dht_bootstrap_nodes"] == "127.0.0.1:6881,[::1]:6882"


def test_bootstrap_nodes_are_taken_out_of_the_settings() -> None:
    pack: dict[str, object] = {"enable_dht": True}
    default = settings_module.lt.default_settings()["dht_bootstrap_nodes"]
    assert settings_module.defer_bootstrap(pack) == default
    assert pack["dht_bootstrap_nodes"] == ""
    off: dict[str, object] = {"enable_dht": False, "dht_bootstrap_nodes": "a:1"}
    assert settings_module.defer_bootstrap(off) == ""
    assert off["dht_bootstrap_nodes"] == "a:1"
    assert settings_module.resolve_nodes("1.2.3.4:1,[::1]:2,x:0,x:99999,:5,,") == \
        "1.2.3.4:1,[::1]:2"


def test_one_listen_port_on_every_interface() -> None:
    # Port 0 on a wildcard address: libtorrent would listen on a different random
    # port per interface, and local service discovery announce the loopback one.
    for host in ("0.0.0.0", "127.0.0.1"):
        pack = settings_module.build(Config(listen_host=host), {}, None)
        addr, _, port = pack["listen_interfaces"].rpartition(":")
        assert addr == host and int(port) > 0
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # free for both
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", int(port)))
    assert settings_module.build(Config(listen_port=6881), {}, None)[
        "listen_interfaces"] == "0.0.0.0:6881"
