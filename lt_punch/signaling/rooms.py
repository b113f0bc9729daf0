"""Room bookkeeping of the signaling server. No I/O.

A *connection* is any hashable token the shell chooses (the server uses its websocket
connection object). A connection registers one peer id; a peer is in any number of rooms;
a room (an infohash) is a set of peer ids. Every operation returns the messages to send
as ``(peer_id, message)`` pairs -- the reply to the requester first, then the
notifications -- or raises :class:`RoomError` with the ``code`` of the ``error`` reply.

Duplicate peer ids are refused with ``peer-id-taken``: the first connection keeps its id
until it disconnects. Letting any newcomer evict the holder would let anyone who learns a
peer id (every room member does) hijack that peer's signaling; only a client that shows
the holder's secret ``session_key`` (from its ``registered``) may replace it
(:meth:`Rooms.evict`), e.g. when it reconnects before the server noticed the loss.
"""

from __future__ import annotations

import hmac
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteProtocolError
from ..types import Address, InfoHash, PeerId
from .protocol import (
    MAX_JOINED_PEERS,
    Joined,
    Left,
    Message,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    Registered,
    Relayed,
)

__all__ = ["Outgoing", "RoomError", "Rooms"]

Outgoing = tuple[PeerId, Message]


PUNCHING_FOR = 30.0
"""A peer that relayed within this many seconds is ``punching``."""
IDLE_AFTER = 60.0
"""A peer silent for this many seconds is ``idle``."""


