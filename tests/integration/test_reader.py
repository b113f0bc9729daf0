"""TorrentReader: read a file of a torrent while it downloads (real sessions, loopback)."""

from __future__ import annotations

import os
import random

import pytest

from lt_punch.errors import LtPunchError

from .conftest import PIECE, SIZE, Pair


async def test_reads_the_end_first_while_downloading(pair: Pair) -> None:
    reader = pair.leech.open(pair.infohash, 0)
    assert reader.size == SIZE and reader.name.endswith("video.mp4")
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
