"""lt_punch against a client nobody here wrote: Debian's transmission-daemon 3.00, uTP on
as shipped, on loopback (its DHT, LPD, PEX and port mapping off).

libtorrent's uTP from a Transmission seeder stalls in about 1 run of 4 (a burst, then
one packet every ~10 s with the connection kept): ``lt-punch download`` stalled at 57%
and ``lt-punch stream`` served nothing before the stall watch
(:mod:`lt_punch.torrent.stall`). These tests run the real daemon both ways: as the
seeder of ``lt-punch download`` and ``lt-punch stream``, and as the leecher of an
lt_punch seeder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import libtorrent as lt
import pytest

from lt_punch.config import Config
from lt_punch.netlab.transmission import TransmissionDaemon, unavailable_reason
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

from .conftest import communicate

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")

SIZE = 24 << 20


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}


def _infohash(torrent: bytes) -> str:
    return str(lt.torrent_info(lt.bdecode(torrent)).info_hash())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[TransmissionDaemon]:
    with TransmissionDaemon(tmp_path / "transmission") as d:
        yield d


def _seed(daemon: TransmissionDaemon, payload: Path) -> str:
    """Make ``daemon`` seed ``payload``; its magnet (with ``x.pe``)."""
    torrent = make_torrent(payload)
    infohash = _infohash(torrent)
    daemon.add(torrent, download_dir=payload.parent)
    daemon.wait(infohash, 60)
    return daemon.magnet(infohash)


async def test_download_from_a_transmission_seeder(tmp_path: Path,
                                                   daemon: TransmissionDaemon) -> None:
    payload = tmp_path / "seed" / "movie.bin"
    digest = write_random_file(payload, SIZE, seed=7)
    magnet = _seed(daemon, payload)
    out = tmp_path / "out"
    out.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "download", magnet, "-o", str(out), "--isolated",
        "--json", env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            stdout, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert sha256_file(out / "movie.bin") == digest
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", kinds
    # The peer events a script can follow: who connected, over what, when.
    connected = [e for e in events if e["event"] == "peer-connected"]
    assert connected and connected[0]["endpoint"] == [daemon.address, daemon.peer_port]
    assert connected[0]["transport"] in ("utp", "tcp") and connected[0]["since_start"] > 0
    for stalled in (e for e in events if e["event"] == "peer-stalled"):
        # A stall, when there was one, was recovered on the other transport.
        assert stalled["redial"] == ("tcp" if stalled["transport"] == "utp" else "utp")


async def test_transmission_downloads_from_an_lt_punch_seeder(
        tmp_path: Path, daemon: TransmissionDaemon) -> None:
    payload = tmp_path / "seed" / "movie.bin"
    digest = write_random_file(payload, SIZE, seed=8)
    torrent = make_torrent(payload)
    config = Config(signaling_url=None, isolated=True, listen_host="127.0.0.1")
    async with EnhancedTorrentSession(config, lt_settings=ISOLATED_SETTINGS,
                                      save_path=payload.parent) as session:
        seeded = await session.add(torrent)
        await seeded.wait_finished(30)
        into = tmp_path / "transmission-out"
        into.mkdir()
        # Transmission 3.00 ignores a magnet's x.pe, and there is no tracker here: it
        # leeches with no peer until our seeder dials it.
        daemon.add(torrent, download_dir=into)
        seeded.handle.connect_peer((daemon.address, daemon.peer_port))
        await asyncio.to_thread(daemon.wait, seeded.infohash, 90)
    assert sha256_file(into / "movie.bin") == digest


VIDEO_SECONDS = 6.5


def _make_video(path: Path) -> None:
    """A ~49 MB H.264/AAC MP4 (lossless, noisy frames: hard to compress) with its index
    (moov) at the end: a player reads the end first. Made in about a second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i",
         f"testsrc2=duration={VIDEO_SECONDS}:size=640x360:rate=25,noise=alls=18:allf=t",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={VIDEO_SECONDS}",
         "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-c:a", "aac", str(path)],
        check=True, capture_output=True, timeout=120)


def _ffmpeg(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


async def test_stream_from_a_transmission_seeder(tmp_path: Path,
                                                 daemon: TransmissionDaemon) -> None:
    video = tmp_path / "seed" / "clip.mp4"
    await asyncio.to_thread(_make_video, video)
    data = video.read_bytes()
    assert len(data) > 40 << 20
    magnet = _seed(daemon, video)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "stream", magnet, "-o", str(tmp_path / "out"),
        "--port", "0", "--isolated", env=_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(90):
            line = (await proc.stdout.readline()).decode()
            if line.startswith("fetching the metadata"):
                line = (await proc.stdout.readline()).decode()
        assert line.startswith("streaming clip.mp4 at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        probe = await asyncio.to_thread(
            _ffmpeg, "ffprobe", "-v", "error", "-show_entries", "format=duration",
            "-of", "json", url)
        assert probe.returncode == 0, probe.stderr
        duration = float(json.loads(probe.stdout)["format"]["duration"])
        assert duration == pytest.approx(VIDEO_SECONDS, abs=0.2)
        decode = await asyncio.to_thread(
            _ffmpeg, "ffmpeg", "-nostdin", "-v", "error", "-xerror", "-i", url, "-f", "null", "-")
        assert decode.returncode == 0, decode.stderr
        rng = random.Random(3)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for _ in range(100):
                start = rng.randrange(len(data))
                end = min(len(data) - 1, start + rng.randrange(1, 256 << 10))
                async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as r:
                    assert r.status == 206
                    body = await r.read()
                assert hashlib.sha256(body).digest() == hashlib.sha256(
                    data[start:end + 1]).digest(), (start, end)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await communicate(proc, timeout=30)
    assert proc.returncode == 0
