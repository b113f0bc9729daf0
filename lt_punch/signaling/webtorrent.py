"""WebTorrent tracker protocol on the signaling server. No I/O.

The WebTorrent tracker protocol (the ``bittorrent-tracker`` package's websocket server,
spoken by browser WebTorrent clients and by libtorrent 2.1's WebRTC support) is JSON
over a websocket, with ``info_hash``, ``peer_id`` and ``offer_id`` as *binary strings*:
each byte is one character U+0000..U+00FF. A peer ``announce``\\s with up to ``numwant``
WebRTC SDP offers; the tracker forwards each offer to a different member of the swarm
(``{action, info_hash, peer_id: <offerer>, offer, offer_id}``); a member that accepts
sends an ``announce`` with an ``answer`` and ``to_peer_id``, which the tracker relays to
that peer (``{action, info_hash, peer_id: <answerer>, answer, offer_id}``). Peers then
connect to each other directly over WebRTC (ICE with their own STUN servers).

:class:`WebTorrentTracker` keeps the swarms (by info hash, in the lower-case hex form
that lt_punch rooms use) and turns each decoded message into ``(connection, object)``
pairs to send, the reply to the sender first. Bad input is answered with
``{"failure reason": ...}`` (plus ``action`` and ``info_hash`` when they were readable,
so that a client can match it to its announce); nothing raises.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..types import InfoHash

__all__ = [
    "MAX_OFFERS",
    "MAX_SDP_SIZE",
    "Outgoing",
    "Remote",
    "TrackerError",
    "TrackerMessage",
    "WebTorrentTracker",
    "encode_message",
    "is_tracker_message",
    "tracker_room",
]

Outgoing = tuple[Hashable, dict[str, Any]]

MAX_OFFERS = 20
"""Offers accepted in one announce (libtorrent sends 10, browsers up to 10)."""
MAX_SDP_SIZE = 16 * 1024
"""Characters of one SDP offer or answer."""
MAX_SCRAPE = 64
"""Info hashes in one scrape."""
MAX_ID_LENGTH = 64
"""Characters of an ``offer_id`` (libtorrent and browsers use 16 or 20)."""
MAX_KEY_LENGTH = 64
INTERVAL = 120
"""Seconds between announces asked of clients (bittorrent-tracker's websocket default)."""
EVENTS = frozenset({"started", "stopped", "completed", "paused", "update", "empty", ""})


class TrackerError(Exception):
    """A request the tracker refuses; the text goes into ``failure reason``."""


def is_tracker_message(obj: object) -> bool:
    """Whether a decoded frame is for the tracker: an object with ``action``, no ``v``."""
    return isinstance(obj, dict) and "action" in obj and "v" not in obj


def tracker_room(obj: dict[str, Any]) -> InfoHash | None:
    """The room of an ``announce`` with a well-formed info hash and peer id (what a
    shared swarm looks up before the tracker sees it); None for anything else."""
    info_hash, peer_id = obj.get("info_hash"), obj.get("peer_id")
    if obj.get("action") != "announce":
        return None
    for value in (info_hash, peer_id):
        if not (isinstance(value, str) and len(value) == 20):
            return None
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    assert isinstance(info_hash, str)
    return InfoHash(_hex(info_hash))


def encode_message(obj: dict[str, Any]) -> str:
    """Compact JSON; binary strings stay one character per byte."""
    return orjson.dumps(obj).decode()


def _binary(value: object, name: str, length: int | None = 20) -> str:
    """Check a binary string: ``length`` characters (or 1..MAX_ID_LENGTH), all < U+0100."""
    if not isinstance(value, str):
        raise TrackerError(f"invalid {name}")
    if length is not None and len(value) != length:
        raise TrackerError(f"invalid {name}: expected {length} bytes, got {len(value)}")
    if length is None and not 0 < len(value) <= MAX_ID_LENGTH:
        raise TrackerError(f"invalid {name}: expected 1..{MAX_ID_LENGTH} bytes")
    try:
        value.encode("latin-1")  # in C: every character U+0000..U+00FF
    except UnicodeEncodeError:
        raise TrackerError(f"invalid {name}: not a binary string") from None
    return value


def _hex(binary: str) -> str:
    return binary.encode("latin-1").hex()


def _number(obj: dict[str, Any], name: str) -> float | None:
    """An optional non-negative number (``null`` counts as absent: JSON has no Infinity)."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise TrackerError(f"invalid {name}")
    return float(value)


def _sdp(value: object, name: str, kind: str) -> dict[str, str]:
    """A session description ``{type: kind, sdp}``; only these two fields are forwarded."""
    if not isinstance(value, dict):
        raise TrackerError(f"invalid {name}: expected an object")
    sdp = value.get("sdp")
    if value.get("type") != kind or not isinstance(sdp, str):
        raise TrackerError(f"invalid {name}: expected {{type: {kind!r}, sdp: string}}")
    if len(sdp) > MAX_SDP_SIZE:
        raise TrackerError(f"invalid {name}: SDP over {MAX_SDP_SIZE} characters")
    return {"type": kind, "sdp": sdp}


@dataclass(frozen=True)
class Remote:
    """A swarm member held by another server process (swarms shared through Redis): a
    message for it is published to its node."""

    node: str
    peer_id: str  # binary


@dataclass
class _Peer:
    peer_id: str  # binary
    conn: Hashable
    seed: bool = False
    paused: bool = False
    last_announce: float = 0.0


@dataclass
class _Swarm:
    peers: dict[str, _Peer] = field(default_factory=dict)  # binary peer id -> peer
    downloaded: int = 0  # "completed" events seen


@dataclass
class TrackerStats:
    """Counters since the tracker was made."""

    announces: int = 0
    offers_forwarded: int = 0
    answers_relayed: int = 0
    answers_dropped: int = 0
    scrapes: int = 0
    failures: int = 0


class WebTorrentTracker:
    """Swarms of WebTorrent peers, and the relay of their WebRTC offers and answers.

    Args:
        interval: seconds between announces asked of clients.
        peer_max_age: a peer that has not announced for this long is dropped (default
            three intervals); leaving the websocket drops it at once.
        max_swarms_per_connection: swarms one connection may be in (one libtorrent
            session announces all its torrents over one connection per tracker).
        rng: chooses the peers that get offers.
    """

    def __init__(
        self,
        *,
        interval: int = INTERVAL,
        peer_max_age: float | None = None,
        max_swarms_per_connection: int = 1000,
        rng: random.Random | None = None,
    ) -> None:
        self.interval = interval
        self.peer_max_age = peer_max_age if peer_max_age is not None else 3.0 * interval
        self.max_swarms_per_connection = max_swarms_per_connection
        self.stats = TrackerStats()
        self._rng = rng if rng is not None else random.Random()
        self._swarms: dict[InfoHash, _Swarm] = {}
        self._by_conn: dict[Hashable, dict[InfoHash, str]] = {}  # conn -> room -> peer id
        self._remote: dict[InfoHash, dict[str, _Peer]] = {}
        """The members of each swarm on other server processes, as last told
        (:meth:`set_remote`)."""

    # --- queries ---------------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        return sum(len(s.peers) for s in self._swarms.values())

    @property
    def swarm_count(self) -> int:
        return len(self._swarms)

    def member_states(self, room: InfoHash, now: float) -> list[dict[str, Any]]:
        """The WebTorrent peers of ``room`` in the shape of ``Rooms.member_states``."""
        swarm = self._swarms.get(room)
        if swarm is None:
            return []
        return [{"peer_id": _hex(p.peer_id),
                 "metadata": {"agent": "webtorrent", "seed": p.seed},
                 "state": "connected", "idle_for": round(now - p.last_announce, 3)}
                for p in swarm.peers.values() if now - p.last_announce < self.peer_max_age]

    def local_peer(self, room: InfoHash, peer_id: str) -> bool | None:
        """Whether our peer ``peer_id`` (binary) is a seed in ``room``; None when it is
        not a member here (gone, or stopped)."""
        swarm = self._swarms.get(room)
        peer = swarm.peers.get(peer_id) if swarm is not None else None
        return None if peer is None else peer.seed

    def conn_of(self, room: InfoHash, peer_id: str) -> Hashable | None:
        """The connection of our member ``peer_id`` (binary) of ``room``."""
        swarm = self._swarms.get(room)
        peer = swarm.peers.get(peer_id) if swarm is not None else None
        return None if peer is None else peer.conn

    def set_remote(self, room: InfoHash, members: list[tuple[str, str, bool]]) -> None:
        """The members of ``room`` on other server processes: (binary peer id, node,
        seed). Offers then go to them as well, and answers reach them."""
        if members:
            self._remote[room] = {pid: _Peer(pid, Remote(node, pid), seed)
                                  for pid, node, seed in members}
        else:
            self._remote.pop(room, None)

    # --- operations ------------------------------------------------------------------------

    def receive(self, conn: Hashable, obj: dict[str, Any], now: float) -> list[Outgoing]:
        """Handle one decoded message from ``conn``: the objects to send, reply first."""
        action = obj.get("action")
        info_hash = obj.get("info_hash")
        try:
            if action == "announce":
                self.stats.announces += 1
                return self._announce(conn, obj, now)
            if action == "scrape":
                self.stats.scrapes += 1
                return self._scrape(conn, obj)
            raise TrackerError("invalid action")
        except TrackerError as exc:
            self.stats.failures += 1
            reply: dict[str, Any] = {"failure reason": str(exc)}
            if action in ("announce", "scrape"):
                reply["action"] = action
                if isinstance(info_hash, str) and len(info_hash) == 20 and \
                        all(ord(c) <= 0xFF for c in info_hash):
                    reply["info_hash"] = info_hash
            return [(conn, reply)]

    def disconnect(self, conn: Hashable) -> list[tuple[InfoHash, str]]:
        """Forget every peer that ``conn`` announced; returns (room, binary peer id) of
        each."""
        gone = list(self._by_conn.get(conn, {}).items())
        for room, _ in gone:
            self._forget(conn, room)
        return gone

    # --- internals -------------------------------------------------------------------------

    def _announce(self, conn: Hashable, obj: dict[str, Any], now: float) -> list[Outgoing]:
        info_hash = _binary(obj.get("info_hash"), "info_hash")
        peer_id = _binary(obj.get("peer_id"), "peer_id")
        room = InfoHash(_hex(info_hash))
        if "answer" in obj:
            if "offers" in obj:
                raise TrackerError("an announce carries offers or an answer, not both")
            return self._answer(conn, obj, room, info_hash, peer_id)
        event = obj.get("event")
        if event is not None and event not in EVENTS:
            raise TrackerError("invalid event")
        left = _number(obj, "left")
        for name in ("uploaded", "downloaded", "corrupt"):
            _number(obj, name)
        numwant = _number(obj, "numwant")
        key = obj.get("key")
        if key is not None and not (isinstance(key, str) and len(key) <= MAX_KEY_LENGTH):
            raise TrackerError("invalid key")
        offers = self._offers(obj.get("offers"))

        swarm = self._swarms.get(room)
        if swarm is not None:
            self._expire(room, swarm, now)
            swarm = self._swarms.get(room)
        peer = None if swarm is None else swarm.peers.get(peer_id)
        if peer is not None and peer.conn is not conn:
            raise TrackerError("peer_id is in use on another connection")
        mine = self._by_conn.get(conn, {})
        if event == "stopped":
            if peer is not None:
                self._forget(conn, room)
            return [(conn, self._reply(room, info_hash))]
        if room not in mine and len(mine) >= self.max_swarms_per_connection:
            raise TrackerError("too many torrents on this connection")
        if mine.get(room, peer_id) != peer_id:
            # One peer per connection and swarm: a new peer id replaces the old one.
            self._forget(conn, room)
        swarm = self._swarms.setdefault(room, _Swarm())
        if peer is None:
            peer = swarm.peers[peer_id] = _Peer(peer_id, conn)
        self._by_conn.setdefault(conn, {})[room] = peer_id
        if event == "completed" and not peer.seed:
            swarm.downloaded += 1
        peer.seed = left == 0 or event == "completed"
        peer.paused = event == "paused"
        peer.last_announce = now

        out: list[Outgoing] = [(conn, self._reply(room, info_hash))]
        wanted = len(offers) if numwant is None else min(len(offers), int(numwant))
        if wanted and not peer.paused:
            # Seeds have nothing to give each other; paused peers take no connections.
            remote = self._remote.get(room, {})
            others = [p for p in (*swarm.peers.values(), *remote.values())
                      if p.peer_id != peer_id and not p.paused
                      and not (peer.seed and p.seed)]
            chosen = self._rng.sample(others, min(wanted, len(others)))
            for target, (offer_id, offer) in zip(chosen, offers, strict=False):
                out.append((target.conn, {"action": "announce", "info_hash": info_hash,
                                          "peer_id": peer_id, "offer": offer,
                                          "offer_id": offer_id}))
            self.stats.offers_forwarded += len(chosen)
        return out

    def _offers(self, value: object) -> list[tuple[str, dict[str, str]]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise TrackerError("invalid offers: expected an array")
        if len(value) > MAX_OFFERS:
            raise TrackerError(f"too many offers: {len(value)}, limit {MAX_OFFERS}")
        offers = []
        for item in value:
            if not isinstance(item, dict):
                raise TrackerError("invalid offers: expected objects")
            offer_id = _binary(item.get("offer_id"), "offer_id", None)
            offers.append((offer_id, _sdp(item.get("offer"), "offer", "offer")))
        return offers

    def _answer(self, conn: Hashable, obj: dict[str, Any], room: InfoHash, info_hash: str,
                peer_id: str) -> list[Outgoing]:
        to_peer_id = _binary(obj.get("to_peer_id"), "to_peer_id")
        offer_id = _binary(obj.get("offer_id"), "offer_id", None)
        answer = _sdp(obj.get("answer"), "answer", "answer")
        if self._by_conn.get(conn, {}).get(room) != peer_id:
            raise TrackerError("answer from a peer that has not announced on this connection")
        swarm = self._swarms[room]
        target = swarm.peers.get(to_peer_id) or self._remote.get(room, {}).get(to_peer_id)
        if target is None:
            # As bittorrent-tracker: the offerer left; nothing to tell the answerer.
            self.stats.answers_dropped += 1
            return []
        self.stats.answers_relayed += 1
        # No reply to the answerer (bittorrent-tracker sends none for answers either).
        return [(target.conn, {"action": "announce", "info_hash": info_hash,
                               "peer_id": peer_id, "answer": answer, "offer_id": offer_id})]

    def _scrape(self, conn: Hashable, obj: dict[str, Any]) -> list[Outgoing]:
        value = obj.get("info_hash")
        hashes = [value] if isinstance(value, str) else value
        if not isinstance(hashes, list) or not 0 < len(hashes) <= MAX_SCRAPE:
            raise TrackerError(f"invalid info_hash: expected 1..{MAX_SCRAPE} info hashes")
        files: dict[str, dict[str, int]] = {}
        for item in hashes:
            info_hash = _binary(item, "info_hash")
            room = InfoHash(_hex(info_hash))
            complete, incomplete = self._counts(room)
            swarm = self._swarms.get(room)
            files[info_hash] = {"complete": complete, "incomplete": incomplete,
                                "downloaded": swarm.downloaded if swarm else 0}
        return [(conn, {"action": "scrape", "files": files,
                        "flags": {"min_request_interval": self.interval}})]

    def _reply(self, room: InfoHash, info_hash: str) -> dict[str, Any]:
        complete, incomplete = self._counts(room)
        return {"action": "announce", "interval": self.interval, "info_hash": info_hash,
                "complete": complete, "incomplete": incomplete}

    def _counts(self, room: InfoHash) -> tuple[int, int]:
        swarm = self._swarms.get(room)
        peers = [*(swarm.peers.values() if swarm is not None else ()),
                 *self._remote.get(room, {}).values()]
        seeds = sum(1 for p in peers if p.seed)
        return seeds, len(peers) - seeds

    def _expire(self, room: InfoHash, swarm: _Swarm, now: float) -> None:
        """Drop peers that stopped announcing (their connection may live on)."""
        for peer in [p for p in swarm.peers.values()
                     if now - p.last_announce >= self.peer_max_age]:
            self._forget(peer.conn, room)

    def _forget(self, conn: Hashable, room: InfoHash) -> None:
        """Take ``conn``'s peer out of ``room``; forget empty swarms and connections."""
        mine = self._by_conn.get(conn, {})
        peer_id = mine.pop(room, None)
        if not mine:
            self._by_conn.pop(conn, None)
        swarm = self._swarms.get(room)
        if peer_id is None or swarm is None:
            return
        swarm.peers.pop(peer_id, None)
        if not swarm.peers:
            del self._swarms[room]


@dataclass(frozen=True)
class TrackerMessage:
    """One tracker message to send, in the shape the server's send loop takes."""

    body: dict[str, Any]

    def serialize(self) -> bytes:
        """Compact JSON in UTF-8 (what the server's websocket layer sends as text)."""
        return orjson.dumps(self.body)

    def __str__(self) -> str:
        keys = ",".join(k for k in self.body if k not in ("info_hash", "peer_id"))
        return f"webtorrent {self.body.get('action', '?')} ({keys})"
