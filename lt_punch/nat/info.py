"""What we know about the NAT in front of this host: :class:`NATInfo`.

NAT types use short names (RFC 3489 section 5 terms):

====================  ========================  ==========================================
``nat_type``          classic name              meaning
====================  ========================  ==========================================
``open``              Open Internet             no NAT, no filtering
``full``              Full Cone                 any host may send to the mapped port
``restricted``        Restricted Cone           only hosts we sent to (any of their ports)
``port``              Port-Restricted Cone      only the exact address:port we sent to
``symmetric``         Symmetric NAT             a new mapping per destination
``symmetric-firewall``  Symmetric UDP Firewall  public address, but inbound filtered
``blocked``           UDP Blocked               no STUN server answered
``unknown``           Unknown                   not measured, or the test went wrong
====================  ========================  ==========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from ..types import Address

NAT_TYPES: Final = (
    "open",
    "full",
    "restricted",
    "port",
    "symmetric",
    "blocked",
    "symmetric-firewall",
    "unknown",
)

CLASSIC_NAMES: Final[dict[str, str]] = {
    "open": "Open Internet",
    "full": "Full Cone",
    "restricted": "Restricted Cone",
    "port": "Port-Restricted Cone",
    "symmetric": "Symmetric NAT",
    "blocked": "UDP Blocked",
    "symmetric-firewall": "Symmetric UDP Firewall",
    "unknown": "Unknown",
}

# pystun3 2.0.0 spells two of its results "Restric NAT" and "Restric Port NAT"
# (stun/__init__.py); the full spellings are accepted too in case a release fixes them.
PYSTUN_TYPES: Final[dict[str, str]] = {
    "Open Internet": "open",
    "Full Cone": "full",
    "Restric NAT": "restricted",
    "Restricted NAT": "restricted",
    "Restric Port NAT": "port",
    "Restricted Port NAT": "port",
    "Symmetric NAT": "symmetric",
    "Blocked": "blocked",
    "Symmetric UDP Firewall": "symmetric-firewall",
}


def from_pystun(name: str) -> str:
    """Our ``nat_type`` for a pystun3 result; ``"unknown"`` for anything else
    (pystun3 also returns "Meet an error, when do Test1 on Changed IP and Port")."""
    return PYSTUN_TYPES.get(name, "unknown")


@dataclass(frozen=True)
class NATTest:
    """One STUN test that discovery ran."""

    name: str
    """What it tests, e.g. ``binding``, ``mapping-other-address``, ``filtering-change-port``."""
    server: str
    """``host:port`` the request went to."""
    duration: float
    """Seconds from the first send to the answer (or to giving up)."""
    outcome: str
    """``mapped IP:PORT from IP:PORT``, ``no answer``, ``error ...``."""


@dataclass(frozen=True)
class NATInfo:
    """Result of NAT discovery."""

    nat_type: str = "unknown"
    """One of :data:`NAT_TYPES`."""

    public_ip: str | None = None
    """Our address as the STUN server (or signaling server) saw it."""

    public_port: int | None = None
    """Our port as the server saw it (for the socket used for discovery)."""

    local_ip: str | None = None
    """The local address the discovery socket was bound to."""

    local_port: int | None = None
    """The local port of the discovery socket."""

    stun_server: Address | None = None
    """The STUN server that answered (or was last tried), or None."""

    duration: float = 0.0
    """Seconds the discovery took."""

    error: str | None = None
    """Why discovery failed or is incomplete; None on success."""

    source: str = "stun"
    """Where the information came from: ``"stun"``, ``"signaling"``, ``"local"``..."""

    mapping: str | None = None
    """RFC 4787 mapping behaviour: ``no-nat``, ``endpoint-independent``,
    ``address-dependent``, ``address-and-port-dependent``, ``endpoint-dependent`` (one
    of the last two, not told apart) or ``unknown``; None when not measured."""

    filtering: str | None = None
    """RFC 4787 filtering behaviour: ``endpoint-independent``, ``address-dependent``,
    ``address-and-port-dependent`` or ``unknown``; None when not measured."""

    port_preserved: bool | None = None
    """The public port equals the local port."""

    allocation: str | None = None
    """How the NAT picks public ports: ``preserved`` / ``stable`` (one mapping for every
    destination), ``sequential`` (new flows get ``port_delta`` more) or ``random``."""

    port_delta: int | None = None
    """Step between consecutive new mappings when ``allocation`` is ``sequential``."""

    confidence: float = 1.0
    """0..1: 1 when every test ran; lower for each test that could not run."""

    tests: tuple[NATTest, ...] = ()
    """The tests that ran, in the order they finished."""

    skipped: tuple[tuple[str, str], ...] = ()
    """``(test, reason)`` for the tests that could not run or were inconclusive."""

    def __post_init__(self) -> None:
        if self.nat_type not in NAT_TYPES:
            raise ValueError(f"nat_type: {self.nat_type!r} is not one of {NAT_TYPES}")

    @property
    def classic_name(self) -> str:
        return CLASSIC_NAMES[self.nat_type]

    @property
    def public_endpoint(self) -> Address | None:
        if self.public_ip is None or self.public_port is None:
            return None
        return self.public_ip, self.public_port

    @property
    def local_endpoint(self) -> Address | None:
        if self.local_ip is None or self.local_port is None:
            return None
        return self.local_ip, self.local_port

    @property
    def is_behind_nat(self) -> bool | None:
        """True/False when known, None when the measurement failed."""
        if self.nat_type in ("open", "symmetric-firewall"):
            return False
        if self.nat_type in ("blocked", "unknown"):
            return None
        return True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``stun_server`` as ``[host, port]``), plus ``classic_name``."""
        data = asdict(self)
        data["stun_server"] = list(self.stun_server) if self.stun_server else None
        data["classic_name"] = self.classic_name
        data["tests"] = [asdict(test) for test in self.tests]
        data["skipped"] = [{"test": test, "reason": reason} for test, reason in self.skipped]
        return data

    def __str__(self) -> str:
        public = f"{self.public_ip}:{self.public_port}" if self.public_endpoint else "?"
        text = f"{self.nat_type} ({self.classic_name}) public {public}"
        return f"{text} error: {self.error}" if self.error else text


__all__ = ["CLASSIC_NAMES", "NATInfo", "NATTest", "NAT_TYPES", "PYSTUN_TYPES", "from_pystun"]
