"""Punching with libtorrent's own sockets (the data path never leaves libtorrent).

* ``add_dht_node(ep)`` makes libtorrent's DHT send a query to ``ep`` at once from
  its own UDP socket (the one uTP uses): that opens our NAT towards ``ep``.
* A DHT reply carries the BEP 42 ``ip`` key, our endpoint as the responder saw it:
  the public mapping of libtorrent's UDP socket. The signaling server runs a small
  DHT reflector for exactly this.
* Dialing (``connect_peer`` and the immediate-dial kick) is in
  :mod:`lt_punch.punch.lt_dialer`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import libtorrent as lt

from ..types import Address
from .events import PortMapping

logger = logging.getLogger(__name__)

_DHT_PKT_RE = re.compile(r"^(==>|<==) \[([0-9.]+):(\d+)\]")

# peer_info.source flags (libtorrent peer_info::peer_source_flags)
SOURCE_NAMES = {
    0x1: "tracker",
    0x2: "dht",
    0x4: "pex",
    0x8: "lsd",
    0x10: "resume_data",
    0x20: "incoming",
}


def dht_reply_ip(alert: Any, reflector: Address) -> Address | None:
    """Our public UDP endpoint from a DHT reply of ``reflector``, else None."""
    if not isinstance(alert, lt.dht_pkt_alert):
        return None
    m = _DHT_PKT_RE.match(alert.message())
    if m is None or m.group(1) != "<==" or (m.group(2), int(m.group(3))) != reflector:
        return None
    try:
        msg: Any = lt.bdecode(alert.pkt_buf)  # keys are bytes; the stubs say str
    except Exception:
        return None
    if not isinstance(msg, dict):
        return None
    ip = msg.get(b"ip")
    if not isinstance(ip, bytes) or len(ip) != 6:
        return None
    return ".".join(str(b) for b in ip[:4]), int.from_bytes(ip[4:6], "big")


def open_udp(session: lt.session, endpoint: Address) -> None:
    """Send one packet from libtorrent's UDP socket to ``endpoint`` (a DHT query)."""
    session.add_dht_node(endpoint)


def portmap_transport_name(value: Any) -> str:
    """``natpmp`` / ``upnp`` for a port mapping alert's ``map_transport``."""
    return {int(lt.portmap_transport.natpmp): "natpmp",
            int(lt.portmap_transport.upnp): "upnp"}.get(int(value), str(value))


def portmap_protocol_name(value: Any) -> str:
    """``tcp`` / ``udp`` for a port mapping alert's ``map_protocol``."""
    return {int(lt.portmap_protocol.tcp): "tcp",
            int(lt.portmap_protocol.udp): "udp"}.get(int(value), str(value))


def port_mapping(alert: Any) -> tuple[tuple[str, str], PortMapping]:
    """A port mapping alert (success or error) as (key, event); the key is
    (transport, protocol), or (transport, "mapping-N") for an error, which does not
    say which protocol it was about."""
    transport = portmap_transport_name(alert.map_transport)
    if isinstance(alert, lt.portmap_alert):
        protocol = portmap_protocol_name(alert.map_protocol)
        logger.info("port mapping: %s %s external port %d", transport, protocol,
                    alert.external_port)
        return (transport, protocol), PortMapping(transport, protocol,
                                                  int(alert.external_port), None)
    logger.info("port mapping via %s failed: %s", transport, alert.error.message())
    return ((transport, f"mapping-{int(alert.mapping)}"),
            PortMapping(transport, None, None, alert.error.message()))
