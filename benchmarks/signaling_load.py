"""Load of the signaling server: connections held, relay rate, relay latency, memory.

The server (``python -m lt_punch signal serve --host 127.0.0.1 --port 0 --no-dht``, the
command as deployed) runs in its own process, a fresh one for each run and size; this
process is the load driver: one asyncio loop, one ``websockets`` client connection per
peer, ``--room-size`` peers per room (each relays to the next member of its room, so
every peer sends to one peer and receives from one). For each ``--peers`` size N:

1. *connect*: open, ``register`` and ``join`` all N peers, at most
   ``--connect-concurrency`` handshakes at a time (the server's listen backlog is 100);
   the wall time for all N, and per peer the time from the TCP connect to its
   ``joined`` (p50/p99).
2. *server memory per idle connection*: VmRSS of the server process
   (``/proc/<pid>/status``) with the N peers registered, joined and idle (after a
   ``--settle`` pause), minus VmRSS before the first connection, divided by N.
3. *relay latency at a fixed offered rate*: ``--rate`` relays per second (default
   2,000) sent round-robin from all peers on a fixed schedule; each carries its
   scheduled send time (``time.perf_counter``; sender and receiver are this process,
   one clock) and the receiver records the difference. Scheduled, not actual, send
   times are used, so a stall of the send loop counts as latency (no coordinated
   omission). The first ``--warmup`` seconds are not recorded; ``--duration`` seconds
   are.
4. *relay rate at saturation*: every peer relays to its room neighbour as fast as the
   server takes it, with at most ``--window`` relays of its own in flight (a slot is
   freed when the receiver gets the relay); deliveries counted at the receivers over
   ``--duration`` seconds after ``--warmup`` seconds. The CPU share of the server
   and of this driver over that interval is reported too: a server near 100 % of one
   core is the bottleneck, a driver near 100 % means the figure is the driver's.

Order within a run: 1, 2, 3, 4 (latency before saturation, so saturation backlogs
cannot leak into it). Figures are medians of ``--runs`` runs. Targets (issue 3):
10,000 concurrent peers held, >= 10,000 relayed msg/s, p99 < 50 ms at 2,000 msg/s,
< 30 KiB of server memory per idle connection.

The fd limit is raised (``RLIMIT_NOFILE``) in this process before the server is
started, and the server inherits it (checked in ``/proc/<pid>/limits``). Everything is
on 127.0.0.1. ``--profile-server DIR`` runs the server under cProfile (one ``.prof``
per run; slower, for diagnosis only); ``--server-cmd`` runs another server command (a
patched server, for an A/B comparison).

    .venv/bin/python benchmarks/signaling_load.py --runs 3
    .venv/bin/python benchmarks/signaling_load.py --peers 1000 --runs 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"
METADATA: dict[str, Any] = {  # what an lt_punch session registers with, roughly
    "nat": "port",
    "udp": ["203.0.113.7", 6881],
    "tcp": None,
    "methods": ["utp", "tcp"],
    "nat_summary": None,
    "agent": "lt_punch",
}
TARGET_RELAY_RATE = 10_000.0
TARGET_P99_MS = 50.0
TARGET_KIB_PER_CONN = 30.0
TARGET_PEERS = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- server process ----------------------------------------------------------------------


class ServerProcess:
    """``lt-punch signal serve`` in a child process; :meth:`stop` always ends it."""

    def __init__(self, profile: Path | None, command: list[str] | None = None) -> None:
        self.profile = profile
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._stderr = tempfile.TemporaryFile()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    async def start(self, limit_s: float) -> None:
        prefix = [sys.executable]
        if self.profile is not None:
            prefix += ["-m", "cProfile", "-o", str(self.profile)]
        command = self.command or [*prefix, "-m", "lt_punch", "signal", "serve"]
        argv = [*command, "--host", HOST, "--port", "0", "--no-dht"]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        text = line.decode(errors="replace").strip()
        if "listening on ws://" not in text:
            raise RuntimeError(f"server did not start: {text!r} {self.stderr_tail()}")
        self.port = int(text.rsplit(":", 1)[1])

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def rss_kib(self) -> int:
        return _status_field(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def nofile_limit(self) -> int:
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        return 0

    async def stop(self, limit_s: float = 30.0) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), limit_s)
                except TimeoutError:
                    proc.kill()
                    await asyncio.wait_for(proc.wait(), 10)
        finally:
            self._stderr.close()


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])  # kB
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


async def http_get_json(port: int, path: str, limit_s: float = 10.0) -> Any:
    """GET ``path`` from the server's HTTP side (``/stats``, ``/health``)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), limit_s)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), limit_s)  # Connection: close
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), limit_s)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {head[:80]!r}")
    return json.loads(body)


