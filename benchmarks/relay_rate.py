"""The TURN relay's transfer rate against a direct TCP punch, in the NAT lab.

One lab pair (port/port by default: TCP can be punched there), interleaved runs of the
same torrent downloaded (a) over a punched TCP connection (``methods=("tcp",)``) and (b)
through the lab's coturn (``methods=("relay",)``, the seed allocates a TCP relay and
bridges it into its libtorrent with ``splice``). Per run: libtorrent's transfer time from
the punch to the finished download; the rate ratio relay / direct (medians), coturn on
the path both ways; the bridge's CPU per MB (its two threads' CPU time, from the seed's
stats, over the bytes it moved). Needs root.

    sudo .venv/bin/python benchmarks/relay_rate.py --runs 5 --size-mb 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import bench_pairs, run_pair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--pair", default="port/port", metavar="KIND/KIND")
    args = parser.parse_args()
    ((a, b),) = bench_pairs(parser, [args.pair])
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    size = args.size_mb << 20
    times: dict[str, list[float]] = {"tcp": [], "relay": []}
    cpu_per_mb: list[float] = []
    with NatLab({"s": a, "l": b}) as lab:
        for run in range(1, args.runs + 1):
            for method in ("tcp", "relay"):
                r = run_pair(lab, seed_side="s", leech_side="l", size=size, methods=(method,),
                             timeout=120, connection_timeout=5.0, tmp_root=tmp,
                             turn=["s"] if method == "relay" else ())
                if not r.ok or r.transfer_time is None or r.method != method:
                    print(f"run {run} {method}: failed ({r.error or r.method})", flush=True)
                    continue
                times[method].append(r.transfer_time)
                line = (f"run {run} {method:5} {r.transfer_time:6.2f} s "
                        f"{size / r.transfer_time / 1e6:7.1f} MB/s")
                seed = r.seed_stats()
                if method == "relay" and seed and seed.get("relay"):
                    relay = seed["relay"]
                    mb = relay["bytes_relayed"] / 1e6
                    if mb:
                        cpu_per_mb.append(relay["bridge_cpu"] / mb)
                        line += (f"  bridge {relay['bridge_cpu']:.3f} s CPU for {mb:.1f} MB "
                                 f"({relay['bridge_cpu'] / mb * 1e3:.2f} ms/MB)")
                print(line, flush=True)
    if not times["tcp"] or not times["relay"]:
        print("not enough successful runs", file=sys.stderr)
        return 1
    direct = size / statistics.median(times["tcp"]) / 1e6
    relayed = size / statistics.median(times["relay"]) / 1e6
    print(f"\n{a}/{b}, {args.size_mb} MB, medians of {len(times['tcp'])} direct and "
          f"{len(times['relay'])} relayed runs")
    print(f"direct TCP punch   {direct:7.1f} MB/s")
    print(f"relay (coturn)     {relayed:7.1f} MB/s  ratio {relayed / direct:.2f}")
    if cpu_per_mb:
        print(f"bridge CPU         {statistics.median(cpu_per_mb) * 1e3:.2f} ms per MB "
              "(both directions' threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
