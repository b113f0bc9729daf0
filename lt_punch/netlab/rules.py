"""Pure description of the NAT lab: names, addresses and nftables rulesets.

Nothing here runs a command; :mod:`lt_punch.netlab.lab` feeds these values to ``ip`` and
``nft``. Keeping the rules as text makes them readable and unit-testable without root.

Theory of operation
-------------------
Every NATted side is a *router* namespace (WAN on the shared "internet" bridge, LAN towards
one *host* namespace). The NAT kinds follow RFC 4787:

========== ================================ =========================================
kind       mapping (RFC 4787 section 4.1)   filtering (RFC 4787 section 5)
========== ================================ =========================================
open       none: public address on host     none
full       endpoint-independent (EIM)       endpoint-independent (EIF): full cone
restricted endpoint-independent (EIM)       address-dependent (ADF)
host-      endpoint-independent (EIM)       address-dependent, kept per host: an address
restricted                                  any mapping sent to may reach every mapping
port       endpoint-independent (EIM)       address-and-port-dependent (APDF)
symmetric  endpoint-dependent (fully-random) address-and-port-dependent (APDF)
========== ================================ =========================================

* Mapping: plain ``masquerade`` keeps the host's source port when that port is free on the
  WAN address, which for a single host behind the router is always, so every destination
  sees the same public endpoint (EIM, section 4.1 / REQ-1). ``masquerade fully-random``
  draws a new port per 5-tuple: endpoint-dependent mapping ("symmetric").
* Filtering: the forward chain drops by default and accepts ``ct state
  established,related``: only the exact remote endpoint a flow was opened to may answer
  (APDF, section 5). For EIF and ADF, new inbound flows are DNATed to the host when their
  destination port has an outbound mapping (set ``mapped``), or, for ADF, when the pair
  (remote address, mapped port) was contacted (set ``contacted``). The sets are filled
  from outbound packets with a timeout, refreshed by every packet (RFC 4787 section 4.3:
  outbound refresh, REQ-6).
* Unsolicited packets are dropped silently, never rejected: no ICMP and no TCP RST
  (RFC 4787 section 11 / REQ-8 lets a NAT filter; silence is what home routers do).
* The router's input chain drops ``ct state new`` from the WAN: an accepted unsolicited
  packet would leave a conntrack entry on the router's own WAN port, and the host's next
  outbound flow from that port would then be mapped to another port.

Packet loss (IPv4 packets, not ARP) is applied on the internet bridge port of a side (both
directions), so it works the same for ``open`` hosts and for routers, and never makes
``sendto()`` fail with EPERM, which a drop in a host's own output hook would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigError

NAT_KINDS: Final[tuple[str, ...]] = ("open", "full", "restricted", "port", "symmetric")
"""The five kinds of the classic taxonomy (the pair matrices run over these)."""

EXTRA_KINDS: Final[tuple[str, ...]] = ("host-restricted",)
"""More kinds the lab builds: ``host-restricted`` filters per host, as some home routers
do: an address the host has sent to from *any* of its mappings may reach every mapping
(address-dependent filtering by RFC 4787's tests from one socket; a discovery that lets
one socket contact the address another socket's test waits for sees a full cone)."""

LAB_KINDS: Final[tuple[str, ...]] = NAT_KINDS + EXTRA_KINDS
"""Every kind a side may have."""

NATTED_KINDS: Final[frozenset[str]] = frozenset(LAB_KINDS) - {"open"}

PREFIX: Final = "ltp"
"""Every namespace of the lab starts with this."""

IFNAMSIZ: Final = 16
"""Linux interface names hold at most IFNAMSIZ - 1 = 15 characters."""

MAX_NETNS_NAME: Final = 32
"""Our own limit for namespace names (the kernel allows far more; short is readable)."""

MAX_SIDES: Final = 40

INTERNET_NET: Final = "203.0.113"
"""TEST-NET-3 (RFC 5737): the lab's "internet" segment, a /24."""

SERVER_IPS: Final[tuple[str, str]] = (f"{INTERNET_NET}.1", f"{INTERNET_NET}.2")

STUN_PORT: Final = 3478
STUN_ALT_PORT: Final = 3479
TURN_PORT: Final = 3480
"""The lab's TURN server (coturn with TCP relays), on the first server address."""

DEFAULT_MAPPING_TIMEOUT: Final = 120
"""Seconds an EIF/ADF filter entry lives after the last outbound packet.

RFC 4787 section 4.3, REQ-5: a UDP mapping timer must not expire in less than two minutes.
"""

# Interface names. Veths are created inside the namespaces, so these only need to be unique
# within one namespace; the names never appear in the root namespace.
BRIDGE_IF: Final = "br0"
WAN_IF: Final = "wan"
LAN_IF: Final = "lan"
HOST_IF: Final = "eth0"
SERVER_PORT_IF: Final = "psrv"

_NAME_RE: Final = re.compile(rf"^{PREFIX}(?P<pid>\d+)-(?P<token>[0-9a-z]+)-(?P<role>[a-z0-9]+)$")


@dataclass(frozen=True)
class SidePlan:
    """Names and addresses of one side of the lab."""

    name: str
    """The caller's name for the side (free string)."""
    index: int
    """1-based position of the side; used in names and addresses."""
    kind: str
    """One of :data:`NAT_KINDS`."""
    host_ns: str
    """Namespace of the host."""
    router_ns: str | None
    """Namespace of the router, None for ``open``."""
    lan_ip: str
    """The host's own address (public for ``open``)."""
    public_ip: str
    """The address the internet sees: router WAN address, or the host's for ``open``."""
    router_lan_ip: str | None
    """The router's LAN address (the host's gateway), None for ``open``."""
    bridge_port: str
    """Name of this side's port on the internet bridge (inside the internet namespace)."""
    loss: int
    """Percent of packets dropped in each direction on the bridge port."""

    @property
    def is_natted(self) -> bool:
        """Whether a router namespace sits between the host and the internet."""
        return self.router_ns is not None


@dataclass(frozen=True)
class LabPlan:
    """Everything needed to build a lab, computed without touching the system."""

    token: str
    """Short per-run token: ``<pid>-<random>``."""
    internet_ns: str
    server_ns: str
    server_ips: tuple[str, str]
    sides: tuple[SidePlan, ...]

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, in creation order."""
        names = [self.internet_ns, self.server_ns]
        for side in self.sides:
            if side.router_ns is not None:
                names.append(side.router_ns)
            names.append(side.host_ns)
        return tuple(names)

    def side(self, name: str) -> SidePlan:
        """Return the side called ``name``.

        Raises:
            KeyError: no such side.
        """
        for side in self.sides:
            if side.name == name:
                return side
        raise KeyError(name)


def ns_name(pid: int, rand: str, role: str) -> str:
    """Build a namespace name that encodes the creating process id.

    Args:
        pid: process id of the creator, so :func:`parse_ns_name` can find dead runs.
        rand: short random token (lowercase letters and digits) separating runs of one process.
        role: ``inet``, ``srv``, ``r<i>`` or ``h<i>``.
    """
    return f"{PREFIX}{pid}-{rand}-{role}"


def parse_ns_name(name: str) -> tuple[int, str, str] | None:
    """Return ``(pid, rand, role)`` for a lab namespace name, or None for any other name."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    return int(match["pid"]), match["token"], match["role"]


def plan_lab(
    sides: dict[str, str],
    *,
    pid: int,
    rand: str,
    loss: dict[str, int] | None = None,
) -> LabPlan:
    """Compute names and addresses of a lab.

    Args:
        sides: side name -> kind (one of :data:`NAT_KINDS`), in the order given.
        pid: creating process id (encoded in the namespace names).
        rand: short random token, e.g. ``secrets.token_hex(2)``.
        loss: side name -> percent (0-100) of packets dropped in each direction.

    Raises:
        ConfigError: unknown kind, unknown side in ``loss``, loss out of range, too many
            sides (ConfigError is also a ValueError).
    """
    loss = dict(loss or {})
    if not sides:
        raise ConfigError("a lab needs at least one side")
    if len(sides) > MAX_SIDES:
        raise ConfigError(f"at most {MAX_SIDES} sides, got {len(sides)}")
    if "server" in sides:
        raise ConfigError("'server' is reserved for the server namespace")
    for name, kind in sides.items():
        if kind not in LAB_KINDS:
            raise ConfigError(
                f"side {name!r}: unknown NAT kind {kind!r}, expected one of {LAB_KINDS}"
            )
    for name, percent in loss.items():
        if name not in sides:
            raise ConfigError(f"loss given for unknown side {name!r}")
        if not 0 <= percent <= 100:
            raise ConfigError(f"side {name!r}: loss must be 0-100 percent, got {percent}")
    if not re.fullmatch(r"[0-9a-z]{1,8}", rand):
        raise ConfigError(f"bad token {rand!r}")

    planned = []
    for index, (name, kind) in enumerate(sides.items(), start=1):
        public_ip = f"{INTERNET_NET}.{10 + index}"
        natted = kind in NATTED_KINDS
        planned.append(
            SidePlan(
                name=name,
                index=index,
                kind=kind,
                host_ns=ns_name(pid, rand, f"h{index}"),
                router_ns=ns_name(pid, rand, f"r{index}") if natted else None,
                lan_ip=f"10.{index}.0.2" if natted else public_ip,
                public_ip=public_ip,
                router_lan_ip=f"10.{index}.0.1" if natted else None,
                bridge_port=f"p{index}",
                loss=loss.get(name, 0),
            )
        )
    return LabPlan(
        token=f"{pid}-{rand}",
        internet_ns=ns_name(pid, rand, "inet"),
        server_ns=ns_name(pid, rand, "srv"),
        server_ips=SERVER_IPS,
        sides=tuple(planned),
    )


def router_ruleset(
    kind: str,
    *,
    host_ip: str,
    wan_if: str = WAN_IF,
    lan_if: str = LAN_IF,
    mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT,
) -> str:
    """Return the nftables ruleset (``nft -f`` text) of a router of the given kind.

    Args:
        kind: ``full``, ``restricted``, ``port`` or ``symmetric``.
        host_ip: the LAN address of the single host behind the router (DNAT target).
        wan_if: the router's internet-facing interface.
        lan_if: the router's host-facing interface.
        mapping_timeout: seconds an EIF/ADF filter entry outlives the last outbound packet.

    Raises:
        ValueError: ``kind`` is not a NATted kind.
    """
    if kind not in NATTED_KINDS:
        raise ValueError(f"no router for kind {kind!r}; NATted kinds are {sorted(NATTED_KINDS)}")
    l4 = "meta l4proto { tcp, udp }"
    sets: list[str] = []
    dnat: list[str] = []
    record: list[str] = []
    if kind == "full":
        # RFC 4787 section 5, endpoint-independent filtering: any remote endpoint may send to
        # a public port that has a mapping.
        sets.append(_set("mapped", "inet_proto . inet_service", mapping_timeout))
        record.append(
            f'iifname "{lan_if}" oifname "{wan_if}" {l4} '
            "update @mapped { meta l4proto . th sport }"
        )
        dnat.append(
            f'iifname "{wan_if}" {l4} meta l4proto . th dport @mapped dnat ip to {host_ip}'
        )
    elif kind == "restricted":
        # RFC 4787 section 5, address-dependent filtering: only addresses the host has sent
        # to from that mapping may send to it, from any port.
        sets.append(_set("contacted", "ipv4_addr . inet_proto . inet_service", mapping_timeout))
        record.append(
            f'iifname "{lan_if}" oifname "{wan_if}" {l4} '
            "update @contacted { ip daddr . meta l4proto . th sport }"
        )
        dnat.append(
            f'iifname "{wan_if}" {l4} ip saddr . meta l4proto . th dport @contacted '
            f"dnat ip to {host_ip}"
        )
    elif kind == "host-restricted":
        # Address-dependent filtering kept per host, not per mapping: any address the
        # host has sent to, from whichever port, may send to any of its mapped ports.
        sets.append(_set("mapped", "inet_proto . inet_service", mapping_timeout))
        sets.append(_set("hosts", "ipv4_addr", mapping_timeout))
        record.append(
            f'iifname "{lan_if}" oifname "{wan_if}" {l4} '
            "update @mapped { meta l4proto . th sport }"
        )
        record.append(f'iifname "{lan_if}" oifname "{wan_if}" {l4} update @hosts {{ ip daddr }}')
        dnat.append(
            f'iifname "{wan_if}" {l4} ip saddr @hosts meta l4proto . th dport @mapped '
            f"dnat ip to {host_ip}"
        )
    # RFC 4787 section 4.1: masquerade keeps the source port when free -> endpoint-independent
    # mapping; fully-random picks a fresh port for every flow -> endpoint-dependent mapping.
    masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"

    lines = ["table ip ltp_nat {"]
    for block in sets:
        lines.append(block)
    lines += [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f"\t\t{rule}" for rule in dnat),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f'\t\toifname "{wan_if}" {masquerade}',
        "\t}",
        "\tchain forward {",
        # Silently drop what is not allowed: no ICMP, no RST.
        "\t\ttype filter hook forward priority filter; policy drop;",
        # Outbound packets refresh the filter sets before the fast path accepts them
        # (RFC 4787 section 4.3, REQ-6: outbound refresh).
        *(f"\t\t{rule}" for rule in record),
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        f'\t\tiifname "{lan_if}" oifname "{wan_if}" accept',
    ]
    # Inbound flows the prerouting chain DNATed: the EIF/ADF rules above, or a port
    # mapping the host asked for (NAT-PMP, :mod:`lt_punch.netlab.natpmp`).
    lines.append(f'\t\tiifname "{wan_if}" oifname "{lan_if}" ct status dnat accept')
    lines += [
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        # Unconfirmed conntrack entries of dropped packets vanish; accepted ones would hold
        # the WAN port and push the host's next mapping to another port.
        f'\t\tiifname "{wan_if}" ct state new,invalid drop',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def loss_ruleset(ports: dict[str, int]) -> str:
    """Return the nftables ruleset of the internet bridge that drops packets at random.

    Args:
        ports: bridge port name -> percent dropped in each direction (0 = no rule).
    """
    rules = []
    for port, percent in ports.items():
        if percent <= 0:
            continue
        # numgen random mod 100 gives 0..99: "< N" matches N percent of packets. IPv4
        # only: ARP is an artefact of emulating the internet with one bridge (a real
        # lossy path has none), and a lost ARP reply would stall a whole burst for the
        # kernel's 1 s ARP retry instead of losing single packets.
        rules.append(f'\t\tiifname "{port}" ether type ip numgen random mod 100 < {percent} '
                     "drop")
        rules.append(f'\t\toifname "{port}" ether type ip numgen random mod 100 < {percent} '
                     "drop")
    lines = [
        "table bridge ltp_loss {",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        *rules,
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _set(name: str, key_type: str, timeout: int) -> str:
    return (
        f"\tset {name} {{\n"
        f"\t\ttype {key_type}\n"
        "\t\tflags timeout\n"
        f"\t\ttimeout {timeout}s\n"
        "\t}"
    )
