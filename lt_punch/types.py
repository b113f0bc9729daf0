"""Small shared types."""

from __future__ import annotations

from typing import NewType

InfoHash = NewType("InfoHash", str)
"""Lower-case hex infohash: 40 characters (v1, SHA-1) or 64 (v2, SHA-256)."""

PeerId = NewType("PeerId", str)
"""Identifier of an lt_punch peer on the signaling server."""

Address = tuple[str, int]
"""An (IPv4 address, port) pair."""
