"""NAT discovery: a sans-I/O STUN codec, a small STUN server, and RFC 5780 discovery.

``stun`` (codec) and ``info`` (NATInfo) do no I/O; ``server`` and ``discover`` are the
asyncio shells. Names are imported lazily so that ``import lt_punch.nat.stun`` pulls
in no asyncio or sockets. Nothing here imports libtorrent. (pystun3, the classic
RFC 3489 client, is the lab's independent reference: :mod:`lt_punch.netlab.probe`.)
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "CLASSIC_NAMES": ".info",
    "NAT_TYPES": ".info",
    "PYSTUN_TYPES": ".info",
    "NATInfo": ".info",
    "from_pystun": ".info",
    "ServerStats": ".server",
    "StunResponder": ".server",
    "StunServer": ".server",
    "StunMessage": ".stun",
    "NATTest": ".info",
    "Retransmission": ".discover",
    "discover_nat": ".discover",
    "route_local_ip": ".discover",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = sorted(_LAZY)
