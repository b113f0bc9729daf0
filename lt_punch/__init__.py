"""lt_punch: libtorrent peers behind NATs find each other by infohash and connect.

Public API (imported lazily, so the parts that need no libtorrent work without it)::

    from lt_punch import EnhancedTorrentSession, P2PCoordinator, Config
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

# Eager: Config and the exceptions need only the standard library.
from ._lazy import lazy_attributes
from .config import Config
from .errors import (
    ConfigError,
    LabError,
    LocalProtocolError,
    LtPunchError,
    LtTimeoutError,
    NATDiscoveryError,
    ProtocolError,
    PunchError,
    RemoteProtocolError,
    SignalingError,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .coordinator import P2PCoordinator
    from .torrent.session import EnhancedTorrentSession

__version__ = "0.1.0"

# PEP 562: these import libtorrent (and aiohttp, websockets), so only on first use;
# `import lt_punch.nat.stun` or `lt-punch signal serve` must work without libtorrent.
_LAZY = {
    "EnhancedTorrentSession": "lt_punch.torrent.session",
    "P2PCoordinator": "lt_punch.coordinator",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "Config",
    "ConfigError",
    "EnhancedTorrentSession",
    "LabError",
    "LocalProtocolError",
    "LtPunchError",
    "LtTimeoutError",
    "NATDiscoveryError",
    "P2PCoordinator",
    "ProtocolError",
    "PunchError",
    "RemoteProtocolError",
    "SignalingError",
]
