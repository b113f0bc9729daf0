"""``lt-punch stream`` behind a port-restricted NAT, fed by a seed behind another one, while
the torrent downloads: ffprobe, a full ffmpeg decode and random ranges over HTTP (root;
issue 6)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lt_punch.netlab.scenario import read_events, read_line
from lt_punch.torrent.maketorrent import make_torrent

from .conftest import PortPair

SECONDS = 40
UPLOAD_LIMIT = 2_000_000
"""The seed's upload limit (bytes/s): the ~15 MB video takes 8-10 s to download."""

# Runs in the leecher's namespace (the stream server binds its loopback there): reads
# {"url", "ranges"} on stdin, prints one JSON object per range (status, headers, sha256),
# then one for the whole file without a Range header.
RANGE_CLIENT = r"""
import hashlib, json, sys, urllib.request
job = json.load(sys.stdin)
for first, last in job["ranges"] + [[None, None]]:
    request = urllib.request.Request(job["url"])
    if first is not None:
        request.add_header("Range", f"bytes={first}-{last}")
    with urllib.request.urlopen(request, timeout=60) as r:
        body = r.read()
        print(json.dumps({"status": r.status, "content_range": r.headers["Content-Range"],
                          "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}))
"""


def _make_video(path: Path) -> None:
    """An H.264/AAC MP4 of SECONDS s, ~15 MB (testsrc2 at a low QP), index first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=duration={SECONDS}:size=640x360:rate=25",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
         "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10", "-c:a", "aac",
         "-movflags", "+faststart", str(path)],
        check=True, capture_output=True, timeout=120)


def _progress_after(seed: subprocess.Popen[str], t: float,
                    sink: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed's first ``progress`` event stamped after ``t`` (time.monotonic())."""
    deadline = time.monotonic() + 10
    while True:
        for ev in sink:
            if ev.get("event") == "progress" and ev["t"] > t:
                return ev
        sink[:] = [ev for ev in sink if ev.get("event") != "progress"]
        read_events(seed, "progress", max(0.1, deadline - time.monotonic()), sink)


def test_stream_while_downloading_through_two_port_nats(port_pair: PortPair) -> None:
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/system-deps.sh "
                    "installs the ffmpeg package)")
    room, lab = port_pair, port_pair.lab
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("P2P_")},
           "P2P_STUN_SERVERS": f"{room.stun[0]}:{room.stun[1]}"}
    base = room.base
    video = base / "seed" / "video.mp4"
    _make_video(video)
    data = video.read_bytes()
    size = len(data)
    assert size > 4 * UPLOAD_LIMIT, f"video too small to still be downloading: {size} B"
    torrent = base / "video.torrent"
    torrent.write_bytes(make_torrent(video, piece_size=1 << 18))
    seed_events: list[dict[str, Any]] = []
    seed = room.agent("s", "seed", torrent, video.parent, "seed-s",
                      "--upload-limit", str(UPLOAD_LIMIT), "--progress-every", "0.2")
    stream = None
    try:
        read_events(seed, "ready", 30.0, seed_events)
        stream = lab.popen("l", [sys.executable, "-m", "lt_punch", "stream", str(torrent),
                                 "--file", "0", "--host", "127.0.0.1", "--port", "0",
                                 "-o", str(base / "out"), "--signal", room.url, "--isolated"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        line = read_line(stream, "streaming ", 60.0)
        file_url = line.split(" at ", 1)[1].strip()
        assert file_url.startswith("http://127.0.0.1:") and file_url.endswith("/0"), line

        probed = lab.run("l", ["ffprobe", "-v", "error", "-show_entries",
                               "format=duration:stream=codec_type,codec_name",
                               "-of", "json", file_url], timeout=60, check=False)
        probe_end = time.monotonic()
        assert probed.returncode == 0, probed.stderr
        info = json.loads(probed.stdout)
        # Still downloading when ffprobe was done: the seed had not sent the whole file
        # (its counters lag by up to one second tick: allow one second of upload).
        during = _progress_after(seed, probe_end, seed_events)
        assert during["total_upload"] + UPLOAD_LIMIT < size, during

        rng = random.Random(6)
        ranges = []
        for _ in range(100):
            first = rng.randrange(size)
            ranges.append((first, min(size - 1, first + rng.randrange(1, 300_000))))
        fetched = lab.run("l", [sys.executable, "-c", RANGE_CLIENT], timeout=120,
                          input_text=json.dumps({"url": file_url, "ranges": ranges}))
        answers = [json.loads(x) for x in fetched.stdout.splitlines()]

        decoded = lab.run("l", ["ffmpeg", "-nostdin", "-v", "error", "-xerror",
                                "-i", file_url, "-f", "null", "-"], timeout=120,
                          check=False)
    finally:
        if stream is not None:
            lab.stop(stream)
        lab.stop(seed)

    assert float(info["format"]["duration"]) == pytest.approx(SECONDS, abs=0.5), info
    assert sorted((s["codec_type"], s["codec_name"]) for s in info["streams"]) == [
        ("audio", "aac"), ("video", "h264")], info
    assert len(answers) == len(ranges) + 1
    for (first, last), got in zip(ranges, answers, strict=False):
        want = data[first:last + 1]
        assert (got["status"], got["content_range"], got["length"], got["sha256"]) == (
            206, f"bytes {first}-{last}/{size}", len(want), hashlib.sha256(want).hexdigest()
        ), (first, last)
    whole = answers[-1]
    assert (whole["status"], whole["length"], whole["sha256"]) == (
        200, size, hashlib.sha256(data).hexdigest())
    assert decoded.returncode == 0 and decoded.stderr.strip() == "", decoded.stderr
