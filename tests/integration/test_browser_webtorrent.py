"""A real browser as a peer: headless Chromium runs WebTorrent's browser bundle (from
the npm registry, fetched by ``make``: no CDN) in a page served by the test, finds an
lt_punch seeder (libtorrent 2.1's WebRTC) through lt_punch's WebTorrent tracker, downloads
the torrent over WebRTC and reports its SHA-256."""

from __future__ import annotations

import json
from pathlib import Path

import libtorrent as lt
import pytest
from aiohttp import web

from lt_punch import Config
from lt_punch.signaling import SignalingServer
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import EnhancedTorrentSession

from .chromium import CHROMIUM, Browser
from .conftest import LT

BUNDLES = sorted(Path(__file__).parents[2].glob(".cache/webtorrent-*/webtorrent.min.js"))

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(not BUNDLES, reason="no WebTorrent bundle: run `make test` (npm)"),
]

PAGE = """<!doctype html><title>webtorrent</title><script type="module">
import WebTorrent from '/webtorrent.min.js';
window.log = [];
// No public STUN server (nothing leaves this machine): host candidates only.
const client = new WebTorrent({tracker: {rtcConfig: {iceServers: []}}, dht: false});
client.on('error', e => window.log.push('client: ' + e));
const torrent = client.add(MAGNET, {announce: [TRACKER]});
torrent.on('warning', e => window.log.push('warning: ' + e));
torrent.on('error', e => window.log.push('error: ' + e));
torrent.on('wire', wire => window.log.push('wire: ' + wire.type));
torrent.on('done', async () => {
  const blob = await torrent.files[0].blob();
  const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
  window.sha256 = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('');
});
</script>"""


async def test_a_browser_downloads_from_an_lt_punch_seeder_over_webrtc(tmp_path: Path) -> None:
    payload = tmp_path / "seed" / "data.bin"
    digest = write_random_file(payload, 4 << 20, seed=12)
    info = lt.torrent_info(lt.bdecode(make_torrent(payload)))
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="0.0.0.0")
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as seed:
            atp = lt.add_torrent_params()
            atp.ti = info
            atp.trackers = [server.url]  # the signaling server is a WebTorrent tracker too
            atp.save_path = str(payload.parent)
            added = await seed.add(atp)
            magnet = f"magnet:?xt=urn:btih:{added.infohash}"
            page = PAGE.replace("MAGNET", json.dumps(magnet)).replace(
                "TRACKER", json.dumps(server.url))

            async def index(request: web.Request) -> web.Response:
                return web.Response(text=page, content_type="text/html")

            async def bundle(request: web.Request) -> web.FileResponse:
                return web.FileResponse(BUNDLES[-1],
                                        headers={"Content-Type": "text/javascript"})

            app = web.Application()
            app.router.add_get("/", index)
            app.router.add_get("/webtorrent.min.js", bundle)
            runner = web.AppRunner(app)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                port = runner.addresses[0][1]
                async with Browser.launch(tmp_path / "profile") as browser:
                    await browser.goto(f"http://127.0.0.1:{port}/")
                    try:
                        got = await browser.wait_for("window.sha256", timeout=60)
                    finally:
                        log = await browser.evaluate("JSON.stringify(window.log)")
                    assert got == digest, log
                    assert "wire: webrtc" in json.loads(log), log
            finally:
                await runner.cleanup()
