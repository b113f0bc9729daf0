"""Punch planning: roles, methods, retry schedule and the punch messages. No I/O.

Theory of operation
-------------------
Two lt_punch peers of one signaling room know each other's *public* endpoints
(the mapping of libtorrent's own UDP socket, learnt from a BEP 42 ``ip`` reply of
the signaling server's DHT reflector, and the mapping of libtorrent's outgoing
TCP port, learnt from ``GET /whoami``) and NAT kinds, from the metadata each one
registered. From those values alone both ends compute the same plan, so no extra
round trip is needed to agree on roles:

* the **initiator** is the side behind the harder NAT (rank below); on a tie the
  smaller peer id. Its packets must reach the other side's NAT after that NAT
  has been opened towards it, which an endpoint-dependent (symmetric) mapping
  makes impossible the other way round (RFC 4787 §4.1: its public port for our
  flow is unknown to the peer).
* ``utp``: the initiator sends ``punch-offer``; the responder opens its NAT
  towards the initiator's public UDP endpoint with a packet from libtorrent's own
  UDP socket (a DHT query through ``add_dht_node``), *then* sends
  ``punch-answer``; the initiator then calls ``connect_peer``. Only one side
  connects: two simultaneous uTP connects kill each other as duplicate peer ids
  (FIELD-NOTES).
* ``tcp``: TCP simultaneous open (RFC 9293 §3.5 fig. 8). The responder calls
  ``connect_peer`` on receiving the offer (its SYN opens its NAT; the initiator's
  NAT may drop it), the initiator on receiving the answer: its SYN finds the
  responder's NAT open and the responder in SYN-SENT. Both ends are then
  "outgoing", which breaks MSE/PE (both send the initiator's half), so
  sessions that punch TCP use plaintext handshakes (see README).

* ``predict``: port prediction for a symmetric NAT with random ports against a cone
  NAT, the "birthday" punch (:mod:`lt_punch.punch.predict`): the symmetric side
  (initiator) offers a secret; the cone side answers with the public mapping of a new
  probe socket and probes random ports of the symmetric side's address, which opens
  256 flows towards that mapping; the pair of sockets that meet carries a
  loss-tolerant stream of ours (:mod:`lt_punch.punch.arq`) that each libtorrent
  reaches over loopback TCP.
* ``udp``: the same path between two endpoint-independent mappings (cone NATs or an
  open host), where no prediction is needed: the initiator offers a secret and the
  STUN mapping of a new socket of ours, the responder answers with its own; both send
  probes to the other's mapping until one gets through, and the pair carries the
  stream. Slower than libtorrent's own sockets without loss (the data crosses
  Python), far faster under random loss (TCP and uTP back off): it comes after
  ``tcp`` and ``utp``, and first after a stall of either.
* ``relay``: a TURN relay (RFC 6062 TCP allocation, :mod:`lt_punch.punch.turn`), for
  the pairs no punch connects, tried last. The side that has a TURN server allocates
  (the responder when both have one): its relayed address travels in the offer (the
  initiator allocated) or in the answer (the responder did); the other side dials it
  with an ordinary outgoing TCP ``connect_peer``, which crosses any NAT. The
  allocating side bridges the connection the relay hands it into its own libtorrent
  (:mod:`lt_punch.punch.bridge`). Permissions are for the peer signaling named only.

A failed attempt is retried on a bounded schedule; each failure is recorded with
its reason.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import METHODS
from ..errors import RemoteProtocolError
from ..nat.info import NATInfo
from ..types import Address

# Harder NATs initiate. "unknown" is treated like a port-restricted cone.
NAT_RANK: dict[str, int] = {
    "open": 0,
    "full": 1,
    "restricted": 2,
    "port": 3,
    "unknown": 3,
    "symmetric-firewall": 3,
    "symmetric": 4,
    "blocked": 5,
}

# Retry schedule: delay before attempt n (seconds). Bounded: attempts beyond the
# list reuse its last value; the number of attempts comes from the config.
RETRY_DELAYS = (0.0, 0.5, 2.0, 5.0)


def retry_delay(attempt: int) -> float:
    """Delay before ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    return RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]


