"""Which traversal methods fit a pair of NATs, in which order, and how likely each works.

Pure rules, no I/O, no libtorrent: :func:`recommend_strategy` gives the same answer on
both ends of a pair (mirrored roles) because both sides feed it the same two NAT
summaries, ours from discovery and the peer's from its signaling metadata.

The roles follow :mod:`lt_punch.punch.plan`: the side behind the harder NAT
(:data:`~lt_punch.punch.plan.NAT_RANK`) initiates; on a tie the peer ids decide
(``"either"`` here). ``unknown`` counts as a port-restricted cone and
``symmetric-firewall`` (public address, filtered) behaves like one.

* ``direct``: the responder is ``open``: a plain ``connect_peer`` reaches it.
* ``utp-punch``: the responder's mapping is endpoint-independent (not symmetric), so
  the public UDP endpoint the reflector saw is the one the initiator must dial; a
  symmetric initiator also needs the responder to filter by address only
  (``open``/``full``/``restricted``), as its packets come from a new port. Nobody may be
  ``blocked`` (no UDP).
* ``tcp-simultaneous-open``: neither side symmetric (the peer cannot know the port of a
  new TCP mapping) nor blocked (nothing measured), and not both full cones (the first
  SYN is let in before the other host has a socket for it: RST).
* ``udp-stream``: neither side symmetric (unless the other is open) nor blocked, and
  both sides' NATs known (each maps a socket of its own with STUN): a UDP punch between
  those sockets carries lt_punch's loss-tolerant stream (:mod:`lt_punch.punch.arq`);
  after ``utp-punch``, and what a pair turns to once a TCP or uTP connection stalled
  or crawled (a sign of loss).
* ``port-prediction``: one symmetric side against a cone (full, restricted, port): the
  birthday punch (:mod:`lt_punch.punch.predict`) finds a pair of ports whatever the
  symmetric NAT's allocation (random or sequential); it needs the cone side's STUN
  discovery. Two symmetric NATs cannot be predicted this way.
* ``relay``: always possible with a TURN server; always last.

``expected_success`` comes from measurements, not guesses: :data:`MEASURED_SUCCESS`
holds the fraction of lab runs (``benchmarks/pair_matrix.py``, figures in
docs/performance.md) in which each method delivered a verified download for that pair of
NAT kinds; None where the lab has no such pair or the method was not measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..errors import ConfigError
from ..nat.info import NAT_TYPES, NATInfo
from .plan import CONE_NATS, FULL_CONE_TCP_RACE, NAT_RANK

STRATEGY_METHODS: Final = (
    "direct",
    "tcp-simultaneous-open",
    "utp-punch",
    "udp-stream",
    "port-prediction",
    "relay",
)
"""Every method a strategy may list, in the order they are tried (the default
``Config.methods``: TCP before uTP, whose libtorrent implementation freezes under
loss and carries less without it, docs/performance.md)."""

# Endpoint-independent filtering towards the ports of a host we have sent to
# (RFC 4787 section 5): a symmetric initiator's packets come from a port the responder
# has not seen, so only these responders let them in.
_ADDRESS_FILTERING = frozenset({"open", "full", "restricted"})

MEASURED_SUCCESS: Final[dict[tuple[str, str], dict[str, float]]] = {
    # 5 runs per cell, 2026-11-25 (docs/performance.md). tcp 0.0 between two full cones
    # and across a symmetric NAT: the engine no longer attempts those (0/5 when it did).
    ("open", "open"): {"utp": 1.0, "tcp": 1.0},
    ("open", "full"): {"utp": 1.0, "tcp": 1.0},
    ("open", "restricted"): {"utp": 1.0, "tcp": 1.0},
    ("open", "port"): {"utp": 1.0, "tcp": 1.0},
    ("open", "symmetric"): {"utp": 1.0, "tcp": 1.0},
    ("full", "full"): {"utp": 1.0, "tcp": 0.0},
    ("full", "restricted"): {"utp": 1.0, "tcp": 1.0},
    ("full", "port"): {"utp": 1.0, "tcp": 1.0},
    ("full", "symmetric"): {"utp": 1.0, "tcp": 0.0},
    ("restricted", "restricted"): {"utp": 1.0, "tcp": 1.0},
    ("restricted", "port"): {"utp": 1.0, "tcp": 1.0},
    ("restricted", "symmetric"): {"utp": 1.0, "tcp": 0.0},
    ("port", "port"): {"utp": 1.0, "tcp": 1.0},
    ("port", "symmetric"): {"utp": 0.0, "tcp": 0.0, "predict": 1.0},
    ("symmetric", "symmetric"): {"utp": 0.0, "tcp": 0.0, "relay": 1.0},
}
"""(kind, kind) in :data:`~lt_punch.netlab.rules.NAT_KINDS` order -> engine method
(``utp``/``tcp``; with an ``open`` side the engine dials it directly; ``predict`` and
``relay`` where they are what connects) -> fraction of lab runs that succeeded. Produced
by ``benchmarks/pair_matrix.py --runs 5`` (2026-11-25); ``predict`` and ``relay``
2026-12-02, 20 runs each (``--methods utp,tcp,predict`` and ``utp,tcp,relay``)."""

MEASUREMENT_SOURCE: Final = "NAT lab, benchmarks/pair_matrix.py --runs 5 (docs/performance.md)"

_LAB_ORDER = ("open", "full", "restricted", "port", "symmetric")
_ENGINE_METHOD = {"utp-punch": "utp", "tcp-simultaneous-open": "tcp", "udp-stream": "udp",
                  "port-prediction": "predict", "relay": "relay"}


def _summary(value: NATInfo | Mapping[str, Any] | str | None, what: str) -> tuple[str, str | None]:
    """``(nat_type, allocation)`` from a NATInfo, its dict / signaling summary, or a name."""
    if value is None:
        return "unknown", None
    if isinstance(value, NATInfo):
        nat, allocation = value.nat_type, value.allocation
    elif isinstance(value, Mapping):
        nat, allocation = value.get("nat_type", "unknown"), value.get("allocation")
    else:
        nat, allocation = value, None
    if nat not in NAT_RANK:
        raise ConfigError(f"{what}: unknown NAT type {nat!r} (known: {', '.join(NAT_TYPES)})")
    return nat, allocation if isinstance(allocation, str) else None


def measured(a: str, b: str, method: str) -> float | None:
    """The lab's success fraction for ``method`` between kinds ``a`` and ``b``, or None."""
    if a not in _LAB_ORDER or b not in _LAB_ORDER:
        return None
    pair = (a, b) if _LAB_ORDER.index(a) <= _LAB_ORDER.index(b) else (b, a)
    row = MEASURED_SUCCESS.get(pair, {})
    if method == "direct":
        if "open" not in pair:
            return None
        rates = list(row.values())
        return max(rates) if rates else None
    engine = _ENGINE_METHOD.get(method)
    return row.get(engine) if engine else None


