"""The signaling server's defences, without I/O: tokens, rate limits, address checks.

Tokens
    ``v1.<expires>.<mac>``: ``expires`` is a Unix time in seconds, ``mac`` the hex
    HMAC-SHA256, keyed with the server's shared secret, of ``"<peer_id>\\n<expires>"``.
    A token authorises one peer id until it expires; :func:`make_token` (and
    ``lt-punch signal token``) issue them, :func:`check_token` verifies them in constant
    time. Over HTTP the same pair goes in ``Authorization: Basic`` (RFC 7617: user-id
    = peer id, password = token), read by :func:`check_authorization`. Every refusal is
    a :class:`~.rooms.RoomError` whose message never contains the token.

Rate limits
    :class:`TokenBucket`: ``rate`` messages per second on average, bursts of ``burst``.

Candidate addresses
    :func:`check_candidate` refuses loopback, multicast, broadcast, unspecified and
    link-local addresses unless LAN mode allows them (a server on loopback, a lab).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import time
from typing import Any

from ..types import PeerId
from .protocol import MAX_TOKEN_LEN, MessageError, validate_peer_id
from .rooms import RoomError

TOKEN_VERSION = "v1"

# ASCII digits only: str.isdigit() also accepts "²" or "١", which int() then refuses or
# reads as another spelling of the same expiry. Twenty digits cover any Unix time and
# stay far below int()'s 4300-digit limit.
_EXPIRES_RE = re.compile(r"[0-9]{1,20}")


def _mac(secret: bytes, peer_id: str, expires: int) -> str:
    # surrogatepass: a peer id from JSON may hold lone surrogates; it then just fails
    # to verify instead of raising UnicodeEncodeError.
    message = f"{peer_id}\n{expires}".encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


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
            with this secret for this peer id), ``token-expired``; nothing else, for
            any ``token`` and ``peer_id`` text. The message never quotes the token.
    """
    if token is None:
        raise RoomError("auth-required", "this server needs a token: register with 'token'")
    key = secret.encode() if isinstance(secret, str) else secret
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION or not _EXPIRES_RE.fullmatch(parts[1]):
        raise RoomError("bad-token", "malformed token: expected v1.<expires>.<mac>")
    expires = int(parts[1])
    # Bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    given_mac = parts[2].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given_mac, _mac(key, peer_id, expires).encode()):
        raise RoomError("bad-token", f"token not valid for peer id {peer_id!r}")
    if expires <= (time.time() if now is None else now):
        raise RoomError("token-expired", f"token expired at {expires} (Unix time)")


def check_authorization(secret: str | bytes, header: str | None,
                        now: float | None = None) -> PeerId:
    """The peer id of an HTTP ``Authorization: Basic <base64 of peer_id:token>`` header
    whose token :func:`check_token` accepts.

    A token is bound to a peer id, so the credential is the pair, which is what the
    Basic scheme carries (``curl -u alice:v1.…``); peer ids contain no ``:``.

    Raises:
        RoomError: ``auth-required`` (no header), ``bad-token`` (another scheme, bad
            base64, no ``:``, not a peer id, or a token :func:`check_token` refuses),
            ``token-expired``.
    """
    if header is None:
        raise RoomError("auth-required", "this server needs a credential: "
                                         "Authorization: Basic <base64 of peer_id:token>")
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise RoomError("bad-token", "expected Authorization: Basic <base64 of peer_id:token>")
    try:
        # Room for the longest peer id, ':' and the longest token, in base64.
        if len(param) > 4 * (64 + 1 + MAX_TOKEN_LEN) // 3 + 4:
            raise ValueError("too long")
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise RoomError("bad-token", "Basic credential is not base64 of UTF-8 "
                                     "'peer_id:token'") from None
    user, colon, token = decoded.partition(":")
    if not colon:
        raise RoomError("bad-token", "Basic credential has no ':' between peer id and token")
    try:
        peer_id = validate_peer_id(user, "user-id")
    except MessageError:
        raise RoomError("bad-token", "the Basic credential's user-id is not a peer id") from None
    check_token(secret, token, peer_id, now)
    return peer_id


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
    ``udp``/``tcp``/``endpoint`` and a punch's ``relayed``/``probe`` as ``[host, port]``,
    ``candidates`` as a list of them."""
    found: list[tuple[str, str]] = []
    for key in ("udp", "tcp", "endpoint", "relayed", "probe"):
        value = data.get(key)
        if isinstance(value, list) and value and isinstance(value[0], str):
            found.append((key, value[0]))
    listed = data.get("candidates")
    for i, value in enumerate(listed if isinstance(listed, list) else ()):
        if isinstance(value, list) and value and isinstance(value[0], str):
            found.append((f"candidates[{i}]", value[0]))
    return found
