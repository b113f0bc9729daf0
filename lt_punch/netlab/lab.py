"""The NAT lab shell: builds namespaces, veths and nftables rules, runs processes in them.

The plan (names, addresses, rulesets) comes from :mod:`lt_punch.netlab.rules`; this module
only runs ``ip``, ``nft``, ``sysctl`` and ``turnserver`` and cleans up after them.

Topology (side index ``i`` starts at 1)::

    server ns  203.0.113.1 + .2 ──┐
                                  │  internet ns: bridge br0 (+ packet loss per port)
    router ns r<i>  wan 203.0.113.(10+i) ──┤
      lan 10.i.0.1 ── host ns h<i> 10.i.0.2 (default route via the router)
    open host ns h<j>  203.0.113.(10+j) ──┘

Every name carries the creating pid, so :func:`cleanup_stale` can remove labs whose
creator died without tearing down.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import ConfigError, LabError, LtTimeoutError
from . import rules
from .rules import LabPlan, SidePlan

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0
"""Seconds any single setup or teardown command may take."""

STOP_GRACE = 3.0
"""Seconds a process gets between SIGTERM and SIGKILL at teardown."""

SERVER = "server"
"""Side name that designates the server namespace in :meth:`NatLab.run` and friends."""

NETNS_ETC = "/etc/netns"
"""Per-namespace files ``ip netns exec`` mounts over ``/etc`` (iproute2)."""


@dataclass(frozen=True)
class LabHost:
    """One side of a running lab, as callers see it."""

    name: str
    """The caller's name for the side."""
    ns: str
    """Namespace of the host (where the application runs)."""
    kind: str
    """One of :data:`~lt_punch.netlab.rules.NAT_KINDS`."""
    lan_ip: str
    """The host's own address (bind sockets here)."""
    public_ip: str
    """The address the internet sees (router WAN, or the host itself for ``open``)."""
    router_ns: str | None
    """Namespace of the NAT router, None for ``open``."""


