"""The NAT lab behaves like the RFC 4787 NATs it claims to emulate (needs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import stun

from lt_punch.errors import ConfigError
from lt_punch.netlab import NAT_KINDS, NatLab, cleanup_stale, list_lab_namespaces
from lt_punch.netlab.rules import ns_name

NatLabFactory = Callable[..., NatLab]  # the ``nat_lab`` fixture (tests/lab/conftest.py)

pytestmark = pytest.mark.lab

PY = sys.executable
PROBE = [PY, "-m", "lt_punch.netlab.probe"]

# pystun3 2.0.0's names (note its spelling "Restric").
EXPECTED_TYPE = {
    "open": stun.OpenInternet,
    "full": stun.FullCone,
    "restricted": stun.RestricNAT,
    "port": stun.RestricPortNAT,
    "symmetric": stun.SymmetricNAT,
}

CLASSIFY = textwrap.dedent(
    """
    import json, socket, sys
    import stun
    bind, server = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    # pystun3 compares the mapped address with the bound one: bind the real address.
    sock.bind((bind, 0))
    ip, port = sock.getsockname()
    nat_type, info = stun.get_nat_type(sock, ip, port, stun_host=server, stun_port=3478)
    print(json.dumps({"nat_type": nat_type, "port": port, "external": info["ExternalPort"]}))
    """
)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _last_json(text: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(text.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_pystun3_classifies_each_kind(nat_lab: NatLabFactory, kind: str) -> None:
    lab = nat_lab({"a": kind})
    server, port = lab.start_stun()
    assert (server, port) == (lab.server_ips[0], 3478)
    host = lab.host("a")
    result = lab.run("a", [PY, "-c", CLASSIFY, host.lan_ip, server], timeout=30)
    found = _last_json(result.stdout)
    assert found["nat_type"] == EXPECTED_TYPE[kind], found


def test_host_addresses(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"x": "open", "y": "port"})
    x, y = lab.host("x"), lab.host("y")
    assert x.router_ns is None and x.lan_ip == x.public_ip
    assert y.router_ns is not None and y.lan_ip != y.public_ip
    assert y.router_ns in _namespaces() and y.ns in _namespaces()
    # The host really has its lan_ip and routes through its router (reachability itself is
    # covered by the STUN and mapping tests).
    out = lab.run("y", ["ip", "-4", "-o", "addr", "show", "eth0"], timeout=10).stdout
    assert f"{y.lan_ip}/24" in out
    route = lab.run("y", ["ip", "-4", "route", "show", "default"], timeout=10).stdout
    assert "via 10.2.0.1" in route
    out = lab.run("server", ["ip", "-4", "-o", "addr", "show", "eth0"], timeout=10).stdout
    assert all(f"{ip}/24" in out for ip in lab.server_ips)


UNSOLICITED = textwrap.dedent(
    """
    import json, socket, sys, time
    port = int(sys.argv[1])
    results = {}
    for target in sys.argv[2:]:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect((target, port))
        u.settimeout(0.3)
        udp = "silent"
        try:
            for i in range(5):
                u.send(b"unsolicited %d" % i)
                time.sleep(0.01)
            u.recv(100)
            udp = "answered"
        except ConnectionRefusedError:
            udp = "icmp-refused"   # an ICMP port unreachable came back
        except TimeoutError:
            pass
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.settimeout(0.5)
        try:
            t.connect((target, port))
            tcp = "connected"
        except ConnectionRefusedError:
            tcp = "rst"
        except TimeoutError:
            tcp = "silent"
        results[target] = {"udp": udp, "tcp": tcp}
    print(json.dumps(results))
    """
)


def test_routers_drop_unsolicited_inbound_silently(nat_lab: NatLabFactory) -> None:
    kinds = {k: k for k in NAT_KINDS}
    lab = nat_lab(kinds)
    port = 40000
    receivers = {}
    for side in kinds:
        proc = lab.popen(
            side,
            [*PROBE, "udp-recv", "--bind", lab.host(side).lan_ip, "--port", str(port),
             "--duration", "3", "--idle", "0.3"],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        receivers[side] = proc
    targets = [lab.host(side).public_ip for side in kinds]
    # UDP port 40000 has a listener on every host; TCP port 40000 has none anywhere.
    result = lab.run("server", [PY, "-c", UNSOLICITED, str(port), *targets], timeout=30)
    replies = _last_json(result.stdout)
    counts = {}
    for side, proc in receivers.items():
        out, _ = proc.communicate(timeout=10)
        counts[side] = _last_json(out)["received"]

    # Control: the open host receives the packets and its kernel answers a closed TCP
    # port with RST, so the method can see both delivery and rejection.
    assert counts["open"] == 5
    assert replies[lab.host("open").public_ip] == {"udp": "silent", "tcp": "rst"}
    for kind in ("full", "restricted", "port", "symmetric"):
        # RFC 4787 section 5: no mapping, no entry; dropped without ICMP or RST.
        assert counts[kind] == 0, (kind, counts)
        assert replies[lab.host(kind).public_ip] == {"udp": "silent", "tcp": "silent"}, kind


def _send_and_count(
    lab: NatLab, sender: str, receiver: str, to_ip: str, count: int
) -> int:
    port = 41000
    bind = lab.server_ips[0] if receiver == "server" else lab.host(receiver).lan_ip
    proc = lab.popen(
        receiver,
        [*PROBE, "udp-recv", "--bind", bind, "--port", str(port), "--duration", "20"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    # 30 end markers: all lost with probability 0.2**30 at 20 % loss; the receiver stops
    # at the first one instead of guessing the end from silence.
    lab.run(sender, [*PROBE, "udp-send", "--to", f"{to_ip}:{port}", "--count", str(count),
                     "--interval", "0.0005", "--end-markers", "30"], timeout=30)
    out, _ = proc.communicate(timeout=15)
    received = _last_json(out)["received"]
    assert isinstance(received, int)
    return received


def test_packet_loss_drops_about_the_share_asked(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"lossy": "open", "clean": "port"}, loss={"lossy": 20})
    n = 400
    # Binomial(400, 0.2): mean 80 lost, sd 8; the window is about +-3.5 sd.
    outbound = _send_and_count(lab, "lossy", "server", lab.server_ips[0], n)
    assert 52 <= n - outbound <= 108, outbound
    inbound = _send_and_count(lab, "server", "lossy", lab.host("lossy").public_ip, n)
    assert 52 <= n - inbound <= 108, inbound
    # The other side is not affected.
    assert _send_and_count(lab, "clean", "server", lab.server_ips[0], n) == n


@pytest.mark.parametrize("kind", ["full", "restricted", "port", "symmetric"])
def test_mapping_per_destination(nat_lab: NatLabFactory, kind: str) -> None:
    lab = nat_lab({"a": kind})
    host = lab.host("a")
    proc = lab.popen(
        "server",
        [*PROBE, "udp-recv", "--bind", "0.0.0.0", "--port", "41000", "--duration", "10",
         "--idle", "0.5"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    for server_ip in lab.server_ips:  # same local port, two destinations
        lab.run("a", [*PROBE, "udp-send", "--to", f"{server_ip}:41000", "--bind", host.lan_ip,
                      "--port", "45000"], timeout=10)
    out, _ = proc.communicate(timeout=15)
    sources = _last_json(out)["sources"]
    assert isinstance(sources, list)
    if kind == "symmetric":
        # Endpoint-dependent mapping: one public port per destination, none kept.
        assert len(sources) == 2, sources
        assert f"{host.public_ip}:45000" not in sources
    else:
        # RFC 4787 section 4.1, endpoint-independent mapping, port preserved.
        assert sources == [f"{host.public_ip}:45000"]


@pytest.mark.parametrize("kind", ["full", "restricted", "port"])
def test_unsolicited_packet_does_not_steal_the_mapping(nat_lab: NatLabFactory, kind: str) -> None:
    """An inbound packet before the host's first one must not move the host's mapping.

    If the router accepted it, conntrack would keep (server -> WAN:45000) and masquerade
    would give the host's later flow to that server another port (see rules.py).
    """
    lab = nat_lab({"a": kind})
    host = lab.host("a")
    ip1 = lab.server_ips[0]
    lab.run("server", [*PROBE, "udp-send", "--to", f"{host.public_ip}:45000", "--bind", ip1,
                       "--port", "41000", "--count", "3"], timeout=10)
    proc = lab.popen(
        "server",
        [*PROBE, "udp-recv", "--bind", ip1, "--port", "41000", "--duration", "10",
         "--idle", "0.5"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    lab.run("a", [*PROBE, "udp-send", "--to", f"{ip1}:41000", "--bind", host.lan_ip,
                  "--port", "45000"], timeout=10)
    out, _ = proc.communicate(timeout=15)
    assert _last_json(out)["sources"] == [f"{host.public_ip}:45000"]


def test_set_udp_timeout(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"a": "port"})
    lab.set_udp_timeout(7, stream_seconds=9)
    router = lab.host("a").router_ns
    assert router is not None
    out = subprocess.run(
        ["ip", "netns", "exec", router, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout",
         "net.netfilter.nf_conntrack_udp_timeout_stream"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.split()
    assert out == ["7", "9"]


def test_shape_limits_the_uplink_and_can_be_removed(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"a": "port"})
    lab.shape("a", 160)
    show = lab.run("a", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert "tbf" in show and "rate 160Mbit" in show, show
    lab.shape("a", 0)
    assert "tbf" not in lab.run("a", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    with pytest.raises(ConfigError, match="bad rate"):
        lab.shape("a", -1)


def test_teardown_removes_everything_when_the_body_raises() -> None:
    lab = NatLab({"a": "port", "b": "open"})
    with pytest.raises(RuntimeError, match="boom"), lab:
        names = set(lab.namespaces)
        assert names <= _namespaces()
        proc = lab.popen("a", ["sleep", "60"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not names & _namespaces()


def test_failed_setup_tears_down_what_was_built() -> None:
    class Broken(NatLab):
        def _build_side(self, side):  # type: ignore[no-untyped-def]
            super()._build_side(side)
            raise OSError("injected failure")

    lab = Broken({"a": "full"})
    with pytest.raises(OSError, match="injected"):
        lab.open()
    assert not set(lab.namespaces) & _namespaces()


def test_cleanup_stale_removes_labs_of_dead_processes() -> None:
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait(timeout=10)
    stale = ns_name(dead_pid.pid, "dead", "h1")
    alive = ns_name(os.getpid(), "live", "h1")
    for name in (stale, alive):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    try:
        removed = cleanup_stale()
        assert stale in removed
        assert alive not in removed
        assert stale not in list_lab_namespaces()
        assert alive in list_lab_namespaces()
        assert sleeper.wait(timeout=5) != 0  # killed
    finally:
        sleeper.kill()
        sleeper.wait(timeout=5)
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True)


TCP_HOST = textwrap.dedent(
    """
    import json, socket, sys
    bind, port, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def sock():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((bind, port))
        return s
    listener = sock()
    listener.listen(8)
    out = sock()
    out.settimeout(5)
    out.connect((server, 7000))   # opens the mapping (and the filter entries)
    print(json.dumps({"ready": True}), flush=True)
    listener.settimeout(1.5)
    peers = []
    try:
        while True:
            conn, addr = listener.accept()
            peers.append(addr[0])
            listener.settimeout(0.3)
    except TimeoutError:
        pass
    print(json.dumps({"accepted": peers}), flush=True)
    """
)

TCP_SERVER_LISTEN = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_server((sys.argv[1], 7000))
    print("ready", flush=True)
    conns = []
    s.settimeout(10)
    conns.append(s.accept())
    time.sleep(10)
    """
)