# --- peers -------------------------------------------------------------------------------


@dataclass
class Peer:
    index: int
    peer_id: str
    room: str
    partner: str
    register_text: str
    join_text: str
    relay_prefix: str  # a relay message up to its "data" value
    window: asyncio.Semaphore
    ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    sent: int = 0


@dataclass
class Driver:
    """Shared state of all peers' reader tasks."""

    peers: list[Peer]
    by_id: dict[str, Peer]
    delivered_sat: int = 0
    sent_sat: int = 0
    received_lat: int = 0
    sent_lat: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)
    closed_early: int = 0
    stopping: bool = False

    async def read_loop(self, peer: Peer) -> None:
        assert peer.ws is not None
        clock = time.perf_counter
        try:
            async for text in peer.ws:
                msg = json.loads(text)
                kind = msg.get("type")
                if kind == "relay":
                    data = msg["data"]
                    if "w" in data:  # saturation: free a slot of the sender's window
                        self.delivered_sat += 1
                        sender = self.by_id.get(msg["from"])
                        if sender is not None:
                            sender.window.release()
                    else:
                        self.received_lat += 1
                        if data.get("m"):
                            self.latencies.append(clock() - data["t"])
                elif kind == "error":
                    self.errors[str(msg.get("code"))] += 1
                    if msg.get("ref") == "relay":
                        peer.window.release()
                else:
                    self.other[str(kind)] += 1
        except ConnectionClosed:
            pass
        finally:
            if not self.stopping:
                self.closed_early += 1


def make_peers(n: int, room_size: int, window: int, tag: str) -> Driver:
    peers: list[Peer] = []
    for i in range(n):
        r, pos = divmod(i, room_size)
        members = min(room_size, n - r * room_size)
        room = hashlib.sha1(f"{tag}-room-{r}".encode()).hexdigest()
        partner = f"{tag}-{r * room_size + (pos + 1) % members:05d}"
        peer_id = f"{tag}-{i:05d}"
        peers.append(Peer(
            index=i, peer_id=peer_id, room=room, partner=partner,
            register_text=json.dumps({"v": 1, "type": "register", "peer_id": peer_id,
                                      "metadata": METADATA}, separators=(",", ":")),
            join_text=json.dumps({"v": 1, "type": "join", "room": room},
                                 separators=(",", ":")),
            relay_prefix=f'{{"v":1,"type":"relay","to":"{partner}","room":"{room}","data":',
            window=asyncio.Semaphore(window),
        ))
    return Driver(peers, {p.peer_id: p for p in peers})


async def _recv_json(ws: ClientConnection) -> dict[str, Any]:
    msg = json.loads(await ws.recv())
    if msg.get("type") == "error":
        raise RuntimeError(f"server error: {msg.get('code')}: {msg.get('message')}")
    return dict(msg)


