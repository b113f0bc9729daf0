"""P2PCoordinator over loopback: embedded signaling, real libtorrent sessions, no sleeps."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lt_punch import Config, P2PCoordinator
from lt_punch.errors import ConfigError, LtPunchError, LtTimeoutError, PunchError
from lt_punch.nat.server import StunServer
from lt_punch.signaling import SignalingServer
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession, PunchRecord

# Both peers are 127.0.0.1: one connection per port, not per IP.
LT = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}
WAIT = 30.0
SIZE = 3 << 20


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("P2P_"):
            monkeypatch.delenv(var)


@pytest.fixture
def payload(tmp_path: Path) -> Iterator[tuple[Path, bytes, str]]:
    path = tmp_path / "seed" / "payload.bin"
    digest = write_random_file(path, SIZE, seed=1)
    yield path, make_torrent(path), digest


def _coordinator(tmp_path: Path, peer_id: str = "seeder", **kwargs: Any) -> P2PCoordinator:
    kwargs.setdefault("signaling_port", 0)
    return P2PCoordinator(listen_host="127.0.0.1", peer_id=peer_id, lt_settings=LT,
                          save_path=tmp_path / "seed", **kwargs)


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[P2PCoordinator]:
    async with _coordinator(tmp_path) as p2p:
        yield p2p


def _peer_session(p2p: P2PCoordinator, save: Path, peer_id: str = "leecher",
                  **kwargs: Any) -> EnhancedTorrentSession:
    config = Config(signaling_url=p2p.config.signaling_url,
                    signaling_udp_port=p2p.config.signaling_udp_port,
                    listen_host="127.0.0.1", **kwargs)
    return EnhancedTorrentSession(config, peer_id=peer_id, lt_settings=LT, save_path=save)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- state and reports ---------------------------------------------------------------------


async def test_initialize_starts_embedded_signaling(coordinator: P2PCoordinator) -> None:
    server = coordinator.signaling_server
    assert server is not None and server.dht_address is not None
    assert coordinator.config.signaling_url == server.url
    assert coordinator.config.signaling_udp_port == server.dht_address[1]
    assert coordinator.session.client is not None and coordinator.session.client.connected
    await coordinator.initialize()  # idempotent
    assert coordinator.signaling_server is server


async def test_nat_info(coordinator: P2PCoordinator) -> None:
    info = await coordinator.get_nat_info()
    listen_port = coordinator.session.session.listen_port()
    assert info["nat_type"] == "open"  # the reflector saw our own loopback address
    assert info["classic_name"] == "Open Internet"
    assert info["source"] == "signaling" and info["error"] is None
    assert info["public_endpoints"]["udp"] == ["127.0.0.1", listen_port]
    assert info["public_endpoints"]["tcp"][0] == "127.0.0.1"


async def test_nat_info_with_stun_matches_the_cli(tmp_path: Path) -> None:
    """get_nat_info() and ``lt-punch nat --json`` report the same discovery."""
    async with StunServer(("127.0.0.1", 0), alternate_port=0, alternate_host="127.0.0.2") \
            as stun:
        async with _coordinator(tmp_path, stun_servers=(stun.address,)) as p2p:
            info = await p2p.get_nat_info()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lt_punch", "nat", "--json", "--stun",
            f"127.0.0.1:{stun.address[1]}", stdout=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    cli = json.loads(out)
    keys = ("nat_type", "mapping", "filtering", "allocation", "confidence", "public_ip",
            "stun_server", "skipped", "source")
    assert {k: info[k] for k in keys} == {k: cli[k] for k in keys}
    assert info["nat_type"] == "open" and info["filtering"] == "endpoint-independent"
    assert [t["name"] for t in info["tests"]] == [t["name"] for t in cli["tests"]]
    assert info["port_mappings"] == []  # UPnP / NAT-PMP off (ISOLATED_SETTINGS)


async def test_recommended_strategy(coordinator: P2PCoordinator) -> None:
    assert coordinator.get_recommended_strategy()["methods"] == [
        "direct", "tcp-simultaneous-open", "utp-punch", "relay"
    ]
    strategy = coordinator.get_recommended_strategy("symmetric")
    assert strategy["nat"] == "open" and strategy["peer_nat"] == "symmetric"
    assert strategy["difficulty"] == "easy" and strategy["initiator"] == "peer"
    with pytest.raises(ConfigError, match="peer_nat"):
        coordinator.get_recommended_strategy("cone")


async def test_health_ok(coordinator: P2PCoordinator) -> None:
    health = await coordinator.health_check()
    assert health["status"] == "ok"
    assert health["checks"] == {"session": True, "signaling": True, "nat": True}
    assert health["details"]["signaling"] == "connected"


async def test_stats_shape(coordinator: P2PCoordinator) -> None:
    await coordinator.register_peer("friend", "127.0.0.1", 6881)
    stats = coordinator.get_stats()
    assert {"peer_id", "uptime", "nat", "public_endpoints", "listen_port", "signaling",
            "totals", "torrents", "signaling_server", "registered_peers"} <= set(stats)
    assert stats["peer_id"] == "seeder"
    assert stats["registered_peers"] == 1
    assert stats["signaling"]["connected"] is True
    assert stats["signaling_server"]["peers"] == 1
    assert stats["totals"]["torrents"] == 0


async def test_health_degraded_without_signaling_server(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{_free_port()}"  # nothing listens there
    async with _coordinator(tmp_path, signaling_url=url) as p2p:
        assert p2p.signaling_server is None
        health = await p2p.health_check()
        assert health["status"] == "degraded"
        assert health["checks"]["session"] is True
        assert health["checks"]["signaling"] is False
        assert "cannot connect" in health["details"]["signaling"]


# --- a download through the coordinator's session ------------------------------------------


@pytest.mark.parametrize(
    ("seed_id", "leech_id"),
    # Same NAT type on both ends: the smaller id initiates. Both ways round.
    [("seeder", "leecher"), ("a-seeder", "b-leecher")],
)
@pytest.mark.parametrize("methods", [("utp",), ("tcp",)])
async def test_punched_download(
    tmp_path: Path, payload: tuple[Path, bytes, str], seed_id: str, leech_id: str,
    methods: tuple[str, ...],
) -> None:
    path, torrent, digest = payload
    async with _coordinator(tmp_path, seed_id, methods=methods) as p2p:
        seed = await p2p.session.add(torrent)
        save = tmp_path / "leech"
        async with _peer_session(p2p, save, leech_id, methods=methods) as leecher:
            await leecher.add(torrent)
            punch = await leecher.wait_punched(seed.infohash, WAIT)
            assert punch.peer_id == seed_id and punch.method == methods[0]
            assert punch.role == ("initiator" if leech_id < seed_id else "responder")
            await leecher.wait_finished(seed.infohash, WAIT)
            assert sha256_file(save / path.name) == digest

            result = await p2p.connect_to_peer(leech_id, seed.infohash)
            assert result["peer_id"] == leech_id
            assert result["method"] == methods[0]
            assert result["state"] == "connected"
            assert result["infohash"] == seed.infohash
            assert result["role"] != punch.role
            assert (await p2p.connect_to_peer(leech_id))["method"] == methods[0]

            totals = p2p.get_stats()["totals"]
            assert totals["connected"] == 1 and totals["by_method"] == {methods[0]: 1}
            assert p2p.get_stats()["signaling_server"]["peers"] == 2


# --- out-of-band peers ---------------------------------------------------------------------


async def test_register_peer_direct_download(
    tmp_path: Path, payload: tuple[Path, bytes, str]
) -> None:
    path, torrent, digest = payload
    async with _coordinator(tmp_path, signaling_enabled=False) as p2p:
        assert p2p.signaling_server is None
        health = await p2p.health_check()
        assert health["status"] == "ok" and health["details"]["signaling"] == "disabled"
        seed = await p2p.session.add(torrent)
        save = tmp_path / "leech"
        config = Config(signaling_enabled=False, listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, peer_id="leecher", lt_settings=LT,
                                          save_path=save) as leecher:
            await leecher.add(torrent)
            port = leecher.session.listen_port()  # type: ignore[union-attr]
            await p2p.register_peer("leecher", "127.0.0.1", port, {"note": "out of band"})
            assert p2p.registered_peers["leecher"].metadata == {"note": "out of band"}
            result = await p2p.connect_to_peer("leecher")
            assert result == {"peer_id": "leecher", "method": "direct",
                              "endpoint": ["127.0.0.1", port], "infohashes": [seed.infohash]}
            await leecher.wait_finished(seed.infohash, WAIT)
            assert sha256_file(save / path.name) == digest


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("bad id", "127.0.0.1", 1), "peer_id"),
        (("", "127.0.0.1", 1), "peer_id"),
        (("p", "localhost", 1), "address"),
        (("p", 17, 1), "address"),
        (("p", "0.0.0.0", 1), "address"),
        (("p", "127.0.0.1", 0), "port"),
        (("p", "127.0.0.1", 65536), "port"),
        (("p", "127.0.0.1", True), "port"),
        (("p", "127.0.0.1", "6881"), "port"),
        (("p", "127.0.0.1", 1, ["not", "a", "dict"]), "metadata"),
    ],
)
async def test_register_peer_rejects_bad_values(
    coordinator: P2PCoordinator, args: tuple[Any, ...], name: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        await coordinator.register_peer(*args)
    assert coordinator.get_stats()["registered_peers"] == 0


async def test_register_peer_accepts_ipv6(coordinator: P2PCoordinator) -> None:
    await coordinator.register_peer("v6", "::1", 6881)
    assert coordinator.registered_peers["v6"].endpoint == ("::1", 6881)


async def test_connect_to_unknown_peer(coordinator: P2PCoordinator) -> None:
    with pytest.raises(LtPunchError, match="unknown peer 'ghost'"):
        await coordinator.connect_to_peer("ghost")
    with pytest.raises(LtPunchError, match="unknown torrent"):
        await coordinator.connect_to_peer("ghost", "ab" * 20)
    await coordinator.register_peer("friend", "127.0.0.1", 6881)
    with pytest.raises(LtPunchError, match="no torrent"):
        await coordinator.connect_to_peer("friend")


async def test_connect_to_peer_awaits_a_punch_in_progress(
    coordinator: P2PCoordinator, payload: tuple[Path, bytes, str]
) -> None:
    # A record as the session keeps it while punching; flipped by hand, announced
    # through the torrent's condition as the session does.
    torrent = await coordinator.session.add(payload[1])
    rec = PunchRecord(torrent.infohash, "slow", "initiator", 0.0, state="punching")
    torrent.punches["slow"] = rec
    with pytest.raises(LtTimeoutError, match="still punching"):
        await coordinator.connect_to_peer("slow", timeout=0.05)

    async def connect() -> None:
        rec.state, rec.method, rec.endpoint = "connected", "utp", ("127.0.0.1", 1)
        await torrent.notify()

    task = asyncio.create_task(connect())
    result = await coordinator.connect_to_peer("slow", timeout=WAIT)
    await task
    assert (result["method"], result["endpoint"]) == ("utp", ["127.0.0.1", 1])

    rec.state = "failed"
    rec.fail("utp", 1, "no punch-answer from peer")
    with pytest.raises(PunchError, match="no punch-answer") as info:
        await coordinator.connect_to_peer("slow", timeout=WAIT)
    assert info.value.reason == "no punch-answer from peer"


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [("P2P_CONNECTION_TIMEOUT", "soon"), ("P2P_SIGNALING_PORT", "99999"),
     ("P2P_STUN_SERVERS", "stun.example"), ("P2P_HOLE_PUNCHING_ENABLED", "perhaps")],
)
def test_bad_environment_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        P2PCoordinator()


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2P_SIGNALING_PORT", "9000")
    monkeypatch.setenv("P2P_CONNECTION_TIMEOUT", "2500")
    p2p = P2PCoordinator(signaling_port=0)
    assert p2p.config.signaling_port == 0
    assert p2p.config.connection_timeout == 2.5
    assert P2PCoordinator(Config(), punch_attempts=5).config.punch_attempts == 5


@pytest.mark.parametrize("config", [None, Config()])
def test_unknown_keyword_rejected(config: Config | None) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'signalling_url'"):
        P2PCoordinator(config, signalling_url="ws://127.0.0.1:1")


def test_bad_keyword_value_named() -> None:
    with pytest.raises(ConfigError, match="listen_host"):
        P2PCoordinator(listen_host="localhost")
    with pytest.raises(ConfigError, match="peer_id"):
        P2PCoordinator(peer_id="no spaces please")


# --- lifecycle -----------------------------------------------------------------------------


async def test_close_is_idempotent_and_frees_everything(tmp_path: Path) -> None:
    p2p = _coordinator(tmp_path)
    with pytest.raises(LtPunchError, match="not initialized"):
        p2p.get_stats()
    await p2p.initialize()
    server = p2p.signaling_server
    session = p2p.session
    assert server is not None
    port = server.port
    await p2p.close()
    await p2p.close()
    assert p2p.signaling_server is None and session.session is None
    assert (await p2p.health_check())["status"] == "down"
    with socket.socket() as s:  # the embedded server's port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    with pytest.raises(LtPunchError, match="closed"):
        await p2p.initialize()


async def test_injected_session_stays_callers(tmp_path: Path) -> None:
    async with SignalingServer("127.0.0.1", 0, ping_interval=None) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, peer_id="mine", lt_settings=LT,
                                          save_path=tmp_path) as session:
            async with P2PCoordinator(session=session) as p2p:
                assert p2p.session is session and p2p.config is config
                assert p2p.signaling_server is None
                assert (await p2p.health_check())["status"] == "ok"
            assert session.session is not None  # not closed by the coordinator
