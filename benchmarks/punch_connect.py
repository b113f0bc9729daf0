"""Time to first connection and transfer rate through punched holes, in the NAT lab.

For each NAT pair and method: the time from both peers being in the signaling
room to libtorrent's first connection (the leech's punch record), and the
payload rate from that connection to the verified finish, relative to a plain
TCP transfer between two ``open`` hosts measured in the same run. Medians of
``--runs`` runs. Needs root (the lab); prints a table and optionally JSON.

    sudo .venv/bin/python benchmarks/punch_connect.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from lt_punch.netlab import NatLab, lab_unavailable_reason
from lt_punch.netlab.scenario import PairResult, run_pair


def measure(
    kinds: tuple[str, str], methods: tuple[str, ...], runs: int, size: int
) -> list[PairResult]:
    results = []
    with NatLab({"s": kinds[0], "l": kinds[1]}) as lab:
        for _ in range(runs):
            r = run_pair(lab, seed_side="s", leech_side="l", size=size, methods=methods,
                         timeout=120)
            if not r.ok:
                print(f"  run failed: {kinds} {methods}: {r.error}", file=sys.stderr)
            results.append(r)
    return results


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    size = args.size_mb << 20
    configs = [
        (("open", "open"), ("tcp",), "baseline: direct TCP, no NAT"),
        (("port", "port"), ("utp",), "uTP punch"),
        (("port", "port"), ("tcp",), "TCP simultaneous open"),
        (("full", "symmetric"), ("utp",), "uTP punch, symmetric initiates"),
    ]
    rows = []
    baseline_rate = None
    for kinds, methods, label in configs:
        results = measure(kinds, methods, args.runs, size)
        ok = [r for r in results if r.ok]
        ttc = median([r.time_to_connect for r in ok if r.time_to_connect is not None])
        rate = median([r.rate for r in ok if r.rate])
        if baseline_rate is None:
            baseline_rate = rate
        rows.append({
            "pair": "/".join(kinds), "method": "+".join(methods), "label": label,
            "runs": len(results), "ok": len(ok),
            "median_time_to_connect_s": ttc,
            "times_to_connect_s": [round(r.time_to_connect or 0, 4) for r in ok],
            "median_rate_MBps": rate / 1e6 if rate else None,
            "rate_vs_open_tcp": (rate / baseline_rate) if rate and baseline_rate else None,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"\n{args.runs} runs each, {args.size_mb} MB payload, medians")
    print(f"{'pair':<16}{'method':<8}{'ok':>5}{'connect (s)':>13}{'MB/s':>9}"
          f"{'vs open TCP':>13}  note")
    for row in rows:
        ttc = row["median_time_to_connect_s"]
        rate = row["median_rate_MBps"]
        ratio = row["rate_vs_open_tcp"]
        print(f"{row['pair']:<16}{row['method']:<8}{row['ok']:>2}/{row['runs']:<2}"
              f"{ttc if ttc is None else f'{ttc:.4f}':>13}"
              f"{rate if rate is None else f'{rate:.1f}':>9}"
              f"{ratio if ratio is None else f'{ratio:.2f}x':>13}  {row['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
