"""Time from what the user does to the first connected peer, per NAT pair, in the lab.

A seed agent is in the room; a leech agent starts. Per run it reports, for the leech:

* ``start->peer``: from the leech's session start (``EnhancedTorrentSession``
  created) to its first ``peer-connected`` event (a connection past its handshake);
* ``spawn->peer``: from the moment the benchmark spawns the leech process (Python
  start-up and imports included) to the same event;
* ``ready``: when the leech had its endpoints and NAT and was in the room;
* ``done``: from the session start to the verified download (``--size-mb``).

Same-kind pairs decide the initiator by peer id: runs alternate the ids so both role
assignments are measured ("seed" or "leech" initiates). Medians of ``--runs`` per
pair. Needs root.

    sudo .venv/bin/python benchmarks/first_peer.py --runs 6 [--pair port/port]...
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lt_punch.errors import LabError, LtTimeoutError
from lt_punch.netlab import NAT_KINDS, NatLab, lab_unavailable_reason
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    make_payload,
    read_events,
    start_agent,
    start_signaling,
)


def one_run(lab: NatLab, stun: tuple[str, int], url: str, base: Path, torrent: Path,
            sha: str, initiator: str) -> dict[str, Any]:
    # Same-kind pairs: the lower peer id initiates.
    ids = {"seed": "a-seed", "leech": "b-leech"} if initiator == "seed" else \
          {"seed": "b-seed", "leech": "a-leech"}
    extra = ["--udp-port", str(SIGNAL_PORT), "--timeout", "60"]
    seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                       save=torrent.parent / "seed", peer_id=ids["seed"], extra=extra)
    events: list[dict[str, Any]] = []
    try:
        read_events(seed, "ready", 30.0, [])
        spawned = time.monotonic()
        leech = start_agent(lab, "l", "leech", url=url, stun=stun, torrent=torrent,
                            save=base / f"leech-{time.monotonic_ns()}", peer_id=ids["leech"],
                            extra=extra)
        try:
            ready = read_events(leech, "ready", 30.0, events)
            first = read_events(leech, ("peer-connected", "punch-failed"), 30.0, events)
            if first["event"] != "peer-connected":
                raise LabError(f"no peer: {first.get('reason')}")
            done = read_events(leech, ("done", "error"), 60.0, events)
            if done.get("sha256") != sha:
                raise LabError(f"download not verified: {done}")
        finally:
            lab.stop(leech)
    finally:
        lab.stop(seed)
    punched = next((e for e in events if e["event"] == "punched"), {})
    started = first["t"] - first["since_start"]  # the leech session's start
    return {
        "initiator": initiator,
        "start_to_peer": first["since_start"],
        "spawn_to_peer": first["t"] - spawned,
        "ready": ready["t"] - started,
        "done": done["t"] - started,
        "method": punched.get("method", "direct"),
        "transport": first["transport"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    pairs = list(itertools.combinations_with_replacement(NAT_KINDS, 2))
    if args.pair:
        pairs = [tuple(p.split("/")) for p in args.pair]  # type: ignore[misc]
    tmp_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print(f"{'pair':22} {'runs':>4} {'start->peer':>12} {'p95':>6} {'spawn->peer':>12} "
          f"{'ready':>6} {'done':>6}  roles/methods")
    for a, b in pairs:
        rows: list[dict[str, Any]] = []
        failures: list[str] = []
        with NatLab({"s": a, "l": b}) as lab, \
                tempfile.TemporaryDirectory(prefix="ltp-first-", dir=tmp_root) as tmp:
            stun = lab.start_stun()
            start_signaling(lab)
            base = Path(tmp)
            torrent, sha = make_payload(base, args.size_mb << 20)
            url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
            for run in range(args.runs):
                initiator = ("seed", "leech")[run % 2]
                try:
                    rows.append(one_run(lab, stun, url, base, torrent, sha, initiator))
                except (LabError, LtTimeoutError) as exc:
                    failures.append(f"{initiator} initiates: {exc}")
        for row in rows:
            print(f"    {row['initiator']:>5} initiates: start->peer {row['start_to_peer']:.3f} s,"
                  f" spawn->peer {row['spawn_to_peer']:.3f} s, ready {row['ready']:.3f} s, "
                  f"done {row['done']:.2f} s ({row['method']}, {row['transport']})",
                  file=sys.stderr)
        for failure in failures:
            print(f"    failed: {failure}", file=sys.stderr)
        if not rows:
            print(f"{a + '/' + b:22} {0:>4}  (no run connected)")
            continue

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        starts = sorted(r["start_to_peer"] for r in rows)
        p95 = starts[min(len(starts) - 1, round(0.95 * (len(starts) - 1)))]
        methods = sorted({f"{r['initiator'][0]}:{r['method']}" for r in rows})
        print(f"{a + '/' + b:22} {len(rows):>4} {med('start_to_peer'):>12.3f} {p95:>6.3f} "
              f"{med('spawn_to_peer'):>12.3f} {med('ready'):>6.3f} {med('done'):>6.2f}  "
              f"{' '.join(methods)}{'  FAILED ' + str(len(failures)) if failures else ''}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
