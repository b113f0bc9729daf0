"""Punching with libtorrent's own sockets (the data path never leaves libtorrent).

* ``add_dht_node(ep)`` makes libtorrent's DHT send a query to ``ep`` at once from
  its own UDP socket (the one uTP uses): that opens our NAT towards ``ep``.
* A DHT reply carries the BEP 42 ``ip`` key, our endpoint as the responder saw it:
  the public mapping of libtorrent's UDP socket. The signaling server runs a small
  DHT reflector for exactly this.
* ``connect_peer(ep)`` only queues the peer; libtorrent dials on the torrent's
  once-a-second tick. A graceful pause + resume makes it dial at once (measured
  0.001 s) but sends ``stopped``/``started`` to the torrent's trackers, so the kick
  is rate-limited for torrents that have trackers (``KICK_MIN_INTERVAL``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import libtorrent as lt

from ..types import Address

_DHT_PKT_RE = re.compile(r"^(==>|<==) \[([0-9.]+):(\d+)\]")

KICK_MIN_INTERVAL = 30.0
"""Seconds between two kicks of a torrent that has trackers."""

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


class Injector:
    """``connect_peer`` with an optional immediate dial (rate-limited kick)."""

    def __init__(self, *, kick: bool = True, clock: Any = time.monotonic) -> None:
        self.kick = kick
        self._clock = clock
        self._last_kick: dict[str, float] = {}

    def inject(self, handle: lt.torrent_handle, endpoint: Address, *, utp: bool) -> bool:
        """Add ``endpoint`` as a peer; returns True when the dial was made immediate."""
        flags = 0x4 if utp else 0  # pex_flags: utp
        handle.connect_peer(endpoint, 0, flags)
        return self._maybe_kick(handle)

    def _maybe_kick(self, handle: lt.torrent_handle) -> bool:
        if not self.kick:
            return False
        if handle.flags() & lt.torrent_flags.paused:
            return False  # the user paused it: never resume behind their back
        if handle.status().num_peers:
            # Pausing would drop the connected peers, and a graceful pause that is still
            # draining their requests completes *after* the resume: the torrent stays
            # paused. The dial waits for libtorrent's tick (~0.5 s) instead.
            return False
        key = str(handle.info_hashes().get_best())
        now = self._clock()
        if handle.trackers():
            last = self._last_kick.get(key)
            if last is not None and now - last < KICK_MIN_INTERVAL:
                return False
        self._last_kick[key] = now
        handle.pause(lt.torrent_handle.graceful_pause)
        handle.resume()
        return True


def socket_type_name(alert: Any) -> str:
    """'tcp' / 'utp' / 'rtc' from a connect alert's message (the binding has no flag)."""
    text = alert.message()
    if "(uTP)" in text:
        return "utp"
    if "(RTC)" in text:
        return "rtc"
    return "tcp"


def portmap_transport_name(value: Any) -> str:
    """``natpmp`` / ``upnp`` for a port mapping alert's ``map_transport``."""
    return {int(lt.portmap_transport.natpmp): "natpmp",
            int(lt.portmap_transport.upnp): "upnp"}.get(int(value), str(value))


def portmap_protocol_name(value: Any) -> str:
    """``tcp`` / ``udp`` for a port mapping alert's ``map_protocol``."""
    return {int(lt.portmap_protocol.tcp): "tcp",
            int(lt.portmap_protocol.udp): "udp"}.get(int(value), str(value))
