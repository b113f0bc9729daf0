"""The web page of ``lt-punch serve`` in a real browser (headless Chromium): add a
magnet link, see the torrent with its peer and punch, play the video in the page's
``<video>`` (``currentTime`` advances), remove the torrent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from lt_punch.serve import Daemon, make_api
from lt_punch.stream import make_runner

from .chromium import CHROMIUM, Browser
from .conftest import LT, seeded

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
]

TOKEN = "page-token"


def make_webm(path: Path) -> None:
    """6 s of VP8 video and Opus audio (codecs Debian's Chromium plays)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=duration=6:size=320x180:rate=25", "-f", "lavfi",
         "-i", "sine=frequency=440:duration=6", "-c:v", "libvpx", "-b:v", "400k",
         "-c:a", "libopus", "-shortest", str(path)],
        check=True, capture_output=True, timeout=120)


async def test_add_a_magnet_play_it_and_remove_it_in_the_page(tmp_path: Path) -> None:
    async with seeded(tmp_path, "clip.webm", write=make_webm) as room:
        daemon = Daemon(tmp_path / "state", room.config, lt_settings=LT)
        await daemon.start()
        runner = make_runner(make_api(daemon, TOKEN))
        try:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            page = f"http://{host}:{port}/?token={TOKEN}"
            magnet = f"magnet:?xt=urn:btih:{room.infohash}&dn=clip.webm"
            async with Browser.launch(tmp_path / "profile") as browser:
                await browser.goto(page)
                assert await browser.evaluate("document.title") == "lt_punch"
                nat = await browser.wait_for(
                    "document.getElementById('nat').textContent.includes('methods')")
                assert nat
                # Add the magnet link through the form.
                await browser.evaluate(
                    f"document.getElementById('magnet').value = {json.dumps(magnet)};"
                    "document.getElementById('add').requestSubmit(); true")
                message = await browser.wait_for(
                    "document.getElementById('message').textContent")
                assert message.startswith("Added"), message
                # The metadata from the seed in the room: a file to play, a punch.
                await browser.wait_for("document.querySelector('button.play')")
                punches = await browser.wait_for(
                    "[...document.querySelectorAll('.punch')].map(p => p.textContent)"
                    ".join('|').includes('connected') && "
                    "[...document.querySelectorAll('.punch')].map(p => p.textContent)")
                assert any(p.startswith("seed: connected") for p in punches), punches
                # Play it: the <video> plays the stream URL (with the token).
                await browser.evaluate("document.querySelector('button.play').click(); 1")
                played = await browser.wait_for(
                    "document.getElementById('player').currentTime > 1.0 && "
                    "document.getElementById('player').currentTime", timeout=30)
                assert played > 1.0
                src = await browser.evaluate("document.getElementById('player').src")
                assert src == (f"http://{host}:{port}/files/{room.infohash}/0"
                               f"?token={TOKEN}")
                shot = os.environ.get("LTP_SCREENSHOT")
                if shot:  # docs/img/serve-page.png is made this way
                    await browser.evaluate("document.getElementById('player').pause(); 1")
                    await browser.screenshot(Path(shot))
                # Remove it.
                await browser.evaluate("document.querySelector('button.remove').click(); 1")
                await browser.wait_for("!document.querySelector('button.remove')")
                assert room.infohash not in daemon.session.torrents
                assert not [line for line in browser.console if "rror" in line], \
                    browser.console
        finally:
            await runner.cleanup()
            await daemon.close()
