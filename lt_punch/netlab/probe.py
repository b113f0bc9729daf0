"""Small network probes that the lab runs *inside* namespaces (``python -m ...probe``).

Subcommands (each prints one JSON line on stdout):

* ``stun-wait [--timeout S] IP:PORT...`` - send STUN Binding requests (RFC 5389 section 6)
  to every target until each has answered; exit 1 when the deadline passes first.
* ``tcp-wait [--timeout S] IP:PORT...`` - connect to every target until each accepts;
  exit 1 when the deadline passes first.
* ``classify --bind IP --server IP [--port N] [--timeout S]`` - pystun3's RFC 3489
  classification from a socket bound to the given (real, not wildcard) address.
* ``discover --count N IP:PORT...`` - :func:`lt_punch.nat.discover.discover_nat` N times
  in a row, one JSON line (``NATInfo.to_dict()``) per run.
* ``udp-recv --bind IP --port N --duration S [--idle S]`` - count datagrams received.
* ``udp-send --to IP:PORT --count N [--bind IP --port N] [--interval S] [--end-markers N]``
  - send datagrams (then N end markers, which stop ``udp-recv``).
* ``dns-sink --bind IP [--port N]`` - a DNS server that never answers: prints
  ``{"ready": true}``, then ``{"query": NAME}`` for each query until killed.

Kept free of lab logic so that a test can also run these by hand with ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def stun_wait(targets: Sequence[tuple[str, int]], timeout: float) -> int:
    """Poll every target with Binding requests until all answered or the deadline passed."""
    deadline = time.monotonic() + timeout
    pending = {t: os.urandom(12) for t in targets}
    answered: dict[str, float] = {}
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        while pending and time.monotonic() < deadline:
            for target, tid in pending.items():
                # RFC 5389 section 6: type, length 0, magic cookie, 96-bit transaction id.
                sock.sendto(struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + tid, target)
            until = time.monotonic() + 0.1
            while pending and time.monotonic() < until:
                try:
                    data, addr = sock.recvfrom(2048)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if len(data) < 20:
                    continue
                mtype, _, cookie = struct.unpack("!HHI", data[:8])
                for target, tid in list(pending.items()):
                    if mtype == BINDING_SUCCESS and cookie == MAGIC_COOKIE and data[8:20] == tid:
                        del pending[target]
                        answered[f"{target[0]}:{target[1]}"] = round(time.monotonic() - start, 3)
    _emit({"answered": answered, "missing": [f"{h}:{p}" for h, p in pending]})
    return 0 if not pending else 1


def classify(bind: str, server: str, port: int, timeout: float) -> int:
    """Run pystun3's classification from a socket bound to ``bind`` (an ephemeral port)."""
    import stun  # pystun3; imported here so the other probes work without it

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((bind, 0))
        source_ip, source_port = sock.getsockname()
        nat_type, info = stun.get_nat_type(
            sock, source_ip, source_port, stun_host=server, stun_port=port
        )
    _emit({
        "nat_type": nat_type,
        "source": [source_ip, source_port],
        "external": [info.get("ExternalIP"), info.get("ExternalPort")],
    })
    return 0


END = b"ltp end"
"""The end marker ``udp-send --end-markers N`` sends after its numbered datagrams."""


def udp_recv(bind: str, port: int, duration: float, idle: float | None = None) -> int:
    """Count datagrams arriving on ``bind:port`` (end markers excluded).

    Stops at the first end marker, after ``duration`` seconds, or ``idle`` seconds after
    the last datagram once one has arrived. Prints ``{"ready": true}`` as soon as the
    socket is bound.
    """
    count = 0
    sources: set[str] = set()
    deadline = time.monotonic() + duration
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((bind, port))
        _emit({"ready": True})
        while (left := deadline - time.monotonic()) > 0:
            if count and idle is not None:
                left = min(left, idle)
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            if data == END:
                break
            count += 1
            sources.add(f"{addr[0]}:{addr[1]}")
    _emit({"received": count, "sources": sorted(sources)})
    return 0


