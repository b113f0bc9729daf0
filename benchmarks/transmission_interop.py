"""`lt-punch download` from a stock Transmission 3.00 seeder (uTP on, as Debian ships it),
against a TCP-only libtorrent session from a fresh seeder of the same kind, interleaved.

Times are what a user waits: process start to exit for `lt-punch download MAGNET`
(the magnet names the seeder with x.pe), and add_torrent to "seeding" for the plain
libtorrent session. Every download gets a fresh daemon on its own 127.0.0.x (Transmission
stops serving an address that finished a download from it). Prints each run, then
medians and the ratio of each lt_punch run to the median TCP-only time.

    python benchmarks/transmission_interop.py --runs 10 --size-mb 49
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libtorrent as lt

from lt_punch.netlab.transmission import TransmissionDaemon, unavailable_reason
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file


def seeder(base: Path, address: str, torrent: bytes, data: Path) -> TransmissionDaemon:
    daemon = TransmissionDaemon(base / f"tr-{address}", address=address).start()
    infohash = str(lt.torrent_info(lt.bdecode(torrent)).info_hash())
    daemon.add(torrent, download_dir=data)
    daemon.wait(infohash, 120)
    return daemon


def tcp_only(magnet: str, out: Path, timeout: float) -> float:
    session = lt.session({
        "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False})
    params = lt.parse_magnet_uri(magnet)
    params.save_path = str(out)
    started = time.monotonic()
    handle = session.add_torrent(params)
    while not handle.status().is_seeding:
        if time.monotonic() - started > timeout:
            return float("inf")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    del session
    return elapsed


def lt_punch(magnet: str, out: Path, timeout: float) -> tuple[float, int, str]:
    """Seconds, stalls recovered, transports that carried the download."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lt_punch", "download", magnet, "-o", str(out),
             "--isolated", "--json"], capture_output=True, text=True, timeout=timeout,
            check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-300:]
        return float("inf"), 0, f"timed out after {timeout:g} s: {tail!r}"
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        return float("inf"), 0, f"exit {proc.returncode}: {proc.stderr[-200:]}"
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    stalls = sum(1 for e in events if e["event"] == "peer-stalled")
    transports = "+".join(e["transport"] for e in events if e["event"] == "peer-connected")
    return elapsed, stalls, transports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=49)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="ltp-tr-bench-") as tmp:
        base = Path(tmp)
        data = base / "data"
        payload = data / "movie.mp4"
        digest = write_random_file(payload, args.size_mb << 20, seed=1)
        torrent = make_torrent(payload)
        tcp_times: list[float] = []
        ours: list[tuple[float, int, str]] = []
        host = 10
        for run in range(1, args.runs + 1):
            for kind in ("tcp", "lt_punch"):
                address = f"127.0.0.{host}"
                host += 1
                daemon = seeder(base, address, torrent, data)
                out = base / f"out-{kind}-{run}"
                out.mkdir()
                try:
                    magnet = daemon.magnet(str(lt.torrent_info(lt.bdecode(torrent)).info_hash()))
                    if kind == "tcp":
                        t = tcp_only(magnet, out, args.timeout)
                        tcp_times.append(t)
                        print(f"run {run} libtorrent TCP-only  {t:7.2f} s", flush=True)
                    else:
                        result = lt_punch(magnet, out, args.timeout)
                        ours.append(result)
                        ok = sha256_file(out / "movie.mp4") == digest
                        print(f"run {run} lt-punch download  {result[0]:7.2f} s  stalls "
                              f"{result[1]}  {result[2]}  verified {ok}", flush=True)
                finally:
                    daemon.stop()
                    shutil.rmtree(out, ignore_errors=True)
        tcp_median = statistics.median(tcp_times)
        ours_times = [t for t, _, _ in ours]
        ratios = [t / tcp_median for t in ours_times]
        print(f"\nlibtorrent TCP-only: median {tcp_median:.2f} s, max {max(tcp_times):.2f} s")
        print(f"lt-punch download:   median {statistics.median(ours_times):.2f} s, "
              f"max {max(ours_times):.2f} s, completed {sum(t < 1e9 for t in ours_times)}"
              f"/{len(ours_times)}, stalls recovered {sum(s for _, s, _ in ours)}")
        print(f"ratio to the TCP-only median: median {statistics.median(ratios):.2f}, "
              f"max {max(ratios):.2f}; runs within 1.5x: {sum(r <= 1.5 for r in ratios)}"
              f"/{len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
