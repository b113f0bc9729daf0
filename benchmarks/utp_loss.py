"""libtorrent's own uTP under random loss, without NATs or lt_punch: does it freeze?

Two stock libtorrent sessions (no DHT, LSD, UPnP) in a fresh network namespace, a seed
and a leech on its loopback, ``--size-mb`` of random data. Once the leech has 1 MB,
nftables drops ``--loss`` percent of the UDP (or TCP) packets on the namespace's input
hook (a silent drop: the output hook would fail ``sendto()`` with EPERM, which
libtorrent takes for a dead connection). Reports, per transport, what the leech had
after ``--seconds`` and whether it finished. Runs alternate uTP-only and TCP-only
sessions. Needs root.

    sudo .venv/bin/python benchmarks/utp_loss.py --runs 3 --loss 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

# The run inside the namespace (this file run with --inside): both sessions, the loss
# switched on, progress sampled every 0.1 s; one JSON line out.
INSIDE = "--inside"


def inside(transport: str, loss: int, size_mb: int, seconds: float, rate: int,
           extra: dict[str, object]) -> None:
    import libtorrent as lt

    tmp = tempfile.mkdtemp(prefix="utp-loss-", dir="/dev/shm")
    with open(f"{tmp}/data.bin", "wb") as f:
        f.write(os.urandom(size_mb << 20))
    fs = lt.file_storage()
    lt.add_files(fs, f"{tmp}/data.bin")
    ct = lt.create_torrent(fs, 0)
    lt.set_piece_hashes(ct, tmp)
    info = lt.torrent_info(ct.generate())
    utp = transport == "utp"
    arq = transport == "arq"
    base = {"enable_dht": False, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "allow_multiple_connections_per_ip": True,
            "min_reconnect_time": 1, "enable_outgoing_tcp": not utp,
            "enable_incoming_tcp": not utp, "enable_outgoing_utp": utp,
            "enable_incoming_utp": utp, **extra}
    seed = lt.session({**base, "listen_interfaces": "127.0.0.1:6881"})
    leech = lt.session({**base, "listen_interfaces": "127.0.0.1:6882"})
    s = seed.add_torrent(_params(lt, info, tmp))
    s.set_upload_limit(rate)
    os.makedirs(f"{tmp}/leech")
    h = leech.add_torrent(_params(lt, lt.torrent_info(info), f"{tmp}/leech"))
    while not s.status().is_seeding:  # a checking seed closes connections at once
        time.sleep(0.05)
    dial = ("127.0.0.1", 6881)
    if arq:
        dial = _arq_tunnel(("127.0.0.1", 6881))
    started = time.monotonic()
    loss_at = None
    done_at = None
    while time.monotonic() - started < 60:
        st = h.status()
        if st.num_peers == 0:
            h.connect_peer(dial)
        if loss_at is None and st.total_wanted_done >= 1 << 20:
            rule = (f"table inet loss {{\n chain in {{\n  type filter hook input priority 0;\n"
                    f"  meta l4proto {'udp' if utp or arq else 'tcp'} numgen random mod 100"
                    f" < {loss}"
                    f" drop\n }}\n}}\n")
            subprocess.run(["nft", "-f", "-"], input=rule, text=True, check=True)
            loss_at, loss_bytes = time.monotonic(), st.total_wanted_done
        if st.is_seeding:
            done_at = time.monotonic()
            break
        if loss_at is not None and time.monotonic() - loss_at >= seconds:
            break
        time.sleep(0.1)
    st = h.status()
    print(json.dumps({
        "transport": transport, "finished": done_at is not None,
        "after_loss_mb": (st.total_wanted_done - (loss_bytes if loss_at else 0)) / 1e6,
        "seconds": (done_at or time.monotonic()) - (loss_at or started),
    }))
    subprocess.run(["rm", "-rf", tmp], check=False)


def _arq_tunnel(seed: tuple[str, int]) -> tuple[str, int]:
    """lt_punch's loss-tolerant stream between two UDP sockets on loopback, in a thread:
    a TCP connection to the returned endpoint (the leech's) is carried to ``seed``."""
    import asyncio
    import random
    import threading

    from lt_punch.punch.arq import ArqSocket

    ready: list[tuple[str, int]] = []
    started = threading.Event()

    async def run() -> None:
        sid = random.getrandbits(32)
        near = await ArqSocket.open(sid, ("127.0.0.1", 0))
        far = await ArqSocket.open(sid, ("127.0.0.1", 0))
        near.peer, far.peer = far.local, near.local

        joined = asyncio.Event()

        async def entry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if server.is_serving():  # one connection a tunnel
                server.close()
                joined.set()
                await near.stream.join(reader, writer)
            else:
                writer.close()

        server = await asyncio.start_server(entry, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[:2])
        started.set()
        # The far end dials the seed once the leech is in (as the relay does: a
        # session that has only just started closes a connection at once).
        await joined.wait()
        reader, writer = await asyncio.open_connection(*seed)
        await far.stream.join(reader, writer)

    threading.Thread(target=lambda: asyncio.run(run()), daemon=True).start()
    started.wait(10)
    return ready[0]


def _params(lt, info, save_path):  # type: ignore[no-untyped-def]
    atp = lt.add_torrent_params()
    atp.ti = info
    atp.save_path = save_path
    return atp


def _settings(pairs: list[str]) -> dict[str, object]:
    """``NAME=VALUE`` pairs as libtorrent settings: integers, true/false, else strings."""
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set wants NAME=VALUE, got {pair!r}")
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[name] = lowered == "true"
        else:
            try:
                out[name] = int(value)
            except ValueError:
                out[name] = value
    return out


def one(transport: str, args: argparse.Namespace) -> dict[str, object]:
    ns = f"ltp-utploss-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up", "mtu", "1500"], check=True)
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-W", "ignore", __file__, INSIDE, transport,
             str(args.loss), str(args.size_mb), str(args.seconds), str(args.rate),
             json.dumps(_settings(args.set))],
            capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == INSIDE:
        transport, loss, size, seconds, rate, extra = sys.argv[2:8]
        inside(transport, int(loss), int(size), float(seconds), int(rate), json.loads(extra))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loss", type=int, default=10, help="percent of packets dropped")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long the loss lasts before the run ends")
    parser.add_argument("--rate", type=int, default=8_000_000,
                        help="the seed's upload limit, bytes/s (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a libtorrent setting for both sessions (integers and "
                             "true/false), e.g. utp_num_resends=10; repeatable")
    parser.add_argument("--transport", action="append", choices=("utp", "tcp", "arq"),
                        help="run only this transport (repeatable; default all three; "
                             "arq: TCP sessions joined by lt_punch's loss-tolerant stream "
                             "over UDP, the loss on the UDP)")
    args = parser.parse_args()
    try:
        _settings(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, object]]] = {
        t: [] for t in (args.transport or ("utp", "tcp", "arq"))}
    for run in range(1, args.runs + 1):
        for transport in results:
            r = one(transport, args)
            results[transport].append(r)
            print(f"run {run} {transport}: {r['after_loss_mb']:7.2f} MB in "
                  f"{r['seconds']:5.1f} s of {args.loss}% loss"
                  + (" (finished)" if r["finished"] else ""), flush=True)
    print(f"\n{args.loss}% loss on input, {args.size_mb} MB, seed capped at "
          f"{args.rate / 1e6:g} MB/s; medians of {args.runs}"
          + (f"; settings {', '.join(args.set)}" if args.set else ""))
    for transport, rows in results.items():
        rate = statistics.median(float(r["after_loss_mb"]) / float(r["seconds"])  # type: ignore[arg-type]
                                 for r in rows)
        done = sum(bool(r["finished"]) for r in rows)
        print(f"{transport}: {rate:6.2f} MB/s under loss, finished {done}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
