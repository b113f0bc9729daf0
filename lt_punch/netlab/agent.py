"""A lab peer: one EnhancedTorrentSession run inside a namespace, reporting JSON lines.

Run as ``python -m lt_punch.netlab.agent --role seed|leech ...`` (the scenario
module starts it with ``ip netns exec``). Every line on stdout is one JSON
event: ``ready``, ``punched``, ``punch-failed``, ``connection-lost``, ``finished``,
``done`` (data verified on disk), ``stats``, ``error``, and ``progress`` every
``--progress-every`` seconds when asked. A seed runs until stdin closes or SIGTERM;
a leech exits after its download finished (0), or failed (1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..config import METHODS, Config, parse_hostports
from ..errors import LtPunchError


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    from ..torrent.maketorrent import sha256_file
    from ..torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    config = Config(
        signaling_url=args.signal,
        signaling_udp_port=args.udp_port,
        stun_servers=parse_hostports(args.stun, "--stun") if args.stun else (),
        methods=tuple(args.methods.split(",")),
        connection_timeout=args.connection_timeout,
        listen_port=args.listen_port,
        turn_servers=parse_hostports(args.turn, "--turn") if args.turn else (),
        turn_username=args.turn_user,
        turn_password=os.environ.get("LTP_TURN_PASSWORD", ""),
        turn_secret=os.environ.get("LTP_TURN_SECRET", ""),
        hole_punching_enabled=not args.no_punch,
    )
    settings = dict(ISOLATED_SETTINGS)
    if args.dht_bootstrap:  # e.g. libtorrent's default, as a session that is not isolated
        settings["dht_bootstrap_nodes"] = args.dht_bootstrap
    if args.lsd:
        settings["enable_lsd"] = True
    async with EnhancedTorrentSession(
        config, peer_id=args.peer_id, lt_settings=settings, save_path=args.save
    ) as session:
        if session.signaling_error and not session.signaling_retrying:
            emit("error", message=f"signaling: {session.signaling_error}")
            return 1
        if session.signaling_error:  # (10% loss can lose the first connect)
            emit("signaling-retrying", message=session.signaling_error)
        source: Any = Path(args.torrent)
        if args.magnet:  # the leech of a magnet link: metadata from the peer
            import libtorrent as lt

            info = lt.torrent_info(str(source))
            source = f"magnet:?xt=urn:btih:{info.info_hash()}"
        torrent = await session.add(source)
        if args.upload_limit:  # the torrent's own limit: it holds for LAN peers too
            torrent.handle.set_upload_limit(args.upload_limit)
        emit("ready", peer_id=session.peer_id, nat=session.nat_info.to_dict()
             if session.nat_info else None, udp=session.public_udp, tcp=session.public_tcp,
             infohash=torrent.infohash)

        async def forward_events() -> None:
            async for ev in session.events():
                emit(ev.pop("type"), **ev)

        def forward_pending() -> None:
            for ev in session.drain_events():
                emit(ev.pop("type"), **ev)

        async def report_progress(every: float) -> None:
            while True:
                st = torrent.handle.status()
                emit("progress", progress=st.progress, total_upload=st.total_payload_upload,
                     total_download=st.total_payload_download,
                     upload_rate=st.upload_payload_rate, num_peers=st.num_peers)
                await asyncio.sleep(every)

        forwarder = asyncio.create_task(forward_events())
        reporter = (asyncio.create_task(report_progress(args.progress_every))
                    if args.progress_every > 0 else None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        code = 0
        try:
            if args.role == "leech":
                t0 = time.monotonic()
                try:
                    await session.wait_finished(torrent.infohash, args.timeout)
                except LtPunchError as exc:
                    emit("error", message=str(exc))
                    code = 1
                else:
                    elapsed = time.monotonic() - t0
                    # A small torrent can finish before the punch is reported: give the
                    # punch its outcome (punched / punch-failed) before saying done.
                    with contextlib.suppress(LtPunchError):
                        await session.wait_punched(torrent.infohash, args.connection_timeout)
                    forward_pending()
                    digest = sha256_file(Path(args.save) / torrent.handle.status().name)
                    emit("done", infohash=torrent.infohash, elapsed=elapsed, sha256=digest)
            else:
                reader = loop.run_in_executor(None, sys.stdin.read)
                await asyncio.wait(
                    {asyncio.ensure_future(stop.wait()), reader},
                    timeout=args.timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            forward_pending()
            emit("stats", stats=session.stats())
            for task in (forwarder, reporter):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt_punch.netlab.agent")
    parser.add_argument("--role", choices=("seed", "leech"), required=True)
    parser.add_argument("--signal", required=True, help="ws:// URL of the signaling server")
    parser.add_argument("--udp-port", type=int, default=None, help="reflector UDP port")
    parser.add_argument("--stun", default="", help="host:port[,host:port]")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="punch methods in order (default: the library's)")
    parser.add_argument("--turn", default="", metavar="HOST:PORT[,...]",
                        help="TURN servers (password or secret: LTP_TURN_PASSWORD, "
                             "LTP_TURN_SECRET in the environment)")
    parser.add_argument("--turn-user", default="")
    parser.add_argument("--torrent", required=True)
    parser.add_argument("--save", required=True)
    parser.add_argument("--peer-id", default=None)
    parser.add_argument("--magnet", action="store_true",
                        help="add the torrent by its magnet link (no metadata)")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--dht-bootstrap", default="", metavar="HOST:PORT[,...]",
                        help="DHT bootstrap nodes (default: none, the session is isolated)")
    parser.add_argument("--lsd", action="store_true",
                        help="local service discovery on (libtorrent's default)")
    parser.add_argument("--no-punch", action="store_true",
                        help="no hole punching: peers only from libtorrent's own sources")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--connection-timeout", type=float, default=10.0)
    parser.add_argument("--upload-limit", type=int, default=0, metavar="BYTES/S",
                        help="upload rate limit of the torrent (0: none)")
    parser.add_argument("--progress-every", type=float, default=0.0, metavar="S",
                        help="emit a progress event every S seconds (0: never)")
    args = parser.parse_args(argv)
    level = os.environ.get("LT_PUNCH_LOG")
    if level:  # e.g. LT_PUNCH_LOG=DEBUG: libtorrent's alerts and our decisions on stderr
        logging.basicConfig(level=level.upper(), stream=sys.stderr,
                            format="%(relativeCreated)8.1f %(name)s %(message)s")
    try:
        return asyncio.run(run(args))
    except LtPunchError as exc:
        emit("error", message=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