def recommend_strategy(
    ours: NATInfo | Mapping[str, Any] | str | None,
    peer: NATInfo | Mapping[str, Any] | str | None,
) -> dict[str, Any]:
    """How two hosts behind NATs ``ours`` and ``peer`` can connect (module docstring).

    Args:
        ours: our NAT: a :class:`NATInfo`, its ``to_dict()`` / signaling summary, a
            ``nat_type`` name, or None (unknown).
        peer: the peer's NAT, the same way; None when there is no peer yet (the answer
            is then for a peer behind an unknown NAT).

    Returns:
        ``{"nat", "peer_nat", "methods", "difficulty", "initiator", "excluded",
        "expected_success", "expected_success_by_method", "source"}``. ``excluded`` maps
        each method left out to the reason; ``difficulty`` is ``easy`` (direct works),
        ``medium`` (punching), ``hard`` (punching through a symmetric NAT) or
        ``impossible-without-relay``; ``expected_success`` is the best measured rate
        among the listed methods (None: not measured).

    Raises:
        ConfigError: a NAT type is not one of :data:`~lt_punch.nat.info.NAT_TYPES`.
    """
    a, alloc_a = _summary(ours, "nat")
    b, alloc_b = _summary(peer, "peer_nat")
    ra, rb = NAT_RANK[a], NAT_RANK[b]
    initiator, responder = (a, b) if ra >= rb else (b, a)
    pair = {a, b}
    excluded: dict[str, str] = {}
    methods: list[str] = []

    if responder == "open":
        methods.append("direct")
    else:
        excluded["direct"] = "neither side accepts unsolicited connections"

    if "blocked" in pair:
        excluded["utp-punch"] = "UDP is blocked"
    elif responder == "symmetric":
        excluded["utp-punch"] = "both sides have endpoint-dependent (symmetric) mappings"
    elif initiator == "symmetric" and responder not in _ADDRESS_FILTERING:
        excluded["utp-punch"] = (
            f"a symmetric initiator's new port is filtered by the {responder} side"
        )
    else:
        methods.append("utp-punch")

    if "symmetric" in pair:
        excluded["tcp-simultaneous-open"] = "cannot cross a symmetric NAT without prediction"
    elif "blocked" in pair:
        excluded["tcp-simultaneous-open"] = "nothing measured behind a blocked side"
    elif (a, b) == ("full", "full"):
        excluded["tcp-simultaneous-open"] = FULL_CONE_TCP_RACE
    else:
        methods.append("tcp-simultaneous-open")

    if "blocked" in pair:
        excluded["udp-stream"] = "UDP is blocked"
    elif "symmetric" in pair and "open" not in pair:
        excluded["udp-stream"] = "a symmetric NAT has no mapping to aim at"
    elif "unknown" in pair:
        excluded["udp-stream"] = "needs both sides' NATs discovered (a STUN mapping each)"
    else:
        methods.append("udp-stream")

    symmetric = [nat for nat in (a, b) if nat == "symmetric"]
    if not symmetric:
        excluded["port-prediction"] = "no symmetric NAT to predict"
    elif "blocked" in pair:
        excluded["port-prediction"] = "UDP is blocked"
    elif len(symmetric) == 2:
        excluded["port-prediction"] = "two symmetric NATs: no side keeps a port to aim at"
    elif responder not in CONE_NATS and initiator not in CONE_NATS:
        excluded["port-prediction"] = "needs a cone NAT (endpoint-independent mapping) opposite"
    else:
        methods.append("port-prediction")

    methods.append("relay")
    methods.sort(key=STRATEGY_METHODS.index)
    punches = [m for m in methods if m not in ("direct", "relay")]
    if "direct" in methods:
        difficulty = "easy"
    elif not punches:
        difficulty = "impossible-without-relay"
    elif "symmetric" in pair:
        difficulty = "hard"
    else:
        difficulty = "medium"
    by_method = {m: measured(a, b, m) for m in methods}
    rates = [rate for rate in by_method.values() if rate is not None]
    return {
        "nat": a,
        "peer_nat": b,
        "methods": methods,
        "difficulty": difficulty,
        "initiator": "either" if ra == rb else ("us" if ra > rb else "peer"),
        "excluded": excluded,
        "expected_success": max(rates) if rates else None,
        "expected_success_by_method": by_method,
        "source": MEASUREMENT_SOURCE,
    }


__all__ = ["MEASURED_SUCCESS", "STRATEGY_METHODS", "measured", "recommend_strategy"]
