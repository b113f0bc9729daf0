"""TorrentReader: read a file of a torrent while it downloads (real sessions, loopback)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from lt_punch.errors import LtPunchError, LtTimeoutError
from lt_punch.torrent.reader import READAHEAD_PIECES, READAHEAD_PRIORITY, WAIT_PRIORITY

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


async def test_the_read_ahead_window_comes_first_and_is_given_back(pair: Pair) -> None:
    handle = pair.leech.torrents[pair.infohash].handle
    reader = pair.leech.open(pair.infohash, 0)
    reader.seek(2 * PIECE)
    await reader.read(10)
    window = range(3, 3 + READAHEAD_PIECES)
    missing = [p for p in window if not handle.have_piece(p)]
    assert missing, "the whole window came already: the test needs a slower download"
    assert {handle.piece_priority(p) for p in missing} == {READAHEAD_PRIORITY}
    reader.close()
    back = {handle.piece_priority(p) for p in missing if not handle.have_piece(p)}
    assert back <= {4}, back  # libtorrent's default, as before the reader came


@pytest.mark.parametrize("deadline_ms", [0, None])
async def test_a_read_that_gives_up_leaves_the_piece_as_it_was(
        pair: Pair, deadline_ms: int | None) -> None:
    handle = pair.leech.torrents[pair.infohash].handle
    handle.set_download_limit(1000)  # nothing more arrives in this test
    piece = next(p for p in range(handle.torrent_file().num_pieces() - 1, -1, -1)
                 if not handle.have_piece(p))
    with pytest.raises(LtTimeoutError, match=f"piece {piece} "):
        await pair.leech.read_piece(pair.infohash, piece, deadline_ms=deadline_ms, timeout=0.2)
    # A deadline or the top priority left behind would keep the piece ahead of the
    # others (a deadline would also stop the next seek from cancelling queued requests).
    assert handle.piece_priority(piece) == 4
    read = asyncio.create_task(pair.leech.read_piece(pair.infohash, piece,
                                                     deadline_ms=deadline_ms))
    await asyncio.sleep(0)  # one step: the read now waits for the piece
    assert handle.piece_priority(piece) == 7
    read.cancel()  # an HTTP client that went away
    with pytest.raises(asyncio.CancelledError):
        await read
    assert handle.piece_priority(piece) == 4
    assert not pair.leech.torrents[pair.infohash].claims


async def test_claims_on_a_piece_end_with_its_first_priority(pair: Pair) -> None:
    """A reader's window and another's wait on the same piece, given back out of order."""
    torrent = pair.leech.torrents[pair.infohash]
    handle = torrent.handle
    handle.set_download_limit(1000)  # the piece stays missing
    piece = next(p for p in range(handle.torrent_file().num_pieces() - 1, -1, -1)
                 if not handle.have_piece(p))
    torrent.claims.claim(piece, READAHEAD_PRIORITY)
    assert handle.piece_priority(piece) == READAHEAD_PRIORITY
    torrent.claims.claim(piece, WAIT_PRIORITY)
    handle.set_piece_deadline(piece, 0)
    torrent.claims.release(piece, READAHEAD_PRIORITY)
    assert handle.piece_priority(piece) == WAIT_PRIORITY
    torrent.claims.release(piece, WAIT_PRIORITY)  # also drops the deadline (priority 1)
    assert handle.piece_priority(piece) == 4
    assert not torrent.claims


async def test_a_seek_cancels_the_requests_queued_for_other_pieces(pair: Pair) -> None:
    """The seek to a missing piece must not wait behind the background requests queued
    at the seed: its deadline makes libtorrent send CANCEL for them."""
    handle = pair.leech.torrents[pair.infohash].handle

    async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
        # libtorrent has no event for these: look every 10 ms, for 10 s at most.
        deadline = time.monotonic() + 10
        while not await check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def requests_out() -> bool:
        return sum(p.download_queue_length for p in handle.get_peer_info()) >= 20

    async def cancelled() -> bool:
        return (await pair.leech.counters())["ses.num_outgoing_cancel"] > before

    await until(requests_out, "no requests queued at the seed")
    before = (await pair.leech.counters())["ses.num_outgoing_cancel"]
    piece = next(p for p in range(handle.torrent_file().num_pieces() - 1, 0, -1)
                 if not handle.have_piece(p) and handle.piece_priority(p) != 7)
    reader = pair.leech.open(pair.infohash, 0)
    reader.seek(piece * PIECE)
    read = asyncio.create_task(reader.read(10))
    try:
        await until(cancelled, "the requests queued for other pieces were not cancelled")
        assert await asyncio.wait_for(read, 30) == pair.data[piece * PIECE:][:10]
    finally:
        read.cancel()
        reader.close()
