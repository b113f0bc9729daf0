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

With ``--webrtc``, each lt_punch run is followed by one of the alternative a user has
without lt_punch: two stock libtorrent sessions on their WebTorrent (WebRTC) path,
with bittorrent-tracker from npm (installed under ~/.cache/ltp-bench on first use) as
the tracker and the lab's coturn as STUN (``benchmarks/webrtc_peer.py``), measured the
same way (session start -> first connected peer, spawn -> peer, done).

    sudo .venv/bin/python benchmarks/first_peer.py --runs 6 [--pair port/port]... [--magnet]
    sudo .venv/bin/python benchmarks/first_peer.py --runs 4 --turn --pair port/symmetric
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lt_punch.config import METHODS
from lt_punch.errors import LabError, LtTimeoutError
from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    TURN_PASSWORD,
    TURN_USER,
    bench_pairs,
    make_payload,
    read_events,
    start_agent,
    start_signaling,
)

NPM_DIR = Path.home() / ".cache" / "ltp-bench"
TRACKER_PORT = 8000
HERE = Path(__file__).resolve().parent


def tracker_installed() -> Path:
    """bittorrent-tracker from npm (--ignore-scripts: its WebRTC client's native module
    is not needed by the server)."""
    if not (NPM_DIR / "node_modules" / "bittorrent-tracker").is_dir():
        if shutil.which("npm") is None:
            raise SystemExit("bittorrent-tracker needs node and npm")
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund",
                        "bittorrent-tracker@11"], cwd=NPM_DIR, check=True,
                       capture_output=True, timeout=600)
    return NPM_DIR


