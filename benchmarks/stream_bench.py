"""HTTP streaming (``lt-punch stream``): first byte, seek latency, throughput.

Three figures, medians of ``--runs`` runs:

1. *first byte* (NAT lab): ``lt-punch stream MAGNET`` started behind a port-restricted
   NAT, the seed behind another one, metadata fetched from the seed; the time from the
   command's start to the first byte of the file over HTTP, and from the first peer
   connection (the seed's ``punched`` event) to that byte. Target: 1 s from the
   connection.
2. *seek* (NAT lab): Range requests (64 KiB) at random positions of a file that is
   still downloading (the seed's uplink is shaped to ``--seek-limit-mb`` by a token
   bucket on its interface, ``tc qdisc tbf``), one after the
   other; the time from the request to the last byte of the answer. Target: 0.3 s.
3. *throughput* (loopback, no lab): a completed torrent served by
   :func:`lt_punch.stream.make_app`, the whole file read by ``curl``. Target: 500 MB/s.

The lab figures need root; ``--skip-lab`` measures only the third. HTTP clients of the
lab figures run in the streaming host's namespace (the server binds its loopback).

    sudo .venv/bin/python benchmarks/stream_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lt_punch.errors import LtTimeoutError
from lt_punch.netlab import NatLab, lab_unavailable_reason
from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    make_payload,
    next_line,
    read_events,
    read_line,
    start_agent,
    start_signaling,
)

# Runs in the streaming host's namespace; one JSON command per stdin line, one JSON
# answer per command (times are time.monotonic(), one clock for every namespace).
CLIENT = r"""
import http.client, json, random, sys, time, urllib.parse

def get(url, headers, n):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("GET", u.path, headers=headers)
    r = conn.getresponse()
    body = r.read(n) if n > 0 else r.read()
    conn.close()
    return r.status, len(body)

for line in sys.stdin:
    job = json.loads(line)
    if job["op"] == "first-byte":
        t0 = time.monotonic()
        status, n = get(job["url"], {}, 1)
        out = {"status": status, "bytes": n, "t0": t0, "t": time.monotonic()}
    else:
        rng = random.Random(job["seed"])
        seeks = []
        for _ in range(job["count"]):
            first = rng.randrange(job["size"] - job["length"])
            t0 = time.monotonic()
            status, n = get(job["url"],
                            {"Range": f"bytes={first}-{first + job['length'] - 1}"}, 0)
            seeks.append({"status": status, "bytes": n, "t0": t0, "t": time.monotonic()})
        out = {"seeks": seeks}
    print(json.dumps(out), flush=True)
