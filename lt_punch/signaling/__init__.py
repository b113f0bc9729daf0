"""Signaling: rooms by infohash, relay of punch messages, observed-endpoint echo.

``protocol``, ``rooms``, ``security``, ``admission`` and ``retry`` do no I/O; ``server``
(with ``connections``, ``dispatch``, ``routes``, ``metrics``) and ``client`` (with
``link``, ``pending``, ``events``) are the asyncio shells; ``mapping`` has
:func:`whoami` (a local TCP port's public mapping, over aiohttp; not named
``whoami.py``, which would shadow the function on this package);
``reflector`` answers DHT queries with the sender's address (BEP 42 ``ip``).

Names are imported lazily (PEP 562), so ``import lt_punch.signaling.protocol`` loads no
websockets, aiohttp, redis or prometheus_client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .client import SignalingClient, SignalingClosed
    from .mapping import whoami
    from .protocol import Message, MessageError, PeerInfo, normalize_infohash, parse_message
    from .server import SignalingServer

_LAZY = {
    "Message": ".protocol",
    "MessageError": ".protocol",
    "PeerInfo": ".protocol",
    "SignalingClient": ".client",
    "SignalingClosed": ".client",
    "SignalingServer": ".server",
    "normalize_infohash": ".protocol",
    "parse_message": ".protocol",
    "whoami": ".mapping",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "Message",
    "MessageError",
    "PeerInfo",
    "SignalingClient",
    "SignalingClosed",
    "SignalingServer",
    "normalize_infohash",
    "parse_message",
    "whoami",
]
