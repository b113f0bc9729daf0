"""A UDP endpoint reflector that speaks the BitTorrent DHT protocol.

Theory of operation: a peer behind a NAT wants to know the public mapping (address and
port) of the UDP socket libtorrent listens on -- the socket that uTP and the DHT share.
Any packet we could ask libtorrent to send from that socket works, and the one it sends
on request is a DHT query: ``session.add_dht_node((host, port))`` makes it send a KRPC
query (BEP 5) to that node. We answer every query like a DHT node with an empty routing
table, and add the BEP 42 ``ip`` key ("the IP address and port the requester's packet
came from, in compact form") to the reply. libtorrent reads that key to learn its
external address; tooling of ours can read it too, from any UDP socket.

The core (:func:`handle_datagram`) takes a datagram and the sender's address and returns
the reply bytes or ``None``; :class:`ReflectorProtocol` is the asyncio shell. Malformed
datagrams, responses and errors are ignored (counted), never answered: answering
garbage would make us an amplifier, and answering responses could loop between two
reflectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, cast

from ..bencode import BencodeError, decode, encode
from ..types import Address

__all__ = ["ReflectorProtocol", "ReflectorStats", "compact_address", "handle_datagram"]

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 1500
"""Larger datagrams are ignored; KRPC queries are far smaller."""
MAX_TRANSACTION_ID = 32


def compact_address(addr: Address) -> bytes:
    """BEP 5 "compact IP-address/port info": 4 (or 16) address bytes + 2 port bytes."""
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed + addr[1].to_bytes(2, "big")


def _token(node_id: bytes, addr: Address) -> bytes:
    # BEP 5 tokens let a node check that an announcer asked get_peers from the same
    # IP before; we store no peers, so any stable value per IP will do.
    return hashlib.sha1(node_id + compact_address(addr)[:-2]).digest()[:8]


def handle_datagram(data: bytes, addr: Address, node_id: bytes) -> bytes | None:
    """Answer one KRPC query, or return ``None`` for anything else.

    Args:
        data: the datagram as received.
        addr: the sender's (ip, port), as seen by our socket.
        node_id: our 20-byte DHT node id.

    Returns:
        the bencoded response ``{"t": t, "y": "r", "r": {"id": node_id, ...}, "ip":
        compact(addr)}``; ``find_node`` and ``get_peers`` responses carry an empty
        ``nodes``, ``get_peers`` also a ``token``.
    """
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        msg = decode(data, max_depth=8)
    except BencodeError:
        return None
    if not isinstance(msg, dict) or msg.get(b"y") != b"q":
        return None
    tid = msg.get(b"t")
    method = msg.get(b"q")
    args = msg.get(b"a", {})
    if not isinstance(tid, bytes) or not 0 < len(tid) <= MAX_TRANSACTION_ID:
        return None
    if not isinstance(method, bytes) or not isinstance(args, dict):
        return None
    try:
        ip = compact_address(addr)
    except (ValueError, OverflowError):
        return None
    r: dict[bytes, Any] = {b"id": node_id}
    if method in (b"find_node", b"get_peers"):
        r[b"nodes"] = b""
    if method == b"get_peers":
        r[b"token"] = _token(node_id, addr)
    return encode({b"t": tid, b"y": b"r", b"r": r, b"ip": ip})


@dataclass
class ReflectorStats:
    answered: int = 0
    ignored: int = 0


class ReflectorProtocol(asyncio.DatagramProtocol):
    """asyncio shell around :func:`handle_datagram`."""

    def __init__(self, node_id: bytes) -> None:
        if len(node_id) != 20:
            raise ValueError("node_id must be 20 bytes")
        self.node_id = node_id
        self.stats = ReflectorStats()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = handle_datagram(data, (addr[0], addr[1]), self.node_id)
        except Exception:  # never let one datagram stop the endpoint
            logger.exception("reflector failed on a datagram from %s", addr)
            reply = None
        if reply is None:
            self.stats.ignored += 1
            logger.debug("< ignored %d bytes from %s", len(data), addr)
            return
        self.stats.answered += 1
        logger.debug("> reflect %s to %s", addr, addr)
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a sender that went away: nothing to do.
        logger.debug("reflector socket error: %s", exc)
