"""TorrentReader: read a file of a torrent while it downloads (real sessions, loopback)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lt_punch import Config
from lt_punch.errors import LtPunchError
from lt_punch.signaling import SignalingServer
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

SIZE = (8 << 20) + 12345  # not a multiple of the piece size
PIECE = 1 << 18
LT = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}


class Pair:
    def __init__(self, leech: EnhancedTorrentSession, infohash: str, data: bytes) -> None:
        self.leech = leech
        self.infohash = infohash
        self.data = data


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    payload = tmp_path / "seed" / "video.bin"
    write_random_file(payload, SIZE, seed=3)
    torrent = make_torrent(payload, piece_size=PIECE)
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as seed, \
                EnhancedTorrentSession(config, peer_id="leech", lt_settings=LT,
                                       save_path=tmp_path / "leech") as leech:
            await seed.add(torrent)
            added = await leech.add(torrent)
            # 2 MB/s: the file (8 MB) is still downloading while the test reads.
            added.handle.set_download_limit(2_000_000)
            yield Pair(leech, added.infohash, payload.read_bytes())


async def test_reads_the_end_first_while_downloading(pair: Pair) -> None:
    reader = pair.leech.open(pair.infohash, 0)
    assert reader.size == SIZE and reader.name.endswith("video.bin")
    reader.seek(-1000, os.SEEK_END)
    assert await reader.read(5000) == pair.data[-1000:]  # short read at the end
    assert await reader.read(10) == b""
    status = pair.leech.torrents[pair.infohash].handle.status()
    # The last piece came early: its deadline made it jump the queue (in libtorrent's
    # usual order it would come at any point, on average half way).
    assert status.progress < 0.5, status.progress


async def test_random_ranges_are_exact(pair: Pair) -> None:
    reader = pair.leech.open(pair.infohash, 0)
    rng = random.Random(5)
    for _ in range(40):
        start = rng.randrange(SIZE)
        length = rng.randrange(1, 3 * PIECE)
        reader.seek(start)
        assert await reader.read(length) == pair.data[start:start + length]
        assert reader.tell() == min(SIZE, start + length)
    reader.seek(0)
    assert await reader.read() == pair.data
    reader.close()


async def test_bad_use_is_refused(pair: Pair) -> None:
    with pytest.raises(LtPunchError, match="file 3 out of range"):
        pair.leech.open(pair.infohash, 3)
    with pytest.raises(LtPunchError, match="unknown torrent"):
        pair.leech.open("00" * 20, 0)
    reader = pair.leech.open(pair.infohash, 0)
    with pytest.raises(ValueError, match="negative position"):
        reader.seek(-1)
    with pytest.raises(LtPunchError, match="piece 99999 out of range"):
        await pair.leech.read_piece(pair.infohash, 99999)
