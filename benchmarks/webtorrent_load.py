"""The WebTorrent tracker path under load: lt_punch's signaling server against
bittorrent-tracker (the reference WebTorrent tracker, from npm), same workload, one run.

Each server runs in its own process on 127.0.0.1 (``lt-punch signal serve --no-dht``;
``bittorrent-tracker/server`` with ``ws`` only under node), and a load driver plays
``--peers`` websocket clients in ``--swarms`` swarms. Every peer first announces
(``event: started``, no offers) so that the swarms are full, then, closed loop, sends an
announce with ``--offers`` SDP offers and waits for their answers (or ``--timeout``);
every peer answers each offer it gets at once. Offers answered per second, over
``--duration`` seconds after ``--warmup``, are the *rate at saturation*; the time from
an announce to each of its answers is the *answer latency* (p50, p99). ``--rate`` runs
an open loop instead: announces on a fixed schedule for that many offers per second
(latency from the scheduled time, so driver stalls count). The CPU shares of the server
process and of the driver over the measured interval are reported (a server near 100%
of one core is the bottleneck; a driver near 100% means the figure is the driver's),
and the server's memory per peer (VmRSS growth once all peers have announced).

The driver (``--driver``):

* ``c`` (default): ``benchmarks/wt_driver.c``, one epoll thread, the same workload;
  compiled on first use (and when the source is newer) to ``.cache/wt_driver`` with
  gcc, and run as a subprocess. It prints ``ready`` once the peers have announced
  (the server's RSS is read then), ``measuring`` and ``done`` at the ends of the
  measured interval (its CPU is sampled then), then a JSON line of its figures. It
  needs a fraction of a core where the servers need one, so it can saturate them.
* ``python``: this process, asyncio and ``websockets`` (it needs more CPU per offer
  than either server, so at saturation its figures are its own).

With ``--pin`` (default; 2 cores needed) the server runs on core 0 (``taskset -c 0``)
and the driver on core 1, so neither takes the other's CPU. The fd limit of this
process (inherited by both) is raised to its hard limit, for ``--peers 10000``. In the
closed loop every peer has ``--offers`` offers out, so the answer latency at saturation
is about peers x offers / rate: with 10,000 peers it is seconds, and ``--timeout`` must
be longer than that (an announce given up has its late answers ignored; the number of
those is shown).

    .venv/bin/python benchmarks/webtorrent_load.py --runs 3
    .venv/bin/python benchmarks/webtorrent_load.py --rate 2000 --runs 3
    .venv/bin/python benchmarks/webtorrent_load.py --peers 10000 --swarms 1000 --timeout 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import websockets

from lt_punch.netlab import stop_process

HERE = Path(__file__).resolve().parent
DRIVER_SRC = HERE / "wt_driver.c"
DRIVER_EXE = HERE.parent / ".cache" / "wt_driver"
SERVER_CORE, DRIVER_CORE = 0, 1  # --pin

SDP = ("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP "
       "webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n"
       "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n"
       "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
       "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n")


def binary(n: int, prefix: str) -> str:
    """A 20-character binary string (one character per byte)."""
    return (prefix + f"{n:012d}")[-20:].rjust(20, "\x00")


def pinned(argv: list[str], core: int | None) -> list[str]:
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def drain(pipe: Any, tail: collections.deque[str]) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed by stop_process
        tail.extend(pipe)


def start_server(kind: str, port: int, core: int | None) -> subprocess.Popen[str]:
    """The server, on `core` if not None; its output is read by a thread from then on
    (the last lines kept in ``proc.tail``, shown if the run fails)."""
    if kind == "lt_punch":
        argv = [sys.executable, "-m", "lt_punch", "signal", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--no-dht"]
        proc = subprocess.Popen(pinned(argv, core), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        wanted = "listening"
    else:
        from first_peer import tracker_installed  # bittorrent-tracker from npm

        script = ("import Server from 'bittorrent-tracker/server';"
                  "const s = new Server({udp: false, http: false, ws: true, stats: false});"
                  f"s.listen({port}, '127.0.0.1', () => console.log('listening'));")
        proc = subprocess.Popen(pinned(["node", "--input-type=module", "-e", script], core),
                                cwd=tracker_installed(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wanted = "listening"
    assert proc.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=20)
    proc.tail = tail  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        tail.append(line)
        if wanted in line:
            # A server that logs must not block on a full pipe.
            threading.Thread(target=drain, args=(proc.stdout, tail), daemon=True).start()
            return proc
    proc.kill()
    raise SystemExit(f"{kind} server did not start:\n{''.join(tail)}")


def server_failed(kind: str, proc: subprocess.Popen[str], why: str) -> SystemExit:
    tail = "".join(proc.tail)  # type: ignore[attr-defined]
    exit_code = proc.poll()
    state = "running" if exit_code is None else f"exit {exit_code}"
    return SystemExit(f"{kind}: {why} (server {state}); server output:\n{tail}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Peer:
    def __init__(self, n: int, info_hash: str, offers: int) -> None:
        self.peer_id = binary(n, "-LP0001-")
        self.info_hash = info_hash
        self.offers = offers
        self.ws: Any = None
        self.waiting: dict[str, float] = {}
        self.done = asyncio.Event()
        self.seq = 0

    async def connect(self, url: str) -> None:
        self.ws = await websockets.connect(url, max_size=1 << 22, compression=None,
                                           open_timeout=30)

    def announce(self, offers: int, sent_at: float) -> str:
        items = []
        for _ in range(offers):
            self.seq += 1
            offer_id = binary(self.seq, "o")
            self.waiting[offer_id] = sent_at
            items.append({"offer": {"type": "offer", "sdp": SDP}, "offer_id": offer_id})
        self.done.clear()
        return json.dumps({"action": "announce", "info_hash": self.info_hash,
                           "peer_id": self.peer_id, "numwant": offers, "uploaded": 0,
                           "downloaded": 0, "left": 1, "offers": items})


async def run_one(kind: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    """A run with this process as the driver (``--driver python``)."""
    if args.pin:
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {DRIVER_CORE})
    try:
        return await python_run(kind, args, port)
    finally:
        if args.pin:
            os.sched_setaffinity(0, affinity)


async def python_run(kind: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    proc = start_server(kind, port, SERVER_CORE if args.pin else None)
    url = f"ws://127.0.0.1:{port}"
    rng = random.Random(1)
    swarms = [binary(i, "ih") for i in range(args.swarms)]
    peers = [Peer(i, swarms[i % args.swarms], args.offers) for i in range(args.peers)]
    latencies: list[float] = []
    answered = 0
    measuring = False
    try:
        rss0 = rss_kib(proc.pid)
        sem = asyncio.Semaphore(100)

        async def connect(p: Peer) -> None:
            async with sem:
                await p.connect(url)

        await asyncio.gather(*(connect(p) for p in peers))

        async def reader(p: Peer) -> None:
            nonlocal answered
            async for raw in p.ws:
                msg = json.loads(raw)
                if "offer" in msg:
                    await p.ws.send(json.dumps({
                        "action": "announce", "info_hash": p.info_hash, "peer_id": p.peer_id,
                        "to_peer_id": msg["peer_id"], "offer_id": msg["offer_id"],
                        "answer": {"type": "answer", "sdp": SDP}}))
                elif "answer" in msg:
                    sent = p.waiting.pop(msg["offer_id"], None)
                    if sent is not None and measuring:
                        latencies.append(time.perf_counter() - sent)
                        answered += 1
                    if not p.waiting:
                        p.done.set()

        readers = [asyncio.ensure_future(reader(p)) for p in peers]
        for p in peers:  # everyone in its swarm before the offers start
            await p.ws.send(json.dumps({"action": "announce", "info_hash": p.info_hash,
                                        "peer_id": p.peer_id, "numwant": 0, "left": 1,
                                        "event": "started", "uploaded": 0,
                                        "downloaded": 0}))
        await asyncio.sleep(1.0)
        rss = rss_kib(proc.pid) - rss0
        stop = time.perf_counter() + args.warmup + args.duration

        async def closed_loop(p: Peer) -> None:
            while time.perf_counter() < stop:
                await p.ws.send(p.announce(args.offers, time.perf_counter()))
                try:
                    await asyncio.wait_for(p.done.wait(), args.timeout)
                except TimeoutError:
                    p.waiting.clear()  # lost offers (an offerer's swarm too small, ...)

        async def open_loop() -> None:
            interval = args.offers / args.rate
            start = time.perf_counter()
            i = 0
            while True:
                at = start + i * interval
                if at >= stop:
                    return
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                p = peers[rng.randrange(len(peers))]
                await p.ws.send(p.announce(args.offers, at))
                i += 1

        loops = ([asyncio.ensure_future(open_loop())] if args.rate
                 else [asyncio.ensure_future(closed_loop(p)) for p in peers])
        await asyncio.sleep(args.warmup)
        measuring = True
        cpu0, own0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
        await asyncio.sleep(args.duration)
        measuring = False
        elapsed = time.perf_counter() - t0
        cpu = (cpu_seconds(proc.pid) - cpu0) / elapsed
        driver_cpu = (time.process_time() - own0) / elapsed
        await asyncio.gather(*loops, return_exceptions=True)
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for p in peers:
            await p.ws.close()
        latencies.sort()
        return {
            "offers_per_s": answered / args.duration,
            "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
            "server_cpu": cpu,
            "driver_cpu": driver_cpu,
            "kib_per_peer": rss / len(peers),
        }
    finally:
        stop_process(proc)


def driver_built() -> Path:
    """``.cache/wt_driver``, compiled from ``wt_driver.c`` if missing or older."""
    if (not DRIVER_EXE.exists()
            or DRIVER_EXE.stat().st_mtime < DRIVER_SRC.stat().st_mtime):
        DRIVER_EXE.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(DRIVER_EXE), str(DRIVER_SRC)],
                       check=True)
    return DRIVER_EXE


def c_run(kind: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    """A run with ``wt_driver`` as the driver (``--driver c``): the server's RSS is read
    when it says ``ready``, its CPU when it says ``measuring`` and ``done``."""
    exe = driver_built()
    proc = start_server(kind, port, SERVER_CORE if args.pin else None)
    driver = None
    try:
        rss0 = rss_kib(proc.pid)
        argv = [str(exe), "127.0.0.1", str(port), str(args.peers), str(args.swarms),
                str(args.offers), str(args.warmup), str(args.duration), str(args.timeout),
                str(args.rate)]
        driver = subprocess.Popen(pinned(argv, DRIVER_CORE if args.pin else None),
                                  stdout=subprocess.PIPE, text=True)
        assert driver.stdout is not None
        rss = cpu0 = t0 = cpu = None
        result = None
        for line in driver.stdout:
            word = line.strip()
            if word == "ready":
                rss = rss_kib(proc.pid) - rss0
            elif word == "measuring":
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            elif word == "done" and cpu0 is not None and t0 is not None:
                cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            elif word.startswith("{"):
                result = json.loads(word)
        driver.wait(timeout=30)
        if result is None or rss is None or cpu is None:
            raise server_failed(kind, proc, f"wt_driver failed (exit {driver.returncode})")
        if result["errors"] or result["failures"]:
            print(f"  {kind}: {result['errors']} connection errors, {result['failures']} "
                  f"requests refused, {result['connected']} of {args.peers} peers "
                  "connected", flush=True)
        if result["timeouts"]:
            print(f"  {kind}: {result['timeouts']} announces not answered within --timeout "
                  "(their answers are not counted)", flush=True)
        if not result["offers_in"]:
            raise server_failed(kind, proc, "no offer forwarded")
        return {
            "offers_per_s": result["offers_per_s"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "server_cpu": cpu,
            "driver_cpu": result["driver_cpu"],
            "kib_per_peer": rss / args.peers,
        }
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        stop_process(proc)


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, list[dict[str, Any]]] = {"lt_punch": [], "bittorrent-tracker": []}
    port = 18400
    for run in range(1, args.runs + 1):
        for kind in results:
            port += 1
            if args.driver == "c":
                r = c_run(kind, args, port)
            else:
                r = await run_one(kind, args, port)
            results[kind].append(r)
            print(f"run {run} {kind:18} {r['offers_per_s']:8.0f} offers/s  "
                  f"p50 {r['p50_ms'] or 0:6.2f} ms  p99 {r['p99_ms'] or 0:7.2f} ms  "
                  f"server CPU {r['server_cpu'] * 100:4.0f}%  "
                  f"{r['kib_per_peer']:5.1f} KiB/peer  "
                  f"driver CPU {r['driver_cpu'] * 100:4.0f}%", flush=True)
    mode = f"open loop at {args.rate:g} offers/s" if args.rate else "closed loop (saturation)"
    print(f"\n{args.peers} peers in {args.swarms} swarms, {args.offers} offers per announce, "
          f"{mode}; {args.driver} driver; medians of {args.runs}")
    med = {}
    for kind, rows in results.items():
        med[kind] = {k: statistics.median([r[k] for r in rows if r[k] is not None] or [0])
                     for k in rows[0]}
        m = med[kind]
        print(f"{kind:18} {m['offers_per_s']:8.0f} offers/s  p50 {m['p50_ms']:6.2f} ms  "
              f"p99 {m['p99_ms']:7.2f} ms  server CPU {m['server_cpu'] * 100:4.0f}%  "
              f"{m['kib_per_peer']:5.1f} KiB/peer  driver CPU {m['driver_cpu'] * 100:4.0f}%")
    if med["bittorrent-tracker"]["offers_per_s"]:
        ratio = med["lt_punch"]["offers_per_s"] / med["bittorrent-tracker"]["offers_per_s"]
        print(f"lt_punch / bittorrent-tracker: {ratio:.2f}x offers/s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--swarms", type=int, default=100)
    parser.add_argument("--offers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds an announce waits for its answers (closed loop)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offers per second, open loop (0: closed loop)")
    parser.add_argument("--driver", choices=("c", "python"), default="c",
                        help="load driver: wt_driver.c (default) or this process")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help=f"server on core {SERVER_CORE}, driver on core {DRIVER_CORE}")
    args = parser.parse_args()
    if args.pin and not {SERVER_CORE, DRIVER_CORE} <= os.sched_getaffinity(0):
        parser.error(f"--pin needs cores {SERVER_CORE} and {DRIVER_CORE} (or --no-pin)")
    # A socket per peer, in the driver and in the server: both inherit this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
