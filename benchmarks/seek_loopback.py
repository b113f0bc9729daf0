"""Seek latency into missing data, on one machine: the quick harness (no NAT lab).

A seed and a leech session in one signaling room, in a network namespace of their own
whose loopback is shaped to ``--rate-mb`` MB/s by a token bucket (``tc qdisc tbf``;
libtorrent does not rate-limit peers on a local network, and its per-torrent limit hands
out quota in 0.5 s steps, which no real link does). The leech streams the file the way
``lt-punch stream`` does (:func:`lt_punch.stream_cli.prepare_stream`) and reads 64 KiB at
``--seeks`` random positions through :class:`~lt_punch.torrent.reader.TorrentReader`,
one every ``--gap`` seconds, each through a new reader (as each HTTP Range request
does). A seek counts as *missing* when its piece was not there yet; per seek it also
records the queues at that moment (the leech's download queue, the seed's upload
queue), when the piece's first block was requested and when it arrived.

The figure is the median and 90th percentile of the seeks into missing data; the seeks
into downloaded data of the same runs are the baseline (disk and Python, no network).
Needs root (network namespace); ``--no-shape`` runs on the host's loopback with the
seed's per-torrent upload limit instead.

    sudo .venv/bin/python benchmarks/seek_loopback.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lt_punch import Config
from lt_punch.netlab.lab import tbf_argv
from lt_punch.signaling import SignalingServer
from lt_punch.stream_cli import prepare_stream
from lt_punch.torrent.maketorrent import make_torrent, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

LT = {**ISOLATED_SETTINGS, "allow_multiple_connections_per_ip": True}
SHAPED = "LT_PUNCH_SEEK_SHAPED"
READ = 1 << 16


def _queued(handle: Any, field: str) -> int:
    return sum(getattr(p, field) for p in handle.get_peer_info())


async def _trace(handle: Any, piece: int, t0: float, trace: dict[str, float]) -> None:
    """Note when the piece's first block is requested and when one first arrives."""
    while True:
        for entry in handle.get_download_queue():
            if entry["piece_index"] == piece:
                states = [b["state"] for b in entry["blocks"]]
                if any(s >= 1 for s in states):
                    trace.setdefault("requested_s", round(time.monotonic() - t0, 3))
                if any(s >= 2 for s in states):
                    trace.setdefault("first_block_s", round(time.monotonic() - t0, 3))
        await asyncio.sleep(0.005)


async def one_run(base: Path, args: argparse.Namespace, rng: random.Random
                  ) -> list[dict[str, Any]]:
    size = args.size_mb << 20
    payload = base / "seed" / "video.mp4"
    write_random_file(payload, size, seed=rng.randrange(1 << 30))
    torrent = make_torrent(payload, piece_size=args.piece_kb << 10)
    results = []
    async with SignalingServer("127.0.0.1", 0, dht_port=0) as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1", methods=tuple(args.methods.split(",")))
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as seed, \
                EnhancedTorrentSession(config, peer_id="leech", lt_settings=LT,
                                       save_path=base / "leech") as leech:
            seeded = await seed.add(torrent)
            if args.no_shape:
                seeded.handle.set_upload_limit(int(args.rate_mb * 1e6))
            added = await leech.add(torrent)
            await leech.wait_metadata(added.infohash, timeout=30)
            prepare_stream(leech, added.infohash, 0).close()
            handle = added.handle
            # The download is under way once the first piece is in.
            await leech.read_piece(added.infohash, 0, deadline_ms=None, timeout=30)
            for _ in range(args.seeks):
                await asyncio.sleep(args.gap)  # the pause between a viewer's seeks
                position = rng.randrange(0, size - READ)
                reader = leech.open(added.infohash, 0)
                piece = reader.piece_at(position)
                row: dict[str, Any] = {
                    "missing": not handle.have_piece(piece),
                    "leech_queue": _queued(handle, "download_queue_length"),
                    "seed_queue": _queued(seeded.handle, "upload_queue_length"),
                    "already_requested": any(e["piece_index"] == piece
                                             for e in handle.get_download_queue()),
                }
                t0 = time.monotonic()
                trace: dict[str, float] = {}
                tracer = asyncio.create_task(_trace(handle, piece, t0, trace))
                try:
                    reader.seek(position)
                    data = await reader.read(READ)
                    row["s"] = time.monotonic() - t0
                finally:
                    tracer.cancel()
                    reader.close()
                with payload.open("rb") as f:
                    f.seek(position)
                    if data != f.read(READ):
                        raise RuntimeError(f"wrong bytes at {position}")
                row["progress"] = round(handle.status().progress, 3)
                results.append({**row, **trace})
                if row["progress"] >= 0.97:
                    break
    shutil.rmtree(base, ignore_errors=True)
    return results


def run_shaped(mbit: float) -> int:
    """Re-run this script in a new network namespace with its loopback shaped to
    ``mbit`` (MTU 1500, as on a real link); the namespace goes with the run."""
    ns = f"ltseek{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "mtu", "1500"], ["ip", "link", "set", "lo", "up"],
                    tbf_argv("lo", mbit)):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *sys.argv],
                              env={**os.environ, SHAPED: "1"}, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--piece-kb", type=int, default=1024)
    parser.add_argument("--rate-mb", type=float, default=20.0, help="link rate (MB/s)")
    parser.add_argument("--seeks", type=int, default=20, help="seeks per run")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between seeks")
    parser.add_argument("--methods", default="tcp",
                        help="punch methods (libtorrent's uTP runs at a few MB/s on loopback)")
    parser.add_argument("--no-shape", action="store_true",
                        help="no namespace: the seed's upload limit sets the rate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.no_shape and not os.environ.get(SHAPED):
        if os.geteuid() != 0:
            parser.error("shaping the link needs root (or use --no-shape)")
        return run_shaped(args.rate_mb * 8)
    rng = random.Random(1)
    runs = []
    for _ in range(args.runs):
        base = Path(tempfile.mkdtemp(prefix="ltp-seek-", dir="/dev/shm"))
        runs.append(asyncio.run(one_run(base, args, rng)))
    missing = [s["s"] for r in runs for s in r if s["missing"]]
    present = [s["s"] for r in runs for s in r if not s["missing"]]
    report = {
        "rate_MBps": args.rate_mb, "shaped": not args.no_shape, "runs": args.runs,
        "missing_seeks": len(missing),
        "missing_median_s": statistics.median(missing) if missing else None,
        "missing_p90_s": statistics.quantiles(missing, n=10)[-1] if len(missing) > 1 else None,
        "missing_max_s": max(missing, default=None),
        "missing_over_0.3s": sum(x > 0.3 for x in missing),
        "present_seeks": len(present),
        "present_median_s": statistics.median(present) if present else None,
    }
    if args.json:
        print(json.dumps({**report, "seeks": runs}, indent=1))
    for run in runs:
        print(" ".join(f"{s['s']:.2f}{'' if s['missing'] else '*'}" for s in run))
    print("(* = the piece was there already)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