def udp_send(
    to: tuple[str, int], count: int, bind: str, port: int, interval: float,
    end_markers: int = 0,
) -> int:
    """Send ``count`` numbered datagrams to ``to``, then ``end_markers`` end markers (so
    that a receiver on a lossy path knows the end without guessing from silence)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, port))
        for i in range(count):
            sock.sendto(b"ltp %d" % i, to)
            if interval:
                time.sleep(interval)
        for _ in range(end_markers):
            sock.sendto(END, to)
        _emit({"sent": count, "from": list(sock.getsockname())})
    return 0


def discover(servers: list[tuple[str, int]], count: int) -> int:
    """Run NAT discovery ``count`` times; one JSON line each."""
    import asyncio

    from lt_punch.nat.discover import discover_nat

    async def run() -> None:
        for _ in range(count):
            info = await discover_nat(servers)
            _emit(info.to_dict())

    asyncio.run(run())
    return 0


def tcp_wait(targets: Sequence[tuple[str, int]], timeout: float) -> int:
    """Connect to each target until it accepts (a server that is starting); 0 when all
    did within ``timeout`` seconds, else 1."""
    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting:
        with socket.socket() as sock:
            sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            if sock.connect_ex(waiting[0]) == 0:
                waiting.pop(0)
                continue
        if time.monotonic() >= deadline:
            _emit({"listening": False, "waiting": [f"{h}:{p}" for h, p in waiting]})
            return 1
        time.sleep(0.02)  # refused at once: the server is not listening yet
    _emit({"listening": True})
    return 0


def query_name(data: bytes) -> str | None:
    """The first question's name of a DNS message (RFC 1035 4.1.2), None when it does
    not parse (no compression in questions of queries)."""
    labels = []
    at = 12
    try:
        while (size := data[at]) != 0:
            if size > 63:
                return None
            labels.append(data[at + 1:at + 1 + size].decode("ascii"))
            at += 1 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return ".".join(labels)


def dns_sink(bind: str, port: int) -> int:
    """Read DNS queries on ``bind:port`` and never answer (a resolver that hangs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, port))
        _emit({"ready": True})
        while True:
            data, _ = sock.recvfrom(4096)
            _emit({"query": query_name(data)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lt_punch.netlab.probe``."""
    parser = argparse.ArgumentParser(prog="lt_punch.netlab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stun-wait")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("targets", nargs="+", type=_endpoint)
    p = sub.add_parser("tcp-wait")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("targets", nargs="+", type=_endpoint)
    p = sub.add_parser("classify")
    p.add_argument("--bind", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=3478)
    p.add_argument("--timeout", type=float, default=0.3)
    p = sub.add_parser("discover")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("servers", nargs="+", type=_endpoint)
    p = sub.add_parser("udp-recv")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--idle", type=float, default=None)
    p = sub.add_parser("udp-send")
    p.add_argument("--to", type=_endpoint, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--end-markers", type=int, default=0)
    p = sub.add_parser("dns-sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=53)
    args = parser.parse_args(argv)
    if args.cmd == "stun-wait":
        return stun_wait(args.targets, args.timeout)
    if args.cmd == "tcp-wait":
        return tcp_wait(args.targets, args.timeout)
    if args.cmd == "classify":
        return classify(args.bind, args.server, args.port, args.timeout)
    if args.cmd == "discover":
        return discover(args.servers, args.count)
    if args.cmd == "dns-sink":
        return dns_sink(args.bind, args.port)
    if args.cmd == "udp-recv":
        return udp_recv(args.bind, args.port, args.duration, args.idle)
    return udp_send(args.to, args.count, args.bind, args.port, args.interval, args.end_markers)


if __name__ == "__main__":
    sys.exit(main())