async def open_peer(drv: Driver, peer: Peer, url: str, limit_s: float) -> float:
    """Connect, register, join; start the peer's reader. Returns the seconds it took."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            ws = await connect(url, compression=None, proxy=None, open_timeout=limit_s,
                               ping_interval=None, close_timeout=5)
            peer.ws = ws
            await ws.send(peer.register_text)
            while (await _recv_json(ws)).get("type") != "registered":
                pass
            await ws.send(peer.join_text)
            while (await _recv_json(ws)).get("type") != "joined":
                pass
    except BaseException:
        if peer.ws is not None:
            peer.ws.transport.abort()
            peer.ws = None
        raise
    elapsed = time.perf_counter() - t0
    peer.reader = asyncio.create_task(drv.read_loop(peer))
    return elapsed


async def close_peers(drv: Driver, limit_s: float) -> None:
    """Close every connection (closing handshake, then abort what is left)."""
    drv.stopping = True
    live = [p for p in drv.peers if p.ws is not None]
    sem = asyncio.Semaphore(500)

    async def close_one(p: Peer) -> None:
        assert p.ws is not None
        async with sem:
            with contextlib.suppress(Exception):
                await p.ws.close()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(close_one(p) for p in live)), limit_s)
    for p in live:
        assert p.ws is not None
        p.ws.transport.abort()
    readers = [p.reader for p in live if p.reader is not None]
    if readers:
        _, pending = await asyncio.wait(readers, timeout=10)
        for t in pending:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


# --- scenarios ---------------------------------------------------------------------------


async def wait_for_condition(done: Callable[[], bool], limit_s: float) -> bool:
    """Poll ``done`` every 10 ms for at most ``limit_s`` seconds; its last value."""
    deadline = time.perf_counter() + limit_s
    while not done():
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def scenario_connect(
    drv: Driver, url: str, concurrency: int, limit_s: float
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    times: list[float] = []
    failures: Counter[str] = Counter()

    async def one(peer: Peer) -> None:
        async with sem:
            try:
                times.append(await open_peer(drv, peer, url, limit_s))
            except Exception as exc:  # counted and reported, not fatal
                failures[type(exc).__name__ + (f": {exc}"[:120] if str(exc) else "")] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in drv.peers))
    total = time.perf_counter() - t0
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return {
        "connected": len(times),
        "connect_total_s": total,
        "connect_rate_per_s": len(times) / total if total > 0 else None,
        "connect_p50_ms": None if p50 is None else p50 * 1e3,
        "connect_p99_ms": None if p99 is None else p99 * 1e3,
        "connect_failures": dict(failures.most_common(5)),
    }


async def scenario_latency(
    drv: Driver, rate: float, warmup: float, duration: float, drain: float
) -> dict[str, Any]:
    peers = [p for p in drv.peers if p.ws is not None]
    if not peers:
        return {}
    total = int(rate * (warmup + duration))
    start = time.perf_counter() + 0.05
    clock = time.perf_counter
    i = 0
    while i < total:
        due = min(total, int((clock() - start) * rate) + 1)
        while i < due:
            p = peers[i % len(peers)]
            scheduled = start + i / rate
            measured = 1 if scheduled >= start + warmup else 0
            assert p.ws is not None
            with contextlib.suppress(ConnectionClosed):
                await p.ws.send(f'{p.relay_prefix}{{"t":{scheduled!r},"m":{measured}}}}}')
                drv.sent_lat += 1
            i += 1
        await asyncio.sleep(max(0.0, start + i / rate - clock()))
    await wait_for_condition(lambda: drv.received_lat >= drv.sent_lat, drain)
    expected = int(rate * duration)
    lat = drv.latencies
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return {
        "latency_offered_per_s": rate,
        "latency_samples": len(lat),
        "latency_expected": expected,
        "latency_lost": drv.sent_lat - drv.received_lat,
        "latency_p50_ms": None if p50 is None else p50 * 1e3,
        "latency_p99_ms": None if p99 is None else p99 * 1e3,
        "latency_max_ms": max(lat) * 1e3 if lat else None,
    }


async def scenario_saturation(
    drv: Driver, server: ServerProcess, window: int, warmup: float, duration: float,
    drain: float,
) -> dict[str, Any]:
    peers = [p for p in drv.peers if p.ws is not None]
    if not peers:
        return {}
    for p in peers:
        p.window = asyncio.Semaphore(window)
    stop = False
    payload = '{"w":1}}'

    async def pump(p: Peer) -> None:
        assert p.ws is not None
        send, acquire, text = p.ws.send, p.window.acquire, p.relay_prefix + payload
        while True:
            await acquire()
            if stop:
                return
            await send(text)
            drv.sent_sat += 1

    tasks = [asyncio.create_task(pump(p)) for p in peers]
    try:
        await asyncio.sleep(warmup)
        d0, c0, s0 = drv.delivered_sat, time.perf_counter(), server.cpu_seconds()
        p0 = time.process_time()
        await asyncio.sleep(duration)
        d1, c1, s1 = drv.delivered_sat, time.perf_counter(), server.cpu_seconds()
        p1 = time.process_time()
    finally:
        stop = True
        for p in peers:
            for _ in range(window):
                p.window.release()
        _, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    await wait_for_condition(lambda: drv.delivered_sat >= drv.sent_sat, drain)
    elapsed = c1 - c0
    return {
        "relay_per_s": (d1 - d0) / elapsed,
        "relay_server_cpu": (s1 - s0) / elapsed,
        "relay_driver_cpu": (p1 - p0) / elapsed,
        "relay_undelivered": drv.sent_sat - drv.delivered_sat,
        "relay_send_failures": sum(1 for r in results if isinstance(r, BaseException)),
    }


async def run_once(n: int, run: int, args: argparse.Namespace) -> dict[str, Any]:
    profile = None
    if args.profile_server:
        profile = Path(args.profile_server) / f"server-{n}-run{run}.prof"
    server = ServerProcess(profile, shlex.split(args.server_cmd) if args.server_cmd else None)
    drv = make_peers(n, args.room_size, args.window, f"r{run}")
    result: dict[str, Any] = {"peers": n, "run": run}
    try:
        await server.start(limit_s=30)
        result["server_nofile"] = server.nofile_limit()
        await http_get_json(server.port, "/health")
        await asyncio.sleep(0.5)
        rss0 = server.rss_kib()
        phases = result["phases_monotonic"] = {"connect": time.monotonic()}
        result.update(await scenario_connect(drv, server.url, args.connect_concurrency,
                                             args.timeout))
        await asyncio.sleep(args.settle)
        rss1 = server.rss_kib()
        stats = await http_get_json(server.port, "/stats")
        result.update({
            "server_peers": stats["peers"], "server_rooms": stats["rooms"],
            "rss_before_kib": rss0, "rss_idle_kib": rss1,
            "kib_per_conn": (rss1 - rss0) / max(1, result["connected"]),
        })
        phases["latency"] = time.monotonic()
        result.update(await scenario_latency(drv, args.rate, args.warmup, args.duration,
                                             drain=10))
        phases["saturation"] = time.monotonic()
        result.update(await scenario_saturation(drv, server, args.window, args.warmup,
                                                args.duration, drain=15))
        phases["end"] = time.monotonic()
        stats = await http_get_json(server.port, "/stats")
        result["held"] = stats["peers"]  # still registered after all scenarios
        result["closed_early"] = drv.closed_early
        result["server_errors"] = stats["errors"]
        result["client_errors"] = dict(drv.errors)
        result["rss_end_kib"] = server.rss_kib()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if server.proc is not None:
            result["server_stderr"] = server.stderr_tail()
    finally:
        try:
            await close_peers(drv, limit_s=30)
        finally:
            await server.stop()
    return result


# --- report ------------------------------------------------------------------------------


def median(values: Iterable[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return statistics.median(nums) if nums else None


def summarize(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["connected", "held", "connect_total_s", "connect_rate_per_s", "connect_p50_ms",
            "connect_p99_ms", "kib_per_conn", "rss_before_kib", "rss_idle_kib",
            "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "latency_lost",
            "relay_per_s", "relay_server_cpu", "relay_driver_cpu"]
    out: dict[str, Any] = {"peers": n, "runs": len(runs),
                           "ok_runs": sum(1 for r in runs if "error" not in r)}
    for k in keys:
        out[k] = median(r.get(k) for r in runs)
    held = out["held"]
    p99 = out["latency_p99_ms"]
    rate = out["relay_per_s"]
    kib = out["kib_per_conn"]
    out["met"] = {
        "held": held is not None and held >= n,
        "relay_per_s": rate is not None and rate >= TARGET_RELAY_RATE,
        "latency_p99_ms": p99 is not None and p99 < TARGET_P99_MS,
        "kib_per_conn": kib is not None and kib < TARGET_KIB_PER_CONN,
    }
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(summaries: list[dict[str, Any]], runs: dict[int, list[dict[str, Any]]],
                args: argparse.Namespace) -> None:
    print(f"\nsignaling server load: medians of {args.runs} run(s); rooms of "
          f"{args.room_size}, window {args.window}, {args.duration:g} s measured")
    print(f"{'peers':>6}  {'figure':<34}{'median':>11}  {'runs':<26}{'target':<14}met")

    def row(s: dict[str, Any], label: str, key: str, spec: str, target: str = "",
            met: str | None = None) -> None:
        per_run = " ".join(_fmt(r.get(key), spec) for r in runs[s["peers"]])
        verdict = "" if met is None else ("yes" if s["met"][met] else "NO")
        print(f"{s['peers']:>6}  {label:<34}{_fmt(s[key], spec):>11}  {per_run:<26}"
              f"{target:<14}{verdict}")

    for s in summaries:
        row(s, "peers held (server count)", "held", ".0f",
            f">= {s['peers']}" + (" (10k)" if s["peers"] >= TARGET_PEERS else ""), "held")
        row(s, "connect: all peers (s)", "connect_total_s", ".2f")
        row(s, "connect: rate (peers/s)", "connect_rate_per_s", ".0f")
        row(s, "connect: per peer p50 (ms)", "connect_p50_ms", ".1f")
        row(s, "connect: per peer p99 (ms)", "connect_p99_ms", ".1f")
        row(s, "relay at saturation (msg/s)", "relay_per_s", ".0f",
            f">= {TARGET_RELAY_RATE:.0f}", "relay_per_s")
        row(s, "  server CPU (cores)", "relay_server_cpu", ".2f")
        row(s, "  driver CPU (cores)", "relay_driver_cpu", ".2f")
        row(s, f"relay p50 @ {args.rate:g}/s (ms)", "latency_p50_ms", ".2f")
        row(s, f"relay p99 @ {args.rate:g}/s (ms)", "latency_p99_ms", ".2f",
            f"< {TARGET_P99_MS:g}", "latency_p99_ms")
        row(s, "server RSS per idle conn (KiB)", "kib_per_conn", ".1f",
            f"< {TARGET_KIB_PER_CONN:g}", "kib_per_conn")
    for n, rs in runs.items():
        for r in rs:
            if "error" in r:
                print(f"  N={n} run {r['run']}: {r['error']}", file=sys.stderr)
            if r.get("connect_failures"):
                print(f"  N={n} run {r['run']}: connect failures {r['connect_failures']}",
                      file=sys.stderr)
            errs = {k: v for k, v in (r.get("client_errors") or {}).items() if v}
            if errs or r.get("closed_early"):
                print(f"  N={n} run {r['run']}: errors {errs}, closed early "
                      f"{r.get('closed_early')}", file=sys.stderr)


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except OSError:
        ceiling = hard
    new = min(want, ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, max(new, hard)))
    except (ValueError, OSError):  # not root: the soft limit up to the hard one
        new = min(new, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def amain(args: argparse.Namespace) -> int:
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.peers}
    for run in range(args.runs):
        for n in args.peers:  # sizes interleaved run by run
            t0 = time.perf_counter()
            r = await run_once(n, run, args)
            runs[n].append(r)
            print(f"  run {run + 1}/{args.runs} N={n}: {time.perf_counter() - t0:.0f} s, "
                  f"connected {r.get('connected')}, relay {_fmt(r.get('relay_per_s'), '.0f')}"
                  f"/s, p99 {_fmt(r.get('latency_p99_ms'), '.1f')} ms, "
                  f"{_fmt(r.get('kib_per_conn'), '.1f')} KiB/conn"
                  + (f", ERROR {r['error']}" if "error" in r else ""), file=sys.stderr)
    summaries = [summarize(n, rs) for n, rs in runs.items()]
    if args.json:
        print(json.dumps({"summary": summaries, "runs": runs}, indent=2, default=str))
    print_table(summaries, runs, args)
    return 0 if all(s["ok_runs"] == s["runs"] for s in summaries) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[1000, 10000],
                        help="concurrent peer counts to measure (default: 1000 10000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print JSON")
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--window", type=int, default=4,
                        help="relays in flight per peer at saturation")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="offered relays/s of the latency figure")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds of the latency and saturation figures")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="idle seconds before the memory reading")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for one peer's connect + register + join")
    parser.add_argument("--profile-server", metavar="DIR",
                        help="run the server under cProfile, .prof files into DIR")
    parser.add_argument("--server-cmd", metavar="CMD",
                        help="run this instead of 'python -m lt_punch signal serve' (a "
                        "patched server, say); it gets --host 127.0.0.1 --port 0 --no-dht "
                        "and must print '... listening on ws://HOST:PORT' first")
    args = parser.parse_args()
    if min(args.peers) < 2 or args.room_size < 2 or args.runs < 1 or args.window < 1:
        parser.error("need --peers >= 2, --room-size >= 2, --runs >= 1, --window >= 1")
    if args.profile_server:
        os.makedirs(args.profile_server, exist_ok=True)
    limit = raise_fd_limit(2 * max(args.peers) + 4096)
    if limit < max(args.peers) + 100:
        print(f"fd limit {limit} is too low for {max(args.peers)} peers", file=sys.stderr)
        return 2
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
