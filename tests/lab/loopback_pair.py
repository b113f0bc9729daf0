"""Run inside one lab host (loopback + one lab interface): a signaling server on
127.0.0.1 and two sessions listening on every interface (the default), as two
terminals on one machine would. Prints one JSON line: what the leech saw."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from lt_punch.config import Config
from lt_punch.signaling.server import SignalingServer
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import EnhancedTorrentSession


async def main(method: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sha = write_random_file(base / "seed" / "data.bin", 4 << 20)
        torrent = make_torrent(base / "seed" / "data.bin")
        async with SignalingServer("127.0.0.1", 0) as srv:
            assert srv.dht_address is not None
            cfg = Config(signaling_url=srv.url, signaling_udp_port=srv.dht_address[1],
                         isolated=True, methods=(method,))
            assert cfg.listen_host == "0.0.0.0"
            async with EnhancedTorrentSession(cfg, save_path=base / "seed") as seed, \
                    EnhancedTorrentSession(cfg, save_path=base / "leech") as leech:
                await seed.add(torrent)
                t = await leech.add(torrent)
                rec = await t.wait_punched(15)
                await t.wait_finished(30)
                return {"udp": leech.public_udp, "method": rec.method,
                        "error": leech.signaling_error,
                        "sha_ok": sha256_file(base / "leech" / "data.bin") == sha}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(sys.argv[1]))) + "\n")
