"""Two lt_punch peers behind emulated NATs download one torrent: the lab scenario.

Used by the lab tests, ``lt-punch demo --lab`` and ``benchmarks/punch_connect.py``.
The signaling server (with its DHT reflector) and coturn run in the lab's server
namespace; the seed and the leech each run :mod:`lt_punch.netlab.agent` in their
host namespace. Only the signaling room is a peer source: no tracker, no DHT
bootstrap, no LSD.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LabError, LtTimeoutError
from .lab import NatLab, lab_unavailable_reason
from .rules import TURN_PORT

SIGNAL_PORT = 8765


@dataclass
class PairResult:
    """What one run of the scenario measured."""

    kinds: tuple[str, str]
    methods: tuple[str, ...]
    size: int
    ok: bool = False
    method: str | None = None
    time_to_connect: float | None = None
    transfer_time: float | None = None
    sha_ok: bool = False
    leech_events: list[dict[str, Any]] = field(default_factory=list)
    seed_events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Payload bytes per second from the first connection to the finish."""
        if not self.transfer_time or self.transfer_time <= 0:
            return None  # finished before the punch was reported (a tiny torrent)
        return self.size / self.transfer_time

    def leech_stats(self) -> dict[str, Any] | None:
        return _last_stats(self.leech_events)

    def seed_stats(self) -> dict[str, Any] | None:
        return _last_stats(self.seed_events)


