"""A media server in a handful of lines: serve a magnet link over HTTP while it downloads.

    P2P_SIGNALING_URL=ws://signal.example:8765 python examples/media_server.py MAGNET [PORT]

Players open ``http://127.0.0.1:PORT/files/<infohash>/<index>`` (Range requests: they
seek, and the read position drives libtorrent's piece deadlines).
"""

import asyncio
import contextlib
import sys

from aiohttp import web

from lt_punch import EnhancedTorrentSession
from lt_punch.stream import make_app


async def main(magnet: str, port: int) -> None:
    async with EnhancedTorrentSession(save_path="media") as session:  # P2P_* settings
        torrent = await session.add(magnet)  # joins the signaling room of its infohash
        await torrent.wait_metadata()
        runner = web.AppRunner(make_app(session))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        host, port = runner.addresses[0][:2]
        print(f"http://{host}:{port}/files/{torrent.infohash}/0", flush=True)
        await asyncio.Event().wait()  # serve until Ctrl-C


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8888))
