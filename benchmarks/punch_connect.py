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
import os
import statistics
import sys

from lt_punch.netlab import NatLab, lab_unavailable_reason
from lt_punch.netlab.scenario import PairResult, run_pair

CONFIGS: list[tuple[tuple[str, str], tuple[str, ...], str]] = [
    (("open", "open"), ("tcp",), "baseline: direct TCP, no NAT"),
    (("port", "port"), ("utp",), "uTP punch"),
    (("port", "port"), ("tcp",), "TCP simultaneous open"),
    (("full", "symmetric"), ("utp",), "uTP punch, symmetric initiates"),
]


def row_name(kinds: tuple[str, str], methods: tuple[str, ...]) -> str:
    return f"{'/'.join(kinds)}/{'+'.join(methods)}"


def measure(
    configs: list[tuple[tuple[str, str], tuple[str, ...], str]], runs: int, size: int,
    tmp_root: str | None,
) -> list[list[PairResult]]:
    """Run every config ``runs`` times in one lab, interleaved run by run.

    Interleaving spreads slow drift of the machine (page cache, other load) over all
    rows alike, so the ratios against the baseline compare like with like.
    """
    sides: dict[str, str] = {}
    pairs = []
    for i, (kinds, _, _) in enumerate(configs):
        seed, leech = f"s{i}", f"l{i}"
        sides[seed], sides[leech] = kinds
        pairs.append((seed, leech))
    results: list[list[PairResult]] = [[] for _ in configs]
    with NatLab(sides) as lab:
        for _ in range(runs):
            for i, (kinds, methods, _) in enumerate(configs):
                seed, leech = pairs[i]
                r = run_pair(lab, seed_side=seed, leech_side=leech, size=size,
                             methods=methods, timeout=120, tmp_root=tmp_root)
                if not r.ok:
                    print(f"  run failed: {kinds} {methods}: {r.error}", file=sys.stderr)
                results[i].append(r)
    return results


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="directory for payloads and downloads (default: /dev/shm, so "
                        "that disk writeback does not blur the network path)")
    parser.add_argument("--only", action="append", default=[], metavar="PAIR/METHOD",
                        help="run only these rows besides the baseline, e.g. port/port/tcp")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    size = args.size_mb << 20
    configs = CONFIGS
    if args.only:
        known = {row_name(k, m) for k, m, _ in configs}
        unknown = set(args.only) - known
        if unknown:
            parser.error(f"unknown row(s) {sorted(unknown)}; choose from {sorted(known)}")
        configs = configs[:1] + [c for c in configs[1:] if row_name(c[0], c[1]) in args.only]
    rows = []
    baseline_rate = None
    measured = measure(configs, args.runs, size, args.tmp)
    for (kinds, methods, label), results in zip(configs, measured, strict=True):
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
            "rates_MBps": [round(r.rate / 1e6, 1) for r in ok if r.rate],
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
