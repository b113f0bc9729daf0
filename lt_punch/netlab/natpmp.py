"""A NAT-PMP gateway (RFC 6886) for a lab router: libtorrent's port mapping, for real.

Run inside a router namespace (``python -m lt_punch.netlab.natpmp --bind LAN_IP
--external WAN_IP --host HOST_IP``): it answers the external-address request and
mapping requests on UDP port 5351 and, for every mapping, adds an nftables DNAT rule
to the router's ``ltp_nat`` table, so the mapped public port really reaches the host
(the router's forward chain accepts DNATed flows). A lifetime of 0 deletes the mapping.

:func:`answer` is the sans-I/O core: request bytes in, ``(reply, change)`` out; bad
requests get the RFC's result codes, garbage is ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

PORT = 5351
VERSION = 0
OP_EXTERNAL = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
RESULT_OK = 0
RESULT_UNSUPPORTED_VERSION = 1
RESULT_UNSUPPORTED_OPCODE = 5

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mapping:
    """A mapping request that was granted (``lifetime`` 0: delete)."""

    protocol: str  # "udp" | "tcp"
    internal_port: int
    external_port: int
    lifetime: int


def answer(data: bytes, external_ip: str, epoch: int) -> tuple[bytes, Mapping | None] | None:
    """The reply to one request datagram, and the mapping to apply; None: ignore it.

    External ports are the internal ones (a single host behind the router), like a
    port-preserving home router.
    """
    if len(data) < 2 or data[1] >= 128:  # too short, or a response
        return None
    version, opcode = data[0], data[1]
    if version != VERSION:
        return struct.pack("!BBHI", VERSION, 128 + opcode, RESULT_UNSUPPORTED_VERSION, epoch), None
    if opcode == OP_EXTERNAL:
        ip = ipaddress.IPv4Address(external_ip).packed
        return struct.pack("!BBHI", VERSION, 128, RESULT_OK, epoch) + ip, None
    if opcode not in (OP_MAP_UDP, OP_MAP_TCP):
        return struct.pack("!BBHI", VERSION, 128 + opcode, RESULT_UNSUPPORTED_OPCODE, epoch), None
    if len(data) < 12:
        return None
    internal, _suggested, lifetime = struct.unpack("!HHI", data[4:12])
    if internal == 0:  # "all ports" requests are not supported here
        return struct.pack("!BBHI", VERSION, 128 + opcode, RESULT_UNSUPPORTED_OPCODE, epoch), None
    external = 0 if lifetime == 0 else internal
    reply = struct.pack("!BBHIHHI", VERSION, 128 + opcode, RESULT_OK, epoch, internal,
                        external, lifetime)
    protocol = "udp" if opcode == OP_MAP_UDP else "tcp"
    return reply, Mapping(protocol, internal, internal, lifetime)


def dnat_rule(mapping: Mapping, host_ip: str, wan_if: str = "wan") -> str:
    """The nftables rule (``nft add rule ...`` arguments) that realises ``mapping``."""
    return (f'ip ltp_nat prerouting iifname "{wan_if}" {mapping.protocol} dport '
            f"{mapping.external_port} dnat ip to {host_ip}:{mapping.internal_port}")


class _Gateway(asyncio.DatagramProtocol):
    def __init__(self, external_ip: str, host_ip: str) -> None:
        self.external_ip = external_ip
        self.host_ip = host_ip
        self.started = time.monotonic()
        self.active: set[tuple[str, int]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        result = answer(data, self.external_ip, int(time.monotonic() - self.started))
        if result is None:
            return
        reply, mapping = result
        if mapping is not None:
            self.apply(mapping)
        assert self.transport is not None
        self.transport.sendto(reply, addr)

    def apply(self, mapping: Mapping) -> None:
        key = (mapping.protocol, mapping.internal_port)
        if mapping.lifetime and key not in self.active:
            subprocess.run(["nft", "add", "rule", *dnat_rule(mapping, self.host_ip).split()],
                           check=True, capture_output=True, timeout=10)
            self.active.add(key)
            print(f"mapped {mapping.protocol} {mapping.external_port}", flush=True)  # noqa: T201
        # Deleting needs the rule's handle; the lab's teardown removes the namespace
        # (and every rule) anyway, so a lifetime-0 request only stops reporting it.
        if not mapping.lifetime:
            self.active.discard(key)


async def serve(bind: str, external_ip: str, host_ip: str) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Gateway(external_ip, host_ip), local_addr=(bind, PORT)
    )
    print(f"NAT-PMP gateway listening on {bind}:{PORT}", flush=True)  # noqa: T201
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt_punch.netlab.natpmp")
    parser.add_argument("--bind", required=True, help="the router's LAN address")
    parser.add_argument("--external", required=True, help="the router's WAN address")
    parser.add_argument("--host", required=True, help="the LAN host mappings point to")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.bind, args.external, args.host))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