class RoomError(RemoteProtocolError):
    """A request that the room rules refuse; ``code`` goes into the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Peer:
    peer_id: PeerId
    conn: Hashable
    metadata: dict[str, Any]
    session_key: str | None = None
    rooms: set[InfoHash] = field(default_factory=set)
    last_seen: float = 0.0
    last_relay: float = -1e18

    def state(self, now: float) -> str:
        """``punching`` (relayed in the last ``PUNCHING_FOR`` s), ``idle`` (silent for
        ``IDLE_AFTER`` s) or ``connected``."""
        if now - self.last_relay < PUNCHING_FOR:
            return "punching"
        if now - self.last_seen >= IDLE_AFTER:
            return "idle"
        return "connected"

    def info(self) -> PeerInfo:
        return PeerInfo(self.peer_id, self.metadata)


class Rooms:
    """Who is registered, and who is in which room."""

    def __init__(self, *, max_rooms_per_peer: int = 1000,
                 max_peers_per_room: int = 5000) -> None:
        self.max_rooms_per_peer = max_rooms_per_peer
        self.max_peers_per_room = max_peers_per_room
        self._peers: dict[PeerId, _Peer] = {}
        self._by_conn: dict[Hashable, _Peer] = {}
        self._rooms: dict[InfoHash, dict[PeerId, None]] = {}  # dict keeps join order

    # --- queries ---------------------------------------------------------------------------

    def peer_of(self, conn: Hashable) -> PeerId | None:
        """The peer id registered by ``conn``, if any."""
        peer = self._by_conn.get(conn)
        return None if peer is None else peer.peer_id

    def conn_of(self, peer_id: PeerId) -> Hashable | None:
        """The connection holding ``peer_id``, if any."""
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.conn

    def members(self, room: InfoHash) -> list[PeerInfo]:
        """The peers in ``room``, in join order (empty if nobody is in it)."""
        return [self._peers[p].info() for p in self._rooms.get(room, ())]

    def info_of(self, peer_id: PeerId) -> PeerInfo:
        return self._require(peer_id).info()

    def session_key_of(self, conn: Hashable) -> str | None:
        peer = self._by_conn.get(conn)
        return None if peer is None else peer.session_key

    def rooms_of(self, peer_id: PeerId) -> set[InfoHash]:
        peer = self._peers.get(peer_id)
        return set() if peer is None else set(peer.rooms)

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    # --- operations ------------------------------------------------------------------------

    def register(
        self, conn: Hashable, peer_id: PeerId, metadata: dict[str, Any], observed: Address,
        session_key: str | None = None, now: float = 0.0,
    ) -> list[Outgoing]:
        """Bind ``peer_id`` to ``conn``; ``session_key`` goes into ``registered`` (the
        secret that lets a reconnecting client :meth:`evict` this registration).

        Raises:
            RoomError: ``already-registered`` if ``conn`` has a peer id,
                ``peer-id-taken`` if another connection holds ``peer_id``.
        """
        if conn in self._by_conn:
            current = self._by_conn[conn].peer_id
            raise RoomError("already-registered", f"this connection is already {current!r}")
        if peer_id in self._peers:
            raise RoomError("peer-id-taken", f"peer id {peer_id!r} is in use")
        peer = _Peer(peer_id, conn, dict(metadata), session_key, last_seen=now)
        self._peers[peer_id] = peer
        self._by_conn[conn] = peer
        return [(peer_id, Registered(peer_id, observed, session_key))]

    def evict(self, peer_id: PeerId, resume: str) -> tuple[Hashable, list[Outgoing]]:
        """Free ``peer_id`` for a client that proves it held it (``resume`` is the
        holder's session key): the holder's connection and its ``peer-left`` messages.

        Raises:
            RoomError: ``peer-id-taken`` if the key does not match.
        """
        peer = self._peers.get(peer_id)
        if peer is None or peer.session_key is None or not hmac.compare_digest(
                peer.session_key, resume):
            raise RoomError("peer-id-taken", f"peer id {peer_id!r} is in use (resume key "
                                             "does not match)")
        return peer.conn, self.disconnect(peer.conn)

    def touch(self, conn: Hashable, now: float, *, relay: bool = False) -> None:
        """Note activity of ``conn``'s peer (for :meth:`states` and idle cleanup)."""
        peer = self._by_conn.get(conn)
        if peer is not None:
            peer.last_seen = now
            if relay:
                peer.last_relay = now

    def states(self, now: float) -> dict[str, int]:
        """How many peers are ``connected``, ``idle`` and ``punching``."""
        counts = {"connected": 0, "idle": 0, "punching": 0}
        for peer in self._peers.values():
            counts[peer.state(now)] += 1
        return counts

    def member_states(self, room: InfoHash, now: float) -> list[dict[str, Any]]:
        """The members of ``room`` with their state and seconds since last activity."""
        return [{**self._peers[p].info().to_json(), "state": self._peers[p].state(now),
                 "idle_for": round(now - self._peers[p].last_seen, 3)}
                for p in self._rooms.get(room, ())]

    def join(self, peer_id: PeerId, room: InfoHash) -> list[Outgoing]:
        """Put ``peer_id`` in ``room``: ``joined`` for it, ``peer-joined`` for the others.

        Joining a room one is already in is not an error: it answers ``joined`` again and
        notifies nobody.

        Raises:
            RoomError: ``too-many-rooms`` (the peer is in ``max_rooms_per_peer``),
                ``room-full`` (``max_peers_per_room`` members).
        """
        peer = self._require(peer_id)
        members = self._rooms.get(room, {})
        if peer_id not in members:
            if len(peer.rooms) >= self.max_rooms_per_peer:
                raise RoomError("too-many-rooms", f"already in {len(peer.rooms)} rooms, "
                                                  f"the limit")
            if len(members) >= self.max_peers_per_room:
                raise RoomError("room-full", f"room {room} has {len(members)} peers, "
                                             f"the limit")
        self._rooms[room] = members
        others = [self._peers[p] for p in members if p != peer_id]
        # The listing is capped (the most recent joiners) to bound the message size;
        # notifications still go to every member.
        listed = tuple(o.info() for o in others[-MAX_JOINED_PEERS:])
        out: list[Outgoing] = [(peer_id, Joined(room, listed))]
        if peer_id in members:
            return out
        members[peer_id] = None
        peer.rooms.add(room)
        note = PeerJoined(room, peer_id, peer.metadata)
        out.extend((o.peer_id, note) for o in others)
        return out

    def leave(self, peer_id: PeerId, room: InfoHash) -> list[Outgoing]:
        """Take ``peer_id`` out of ``room``: ``left`` for it, ``peer-left`` for the others.

        Raises:
            RoomError: ``not-in-room``.
        """
        peer = self._require(peer_id)
        if room not in peer.rooms:
            raise RoomError("not-in-room", f"not in room {room}")
        return [(peer_id, Left(room)), *self._remove(peer, room)]

    def relay(
        self, sender: PeerId, to: PeerId, room: InfoHash, data: dict[str, Any]
    ) -> list[Outgoing]:
        """Pass ``data`` from ``sender`` to ``to``; both must be in ``room``.

        Raises:
            RoomError: ``not-in-room`` if the sender is not in ``room``, ``unknown-peer``
                if ``to`` is not registered or not in ``room``.
        """
        peer = self._require(sender)
        if room not in peer.rooms:
            raise RoomError("not-in-room", f"not in room {room}")
        target = self._peers.get(to)
        if target is None or room not in target.rooms:
            raise RoomError("unknown-peer", f"no peer {to!r} in room {room}")
        return [(to, Relayed(sender, room, data))]

    def disconnect(self, conn: Hashable) -> list[Outgoing]:
        """Forget ``conn``'s peer: ``peer-left`` to the members of each of its rooms."""
        peer = self._by_conn.pop(conn, None)
        if peer is None:
            return []
        del self._peers[peer.peer_id]
        out: list[Outgoing] = []
        for room in sorted(peer.rooms):
            out.extend(self._remove(peer, room))
        return out

    # --- internals -------------------------------------------------------------------------

    def _require(self, peer_id: PeerId) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise RoomError("not-registered", "register first")
        return peer

    def _remove(self, peer: _Peer, room: InfoHash) -> list[Outgoing]:
        peer.rooms.discard(room)
        members = self._rooms.get(room, {})
        members.pop(peer.peer_id, None)
        if not members:
            self._rooms.pop(room, None)
            return []
        note = PeerLeft(room, peer.peer_id)
        return [(p, note) for p in members]
