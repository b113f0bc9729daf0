"""Every NAT pair under packet loss: does the download finish, and how fast.

For each unordered pair of lab kinds, ``--runs`` downloads of a ``--size-mb`` torrent
with ``--loss`` percent of the packets dropped in each direction on both sides' links
(nftables ``numgen random``; this kernel has no netem). A run counts when the leech
verifies the file within ``--deadline`` seconds of being in the room (its ``ready``).
Reports per pair: runs within the deadline, median time, the methods that carried the
data, and the stalls recovered (``peer-stalled`` events). Needs root.

    sudo .venv/bin/python benchmarks/loss_matrix.py --runs 4 --loss 10 [--pair port/port] [--turn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from lt_punch.config import METHODS
from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import bench_pairs, run_pair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--loss", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND")
    parser.add_argument("--turn", action="store_true",
                        help="the seed side has the lab's TURN server (and the relay "
                             "method): the way out for pairs without TCP")
    parser.add_argument("--methods", default=None, metavar="M,M",
                        help="punch methods in order (default: the library's, "
                             "tcp,utp,udp,predict, and relay with --turn)")
    args = parser.parse_args()
    order = (tuple(args.methods.split(",")) if args.methods
             else tuple(m for m in METHODS if args.turn or m != "relay"))
    pairs = bench_pairs(parser, args.pair)
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print(f"{args.loss}% loss on both sides, {args.size_mb} MB, deadline {args.deadline:g} s, "
          f"methods {','.join(order)}")
    print(f"{'pair':22} {'in time':>8} {'median':>7}  methods, stalls")
    started = time.monotonic()
    for a, b in pairs:
        times: list[float] = []
        methods: dict[str, int] = {}
        stalls = 0
        errors: list[str] = []
        with NatLab({"s": a, "l": b}, loss={"s": args.loss, "l": args.loss}) as lab:
            for _ in range(args.runs):
                r = run_pair(lab, seed_side="s", leech_side="l", size=args.size_mb << 20,
                             timeout=args.deadline + 10, tmp_root=tmp,
                             methods=order,
                             turn=["s"] if args.turn else ())
                stalls += sum(e.get("event") == "peer-stalled" for e in r.leech_events)
                ready = next((e["t"] for e in r.leech_events if e.get("event") == "ready"),
                             None)
                done = next((e["t"] for e in r.leech_events if e.get("event") == "done"),
                            None)
                if r.ok and ready is not None and done is not None:
                    times.append(done - ready)
                    for e in r.leech_events:
                        if e.get("event") == "punched":
                            methods[e["method"]] = methods.get(e["method"], 0) + 1
                else:
                    errors.append(r.error or "not verified")
        in_time = sum(t <= args.deadline for t in times)
        median = f"{statistics.median(times):6.1f}s" if times else "   -   "
        used = " ".join(f"{m}:{n}" for m, n in sorted(methods.items())) or "-"
        print(f"{a + '/' + b:22} {in_time:>4}/{args.runs:<3} {median}  {used}, stalls {stalls}"
              + (f"  errors: {'; '.join(sorted(set(errors)))[:120]}" if errors else ""),
              flush=True)
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
