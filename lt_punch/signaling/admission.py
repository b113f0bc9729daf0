"""Who may connect to the signaling server, and how fast they may talk. No I/O.

Two kinds of limit keep one client from starving the others:

- concurrent connections per client address (``max_connections_per_address``, 0 for
  none);
- messages, per connection (``rate`` per second, bursts of ``burst``) and, summed over
  all its connections, per client address (``address_rate``, ``address_burst``).

Addresses in ``trusted`` networks are exempt from both per-address limits (a reverse
proxy terminating TLS connects from loopback, on behalf of every client). A connection
whose messages are refused ``max_refusals`` times in a row is to be closed.

The shell calls :meth:`Admission.admit` when a connection opens, :meth:`Quota.take`
for each message, :meth:`Admission.release` when it closes and :meth:`Admission.sweep`
now and then; each returns a decision, the shell sends and closes. The clock is injected
(``time.monotonic`` by default).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..types import Address
from .security import TokenBucket

__all__ = ["Admission", "Quota", "Verdict", "address_of"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_of(raw: Any) -> Address:
    """``(host, port)`` of a socket address as asyncio reports it (IPv6 ones have four
    items); ``("", 0)`` when there is none (a closed transport gives ``None``)."""
    if isinstance(raw, tuple | list) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return ("", 0)


class Verdict(enum.Enum):
    """What to do with one message of a connection."""

    ACCEPT = "accept"
    """Within the limits: handle it."""
    REFUSE = "refuse"
    """Over a limit: answer ``rate-limited`` and drop the message."""
    CLOSE = "close"
    """Over a limit ``max_refusals`` times in a row: close the connection."""


class Quota:
    """One connection's message allowance: its own bucket, and its address's bucket
    unless the address is trusted."""

    __slots__ = ("_bucket", "_address_bucket", "_max_refusals", "refusals")

    def __init__(self, bucket: TokenBucket, address_bucket: TokenBucket | None,
                 max_refusals: int) -> None:
        self._bucket = bucket
        self._address_bucket = address_bucket
        self._max_refusals = max_refusals
        self.refusals = 0
        """Messages refused in a row, up to the current one."""

    def take(self) -> Verdict:
        """Count one more message of this connection."""
        # The address bucket pays only for messages the connection's own bucket allows.
        if self._bucket.take() and (self._address_bucket is None
                                    or self._address_bucket.take()):
            self.refusals = 0
            return Verdict.ACCEPT
        self.refusals += 1
        return Verdict.CLOSE if self.refusals >= self._max_refusals else Verdict.REFUSE


class Admission:
    """Connection and message limits per client address (see the module docstring).

    Raises:
        ValueError: a rate or burst is not positive, ``max_connections_per_address`` is
            negative or ``max_refusals`` below 1.
    """

    def __init__(
        self,
        *,
        rate: float = 50.0,
        burst: float = 200.0,
        address_rate: float = 500.0,
        address_burst: float = 2000.0,
        max_connections_per_address: int = 256,
        trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128"),
        max_refusals: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("rate", rate), ("burst", burst), ("address_rate", address_rate),
                            ("address_burst", address_burst)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0")
        if max_connections_per_address < 0 or max_refusals < 1:
            raise ValueError("max_connections_per_address must be >= 0, max_refusals >= 1")
        self.rate, self.burst = rate, burst
        self.address_rate, self.address_burst = address_rate, address_burst
        self.max_connections_per_address = max_connections_per_address
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in trusted)
        self.max_refusals = max_refusals
        self._clock = clock
        self._per_address: Counter[str] = Counter()
        self._address_buckets: dict[str, TokenBucket] = {}

    def is_trusted(self, ip: str) -> bool:
        """Is ``ip`` exempt from the per-address limits?"""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def admit(self, ip: str) -> Quota | None:
        """A new connection from ``ip``: its :class:`Quota`, or ``None`` when ``ip``
        already holds ``max_connections_per_address`` connections (refuse it; do not
        :meth:`release` it)."""
        limited = not self.is_trusted(ip)
        if limited and self.max_connections_per_address and \
                self._per_address[ip] >= self.max_connections_per_address:
            return None
        self._per_address[ip] += 1
        return Quota(TokenBucket(self.rate, self.burst, self._clock),
                     self._address_bucket(ip) if limited else None, self.max_refusals)

    def release(self, ip: str) -> None:
        """A connection :meth:`admit` accepted from ``ip`` closed."""
        self._per_address[ip] -= 1
        if self._per_address[ip] <= 0:
            del self._per_address[ip]

    def sweep(self) -> None:
        """Forget the buckets of addresses with no connection and a full bucket: a new
        bucket would be the same."""
        for ip in [ip for ip, b in self._address_buckets.items()
                   if b.full and ip not in self._per_address]:
            del self._address_buckets[ip]

    def _address_bucket(self, ip: str) -> TokenBucket:
        bucket = self._address_buckets.get(ip)
        if bucket is None:
            bucket = self._address_buckets[ip] = TokenBucket(
                self.address_rate, self.address_burst, self._clock)
        return bucket
