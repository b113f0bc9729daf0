"""The three output modes of ``lt-punch download`` and its file selection (no network)."""

from __future__ import annotations

import io
import json

import pytest

from lt_punch.download import Output, Progress, select_files
from lt_punch.errors import ConfigError

REPORT = Progress(phase="downloading", progress=0.5, download_rate=2_500_000, upload_rate=0,
                  downloaded=50, wanted=100, session_download=50, eta=20.0,
                  peers={"punched_utp": 1, "dht": 2})


def test_json_mode_one_object_per_line() -> None:
    stream = io.StringIO()
    out = Output("json", stream)
    out.progress(REPORT)
    out.event("done", "done: x", punched=[])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {"event": "progress", **REPORT.__dict__}
    assert second == {"event": "done", "message": "done: x", "punched": []}


def test_plain_and_live_modes_print_the_same_line() -> None:
    line = ("downloading:  50.0%  down 2.50 MB/s  up 0.00 MB/s  ETA 20 s  "
            "peers: dht 2, punched_utp 1")
    plain = io.StringIO()
    Output("plain", plain).progress(REPORT)
    assert plain.getvalue() == line + "\n"
    live_stream = io.StringIO()
    live = Output("live", live_stream)
    live.progress(REPORT)
    live.event("done", "done: x")
    live.close()
    text = live_stream.getvalue()
    assert "downloading:  50.0%" in text and "done: x" in text


def test_select_files() -> None:
    names = ["show/e01.mkv", "show/e02.mkv", "show/info.nfo"]
    assert select_files(names, ("1",)) == {1}
    assert select_files(names, ("*.mkv",)) == {0, 1}
    assert select_files(names, ("info.nfo", "0")) == {0, 2}
    with pytest.raises(ConfigError, match="--file 3: the torrent has 3 file"):
        select_files(names, ("3",))
    with pytest.raises(ConfigError, match="--file '\\*.avi' matches no file"):
        select_files(names, ("*.avi",))