def _run_cmd(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a setup command; raise :class:`LabError` with its stderr when it fails."""
    logger.debug("> %s", " ".join(argv))
    try:
        result = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise LabError(
            f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result


def tbf_argv(dev: str, mbit: float, latency_ms: int = 20) -> list[str]:
    """``tc`` command line that shapes what ``dev`` sends to ``mbit`` Mbit/s (a token
    bucket; queued packets wait at most ``latency_ms``).

    Raises:
        ConfigError: a rate or latency that is not positive.
    """
    if mbit <= 0 or latency_ms <= 0:
        raise ConfigError(f"shape: bad rate {mbit!r} Mbit/s or latency {latency_ms!r} ms")
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit",
            "burst", "128kb", "latency", f"{latency_ms}ms"]


def lab_unavailable_reason() -> str | None:
    """Return None when the lab can be built here, else a one-line reason.

    Checks: running as root, ``ip``, ``nft`` and ``turnserver`` on PATH, and that a network
    namespace with an nftables table can actually be created.
    """
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces and nftables)"
    for tool in ("ip", "nft", "turnserver"):
        if shutil.which(tool) is None:
            return f"{tool!r} not found on PATH"
    name = rules.ns_name(os.getpid(), "chk" + secrets.token_hex(2), "chk")
    try:
        _run_cmd(["ip", "netns", "add", name])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run_cmd(
            ["ip", "netns", "exec", name, "nft", "-f", "-"],
            input_text=(
                "table ip ltp_check {\n\tchain c {\n"
                "\t\ttype nat hook postrouting priority srcnat;\n\t\tmasquerade\n\t}\n}\n"
            ),
        )
    except LabError as exc:
        return f"nftables NAT does not work in a namespace: {exc}"
    finally:
        _run_cmd(["ip", "netns", "del", name], check=False)
    return None


def list_lab_namespaces() -> list[str]:
    """Return the names of all namespaces that look like lab namespaces."""
    result = _run_cmd(["ip", "netns", "list"])
    names = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and rules.parse_ns_name(fields[0]) is not None:
            names.append(fields[0])
    return names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL every process still inside ``ns`` (they would keep it alive)."""
    result = _run_cmd(["ip", "netns", "pids", ns], check=False)
    for token in result.stdout.split():
        try:
            os.kill(int(token), signal.SIGKILL)
            logger.info("killed leftover process %s in %s", token, ns)
        except (ValueError, ProcessLookupError):
            pass


def delete_namespaces(names: Sequence[str]) -> list[str]:
    """Kill processes inside the namespaces and delete them; return errors (empty when fine).

    Deleting a namespace removes its veths (and their peers in other namespaces).
    """
    errors = []
    for ns in names:
        _kill_ns_processes(ns)
    for ns in names:
        result = _run_cmd(["ip", "netns", "del", ns], check=False)
        if result.returncode != 0 and "No such file" not in result.stderr:
            errors.append(f"ip netns del {ns}: {result.stderr.strip()}")
        # Files there (a resolv.conf: NatLab.hang_dns) outlive the namespace otherwise.
        shutil.rmtree(os.path.join(NETNS_ETC, ns), ignore_errors=True)
    return errors


def cleanup_stale(*, include_alive: bool = False) -> list[str]:
    """Delete lab namespaces whose creating process is dead; return their names.

    Args:
        include_alive: also delete namespaces of running processes (``lt-punch lab cleanup
            --all``); never use this while labs are in use.
    """
    stale = []
    for name in list_lab_namespaces():
        parsed = rules.parse_ns_name(name)
        if parsed is None:
            continue
        pid = parsed[0]
        if include_alive or not _pid_alive(pid):
            stale.append(name)
    errors = delete_namespaces(stale)
    for error in errors:
        logger.warning("cleanup: %s", error)
    return stale


class NatLab:
    """An emulated internet with NATted sides, as a context manager.

    Example::

        with NatLab({"a": "port", "b": "symmetric"}, loss={"a": 5}) as lab:
            stun = lab.start_stun()
            lab.run("a", [sys.executable, "-c", "..."], timeout=10)

    Teardown (``__exit__`` / :meth:`close`) terminates every tracked process and deletes
    every namespace, also when the body or the setup raised.
    """

    def __init__(
        self,
        sides: dict[str, str],
        *,
        loss: dict[str, int] | None = None,
        mapping_timeout: int = rules.DEFAULT_MAPPING_TIMEOUT,
    ) -> None:
        """Plan the lab; nothing is built before :meth:`open` / ``__enter__``.

        Args:
            sides: side name -> NAT kind (one of :data:`~lt_punch.netlab.rules.NAT_KINDS`).
            loss: side name -> percent of packets dropped in each direction.
            mapping_timeout: seconds an EIF/ADF filter entry lives after the last outbound
                packet (``full`` and ``restricted`` routers).

        Raises:
            ConfigError: bad kinds or loss values.
        """
        self.plan: LabPlan = rules.plan_lab(
            sides, pid=os.getpid(), rand=secrets.token_hex(2), loss=loss
        )
        self._mapping_timeout = mapping_timeout
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self.turn_proc: subprocess.Popen[Any] | None = None
        """The last TURN server :meth:`start_turn` started."""
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._stun: tuple[str, int] | None = None
        self._closed = False

    # -- properties ----------------------------------------------------------------------

    @property
    def server_ips(self) -> tuple[str, str]:
        """The two addresses of the server namespace."""
        return self.plan.server_ips

    @property
    def server_ns(self) -> str:
        """Namespace of the server."""
        return self.plan.server_ns

    @property
    def namespaces(self) -> tuple[str, ...]:
        """All namespaces of this lab (created or planned)."""
        return self.plan.namespaces

    @property
    def sides(self) -> tuple[str, ...]:
        """Side names in the order given."""
        return tuple(side.name for side in self.plan.sides)

    def host(self, side: str) -> LabHost:
        """Return the host of ``side``.

        Raises:
            KeyError: no such side.
        """
        plan = self.plan.side(side)
        return LabHost(
            name=plan.name,
            ns=plan.host_ns,
            kind=plan.kind,
            lan_ip=plan.lan_ip,
            public_ip=plan.public_ip,
            router_ns=plan.router_ns,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> NatLab:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Build the namespaces, links, addresses and rules.

        Raises:
            LabError: a command failed (the message names it and carries its stderr); what
                was built so far is torn down first.
        """
        started = time.monotonic()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        logger.info(
            "lab %s up in %.2f s: %s",
            self.plan.token,
            time.monotonic() - started,
            ", ".join(f"{s.name}={s.kind}" for s in self.plan.sides),
        )

    def close(self) -> None:
        """Stop processes, delete namespaces and temporary files. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            stop_process(proc)
        self._procs.clear()
        errors = delete_namespaces(list(reversed(self._created)))
        self._created.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        for error in errors:
            logger.warning("teardown: %s", error)
        if errors:
            raise LabError("; ".join(errors))

    # -- building ------------------------------------------------------------------------

    def _add_ns(self, ns: str) -> None:
        _run_cmd(["ip", "netns", "add", ns])
        self._created.append(ns)
        _run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Quiet namespaces: no IPv6 autoconfiguration chatter on the links.
        self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
        self._sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        _run_cmd(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def _veth(self, ns1: str, if1: str, ns2: str, if2: str) -> None:
        # Created inside the namespaces: the names never exist in the root namespace, so
        # parallel labs cannot collide.
        _run_cmd(["ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2,
                  "netns", ns2])

    def _bridge_port(self, ns: str, ifname: str, port: str) -> None:
        """Link ``ifname`` in ``ns`` to a new port of the internet bridge."""
        inet = self.plan.internet_ns
        self._veth(ns, ifname, inet, port)
        _run_cmd(["ip", "-n", inet, "link", "set", port, "master", rules.BRIDGE_IF, "up"])

    def _addr(self, ns: str, ifname: str, cidr: str) -> None:
        _run_cmd(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])
        _run_cmd(["ip", "-n", ns, "link", "set", ifname, "up"])

    def _build(self) -> None:
        plan = self.plan
        inet = plan.internet_ns
        self._add_ns(inet)
        _run_cmd(["ip", "-n", inet, "link", "add", rules.BRIDGE_IF, "type", "bridge",
                  "stp_state", "0", "forward_delay", "0"])
        _run_cmd(["ip", "-n", inet, "link", "set", rules.BRIDGE_IF, "up"])

        self._add_ns(plan.server_ns)
        self._bridge_port(plan.server_ns, rules.HOST_IF, rules.SERVER_PORT_IF)
        for ip in plan.server_ips:
            self._addr(plan.server_ns, rules.HOST_IF, f"{ip}/24")

        for side in plan.sides:
            self._build_side(side)

        _run_cmd(
            ["ip", "netns", "exec", inet, "nft", "-f", "-"],
            input_text=rules.loss_ruleset({s.bridge_port: s.loss for s in plan.sides}),
        )
        for ns in self._created:
            self._steer_flows(ns)

    def _steer_flows(self, ns: str) -> None:
        """Turn on RPS for every veth of ``ns``: one receiving CPU per flow.

        A veth hands each packet to the backlog of the CPU that sent it; when the sender
        migrates between CPUs mid-stream, a flow that crosses a router (two such hand-offs)
        arrives reordered, and TCP takes the reordering for loss (spurious fast retransmits,
        cwnd cuts: ~0.2x of the rate on 2 cores). RPS steers a flow to one CPU by its hash,
        which keeps its order, as a real link would.
        """
        mask = format((1 << (os.cpu_count() or 1)) - 1, "x")
        script = (
            "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do "
            f'case $q in */lo/*) ;; *) echo {mask} > "$q" || exit 1 ;; esac; done'
        )
        # ``ip netns exec`` mounts the namespace's own /sys.
        _run_cmd(["ip", "netns", "exec", ns, "sh", "-c", script])

    def _build_side(self, side: SidePlan) -> None:
        if side.router_ns is None:
            self._add_ns(side.host_ns)
            self._bridge_port(side.host_ns, rules.HOST_IF, side.bridge_port)
            self._addr(side.host_ns, rules.HOST_IF, f"{side.public_ip}/24")
            return
        router = side.router_ns
        assert side.router_lan_ip is not None
        self._add_ns(router)
        self._add_ns(side.host_ns)
        self._bridge_port(router, rules.WAN_IF, side.bridge_port)
        self._addr(router, rules.WAN_IF, f"{side.public_ip}/24")
        self._veth(router, rules.LAN_IF, side.host_ns, rules.HOST_IF)
        self._addr(router, rules.LAN_IF, f"{side.router_lan_ip}/24")
        self._addr(side.host_ns, rules.HOST_IF, f"{side.lan_ip}/24")
        _run_cmd(["ip", "-n", side.host_ns, "route", "add", "default", "via", side.router_lan_ip])
        self._sysctl(router, "net.ipv4.ip_forward", "1")
        _run_cmd(
            ["ip", "netns", "exec", router, "nft", "-f", "-"],
            input_text=rules.router_ruleset(
                side.kind, host_ip=side.lan_ip, mapping_timeout=self._mapping_timeout
            ),
        )

    # -- running things ------------------------------------------------------------------

    def ns_of(self, side: str) -> str:
        """Return the namespace of ``side`` (a side name, or ``"server"``)."""
        if side == SERVER:
            return self.plan.server_ns
        return self.plan.side(side).host_ns

    def netns_argv(self, side: str, argv: Sequence[str]) -> list[str]:
        """Return ``argv`` prefixed to run inside the namespace of ``side`` (or ``"server"``)."""
        return ["ip", "netns", "exec", self.ns_of(side), *argv]

    def run(
        self,
        side: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``side``'s namespace and wait for it (text output captured).

        Raises:
            subprocess.CalledProcessError: non-zero exit and ``check``.
            subprocess.TimeoutExpired: it ran longer than ``timeout`` (it is killed).
        """
        return subprocess.run(
            self.netns_argv(side, argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, side: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``side``'s namespace; it is stopped at teardown.

        Keyword arguments go to :class:`subprocess.Popen`. The process gets its own session
        so teardown can signal everything it started.
        """
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.netns_argv(side, argv), **kwargs)
        self._procs.append(proc)
        logger.debug("started pid %d in %s: %s", proc.pid, side, " ".join(argv))
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Stop a process started with :meth:`popen` before teardown."""
        stop_process(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    def set_udp_timeout(self, seconds: int, *, stream_seconds: int | None = None) -> None:
        """Set the conntrack UDP timeouts of every router.

        Args:
            seconds: ``nf_conntrack_udp_timeout`` (flows seen in one direction only).
            stream_seconds: ``nf_conntrack_udp_timeout_stream`` (flows with replies);
                defaults to ``seconds``.

        The sysctls are per namespace; they apply to new and existing conntrack entries.
        The ``full``/``restricted`` filter sets keep their own ``mapping_timeout``.
        """
        stream = seconds if stream_seconds is None else stream_seconds
        for side in self.plan.sides:
            if side.router_ns is None:
                continue
            self._sysctl(side.router_ns, "net.netfilter.nf_conntrack_udp_timeout", str(seconds))
            self._sysctl(
                side.router_ns, "net.netfilter.nf_conntrack_udp_timeout_stream", str(stream)
            )

    def shape(self, side: str, mbit: float, *, latency_ms: int = 20) -> None:
        """Limit what ``side``'s host sends to ``mbit`` Mbit/s: a token bucket
        (``tc qdisc tbf``) on its interface, i.e. its uplink. The link, not libtorrent's
        rate limiter, then sets the rate; queued packets wait at most ``latency_ms``.
        ``mbit`` 0 removes the limit.

        Raises:
            ConfigError: a negative rate, or a latency that is not positive.
        """
        if mbit == 0:
            qdisc = ["tc", "qdisc", "del", "dev", rules.HOST_IF, "root"]
        else:
            qdisc = tbf_argv(rules.HOST_IF, mbit, latency_ms)
        _run_cmd(["ip", "netns", "exec", self.ns_of(side), *qdisc], check=mbit > 0)

    # -- STUN server ---------------------------------------------------------------------

    def start_turn(self, *, users: Sequence[str] = (), secret: str | None = None,
                   port: int = rules.TURN_PORT, stale_nonce: int | None = None,
                   timeout: float = 10.0) -> tuple[str, int]:
        """Start coturn as a TURN server (TCP and UDP relays, long-term ``users``
        ``name:password`` or the REST API ``secret``) on the first server address,
        ``port`` (:data:`~lt_punch.netlab.rules.TURN_PORT`); returns that endpoint once it
        accepts TCP connections. Stopped with the lab (or ``stop(lab.turn_proc)``).

        Raises:
            LabError: coturn exited or did not listen within ``timeout`` seconds.
        """
        ip = self.server_ips[0]
        workdir = tempfile.mkdtemp(prefix="turn-", dir=self._tmp())
        argv = turn_argv(ip, port, workdir, users=users, secret=secret,
                         stale_nonce=stale_nonce)
        log_path = os.path.join(workdir, "turnserver.out")
        with open(log_path, "wb") as log_file:
            proc = self.popen(SERVER, argv, stdout=log_file, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
        self.turn_proc = proc
        probe = [sys.executable, "-m", "lt_punch.netlab.probe", "tcp-wait", "--timeout",
                 str(timeout), f"{ip}:{port}"]
        result = self.run(SERVER, probe, timeout=timeout + 5, check=False)
        if result.returncode != 0 or proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise LabError(f"coturn (TURN) did not listen on {ip}:{port} within "
                           f"{timeout} s; log tail:\n{tail}")
        return ip, port

    def hang_dns(self, *, timeout: float = 10.0) -> subprocess.Popen[str]:
        """Give every host of the lab a DNS server that never answers.

        A sink on the server's first address, port 53 (``probe dns-sink``), and a
        ``resolv.conf`` per host namespace naming it with a 30 s timeout (``ip netns
        exec`` mounts ``/etc/netns/<namespace>/resolv.conf`` over ``/etc/resolv.conf``).
        Without it the lab's DNS is the machine's: a lookup fails at once or after 5 s,
        depending on where that resolver is. Returns the sink; its stdout has one
        ``{"query": NAME}`` line per query received.

        Raises:
            LabError: the sink did not start within ``timeout`` seconds.
        """
        from .scenario import read_line

        ip = self.server_ips[0]
        proc = self.popen(SERVER, [sys.executable, "-m", "lt_punch.netlab.probe", "dns-sink",
                                   "--bind", ip],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            read_line(proc, '{"ready"', timeout)
        except LtTimeoutError as exc:
            raise LabError(f"DNS sink did not start: {exc}") from exc
        for side in self.sides:
            etc = os.path.join(NETNS_ETC, self.ns_of(side))
            os.makedirs(etc, exist_ok=True)
            with open(os.path.join(etc, "resolv.conf"), "w") as f:
                f.write(f"nameserver {ip}\noptions timeout:30 attempts:1\n")
        return proc

    def start_stun(self, *, timeout: float = 10.0) -> tuple[str, int]:
        """Start coturn as a STUN server in the server namespace and wait until it answers.

        coturn listens on both server addresses, port 3478 and alternate port 3479, and
        honours RFC 3489 CHANGE-REQUEST (needed by pystun3): with two listening IPs its
        RFC 5780 behaviour discovery is on, and backward compatibility stays enabled.

        Returns:
            ``(primary server ip, 3478)``.

        Raises:
            LabError: coturn exited or did not answer within ``timeout`` seconds.
        """
        if self._stun is not None:
            return self._stun
        tmp = self._tmp()
        argv = coturn_argv(self.server_ips, tmp)
        log_path = os.path.join(tmp, "turnserver.out")
        with open(log_path, "wb") as log_file:
            proc = self.popen(
                SERVER, argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        targets = [(ip, port) for ip in self.server_ips
                   for port in (rules.STUN_PORT, rules.STUN_ALT_PORT)]
        probe = [sys.executable, "-m", "lt_punch.netlab.probe", "stun-wait",
                 "--timeout", str(timeout), *(f"{ip}:{port}" for ip, port in targets)]
        try:
            result = self.run(SERVER, probe, timeout=timeout + 5, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"STUN probe hung: {exc}") from exc
        if result.returncode != 0 or proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise LabError(
                f"coturn did not answer on {targets} within {timeout} s "
                f"(probe: {result.stdout.strip()} {result.stderr.strip()}); log tail:\n{tail}"
            )
        logger.info("coturn up in %s: %s", self.server_ns, result.stdout.strip())
        self._stun = (self.server_ips[0], rules.STUN_PORT)
        return self._stun

    def _tmp(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix=f"ltp-lab-{self.plan.token}-")
        return self._tmpdir.name


def turn_argv(listen_ip: str, port: int, workdir: str, *, users: Sequence[str] = (),
              secret: str | None = None, realm: str = "lt-punch.test",
              loopback_peers: bool = False, stale_nonce: int | None = None) -> list[str]:
    """The coturn 4.6 command line of a TURN server (TCP and UDP relays) on
    ``listen_ip:port``, relaying from the same address.

    Args:
        users: ``name:password`` long-term accounts.
        secret: coturn's REST API shared secret (``use-auth-secret``) instead.
        loopback_peers: allow peers on 127.0.0.0/8 (coturn refuses them by default).
        stale_nonce: seconds a nonce stays valid (coturn's default: 600).
    """
    argv = ["turnserver", "-n", "--listening-ip", listen_ip, "--relay-ip", listen_ip,
            "--listening-port", str(port), "--realm", realm, "--no-tls", "--no-dtls",
            "--no-cli", "--log-file", "stdout", "--simple-log", "--no-software-attribute",
            "--pidfile", os.path.join(workdir, "turnserver.pid"),
            "--userdb", os.path.join(workdir, "turndb"), "--no-multicast-peers"]
    if secret is not None:
        argv += ["--use-auth-secret", "--static-auth-secret", secret]
    else:
        argv += ["--lt-cred-mech"]
        for user in users:
            argv += ["--user", user]
    if loopback_peers:
        argv += ["--allow-loopback-peers"]
    if stale_nonce is not None:
        argv += [f"--stale-nonce={stale_nonce}"]
    return argv


def coturn_argv(server_ips: Sequence[str], workdir: str) -> list[str]:
    """Return the coturn 4.6 command line of the lab's STUN server.

    Args:
        server_ips: the two listening addresses (two are needed for CHANGE-REQUEST).
        workdir: a private directory for the pid file and the (unused) user database.
    """
    argv = [
        "turnserver",
        "-n",  # no configuration file: everything is on this command line
        "--stun-only",
        "--listening-port", str(rules.STUN_PORT),
        "--alt-listening-port", str(rules.STUN_ALT_PORT),
    ]
    for ip in server_ips:
        argv += ["--listening-ip", ip]
    argv += [
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file", "stdout",
        "--simple-log",
        "--pidfile", os.path.join(workdir, "turnserver.pid"),
        "--userdb", os.path.join(workdir, "turndb"),
        "--no-software-attribute",
        # Deliberately absent: --no-rfc5780 (would ignore CHANGE-REQUEST) and
        # --no-stun-backward-compatibility (would drop MAPPED-ADDRESS, which pystun3 reads).
    ]
    return argv


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process (group), SIGKILL after :data:`STOP_GRACE` s, close its pipes."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not die", proc.pid)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