@dataclass(frozen=True)
class PeerProfile:
    """What a peer tells its room about itself (the ``metadata`` of ``register``)."""

    peer_id: str
    nat: str = "unknown"
    udp: Address | None = None
    tcp: Address | None = None
    methods: tuple[str, ...] = METHODS
    nat_summary: Mapping[str, Any] | None = None
    """Discovery's verdict in short (:data:`SUMMARY_FIELDS`), so that both ends of a pair
    compute the same strategy (:func:`lt_punch.punch.strategy.recommend_strategy`)."""
    turn: bool = False
    """Whether the peer has a TURN server to allocate a relay on."""

    def to_metadata(self) -> dict[str, Any]:
        return {
            "nat": self.nat,
            "udp": list(self.udp) if self.udp else None,
            "tcp": list(self.tcp) if self.tcp else None,
            "methods": list(self.methods),
            "nat_summary": dict(self.nat_summary) if self.nat_summary is not None else None,
            "turn": self.turn,
            "agent": "lt_punch",
        }

    @classmethod
    def from_metadata(cls, peer_id: str, metadata: Mapping[str, Any]) -> PeerProfile:
        """Parse a room member's metadata; raises RemoteProtocolError when invalid."""
        if not isinstance(metadata, Mapping):
            raise RemoteProtocolError(f"peer {peer_id}: metadata is not an object")
        nat = metadata.get("nat", "unknown")
        if not isinstance(nat, str) or nat not in NAT_RANK:
            raise RemoteProtocolError(f"peer {peer_id}: unknown nat {nat!r}")
        methods_raw = metadata.get("methods", list(METHODS))
        if not isinstance(methods_raw, list) or not all(
            isinstance(m, str) for m in methods_raw
        ):
            raise RemoteProtocolError(f"peer {peer_id}: methods must be a list of strings")
        methods = tuple(m for m in methods_raw if m in METHODS)
        return cls(
            peer_id=peer_id,
            nat=nat,
            udp=parse_endpoint(metadata.get("udp"), f"peer {peer_id}: udp"),
            tcp=parse_endpoint(metadata.get("tcp"), f"peer {peer_id}: tcp"),
            methods=methods,
            nat_summary=parse_summary(metadata.get("nat_summary"), f"peer {peer_id}"),
            turn=metadata.get("turn") is True,
        )

    def ips(self) -> tuple[str, ...]:
        """The public addresses the peer was seen from (what a relay permits)."""
        return tuple(sorted({ep[0] for ep in (self.tcp, self.udp) if ep is not None}))

    def is_lt_punch(self) -> bool:
        return self.udp is not None or self.tcp is not None


SUMMARY_FIELDS: dict[str, frozenset[str] | None] = {
    "nat_type": frozenset(NAT_RANK),
    "mapping": frozenset({"no-nat", "endpoint-independent", "address-dependent",
                          "address-and-port-dependent", "endpoint-dependent", "unknown"}),
    "filtering": frozenset({"endpoint-independent", "address-dependent",
                            "address-and-port-dependent", "unknown"}),
    "allocation": frozenset({"preserved", "stable", "sequential", "random"}),
    "port_delta": None,  # an int
}
"""The NAT summary a peer publishes: field -> allowed values (None values always allowed)."""


def summarize(info: NATInfo) -> dict[str, Any]:
    """The summary of a :class:`~lt_punch.nat.info.NATInfo` (its public fields by name)."""
    return {name: getattr(info, name, None) for name in SUMMARY_FIELDS}


