"""libtorrent's NAT-PMP port mappings show up in lt_punch's NAT information (root).

A NAT-PMP gateway (RFC 6886, lt_punch.netlab.natpmp) runs on a port-restricted lab
router and turns mapping requests into real DNAT rules; a session with NAT-PMP enabled
behind it reports the mappings, and the mapped public TCP port reaches libtorrent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable

from lt_punch.netlab import NatLab
from lt_punch.netlab.scenario import read_line

NatLabFactory = Callable[..., NatLab]

SESSION = textwrap.dedent(
    """
    import asyncio, json, sys
    from lt_punch import Config
    from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    async def main():
        config = Config(signaling_enabled=False, listen_host=sys.argv[1])
        settings = {**ISOLATED_SETTINGS, "enable_natpmp": True}
        async with EnhancedTorrentSession(config, lt_settings=settings) as session:
            seen = set()
            async with asyncio.timeout(20):
                async for ev in session.events():
                    if ev["type"] == "port-mapping":
                        seen.add(ev["protocol"])
                        if {"tcp", "udp"} <= seen:
                            break
            print(json.dumps({"listen_port": session.session.listen_port(),
                              "stats": session.stats()["port_mappings"]}), flush=True)
            sys.stdin.read()  # keep listening until the test is done

    asyncio.run(main())
    """
)


def test_natpmp_mappings_are_reported_and_real(nat_lab: NatLabFactory) -> None:
    lab = nat_lab({"a": "port"})
    host = lab.host("a")
    assert host.router_ns is not None
    router_lan = host.lan_ip.rsplit(".", 1)[0] + ".1"
    gateway = subprocess.Popen(
        ["ip", "netns", "exec", host.router_ns, sys.executable, "-m", "lt_punch.netlab.natpmp",
         "--bind", router_lan, "--external", host.public_ip, "--host", host.lan_ip],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    session = None
    try:
        read_line(gateway, "NAT-PMP gateway listening", 15.0)
        session = lab.popen("a", [sys.executable, "-c", SESSION, host.lan_ip],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
        report = json.loads(read_line(session, "{", 30.0))
        mappings = {m["protocol"]: m for m in report["stats"]}
        listen_port = report["listen_port"]
        for protocol in ("tcp", "udp"):
            assert mappings[protocol]["transport"] == "natpmp"
            assert mappings[protocol]["external_port"] == listen_port
            assert mappings[protocol]["error"] is None
        # The mapping is real: from the internet, the public TCP port reaches libtorrent.
        probe = textwrap.dedent(f"""
            import socket
            with socket.create_connection(("{host.public_ip}", {listen_port}), timeout=5):
                print("connected")
        """)
        assert lab.run("server", [sys.executable, "-c", probe], timeout=20).stdout == "connected\n"
    finally:
        if session is not None:
            lab.stop(session)
        gateway.terminate()
        gateway.wait(timeout=10)
        for stream in (gateway.stdout, gateway.stderr):
            if stream is not None:
                stream.close()


def test_natpmp_answer_codec() -> None:
    from lt_punch.netlab.natpmp import Mapping, answer, dnat_rule

    reply, change = answer(bytes([0, 0]), "203.0.113.11", 7) or (b"", None)
    assert reply == bytes([0, 128, 0, 0, 0, 0, 0, 7]) + socket.inet_aton("203.0.113.11")
    assert change is None
    request = bytes([0, 2, 0, 0]) + (6881).to_bytes(2, "big") * 2 + (3600).to_bytes(4, "big")
    result = answer(request, "203.0.113.11", 7)
    assert result is not None
    assert result[1] == Mapping("tcp", 6881, 6881, 3600)
    assert result[0][:4] == bytes([0, 130, 0, 0])
    assert dnat_rule(result[1], "10.1.0.2") == (
        'ip ltp_nat prerouting iifname "wan" tcp dport 6881 dnat ip to 10.1.0.2:6881')
    # Bad input: answered with a result code, or ignored; never an exception.
    assert answer(b"", "203.0.113.11", 7) is None
    assert answer(bytes([0, 130]), "203.0.113.11", 7) is None  # a response
    bad_version = answer(bytes([1, 0]), "203.0.113.11", 7)
    assert bad_version is not None and bad_version[0][2:4] == (1).to_bytes(2, "big")
    bad_op = answer(bytes([0, 9]), "203.0.113.11", 7)
    assert bad_op is not None and bad_op[0][2:4] == (5).to_bytes(2, "big")
    assert answer(bytes([0, 1, 0]), "203.0.113.11", 7) is None  # truncated mapping request