def _last_stats(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for ev in reversed(events):
        if ev.get("event") == "stats":
            stats: dict[str, Any] = ev["stats"]
            return stats
    return None


_BUFFERS: weakref.WeakKeyDictionary[subprocess.Popen[Any], bytearray] = (
    weakref.WeakKeyDictionary()
)


def next_line(proc: subprocess.Popen[Any], deadline: float) -> str | None:
    """The next line ``proc`` wrote on stdout, None at end of file.

    Reads the pipe with ``os.read`` into a buffer of our own: a buffered ``readline()``
    after ``select()`` can swallow two lines at once and then wait in ``select()`` for
    data that already arrived (it did: a ``punched`` event 0.5 ms after ``ready`` was
    seen only when the process exited). Use this for every read of ``proc``.

    Raises:
        LtTimeoutError: ``deadline`` (``time.monotonic()``) passed first.
    """
    assert proc.stdout is not None
    buf = _BUFFERS.setdefault(proc, bytearray())
    fd = proc.stdout.fileno()
    while True:
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            return line.decode(errors="replace")
        left = deadline - time.monotonic()
        if left <= 0:
            raise LtTimeoutError("no output line in time")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            rest = bytes(buf).decode(errors="replace")
            buf.clear()
            return rest or None
        buf += chunk


def read_events(
    proc: subprocess.Popen[str], until: str | tuple[str, ...], timeout: float,
    sink: list[dict[str, Any]],
) -> dict[str, Any]:
    """The first event named in ``until``: from ``sink`` when already read, else read on.

    Every JSON line read from ``proc`` is appended to ``sink``.
    """
    names = (until,) if isinstance(until, str) else until
    for ev in sink:  # already read while waiting for another event
        if ev.get("event") in names:
            return dict(ev)
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = next_line(proc, deadline)
        except LtTimeoutError:
            raise LtTimeoutError(f"no {until!r} event within {timeout:g} s") from None
        if line is None:
            raise LabError(f"process exited (code {proc.poll()}) before {until!r}")
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # stray output (e.g. a library's log line)
        sink.append(ev)
        if ev.get("event") in names:
            return dict(ev)
        if ev.get("event") == "error" and "error" not in names:
            raise LabError(f"agent error: {ev.get('message')}")


def read_line(proc: subprocess.Popen[Any], prefix: str, timeout: float) -> str:
    """The first line of ``proc``'s stdout that starts with ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = next_line(proc, deadline)
        except LtTimeoutError:
            raise LtTimeoutError(
                f"no line starting with {prefix!r} within {timeout:g} s") from None
        if line is None:
            raise LabError(f"process exited (code {proc.poll()}) before {prefix!r}")
        if line.startswith(prefix):
            return line


TURN_USER = "lt-punch"
TURN_PASSWORD = "lab-turn-password"
"""The long-term account of the lab's TURN server (:func:`run_pair` ``turn=``)."""
TURN_SECRET = "lab-rest-api-secret"
"""The shared secret of the lab's REST API TURN server (``turn_secret=``)."""


def start_signaling(lab: NatLab) -> subprocess.Popen[str]:
    ip = lab.server_ips[0]
    proc = lab.popen(
        "server",
        [sys.executable, "-m", "lt_punch", "signal", "serve", "--host", ip,
         "--port", str(SIGNAL_PORT), "--dht-port", str(SIGNAL_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    read_line(proc, "signaling server listening", 15.0)
    return proc


def start_agent(
    lab: NatLab, side: str, role: str, *, url: str, stun: tuple[str, int], torrent: Path,
    save: Path, peer_id: str | None = None, extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """:mod:`lt_punch.netlab.agent` as ``role`` on ``side``, its JSON events on stdout;
    ``extra`` are more agent options (``peer_id`` None: a random one). It stops when
    its stdin closes."""
    argv = [sys.executable, "-m", "lt_punch.netlab.agent", "--role", role,
            "--signal", url, "--stun", f"{stun[0]}:{stun[1]}", "--torrent", str(torrent),
            "--save", str(save), *(["--peer-id", peer_id] if peer_id else []), *extra]
    return lab.popen(side, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, env=env)


def make_payload(workdir: Path, size: int) -> tuple[Path, str]:
    from ..torrent.maketorrent import make_torrent, write_random_file

    payload = workdir / "seed" / "payload.bin"
    sha = write_random_file(payload, size)
    torrent = workdir / "payload.torrent"
    torrent.write_bytes(make_torrent(payload, piece_size=1 << 20))
    return torrent, sha


def nat_pairs(wanted: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The unordered pairs of lab NAT kinds (``open/open`` ... ``symmetric/symmetric``),
    or only those named in ``wanted`` (``"full/symmetric"``, in that order of kinds).

    Raises:
        ConfigError: a name that is not such a pair.
    """
    from . import NAT_KINDS

    pairs = list(itertools.combinations_with_replacement(NAT_KINDS, 2))
    if not wanted:
        return pairs
    chosen = {tuple(p.split("/")) for p in wanted}
    unknown = chosen - set(pairs)
    if unknown:
        raise ConfigError(f"unknown pair(s) {sorted('/'.join(p) for p in unknown)}; "
                          f"kinds in the order {'/'.join(NAT_KINDS)}")
    return [p for p in pairs if p in chosen]


def bench_pairs(parser: argparse.ArgumentParser, wanted: Sequence[str] = ()
                ) -> list[tuple[str, str]]:
    """For a lab benchmark: :func:`nat_pairs` of its ``--pair`` values. Exits with
    status 2 and the reason when the lab cannot run here, and through ``parser.error``
    on a pair that is not one."""
    reason = lab_unavailable_reason()
    if reason:
        sys.stderr.write(f"lab unavailable: {reason}\n")
        raise SystemExit(2)
    try:
        return nat_pairs(wanted)
    except ConfigError as exc:
        parser.error(str(exc))


def run_pair(
    lab: NatLab,
    *,
    seed_side: str,
    leech_side: str,
    size: int = 20 << 20,
    methods: tuple[str, ...] = ("utp", "tcp"),
    timeout: float = 90.0,
    connection_timeout: float = 10.0,
    tmp_root: str | None = None,
    turn: Sequence[str] = (),
    turn_password: str = TURN_PASSWORD,
    turn_secret: str | None = None,
) -> PairResult:
    """Seed on ``seed_side``, download on ``leech_side``; the lab must be open.

    Starts coturn and the signaling server when not already running in ``lab``. The
    payload and the download live in a fresh temporary directory under ``tmp_root``
    (the system's default when None), removed at the end. The sides in ``turn`` get the
    lab's TURN server (started when needed; user :data:`TURN_USER`) with
    ``turn_password`` (another one than :data:`TURN_PASSWORD` is refused), or with
    ``turn_secret`` a TURN server of coturn's REST API credentials (secret
    :data:`TURN_SECRET`, on its own port) and that secret.
    """
    kinds = (lab.host(seed_side).kind, lab.host(leech_side).kind)
    result = PairResult(kinds, methods, size)
    tmp = tempfile.TemporaryDirectory(prefix="ltp-pair-", dir=tmp_root)
    base = Path(tmp.name)
    try:
        stun = getattr(lab, "_ltp_stun", None) or lab.start_stun()
        lab._ltp_stun = stun  # type: ignore[attr-defined]
        if getattr(lab, "_ltp_signal", None) is None:
            lab._ltp_signal = start_signaling(lab)  # type: ignore[attr-defined]
        turn_server = None
        if turn and turn_secret is not None:
            turn_server = getattr(lab, "_ltp_turn_rest", None) or lab.start_turn(
                secret=TURN_SECRET, port=TURN_PORT + 1)
            lab._ltp_turn_rest = turn_server  # type: ignore[attr-defined]
        elif turn:
            turn_server = getattr(lab, "_ltp_turn", None) or lab.start_turn(
                users=[f"{TURN_USER}:{TURN_PASSWORD}"])
            lab._ltp_turn = turn_server  # type: ignore[attr-defined]
        torrent, sha = make_payload(base, size)
        url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"

        def agent(side: str, role: str, save: Path) -> subprocess.Popen[str]:
            extra = ["--udp-port", str(SIGNAL_PORT), "--methods", ",".join(methods),
                     "--timeout", str(timeout),
                     "--connection-timeout", str(connection_timeout)]
            env = None
            if side in turn and turn_server is not None:
                extra += ["--turn", f"{turn_server[0]}:{turn_server[1]}",
                          "--turn-user", TURN_USER]
                env = {**os.environ, "LTP_TURN_PASSWORD": turn_password}
                if turn_secret is not None:
                    env = {**os.environ, "LTP_TURN_SECRET": turn_secret}
            return start_agent(lab, side, role, url=url, stun=stun, torrent=torrent,
                               save=save, peer_id=f"{role}-{side}", extra=extra, env=env)

        seed = agent(seed_side, "seed", torrent.parent / "seed")
        try:
            read_events(seed, "ready", 30.0, result.seed_events)
            leech = agent(leech_side, "leech", base / "leech")
            try:
                read_events(leech, "ready", 30.0, result.leech_events)
                punched = read_events(leech, ("punched", "punch-failed"), timeout,
                                      result.leech_events)
                if punched["event"] == "punch-failed":
                    raise LabError(f"punch failed: {punched.get('reason')}")
                result.method = punched.get("method")
                result.time_to_connect = punched.get("time_to_connect")
                finished = read_events(leech, "done", timeout, result.leech_events)
                # libtorrent's finish (the session's ``finished`` event), not the
                # verification that follows it.
                lt_done = next((e["t"] for e in result.leech_events
                                if e.get("event") == "finished"), finished["t"])
                result.transfer_time = lt_done - punched["t"]
                result.sha_ok = finished.get("sha256") == sha
                read_events(leech, "stats", 30.0, result.leech_events)
                result.ok = result.sha_ok
            except (LabError, LtTimeoutError) as exc:
                result.error = str(exc)
            finally:
                lab.stop(leech)
        finally:
            if seed.stdin is not None:
                seed.stdin.close()
            try:
                read_events(seed, "stats", 15.0, result.seed_events)
            except (LabError, LtTimeoutError):
                pass
            lab.stop(seed)
    finally:
        tmp.cleanup()
    return result