TCP_SERVER_DIAL = textwrap.dedent(
    """
    import json, socket, sys
    target, port = sys.argv[1], int(sys.argv[2])
    result = {}
    for src in sys.argv[3:]:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((src, 0))
        c.settimeout(0.5)
        try:
            c.connect((target, port))
            result[src] = "connected"
        except TimeoutError:
            result[src] = "silent"
        except ConnectionRefusedError:
            result[src] = "rst"
    print(json.dumps(result))
    """
)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # RFC 4787 section 5 filtering, applied to TCP (RFC 5382 section 4.3 for TCP NATs).
        ("full", {"contacted": "connected", "other": "connected"}),
        ("restricted", {"contacted": "connected", "other": "silent"}),
        ("port", {"contacted": "silent", "other": "silent"}),
        ("symmetric", {"contacted": "silent", "other": "silent"}),
    ],
)
def test_tcp_filtering(nat_lab: NatLabFactory, kind: str, expected: dict[str, str]) -> None:
    lab = nat_lab({"a": kind})
    host = lab.host("a")
    ip1, ip2 = lab.server_ips
    listener = lab.popen("server", [PY, "-c", TCP_SERVER_LISTEN, ip1],
                         stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    port = 46000
    inside = lab.popen("a", [PY, "-c", TCP_HOST, host.lan_ip, str(port), ip1],
                       stdout=subprocess.PIPE, text=True)
    assert inside.stdout is not None
    assert json.loads(inside.stdout.readline()) == {"ready": True}
    # From the contacted address (another port than the one contacted), then from the other
    # server address, which the host never contacted.
    dialed = _last_json(lab.run(
        "server", [PY, "-c", TCP_SERVER_DIAL, host.public_ip, str(port), ip1, ip2], timeout=10
    ).stdout)
    out, _ = inside.communicate(timeout=10)
    accepted = _last_json(out)["accepted"]
    assert {"contacted": dialed[ip1], "other": dialed[ip2]} == expected
    assert accepted == [ip for ip, r in ((ip1, dialed[ip1]), (ip2, dialed[ip2]))
                        if r == "connected"]
