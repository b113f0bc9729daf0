"""Success rate of each punch method for every pair of NAT kinds, in the NAT lab.

The figures behind :data:`lt_punch.punch.strategy.MEASURED_SUCCESS`: for each unordered
pair of lab kinds and each method set (``--methods``: ``utp`` and ``tcp`` by default),
``--runs`` transfers of a small torrent with only those methods allowed, counting the
runs whose download verified and the method that carried each. A set with ``relay``
gives the seed side the lab's TURN server (coturn): ``--methods utp,tcp,relay`` is what
a user with a relay gets. (Where a side is ``open`` the session dials it directly
whatever the method.) Needs root.

    sudo .venv/bin/python benchmarks/pair_matrix.py --runs 5 [--json]
    sudo .venv/bin/python benchmarks/pair_matrix.py --runs 20 --methods utp,tcp,relay \
        --pair symmetric/symmetric
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import bench_pairs, run_pair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--connection-timeout", type=float, default=3.0)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND",
                        help="only these pairs (repeatable), e.g. full/symmetric")
    parser.add_argument("--methods", nargs="+", default=["utp", "tcp"], metavar="SET",
                        help="method sets, each comma-separated (default: utp tcp)")
    parser.add_argument("--loss", type=int, default=0, help="percent lost on both sides")
    parser.add_argument("--size-mb", type=float, default=1.0)
    parser.add_argument("--baseline", action="store_true",
                        help="first measure open/open over TCP: rates are then also "
                             "given as a ratio to it")
    args = parser.parse_args()
    pairs = bench_pairs(parser, args.pair)
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    started = time.monotonic()
    size = int(args.size_mb * (1 << 20))
    baseline = None
    if args.baseline:
        with NatLab({"s": "open", "l": "open"}) as lab:
            rates = []
            for _ in range(args.runs):
                r = run_pair(lab, seed_side="s", leech_side="l", size=size, methods=("tcp",),
                             timeout=60, connection_timeout=args.connection_timeout,
                             tmp_root=tmp)
                if r.ok and r.transfer_time:
                    rates.append(size / r.transfer_time / 1e6)
        baseline = statistics.median(rates) if rates else None
        print(f"baseline open/open tcp: {baseline or 0:.1f} MB/s", flush=True)
    for a, b in pairs:
        loss = {"s": args.loss, "l": args.loss} if args.loss else None
        with NatLab({"s": a, "l": b}, loss=loss) as lab:
            for method in args.methods:
                methods = tuple(method.split(","))
                ok = 0
                used: dict[str, int] = {}
                connect: list[float] = []
                rate: list[float] = []
                for _ in range(args.runs):
                    r = run_pair(lab, seed_side="s", leech_side="l", size=size,
                                 methods=methods, timeout=60,
                                 connection_timeout=args.connection_timeout, tmp_root=tmp,
                                 turn=["s"] if "relay" in methods else ())
                    ok += r.ok
                    if not r.ok:
                        print(f"  {a}/{b} {method}: {r.error}", file=sys.stderr, flush=True)
                    if r.ok and r.method:
                        used[r.method] = used.get(r.method, 0) + 1
                        if r.time_to_connect is not None:
                            connect.append(r.time_to_connect)
                        if r.transfer_time:
                            rate.append(size / r.transfer_time / 1e6)
                row = {"pair": f"{a}/{b}", "method": method, "ok": ok, "runs": args.runs,
                       "used": used,
                       "connect": statistics.median(connect) if connect else None,
                       "rate": statistics.median(rate) if rate else None}
                rows.append(row)
                extra = ""
                if row["connect"] is not None:
                    extra += f"  connect {row['connect']:.2f} s"
                if row["rate"] is not None:
                    extra += f"  {row['rate']:.1f} MB/s"
                    if baseline:
                        extra += f" ({row['rate'] / baseline:.2f}x)"
                print(f"{a + '/' + b:<22}{method:<15}{ok}/{args.runs}  {used}{extra}",
                      flush=True)
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
