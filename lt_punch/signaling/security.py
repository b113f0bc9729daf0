"""The signaling server's defences, without I/O: tokens, rate limits, address checks.

Tokens
    ``v1.<expires>.<mac>``: ``expires`` is a Unix time in seconds, ``mac`` the hex
    HMAC-SHA256, keyed with the server's shared secret, of ``"<peer_id>\\n<expires>"``.
    A token authorises one peer id until it expires; :func:`make_token` (and
    ``lt-punch signal token``) issue them, :func:`check_token` verifies them in constant
    time.

Rate limits
    :class:`TokenBucket`: ``rate`` messages per second on average, bursts of ``burst``.

Candidate addresses
    :func:`check_candidate` refuses loopback, multicast, broadcast, unspecified and
    link-local addresses unless LAN mode allows them (a server on loopback, a lab).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from typing import Any

from .rooms import RoomError

TOKEN_VERSION = "v1"


def _mac(secret: bytes, peer_id: str, expires: int) -> str:
    return hmac.new(secret, f"{peer_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def make_token(secret: str | bytes, peer_id: str, ttl: float = 3600.0,
               now: float | None = None) -> str:
    """A token for ``peer_id`` valid ``ttl`` seconds from ``now``."""
    key = secret.encode() if isinstance(secret, str) else secret
    expires = int((time.time() if now is None else now) + ttl)
    return f"{TOKEN_VERSION}.{expires}.{_mac(key, peer_id, expires)}"


def check_token(secret: str | bytes, token: str | None, peer_id: str,
                now: float | None = None) -> None:
    """Accept ``token`` for ``peer_id`` or raise.

    Raises:
        RoomError: ``auth-required`` (no token), ``bad-token`` (malformed, or not made
            with this secret for this peer id), ``token-expired``.
    """
    if token is None:
        raise RoomError("auth-required", "this server needs a token: register with 'token'")
    key = secret.encode() if isinstance(secret, str) else secret
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION or not parts[1].isdigit():
        raise RoomError("bad-token", "malformed token: expected v1.<expires>.<mac>")
    expires = int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(key, peer_id, expires)):
        raise RoomError("bad-token", f"token not valid for peer id {peer_id!r}")
    if expires <= (time.time() if now is None else now):
        raise RoomError("token-expired", f"token expired at {expires} (Unix time)")


class TokenBucket:
    """``rate`` events per second, bursts up to ``burst``; :meth:`take` says whether
    one more event fits now."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_clock")

    def __init__(self, rate: float, burst: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._clock = clock
        self._stamp: float = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    @property
    def full(self) -> bool:
        """Refilled to the burst size (an idle bucket that can be forgotten)."""
        return bool(self._tokens + (self._clock() - self._stamp) * self.rate >= self.burst)


def check_candidate(host: str, *, lan_mode: bool, where: str) -> None:
    """Refuse a candidate address no remote peer can use.

    Raises:
        RoomError: ``bad-candidate`` naming ``where`` and the address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RoomError("bad-candidate", f"{where}: not an IP address: {host!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    kind = None
    if ip.is_multicast:
        kind = "multicast"
    elif ip.is_unspecified:
        kind = "unspecified"
    elif isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        kind = "broadcast"
    elif lan_mode:
        return
    elif ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local"
    if kind is not None:
        raise RoomError("bad-candidate", f"{where}: {kind} address {host} is not a usable "
                                         "candidate")


def candidates_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, host) of the addresses in lt_punch metadata or punch messages:
    ``udp``/``tcp``/``endpoint`` as ``[host, port]``, ``candidates`` as a list of them."""
    found: list[tuple[str, str]] = []
    for key in ("udp", "tcp", "endpoint"):
        value = data.get(key)
        if isinstance(value, list) and value and isinstance(value[0], str):
            found.append((key, value[0]))
    listed = data.get("candidates")
    for i, value in enumerate(listed if isinstance(listed, list) else ()):
        if isinstance(value, list) and value and isinstance(value[0], str):
            found.append((f"candidates[{i}]", value[0]))
    return found
