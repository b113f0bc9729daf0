"""Two peers on this machine: a coordinator seeds, a plain session downloads.

The coordinator starts an embedded signaling server on loopback; the second peer
joins the same room (the torrent's infohash), is punched to and downloads.

    .venv/bin/python examples/p2p_integration.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from lt_punch import Config, P2PCoordinator
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

# Both peers are 127.0.0.1: let libtorrent keep one connection per port, not per IP.
LT_SETTINGS = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seed_dir, leech_dir = Path(tmp, "seed"), Path(tmp, "leech")
        payload = seed_dir / "payload.bin"
        digest = write_random_file(payload, 4 << 20)
        torrent_bytes = make_torrent(payload)

        async with P2PCoordinator(
            signaling_port=0, listen_host="127.0.0.1", peer_id="seeder",
            lt_settings=LT_SETTINGS, save_path=seed_dir,
        ) as p2p:
            print("NAT:", json.dumps(await p2p.get_nat_info()))
            print("strategy vs a symmetric NAT:", p2p.get_recommended_strategy("symmetric"))
            seed = await p2p.session.add(torrent_bytes)

            peer_config = Config(signaling_url=p2p.config.signaling_url,
                                 signaling_udp_port=p2p.config.signaling_udp_port,
                                 listen_host="127.0.0.1")
            async with EnhancedTorrentSession(peer_config, peer_id="leecher",
                                              lt_settings=LT_SETTINGS,
                                              save_path=leech_dir) as leecher:
                await leecher.add(torrent_bytes)
                punch = await leecher.wait_punched(seed.infohash, timeout=30)
                print(f"punched via {punch.method} in {punch.time_to_connect:.3f} s")
                await leecher.wait_finished(seed.infohash, timeout=60)
                assert sha256_file(leech_dir / payload.name) == digest
                print("connect_to_peer:", await p2p.connect_to_peer("leecher"))
                print("health:", (await p2p.health_check())["status"])
                totals = p2p.get_stats()["totals"]
                print("stats:", json.dumps(totals))


if __name__ == "__main__":
    asyncio.run(main())
