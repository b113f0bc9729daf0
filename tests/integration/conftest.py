"""Fixtures shared by the loopback integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lt_punch import Config
from lt_punch.signaling import SignalingServer
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

SIZE = (8 << 20) + 12345  # not a multiple of the piece size
PIECE = 1 << 18
LT = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}
SWARM_SIZE = (3 << 20) + 777


class Pair:
    def __init__(self, leech: EnhancedTorrentSession, infohash: str, data: bytes) -> None:
        self.leech = leech
        self.infohash = infohash
        self.data = data


@dataclass
class Swarm:
    """A seed in a signaling room on loopback: the room's config and the torrent."""

    config: Config
    torrent: bytes
    infohash: str
    data: bytes

    @property
    def magnet(self) -> str:
        return f"magnet:?xt=urn:btih:{self.infohash}&dn=clip.mp4"


@contextlib.asynccontextmanager
async def seeded(base: Path, name: str, size: int = 0, seed: int = 0, *,
                 write: Callable[[Path], None] | None = None) -> AsyncIterator[Swarm]:
    """A signaling server and a session seeding ``base/seed/name``: ``size`` random
    bytes, or what ``write(path)`` makes there."""
    payload = base / "seed" / name
    if write is not None:
        payload.parent.mkdir(parents=True, exist_ok=True)
        write(payload)
    else:
        write_random_file(payload, size, seed=seed)
    torrent = make_torrent(payload, piece_size=PIECE)
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as session:
            added = await session.add(torrent)
            yield Swarm(config, torrent, added.infohash, payload.read_bytes())


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A seed and a leech in one signaling room; the leech downloads at 2 MB/s."""
    async with seeded(tmp_path, "video.mp4", SIZE, 3) as room, \
            EnhancedTorrentSession(room.config, peer_id="leech", lt_settings=LT,
                                   save_path=tmp_path / "leech") as leech:
        added = await leech.add(room.torrent)
        # 2 MB/s: the file (8 MB) is still downloading while the test reads.
        added.handle.set_download_limit(2_000_000)
        yield Pair(leech, added.infohash, room.data)


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    """A seed of one file (clip.mp4) in a signaling room on loopback."""
    async with seeded(tmp_path, "clip.mp4", SWARM_SIZE, 21) as room:
        yield room


async def http_get(srv: SignalingServer, path: str, timeout: float = 5.0  # noqa: ASYNC109
                   ) -> tuple[int, str, bytes]:
    """``GET path`` on a signaling server's port: (status, Content-Type, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    ctype = next(v for k, _, v in (ln.partition(": ") for ln in lines) if k == "Content-Type")
    return status, ctype, body


async def communicate(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> bytes:  # noqa: ASYNC109
    """The stderr of a command expected to end by itself; killed if it does not."""
    try:
        async with asyncio.timeout(timeout):
            return (await proc.communicate())[1]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root: mount), unmounted by the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