def start_tracker(lab: NatLab) -> subprocess.Popen[str]:
    ip = lab.server_ips[0]
    script = ("import Server from 'bittorrent-tracker/server';"
              "const s = new Server({udp: false, http: false, ws: true, stats: false});"
              f"s.listen({TRACKER_PORT}, '{ip}', () => console.log('listening'));")
    proc = lab.popen("server", ["node", "--input-type=module", "-e", script],
                     cwd=tracker_installed(), stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening" not in line:
        raise SystemExit(f"bittorrent-tracker did not start: {line!r}")
    return proc


def webrtc_run(lab: NatLab, stun: tuple[str, int], base: Path, torrent: Path) -> dict[str, Any]:
    tracker = f"ws://{lab.server_ips[0]}:{TRACKER_PORT}"

    def peer(side: str, role: str, save: Path) -> subprocess.Popen[str]:
        return lab.popen(side, [sys.executable, str(HERE / "webrtc_peer.py"), "--role", role,
                                "--torrent", str(torrent), "--save", str(save),
                                "--tracker", tracker, "--stun", f"{stun[0]}:{stun[1]}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)

    seed = peer("s", "seed", torrent.parent / "seed")
    events: list[dict[str, Any]] = []
    try:
        read_events(seed, "ready", 30.0, [])
        spawned = time.monotonic()
        leech = peer("l", "leech", base / f"rtc-{time.monotonic_ns()}")
        try:
            ready = read_events(leech, "ready", 30.0, events)
            first = read_events(leech, ("peer-connected", "error"), 60.0, events)
            if first["event"] != "peer-connected":
                raise LabError("webrtc: no peer within 60 s")
            done = read_events(leech, ("done", "error"), 60.0, events)
            if done["event"] != "done":
                raise LabError("webrtc: download not finished")
        finally:
            lab.stop(leech)
    finally:
        if seed.stdin is not None:
            seed.stdin.close()
        lab.stop(seed)
    started = ready["t"] - ready["since_start"]
    return {"initiator": "rtc", "start_to_peer": first["since_start"],
            "spawn_to_peer": first["t"] - spawned, "ready": ready["since_start"],
            "done": done["t"] - started, "method": "webrtc", "transport": "rtc"}


def one_run(lab: NatLab, stun: tuple[str, int], url: str, base: Path, torrent: Path,
            sha: str, initiator: str, magnet: bool = False,
            turn: tuple[str, int] | None = None) -> dict[str, Any]:
    # Same-kind pairs: the lower peer id initiates.
    ids = {"seed": "a-seed", "leech": "b-leech"} if initiator == "seed" else \
          {"seed": "b-seed", "leech": "a-leech"}
    # The library's methods and order (Config's default; the relay needs --turn).
    extra = ["--udp-port", str(SIGNAL_PORT), "--timeout", "60",
             "--methods", ",".join(METHODS)]
    env = None
    if turn is not None:  # both sides have the TURN server
        extra += ["--turn", f"{turn[0]}:{turn[1]}", "--turn-user", TURN_USER]
        env = {**os.environ, "LTP_TURN_PASSWORD": TURN_PASSWORD}
    seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                       save=torrent.parent / "seed", peer_id=ids["seed"], extra=extra,
                       env=env)
    events: list[dict[str, Any]] = []
    try:
        read_events(seed, "ready", 30.0, [])
        spawned = time.monotonic()
        leech = start_agent(lab, "l", "leech", url=url, stun=stun, torrent=torrent,
                            save=base / f"leech-{time.monotonic_ns()}", peer_id=ids["leech"],
                            extra=[*extra, *(["--magnet"] if magnet else [])], env=env)
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


def summary(name: str, rows: list[dict[str, Any]], failures: list[str]) -> None:
    if not rows:
        print(f"{name:30} {0:>4}  (no run connected)")
        return

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    starts = sorted(r["start_to_peer"] for r in rows)
    p95 = starts[min(len(starts) - 1, round(0.95 * (len(starts) - 1)))]
    methods = sorted({f"{r['initiator'][0]}:{r['method']}" for r in rows})
    print(f"{name:30} {len(rows):>4} {med('start_to_peer'):>12.3f} {p95:>6.3f} "
          f"{med('spawn_to_peer'):>12.3f} {med('ready'):>6.3f} {med('done'):>6.2f}  "
          f"{' '.join(methods)}{'  FAILED ' + str(len(failures)) if failures else ''}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--pair", action="append", default=[], metavar="KIND/KIND")
    parser.add_argument("--webrtc", action="store_true",
                        help="also measure libtorrent's WebRTC path (bittorrent-tracker)")
    parser.add_argument("--magnet", action="store_true",
                        help="the leech adds a magnet link (metadata from the seed)")
    parser.add_argument("--turn", action="store_true",
                        help="both sides have the lab's TURN server (the relay): every "
                             "pair connects")
    parser.add_argument("--mbit", type=float, default=0,
                        help="limit each host's uplink to this rate (tc tbf); 0: none")
    args = parser.parse_args()
    pairs = bench_pairs(parser, args.pair)
    tmp_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    print(f"{'pair':30} {'runs':>4} {'start->peer':>12} {'p95':>6} {'spawn->peer':>12} "
          f"{'ready':>6} {'done':>6}  roles/methods")
    for a, b in pairs:
        rows: list[dict[str, Any]] = []
        rtc_rows: list[dict[str, Any]] = []
        failures: list[str] = []
        with NatLab({"s": a, "l": b}) as lab, \
                tempfile.TemporaryDirectory(prefix="ltp-first-", dir=tmp_root) as tmp:
            stun = lab.start_stun()
            start_signaling(lab)
            if args.mbit:
                for side in ("s", "l"):
                    lab.shape(side, args.mbit)
            base = Path(tmp)
            torrent, sha = make_payload(base, args.size_mb << 20)
            url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
            if args.webrtc:
                start_tracker(lab)
            turn = lab.start_turn(users=[f"{TURN_USER}:{TURN_PASSWORD}"]) if args.turn \
                else None
            for run in range(args.runs):
                initiator = ("seed", "leech")[run % 2]
                try:
                    rows.append(one_run(lab, stun, url, base, torrent, sha, initiator,
                                        args.magnet, turn))
                except (LabError, LtTimeoutError) as exc:
                    failures.append(f"{initiator} initiates: {exc}")
                if args.webrtc:
                    try:
                        rtc_rows.append(webrtc_run(lab, stun, base, torrent))
                    except (LabError, LtTimeoutError) as exc:
                        failures.append(f"webrtc: {exc}")
        for row in rows + rtc_rows:
            print(f"    {row['initiator']:>5} initiates: start->peer {row['start_to_peer']:.3f} s,"
                  f" spawn->peer {row['spawn_to_peer']:.3f} s, ready {row['ready']:.3f} s, "
                  f"done {row['done']:.2f} s ({row['method']}, {row['transport']})",
                  file=sys.stderr)
        for failure in failures:
            print(f"    failed: {failure}", file=sys.stderr)
        for label, got in (("lt_punch", rows), ("libtorrent webrtc", rtc_rows)):
            if got or label == "lt_punch":
                summary(f"{a}/{b} {label}", got, failures if label == "lt_punch" else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