"""


class Lab:
    """A port/port lab with STUN and signaling, a seed side ``s`` and a streaming side
    ``l`` (with a resident HTTP client)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lab = NatLab({"s": "port", "l": "port"})
        self.lab.open()
        self.procs: list[subprocess.Popen[str]] = []
        try:
            self.stun = self.lab.start_stun()
            self.procs.append(start_signaling(self.lab))
            self.url = f"ws://{self.lab.server_ips[0]}:{SIGNAL_PORT}"
            self.client = self.lab.popen("l", [sys.executable, "-c", CLIENT],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            self.procs.append(self.client)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.lab.stop(proc)
        self.lab.close()

    def stop(self, proc: subprocess.Popen[str]) -> None:
        self.lab.stop(proc)

    def ask(self, job: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """Send one command to the resident client, return its answer."""
        assert self.client.stdin is not None
        self.client.stdin.write(json.dumps(job) + "\n")
        self.client.stdin.flush()
        line = next_line(self.client, time.monotonic() + timeout)
        if line is None:
            raise RuntimeError(f"HTTP client exited (code {self.client.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def seed(self, torrent: Path, progress_every: float = 0.0
             ) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
        """A seed agent on side ``s`` and the events it reported up to ``ready``.

        Its stdout must be read while it runs when ``progress_every`` is set.
        """
        events: list[dict[str, Any]] = []
        proc = start_agent(self.lab, "s", "seed", url=self.url, stun=self.stun,
                           torrent=torrent, save=torrent.parent / "seed",
                           extra=["--timeout", "3600",
                                  "--progress-every", str(progress_every)])
        read_events(proc, "ready", 30.0, events)
        return proc, events

    def stream(self, source: str, out: Path) -> tuple[subprocess.Popen[str], str]:
        """``lt-punch stream SOURCE`` on side ``l``, and its file URL once it listens."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("P2P_")},
               "P2P_STUN_SERVERS": f"{self.stun[0]}:{self.stun[1]}"}
        proc = self.lab.popen("l", [
            sys.executable, "-m", "lt_punch", "stream", source, "--host", "127.0.0.1",
            "--port", "0", "-o", str(out), "--signal", self.url, "--isolated"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = read_line(proc, "streaming ", 120.0)
        except BaseException:
            self.lab.stop(proc)
            raise
        return proc, line.split(" at ", 1)[1].strip()


def drain(proc: subprocess.Popen[str], sink: list[dict[str, Any]]) -> None:
    """Read the JSON lines ``proc`` already wrote (waits at most 0.2 s for more)."""
    deadline = time.monotonic() + 0.2
    while True:
        try:
            line = next_line(proc, deadline)
        except LtTimeoutError:
            return
        if line is None:
            return
        try:
            sink.append(json.loads(line))
        except ValueError:
            continue


def first_byte_runs(lab: Lab, runs: int, size: int) -> list[dict[str, Any]]:
    """Figure 1: ``lt-punch stream MAGNET`` start -> first byte, connection -> first byte.

    A fresh seed each run: a second leecher of one seed agent was seen failing to connect
    (see docs/performance.md), which is not what this figure is about.
    """
    base = lab.tmp / "first-byte"
    base.mkdir()
    torrent, _ = make_payload(base, size)
    results = []
    try:
        for run in range(runs):
            seed, events = lab.seed(torrent)
            try:
                magnet = f"magnet:?xt=urn:btih:{events[-1]['infohash']}"
                t_start = time.monotonic()
                stream, url = lab.stream(magnet, base / f"out{run}")
                try:
                    t_listen = time.monotonic()
                    answer = lab.ask({"op": "first-byte", "url": url})
                    if answer["status"] != 200 or answer["bytes"] != 1:
                        raise RuntimeError(f"first byte: {answer}")
                    punched = read_events(seed, "punched", 10.0, events)
                finally:
                    lab.stop(stream)
            finally:
                lab.stop(seed)
            results.append({
                "start_to_first_byte_s": answer["t"] - t_start,
                "start_to_connection_s": punched["t"] - t_start,
                "start_to_listening_s": t_listen - t_start,
                "connection_to_first_byte_s": answer["t"] - punched["t"],
                "listening_to_first_byte_s": answer["t"] - t_listen,
                "method": punched.get("method"),
            })
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def seek_runs(lab: Lab, runs: int, size: int, count: int, limit: int
              ) -> list[dict[str, Any]]:
    """Figure 2: latency of random 64 KiB Range requests while the file downloads."""
    base = lab.tmp / "seek"
    base.mkdir()
    torrent, _ = make_payload(base, size)
    results = []
    # The seed's uplink is the bottleneck, a token bucket on its interface: libtorrent's
    # own upload limit hands out quota in 0.5 s steps, which no real link does.
    lab.lab.shape("s", limit * 8 / 1e6)
    try:
        for run in range(runs):
            results.append(_seek_run(lab, base, torrent, run, size, count))
    finally:
        lab.lab.shape("s", 0)
    shutil.rmtree(base, ignore_errors=True)
    return results


def _seek_run(lab: Lab, base: Path, torrent: Path, run: int, size: int, count: int
              ) -> dict[str, Any]:
    """Figure 2, one run: a fresh seed (its progress events then count this run's
    upload only) and a fresh ``lt-punch stream``."""
    seed, events = lab.seed(torrent, progress_every=0.1)
    try:
        stream, url = lab.stream(str(torrent), base / f"out{run}")
        try:
            answer = lab.ask({"op": "seeks", "url": url, "size": size, "count": count,
                              "length": 1 << 16, "seed": run})
            drain(seed, events)
        finally:
            lab.stop(stream)
    finally:
        lab.stop(seed)
        shutil.rmtree(base / f"out{run}", ignore_errors=True)
    seeks = answer["seeks"]
    if any(s["status"] != 206 or s["bytes"] != 1 << 16 for s in seeks):
        raise RuntimeError(f"bad seek answer: {seeks}")
    # Sent by the seed when the last seek ended (its counters lag by up to 1 s).
    sent = max((e["total_upload"] for e in events if e.get("event") == "progress"
                and e["t"] <= seeks[-1]["t"]), default=0)
    latencies = [s["t"] - s["t0"] for s in seeks]
    return {
        "median_seek_s": statistics.median(latencies),
        "max_seek_s": max(latencies),
        "worst_seek_index": latencies.index(max(latencies)),
        "latencies_s": [round(x, 4) for x in latencies],
        "seeks": len(latencies),
        "seed_sent_at_last_seek": sent / size,
    }


async def _serve_once(torrent: Path, save: Path, size: int) -> float:
    """Figure 3, one run: curl reads a completed file from make_app; MB/s."""
    from aiohttp import web

    from lt_punch.config import Config
    from lt_punch.stream import make_app
    from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    config = Config(signaling_enabled=False, hole_punching_enabled=False)
    async with EnhancedTorrentSession(config, lt_settings=dict(ISOLATED_SETTINGS),
                                      save_path=save) as session:
        added = await session.add(torrent)
        await session.wait_finished(added.infohash, 120)
        runner = web.AppRunner(make_app(session))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                f"http://{host}:{port}/files/{added.infohash}/0",
                stdout=asyncio.subprocess.PIPE)
            out, _ = await curl.communicate()
        finally:
            await runner.cleanup()
    got, seconds = out.decode().split()
    if curl.returncode != 0 or int(got) != size:
        raise RuntimeError(f"curl: exit {curl.returncode}, {got} of {size} bytes")
    return size / float(seconds) / 1e6


def throughput_runs(tmp: Path, runs: int, size: int) -> list[float]:
    """Figure 3: MB/s of each run."""
    base = tmp / "throughput"
    base.mkdir()
    torrent, _ = make_payload(base, size)
    try:
        return [asyncio.run(_serve_once(torrent, base / "seed", size)) for _ in range(runs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--first-byte-mb", type=int, default=20,
                        help="payload of the first-byte runs (MB)")
    parser.add_argument("--seek-mb", type=int, default=200, help="file of the seek runs (MB)")
    parser.add_argument("--seeks", type=int, default=20, help="seeks per run")
    parser.add_argument("--seek-limit-mb", type=float, default=20.0,
                        help="seed uplink of the seek runs (MB/s, tc tbf), so that the "
                        "file is still downloading while it is seeked")
    parser.add_argument("--throughput-mb", type=int, default=200)
    parser.add_argument("--skip-lab", action="store_true", help="only the loopback figure")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="directory for payloads and downloads (default: /dev/shm)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        parser.error("curl is needed for the throughput figure")
    reason = None if args.skip_lab else lab_unavailable_reason()
    if reason:
        print(f"lab unavailable: {reason} (use --skip-lab)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="ltp-streambench-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_lab:
            lab = Lab(tmp)
            try:
                first = first_byte_runs(lab, args.runs, args.first_byte_mb << 20)
                seeks = seek_runs(lab, args.runs, args.seek_mb << 20, args.seeks,
                                  int(args.seek_limit_mb * 1e6))
            finally:
                lab.close()
            report["first_byte"] = {
                "payload_MB": args.first_byte_mb,
                "median_start_to_first_byte_s": _median(
                    [r["start_to_first_byte_s"] for r in first]),
                "median_connection_to_first_byte_s": _median(
                    [r["connection_to_first_byte_s"] for r in first]),
                "runs": first,
            }
            report["seek"] = {
                "file_MB": args.seek_mb, "seed_limit_MBps": args.seek_limit_mb,
                "seeks_per_run": args.seeks,
                "median_of_run_medians_s": _median([r["median_seek_s"] for r in seeks]),
                "worst_seek_s": max(r["max_seek_s"] for r in seeks),
                # Seeks to pieces already there take milliseconds: the median hides the
                # others, hence the share over the target and the 90th percentile.
                "over_0.3s": sum(x > 0.3 for r in seeks for x in r["latencies_s"]),
                "p90_s": statistics.quantiles(
                    [x for r in seeks for x in r["latencies_s"]], n=10)[-1],
                "runs": seeks,
            }
        rates = throughput_runs(tmp, args.runs, args.throughput_mb << 20)
        report["throughput"] = {"file_MB": args.throughput_mb, "median_MBps": _median(rates),
                                "runs_MBps": [round(r, 1) for r in rates]}
    if args.json:
        print(json.dumps(report, indent=2))
    print(f"\n{args.runs} runs, medians")
    if "first_byte" in report:
        fb, sk = report["first_byte"], report["seek"]
        print(f"first byte, magnet, {fb['payload_MB']} MB: "
              f"{fb['median_start_to_first_byte_s']:.3f} s from the command's start, "
              f"{fb['median_connection_to_first_byte_s']:.3f} s from the first peer "
              "connection (target 1 s)")
        print(f"seek, {sk['file_MB']} MB downloading at <= {sk['seed_limit_MBps']:g} MB/s: "
              f"{sk['median_of_run_medians_s']:.3f} s median, worst "
              f"{sk['worst_seek_s']:.3f} s, p90 {sk['p90_s']:.3f} s, "
              f"{sk['over_0.3s']}/{args.runs * args.seeks} over 0.3 s (target 0.3 s)")
    tp = report["throughput"]
    print(f"completed file over loopback, {tp['file_MB']} MB: {tp['median_MBps']:.0f} MB/s "
          f"(runs {tp['runs_MBps']}; target 500 MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
