"""RFC 5780 discovery (lt_punch.nat.discover) against every NAT kind of the lab (root).

Issue 4's bar: with coturn, each kind is classified correctly 20 times out of 20; with a
server that ignores CHANGE-REQUEST, or with two plain servers, the mapping is still right
and the filtering is reported as unknown.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from lt_punch.netlab import NAT_KINDS, NatLab
from lt_punch.netlab.scenario import read_line

NatLabFactory = Callable[..., NatLab]

PROBE = [sys.executable, "-m", "lt_punch.netlab.probe", "discover"]
RUNS = 20

# kind -> (nat_type, mapping, filtering) as RFC 4787 / RFC 3489 name them.
EXPECTED = {
    "open": ("open", "no-nat", "endpoint-independent"),
    "full": ("full", "endpoint-independent", "endpoint-independent"),
    "restricted": ("restricted", "endpoint-independent", "address-dependent"),
    "port": ("port", "endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("symmetric", "address-and-port-dependent", "address-and-port-dependent"),
}


def _discover_all(lab: NatLab, servers: list[str], count: int) -> dict[str, list[dict]]:
    """Run ``count`` discoveries on every side at once; the results by side."""
    procs = {
        side: lab.popen(side, [*PROBE, "--count", str(count), *servers],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for side in lab.sides
    }
    results = {}
    for side, proc in procs.items():
        out, err = proc.communicate(timeout=30 + 3 * count)
        assert proc.returncode == 0, err
        results[side] = [json.loads(line) for line in out.splitlines()]
        assert len(results[side]) == count
    return results


def _verdict(info: dict) -> tuple[str, str, str]:
    return info["nat_type"], info["mapping"], info["filtering"]


def test_coturn_classifies_each_kind_20_of_20(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({kind: kind for kind in NAT_KINDS})
    server, port = lab.start_stun()
    results = _discover_all(lab, [f"{server}:{port}"], RUNS)
    for kind, infos in results.items():
        verdicts = [_verdict(info) for info in infos]
        assert verdicts == [EXPECTED[kind]] * RUNS, (kind, verdicts)
        for info in infos:
            assert info["confidence"] == 1.0 and info["skipped"] == [], info
            assert info["public_ip"] == lab.host(kind).public_ip
    # Port allocation: the EIM routers keep the host's port, the symmetric one draws at
    # random (nftables masquerade fully-random).
    assert {i["allocation"] for k in ("full", "restricted", "port")
            for i in results[k]} == {"preserved"}
    assert {i["allocation"] for i in results["symmetric"]} == {"random"}
    assert all(i["port_preserved"] is False for i in results["symmetric"])


def test_a_router_that_filters_per_host_is_not_taken_for_a_full_cone(
        nat_lab: NatLabFactory) -> None:
    """The lab's ``host-restricted`` router lets in any address the host has sent to
    from any of its mappings. Discovery's mapping tests contact the server's other
    address; when they ran before the filtering test's change-IP answer came back from
    that address, this address-restricted NAT was classified a full cone (5 of 5).
    Filtering is now judged first, and a second configured server (here coturn's other
    address, a common setup) is asked only if the first is slow. (One discovery per
    fresh router: the router then remembers the address, and a second discovery within
    its timeout is misled.)"""
    lab = nat_lab({"h": "host-restricted", "f": "full"})
    server, port = lab.start_stun()
    results = _discover_all(lab, [f"{ip}:{port}" for ip in lab.server_ips], 1)
    assert _verdict(results["h"][0]) == EXPECTED["restricted"], results["h"]
    assert _verdict(results["f"][0]) == EXPECTED["full"], results["f"]
    assert [t["name"] for t in results["h"][0]["tests"]].count("binding-server-2") == 0


def _our_server(lab: NatLab, *args: str) -> subprocess.Popen[str]:
    proc = lab.popen("server", [sys.executable, "-m", "lt_punch.nat.server", *args],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_line(proc, "STUN server listening on ", 15.0)
    return proc


@pytest.mark.parametrize("setup", ["ignores-change-request", "two-plain-servers"])
def test_mapping_without_change_request(nat_lab: NatLabFactory, setup: str) -> None:
    kinds = ("full", "port", "symmetric")
    lab = nat_lab({kind: kind for kind in kinds})
    ip1, ip2 = lab.server_ips
    if setup == "ignores-change-request":
        # OTHER-ADDRESS is sent and answered, CHANGE-REQUEST is not honoured.
        server = _our_server(lab, "--host", ip1, "--port", "3490", "--alternate-host", ip2,
                             "--alternate-port", "3491", "--ignore-change-request")
        servers = [f"{ip1}:3490"]
        procs = [server]
        reason = "the server ignores CHANGE-REQUEST"
        symmetric_mapping = "address-and-port-dependent"
    else:
        # Like most public servers: no OTHER-ADDRESS; mapping compared across two servers.
        procs = [_our_server(lab, "--host", ip, "--port", "3490") for ip in (ip1, ip2)]
        servers = [f"{ip1}:3490", f"{ip2}:3490"]
        reason = "the server sends no OTHER-ADDRESS"
        symmetric_mapping = "endpoint-dependent"
    try:
        results = _discover_all(lab, servers, 3)
    finally:
        for proc in procs:
            lab.stop(proc)
    expected = {
        "full": ("unknown", "endpoint-independent", "unknown"),
        "port": ("unknown", "endpoint-independent", "unknown"),
        "symmetric": ("symmetric", symmetric_mapping, "unknown"),
    }
    for kind, infos in results.items():
        for info in infos:
            assert _verdict(info) == expected[kind], info
            assert info["confidence"] < 1.0
            filtering = [s["reason"] for s in info["skipped"] if s["test"] == "filtering"]
            assert filtering and filtering[0].startswith(reason), info
