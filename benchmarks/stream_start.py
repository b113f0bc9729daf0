"""Launch to first byte of a stream: `lt-punch stream`, webtorrent-cli and peerflix on the
same seeder, in the same run.

A stock libtorrent 2.1.1 seeder on loopback, its upload capped (``--rate-mb``, 4 MB/s
by default), seeds a ~49 MB MP4 whose index (moov) is at the end. Each client gets the
magnet with the seeder in ``x.pe`` (peerflix, which ignores ``x.pe``, also gets it
with ``--peer``); interleaved runs, a fresh seeder session per run
(so no client benefits from another's unchoke). Per client and run:

* ``first byte``: from launching the client to the first 64 KiB of the file over its
  HTTP server (polling its URL every 20 ms until it answers);
* ``seek``: then a 64 KiB range at 80% of the file (not downloaded yet);
* ``416 ok``: whether an unsatisfiable range is answered with 416 (RFC 9110).

A rate-capped libtorrent seeder sends nothing between the ticks of its rate limiter
(every 0.5 s, counted from its own start): each of its answers (handshake, extension
handshake, metadata) waits for the next tick, so every client's first byte falls on a
tick and a client that connects a little later loses a whole tick. Each client is
therefore launched a random 0-0.5 s after its seeder is ready (the same delays for
every client, from ``--seed``), and the mean over runs is what a client's start-up is
worth; ``--rate-mb 0`` (no cap) measures the start-up alone.

webtorrent-cli 4 and peerflix come from npm (installed under ~/.cache/ltp-bench on
first use, install scripts off: both fall back to pure-JS TCP).

    python benchmarks/stream_start.py --runs 5
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from lt_punch.netlab import stop_process
from lt_punch.torrent.maketorrent import make_torrent

NPM_DIR = Path.home() / ".cache" / "ltp-bench"
CHUNK = 64 << 10


def npm_bin(name: str) -> Path:
    path = NPM_DIR / "node_modules" / ".bin" / name
    if not path.exists():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "webtorrent-cli@4",
                        "peerflix"], cwd=NPM_DIR, check=True, capture_output=True,
                       timeout=900)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=duration=6.5:size=640x360:rate=25,noise=alls=18:allf=t",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=6.5", "-c:v", "libx264",
         "-preset", "ultrafast", "-qp", "0", "-c:a", "aac", str(path)],
        check=True, capture_output=True, timeout=120)


class Seeder:
    def __init__(self, torrent: bytes, data_dir: Path, rate: int) -> None:
        self.session = lt.session({
            "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
            "enable_upnp": False, "enable_natpmp": False,
            "allow_multiple_connections_per_ip": True})
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(lt.bdecode(torrent))
        atp.save_path = str(data_dir)
        self.handle = self.session.add_torrent(atp)
        # The torrent's own limit: the session's exempts peers on local networks.
        self.handle.set_upload_limit(rate)
        deadline = time.monotonic() + 30
        while not self.handle.status().is_seeding:
            if time.monotonic() > deadline:
                raise RuntimeError("seeder did not check its data")
            time.sleep(0.05)
        self.magnet = (f"magnet:?xt=urn:btih:{atp.ti.info_hash()}"
                       f"&x.pe=127.0.0.1:{self.session.listen_port()}")

    def close(self) -> None:
        self.session.pause()
        del self.session


def get(url: str, start: int, end: int, timeout: float = 60.0) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"Range": f"bytes={start}-{end}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_url(find: Callable[[], str | None], deadline: float) -> str:
    while time.monotonic() < deadline:
        url = find()
        if url:
            return url
        time.sleep(0.02)
    raise TimeoutError("no stream URL")


def listing_url(port: int, name: str) -> Callable[[], str | None]:
    """The file's URL from a server's listing page (webtorrent-cli, peerflix)."""
    def find() -> str | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            body = conn.getresponse().read().decode(errors="replace")
            conn.close()
        except OSError:
            return None
        for href in re.findall(r'href="([^"]+)"', body):
            if urllib.parse.unquote(href).endswith(name):
                return urllib.parse.urljoin(f"http://127.0.0.1:{port}/", href)
        return None
    return find


def run_client(kind: str, magnet: str, out: Path, size: int, data: bytes) -> dict[str, float]:
    port = free_port()
    name = "clip.mp4"
    if kind == "lt-punch":
        argv = [sys.executable, "-m", "lt_punch", "stream", magnet, "-o", str(out),
                "--port", str(port), "--isolated"]
    elif kind == "webtorrent-cli":
        argv = [str(npm_bin("webtorrent")), "download", magnet, "--out", str(out),
                "--port", str(port), "--quiet", "--keep-seeding"]
    else:
        # peerflix ignores a magnet's x.pe: it gets the seeder with --peer.
        peer = magnet.rsplit("x.pe=", 1)[1]
        argv = [str(npm_bin("peerflix")), magnet, "--path", str(out), "--port", str(port),
                "--peer", peer, "--hostname", "127.0.0.1", "--quiet"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        if kind == "lt-punch":
            assert proc.stdout is not None
            line = ""
            while not line.startswith("streaming"):
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("lt-punch stream exited")
            url = line.split(" at ", 1)[1].strip()
        elif kind == "peerflix":
            url = f"http://127.0.0.1:{port}/"
            wait_url(lambda: url if _answers(url) else None, started + 120)
        else:
            url = wait_url(listing_url(port, name), started + 120)
        status, body = get(url, 0, CHUNK - 1)
        first = time.monotonic() - started
        if body != data[:CHUNK]:
            raise RuntimeError(f"{kind}: wrong first bytes (HTTP {status})")
        at = int(size * 0.8)
        t = time.monotonic()
        status, body = get(url, at, at + CHUNK - 1)
        seek = time.monotonic() - t
        if body != data[at:at + CHUNK]:
            raise RuntimeError(f"{kind}: wrong bytes after the seek (HTTP {status})")
        status, _ = get(url, size + 10, size + 20, timeout=10)
        return {"first": first, "seek": seek, "416": float(status == 416)}
    finally:
        stop_process(proc)


def _answers(url: str) -> bool:
    try:
        status, _ = get(url, 0, 0, timeout=2)
    except OSError:
        return False
    return status in (200, 206)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate-mb", type=float, default=4.0)
    parser.add_argument("--clients", default="lt-punch,webtorrent-cli,peerflix")
    parser.add_argument("--seed", type=int, default=1, help="of the random launch delays")
    args = parser.parse_args()
    delays = random.Random(args.seed)
    clients = args.clients.split(",")
    results: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
    with tempfile.TemporaryDirectory(prefix="ltp-stream-start-") as tmp:
        base = Path(tmp)
        video = base / "seed" / "clip.mp4"
        make_video(video)
        data = video.read_bytes()
        torrent = make_torrent(video)
        for run in range(1, args.runs + 1):
            delay = delays.uniform(0.0, 0.5)
            for kind in clients:
                seeder = Seeder(torrent, video.parent, int(args.rate_mb * 1e6))
                time.sleep(delay)  # the seeder's tick phase: see the module's doc
                out = base / f"{kind}-{run}"
                out.mkdir()
                try:
                    r = run_client(kind, seeder.magnet, out, len(data), data)
                    results[kind].append(r)
                    print(f"run {run} {kind:15} first byte {r['first']:6.2f} s  seek "
                          f"{r['seek']:6.3f} s  416 {'yes' if r['416'] else 'no'}",
                          flush=True)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    print(f"run {run} {kind:15} failed: {exc}", flush=True)
                finally:
                    seeder.close()
                    shutil.rmtree(out, ignore_errors=True)
    cap = f"capped at {args.rate_mb:g} MB/s" if args.rate_mb else "not capped"
    print(f"\n{len(data) / 1e6:.1f} MB MP4 (moov at the end), seeder {cap}; "
          f"{args.runs} interleaved runs: first byte mean (median), seek median")
    for kind, rows in results.items():
        if not rows:
            print(f"{kind:15} no run succeeded")
            continue
        print(f"{kind:15} first byte {statistics.mean(r['first'] for r in rows):6.2f} s "
              f"({statistics.median(r['first'] for r in rows):.2f} s)  "
              f"seek {statistics.median(r['seek'] for r in rows):6.3f} s  "
              f"416 for a bad range: {'yes' if all(r['416'] for r in rows) else 'no'}  "
              f"({len(rows)}/{args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
