"""Success rate of each punch method for every pair of NAT kinds, in the NAT lab.

The figures behind :data:`lt_punch.punch.strategy.MEASURED_SUCCESS`: for each unordered
pair of lab kinds and each method (``utp``, ``tcp``), ``--runs`` transfers of a small
torrent with only that method allowed, counting the runs whose download verified.
(Where a side is ``open`` the session dials it directly whatever the method.) Needs root.

    sudo .venv/bin/python benchmarks/pair_matrix.py --runs 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lt_punch.errors import ConfigError
from lt_punch.netlab import NatLab, lab_unavailable_reason
from lt_punch.netlab.scenario import nat_pairs, run_pair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--connection-timeout", type=float, default=3.0)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND",
                        help="only these pairs (repeatable), e.g. full/symmetric")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    try:
        pairs = nat_pairs(args.pair)
    except ConfigError as exc:
        parser.error(str(exc))
    rows = []
    started = time.monotonic()
    for a, b in pairs:
        with NatLab({"s": a, "l": b}) as lab:
            for method in ("utp", "tcp"):
                ok = 0
                used: dict[str, int] = {}
                for _ in range(args.runs):
                    r = run_pair(lab, seed_side="s", leech_side="l", size=1 << 20,
                                 methods=(method,), timeout=60,
                                 connection_timeout=args.connection_timeout, tmp_root=tmp)
                    ok += r.ok
                    if not r.ok:
                        print(f"  {a}/{b} {method}: {r.error}", file=sys.stderr, flush=True)
                    if r.ok and r.method:
                        used[r.method] = used.get(r.method, 0) + 1
                rows.append({"pair": f"{a}/{b}", "method": method, "ok": ok,
                             "runs": args.runs, "used": used})
                print(f"{a + '/' + b:<22}{method:<5}{ok}/{args.runs}  {used}", flush=True)
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