def parse_summary(value: Any, what: str) -> dict[str, Any] | None:
    """Validate a peer's ``nat_summary``; None stays None. Unknown keys are dropped."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RemoteProtocolError(f"{what}: nat_summary is not an object")
    summary: dict[str, Any] = {}
    for name, allowed in SUMMARY_FIELDS.items():
        item = value.get(name)
        if item is None:
            summary[name] = None
        elif allowed is None:
            if not isinstance(item, int) or isinstance(item, bool) or not -65535 <= item <= 65535:
                raise RemoteProtocolError(f"{what}: nat_summary.{name}: bad value {item!r}")
            summary[name] = item
        elif not isinstance(item, str) or item not in allowed:
            raise RemoteProtocolError(f"{what}: nat_summary.{name}: bad value {item!r}")
        else:
            summary[name] = item
    return summary


def parse_endpoint(value: Any, what: str) -> Address | None:
    """``[ip, port]`` → ``(ip, port)``; None stays None; anything else is an error."""
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
    ):
        raise RemoteProtocolError(f"{what}: expected [ip, port], got {value!r}")
    try:
        ip = ipaddress.IPv4Address(value[0])
    except ValueError:
        raise RemoteProtocolError(f"{what}: not an IPv4 address: {value[0]!r}") from None
    if not 1 <= value[1] <= 65535:
        raise RemoteProtocolError(f"{what}: port out of range: {value[1]}")
    return str(ip), value[1]


def is_initiator(me: PeerProfile, peer: PeerProfile) -> bool:
    """True when ``me`` connects and ``peer`` only opens its NAT. Same answer on both ends."""
    mine, theirs = NAT_RANK.get(me.nat, 3), NAT_RANK.get(peer.nat, 3)
    if mine != theirs:
        return mine > theirs
    return me.peer_id < peer.peer_id


def agreed_methods(initiator: PeerProfile, responder: PeerProfile) -> tuple[str, ...]:
    """Methods both support, in the initiator's order of preference."""
    return tuple(m for m in initiator.methods if m in responder.methods)


FULL_CONE_TCP_RACE = (
    "tcp simultaneous open between two full-cone NATs races: whichever SYN comes first "
    "is let in to a host that has no socket for it yet and is answered with RST"
)
"""Measured in the lab (0 of 5 runs, benchmarks/pair_matrix.py). With one full-cone side
the order of the dials avoids it: the responder (the easier NAT, so the full cone) sends
its SYN first, which the other NAT drops, and the initiator's SYN then finds the
responder's socket in SYN-SENT."""


def usable(method: str, me: PeerProfile, peer: PeerProfile) -> str | None:
    """None when ``method`` can be tried between us, else why not."""
    # Both ends need both endpoints: the initiator dials, the responder opens.
    if method == "utp" and (peer.udp is None or me.udp is None):
        return "public UDP endpoint unknown on one side"
    if method == "tcp" and (peer.tcp is None or me.tcp is None):
        return "public TCP endpoint unknown on one side"
    nats = (me.nat, peer.nat)
    if method == "utp" and nats == ("symmetric", "symmetric"):
        # Each side's packets to the other leave from a new, unknown port: 0 of 5 in the
        # lab (and as RFC 4787 reasons). Port prediction needs one cone side; a relay.
        return "two symmetric NATs: neither side's new port can be known"
    if method == "tcp" and "symmetric" in nats and "open" not in nats:
        # The SYN of the responder goes to the initiator's observed port, which an
        # endpoint-dependent mapping does not reuse for a new destination. (An open
        # peer is dialled directly: nothing to predict.)
        return "tcp simultaneous open cannot cross a symmetric NAT without prediction"
    if method == "tcp" and nats == ("full", "full"):
        return FULL_CONE_TCP_RACE
    if method == "relay" and not (me.turn or peer.turn):
        return "no TURN server on either side"
    if method == "predict":
        return _predict_unusable(me, peer)
    if method == "udp":
        return _udp_unusable(me, peer)
    return None


CONE_NATS = frozenset({"full", "restricted", "port"})
"""NATs whose mapping is endpoint-independent: one socket keeps one public port."""


def _predict_unusable(me: PeerProfile, peer: PeerProfile) -> str | None:
    hard = [p for p in (me, peer) if p.nat == "symmetric"]
    if len(hard) != 1:
        return "port prediction needs exactly one symmetric side"
    easy = peer if hard[0] is me else me
    if easy.nat not in CONE_NATS:
        return "port prediction needs a cone NAT (endpoint-independent mapping) opposite"
    if easy.nat_summary is None:
        return "the cone side has no STUN server to map its probe socket"
    return None


def _udp_unusable(me: PeerProfile, peer: PeerProfile) -> str | None:
    nats = {me.nat, peer.nat}
    if "blocked" in nats:
        return "UDP is blocked on one side"
    if "symmetric" in nats and "open" not in nats:
        # (An open host takes the symmetric side's probes from whatever port they
        # come, and answers there.)
        return "a symmetric NAT has no mapping to aim at (port prediction instead)"
    if me.nat_summary is None or peer.nat_summary is None:
        return "a side has no STUN server to map its socket"
    return None


