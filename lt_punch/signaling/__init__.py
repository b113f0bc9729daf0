"""Signaling: rooms by infohash, relay of punch messages, observed-endpoint echo.

``protocol`` and ``rooms`` do no I/O; ``server`` and ``client`` are the asyncio shells;
``reflector`` answers DHT queries with the sender's address (BEP 42 ``ip``).
"""

from __future__ import annotations

from .client import SignalingClient, SignalingClosed, whoami
from .protocol import Message, MessageError, PeerInfo, normalize_infohash, parse_message
from .server import SignalingServer

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
