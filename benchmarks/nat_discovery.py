"""How long NAT discovery takes, per NAT kind, in the NAT lab against coturn.

For each lab kind: ``--runs`` discoveries (``lt_punch.nat.discover.discover_nat`` with
its default retransmission schedule), run one after another inside the host's
namespace; prints the median and the slowest duration and how many runs classified the
kind correctly. Unanswered filtering tests (restricted, port, symmetric) cost the
schedule's 1.1 s; the answered ones take a few round trips. Needs root.

    sudo .venv/bin/python benchmarks/nat_discovery.py --runs 9 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from lt_punch.netlab import NAT_KINDS, NatLab, lab_unavailable_reason

EXPECTED = {"open": "open", "full": "full", "restricted": "restricted", "port": "port",
            "symmetric": "symmetric"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    rows = []
    with NatLab({kind: kind for kind in NAT_KINDS}) as lab:
        server, port = lab.start_stun()
        for kind in NAT_KINDS:  # one kind at a time: nothing else competes for the CPU
            out = lab.run(kind, [sys.executable, "-m", "lt_punch.netlab.probe", "discover",
                                 "--count", str(args.runs), f"{server}:{port}"],
                          timeout=30 + 3 * args.runs).stdout
            infos = [json.loads(line) for line in out.splitlines()]
            durations = [info["duration"] for info in infos]
            rows.append({
                "kind": kind,
                "runs": len(infos),
                "correct": sum(info["nat_type"] == EXPECTED[kind] for info in infos),
                "median_s": statistics.median(durations),
                "max_s": max(durations),
            })
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"\n{args.runs} discoveries per kind against coturn in the lab")
    print(f"{'kind':<12}{'correct':>9}{'median (s)':>12}{'max (s)':>10}")
    for row in rows:
        print(f"{row['kind']:<12}{row['correct']:>5}/{row['runs']:<3}"
              f"{row['median_s']:>12.3f}{row['max_s']:>10.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