def relay_allocator(initiator: PeerProfile, responder: PeerProfile) -> PeerProfile:
    """The side that allocates the relay: the responder when it can (its relayed address
    comes back in the answer), else the initiator (in the offer)."""
    return responder if responder.turn else initiator


# --- punch messages (carried opaque inside signaling ``relay`` data) -------------

OFFER = "punch-offer"
ANSWER = "punch-answer"
FAILED = "punch-failed"


@dataclass(frozen=True)
class PunchMessage:
    """``punch-offer`` / ``punch-answer`` / ``punch-failed`` between two peers."""

    kind: str
    infohash: str
    method: str
    attempt: int
    punch_id: str
    reason: str | None = None
    relayed: Address | None = None
    """``relay``: the relayed address to dial (in the offer or the answer, from the side
    that allocated)."""
    secret: str | None = None
    """``predict`` and ``udp`` offer: the key of this attempt's probe HMACs."""
    probe: Address | None = None
    """``predict`` answer: the public mapping of the cone side's probe socket; ``udp``
    offer and answer: the public mapping of the sender's socket."""

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "t": self.kind,
            "infohash": self.infohash,
            "method": self.method,
            "attempt": self.attempt,
            "punch_id": self.punch_id,
        }
        if self.reason is not None:
            data["reason"] = self.reason
        if self.relayed is not None:
            data["relayed"] = list(self.relayed)
        if self.secret is not None:
            data["secret"] = self.secret
        if self.probe is not None:
            data["probe"] = list(self.probe)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> PunchMessage:
        kind = data.get("t")
        if kind not in (OFFER, ANSWER, FAILED):
            raise RemoteProtocolError(f"punch message: unknown type {kind!r}")
        method = data.get("method")
        if method not in METHODS:
            raise RemoteProtocolError(f"punch message: unknown method {method!r}")
        attempt = data.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= 100:
            raise RemoteProtocolError(f"punch message: bad attempt {attempt!r}")
        infohash = data.get("infohash")
        if (
            not isinstance(infohash, str)
            or len(infohash) not in (40, 64)
            or any(c not in "0123456789abcdefABCDEF" for c in infohash)
        ):
            raise RemoteProtocolError(f"punch message: bad infohash {infohash!r}")
        punch_id = data.get("punch_id")
        if not isinstance(punch_id, str) or not 1 <= len(punch_id) <= 64:
            raise RemoteProtocolError(f"punch message: bad punch_id {punch_id!r}")
        reason = data.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
            raise RemoteProtocolError("punch message: bad reason")
        relayed = parse_endpoint(data.get("relayed"), "punch message: relayed")
        if relayed is not None and method != "relay":
            raise RemoteProtocolError(f"punch message: a relayed address for {method}")
        probe = parse_endpoint(data.get("probe"), "punch message: probe")
        secret = data.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) != 32
                                   or any(c not in "0123456789abcdef" for c in secret)):
            raise RemoteProtocolError("punch message: bad secret (32 lowercase hex digits)")
        if (probe is not None or secret is not None) and method not in ("predict", "udp"):
            raise RemoteProtocolError(f"punch message: prediction fields for {method}")
        return cls(kind, infohash.lower(), method, attempt, punch_id, reason, relayed,
                   secret, probe)

    def reply(self, kind: str, reason: str | None = None, relayed: Address | None = None,
              probe: Address | None = None) -> PunchMessage:
        return dataclasses.replace(self, kind=kind, reason=reason, relayed=relayed,
                                   secret=None, probe=probe)


def plan_methods(me: PeerProfile, peer: PeerProfile, wanted: Sequence[str]) -> list[str]:
    """Ordered methods to try with ``peer`` (initiator's order, restricted to ``wanted``)."""
    init, resp = (me, peer) if is_initiator(me, peer) else (peer, me)
    methods = [
        m
        for m in agreed_methods(init, resp)
        if m in wanted and usable(m, me, peer) is None
    ]
    methods.sort(key=lambda m: m == "relay")  # the last resort, whatever the order given
    if "predict" in methods and "utp" in methods and "port" in (me.nat, peer.nat):
        # uTP from the symmetric side's new port is filtered by a port-restricted NAT
        # (0 of 5 in the lab): predict first, uTP after it.
        methods.remove("predict")
        methods.insert(methods.index("utp"), "predict")
    return methods
