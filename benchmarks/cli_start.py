"""``lt-punch download MAGNET`` as a user runs it, per NAT pair: process start to the
first peer, to ``done``, and to the exit, in the lab. Needs root.

A seed (``lt-punch download FILE.torrent --seed``) runs on one side; the leech command
(not ``--isolated``: the public DHT bootstrap as shipped) is spawned on the other, and
its JSON events are timed from the spawn. ``--dns hang``: the lab's hosts get a DNS
server that never answers (an offline LAN, a broken resolver); ``--dns machine``: the
machine's resolver, whatever it does in a namespace (it failed at once on some
machines, after 5 s on others: why the issue's 5 s delay was seen by some runs and not
others). Each run is followed by the same command with ``--isolated`` (no DHT
bootstrap, no DNS at all): the floor, measured in the same lab. Peer ids are random,
so both role assignments of same-kind pairs occur.

    sudo .venv/bin/python benchmarks/cli_start.py --runs 4 --dns hang [--pair full/full]...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    bench_pairs,
    make_payload,
    read_events,
    start_signaling,
)


def lt_punch(lab: NatLab, side: str, args: list[str], env: dict[str, str]
             ) -> subprocess.Popen[str]:
    return lab.popen(side, [sys.executable, "-m", "lt_punch", "download", *args, "--json"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, env=env)


def one_run(lab: NatLab, env: dict[str, str], magnet: str, out: Path,
            isolated: bool) -> dict[str, Any]:
    spawned = time.monotonic()
    leech = lt_punch(lab, "l", [magnet, "-o", str(out),
                                *(["--isolated"] if isolated else [])], env)
    try:
        events: list[dict[str, Any]] = []
        first = read_events(leech, ("peer-connected", "error"), 60.0, events)
        peer = time.monotonic()
        done = read_events(leech, ("done", "error"), 60.0, events)
        finished = time.monotonic()
        if first["event"] == "error" or done["event"] == "error":
            raise RuntimeError(f"leech error: {first} {done}")
        leech.wait(timeout=60)
        exited = time.monotonic()
    finally:
        lab.stop(leech)
    punched = next((e for e in events if e["event"] == "punched"), {})
    return {"peer": peer - spawned, "done": finished - spawned, "exit": exited - spawned,
            "method": punched.get("method", "direct")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND")
    parser.add_argument("--dns", choices=("hang", "machine"), default="hang")
    args = parser.parse_args()
    pairs = bench_pairs(parser, args.pair)
    tmp_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print(f"{'pair':24} {'command':12} {'runs':>4} {'->peer':>7} {'->done':>7} "
          f"{'->exit':>7}  max exit  methods")
    for a, b in pairs:
        with NatLab({"s": a, "l": b}) as lab, \
                tempfile.TemporaryDirectory(prefix="ltp-cli-", dir=tmp_root) as tmp:
            if args.dns == "hang":
                lab.hang_dns()
            stun = lab.start_stun()
            start_signaling(lab)
            base = Path(tmp)
            torrent, _ = make_payload(base, args.size_mb << 20)
            magnet = f"magnet:?xt=urn:btih:{lt.torrent_info(str(torrent)).info_hash()}"
            env = {**os.environ, "P2P_SIGNALING_URL": f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}",
                   "P2P_SIGNALING_UDP_PORT": str(SIGNAL_PORT),
                   "P2P_STUN_SERVERS": f"{stun[0]}:{stun[1]}"}
            seed = lt_punch(lab, "s", [str(torrent), "-o", str(torrent.parent / "seed"),
                                       "--seed"], env)
            read_events(seed, "seeding", 60.0, [])
            rows: dict[str, list[dict[str, Any]]] = {"download": [], "--isolated": []}
            for run in range(args.runs):
                for name, isolated in (("download", False), ("--isolated", True)):
                    try:
                        rows[name].append(one_run(lab, env, magnet,
                                                  base / f"{name}-{run}", isolated))
                    except Exception as exc:  # noqa: BLE001 - a failed run is reported
                        print(f"  {a}/{b} {name} run {run}: {exc}", file=sys.stderr)
            lab.stop(seed)
        for name, got in rows.items():
            if not got:
                print(f"{a + '/' + b:24} {name:12} {0:>4}  (no run finished)")
                continue
            med = {k: statistics.median(r[k] for r in got) for k in ("peer", "done", "exit")}
            methods = sorted({r["method"] for r in got})
            print(f"{a + '/' + b:24} {name:12} {len(got):>4} {med['peer']:>7.2f} "
                  f"{med['done']:>7.2f} {med['exit']:>7.2f}  "
                  f"{max(r['exit'] for r in got):>8.2f}  {' '.join(methods)}", flush=True)
    print(json.dumps({"dns": args.dns, "runs": args.runs}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
