"""The handle API a media server uses: ``add(magnet)``, ``wait_metadata``, typed events,
``open``, ``wait_finished`` (real sessions on loopback, the peer found via signaling)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lt_punch import Config
from lt_punch.errors import LtPunchError, LtTimeoutError
from lt_punch.signaling import SignalingServer
from lt_punch.torrent.events import (
    Finished,
    MetadataReceived,
    PeerConnected,
    PeerDisconnected,
    PeerPunched,
    PieceFinished,
    TorrentEvent,
)
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import EnhancedTorrentSession

from .conftest import LT, PIECE, SIZE


async def test_magnet_from_a_punched_peer_events_and_reader(tmp_path: Path) -> None:
    payload = tmp_path / "seed" / "film" / "video.mp4"
    write_random_file(payload, SIZE, seed=11)
    (payload.parent / "notes.txt").write_text("two files: open by name\n")
    torrent = make_torrent(payload.parent, piece_size=PIECE)
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1")
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent.parent) as seed, \
                EnhancedTorrentSession(config, peer_id="leech", lt_settings=LT,
                                       save_path=tmp_path / "leech") as leech:
            infohash = (await seed.add(torrent)).infohash
            handle = await leech.add(f"magnet:?xt=urn:btih:{infohash}")
            events = handle.events()
            await handle.wait_metadata(timeout=30)
            with pytest.raises(LtPunchError, match="no file 'nope'"):
                handle.open("nope")
            reader = handle.open("film/video.mp4")
            reader.seek(SIZE - 100)
            assert await reader.read() == payload.read_bytes()[-100:]
            await handle.wait_finished(timeout=60)
            assert (tmp_path / "leech" / "film" / "video.mp4").read_bytes() == \
                payload.read_bytes()

            got: list[TorrentEvent] = []
            async with asyncio.timeout(10):
                async for event in events:
                    got.append(event)
                    if isinstance(event, Finished):
                        break
            events.close()
            # A closed stream delivers what it had buffered (a peer closing its
            # connection as the download finished, say), then stops.
            async with asyncio.timeout(5):
                rest = [e async for e in events]
            assert all(isinstance(e, PeerConnected | PeerDisconnected) for e in rest), rest

            await leech.remove(infohash)
            with pytest.raises(LtPunchError, match="not in a running session"):
                await handle.wait_metadata()
            # A stream opened on a removed torrent ends at once.
            assert [e async for e in handle.events()] == []

    kinds = [type(e) for e in got]
    assert kinds[-1] is Finished
    # The metadata came from the peer found in the room, through the punched path.
    punched = [e for e in got if isinstance(e, PeerPunched)]
    assert [(e.peer_id, e.method) for e in punched][:1] in ([("seed", "utp")],
                                                            [("seed", "tcp")])
    meta = next(e for e in got if isinstance(e, MetadataReceived))
    assert (meta.name, meta.num_files) == ("film", 2)
    assert kinds.index(MetadataReceived) < kinds.index(PieceFinished)
    pieces = sorted(e.piece for e in got if isinstance(e, PieceFinished))
    assert pieces == list(range(len(pieces))) and len(pieces) == -(-meta.total_size // PIECE)


async def test_wait_metadata_times_out_with_no_peer(tmp_path: Path) -> None:
    config = Config(signaling_enabled=False, listen_host="127.0.0.1")
    async with EnhancedTorrentSession(config, lt_settings=LT, save_path=tmp_path) as session:
        handle = await session.add("magnet:?xt=urn:btih:" + "ab" * 20)
        with pytest.raises(LtTimeoutError, match="no metadata"):
            await handle.wait_metadata(timeout=0.3)
        with pytest.raises(LtPunchError, match="no metadata yet"):
            handle.open(0)


async def test_a_read_with_no_peer_times_out_and_says_why(tmp_path: Path) -> None:
    payload = tmp_path / "seed" / "clip.mp4"
    write_random_file(payload, 3 * PIECE, seed=4)
    config = Config(signaling_enabled=False, listen_host="127.0.0.1")
    async with EnhancedTorrentSession(config, lt_settings=LT,
                                      save_path=tmp_path / "leech") as session:
        handle = await session.add(make_torrent(payload, piece_size=PIECE))
        with pytest.raises(LtTimeoutError, match=r"piece 1 .* after 0.3 s \(torrent "
                                                 r"[a-z_ ]+, 0 peers, 0% done"):
            await session.read_piece(handle.infohash, 1, timeout=0.3)
