"""NAT discovery: a sans-I/O STUN codec, a small STUN server, and NAT type detection.

``stun`` (codec) and ``info`` (NATInfo) do no I/O; ``server`` and ``detect`` are the
asyncio shells. Names are imported lazily so that ``import lt_punch.nat.stun`` pulls
in no asyncio, socket or pystun3. Nothing here imports libtorrent.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CLASSIC_NAMES": "info",
    "NAT_TYPES": "info",
    "PYSTUN_TYPES": "info",
    "NATInfo": "info",
    "from_pystun": "info",
    "ServerStats": "server",
    "StunResponder": "server",
    "StunServer": "server",
    "StunMessage": "stun",
    "classify_local": "detect",
    "detect_nat": "detect",
    "route_local_ip": "detect",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
