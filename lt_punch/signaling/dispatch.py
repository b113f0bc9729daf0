"""What the signaling server does with one websocket frame: the messages to send back.

:meth:`Dispatcher.receive` parses a frame and applies it: WebTorrent tracker messages
(``action``, no ``v``) go to :class:`~.webtorrent.WebTorrentTracker`; lt_punch messages
to :class:`~.rooms.Rooms`, and with Redis also to :class:`~.shared.SharedRooms`, so that
peers of other server processes meet and relay. It returns ``(peer_id | connection,
message)`` pairs; the server sends them. A bad peer never crashes the server: every
refusal or failure becomes an ``error`` reply, counted by code, and internal details
stay in the log.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..types import Address
from .metrics import Counters
from .protocol import (
    MAX_JOINED_PEERS,
    Error,
    Join,
    Joined,
    Leave,
    Message,
    MessageError,
    PeerJoined,
    PeerLeft,
    Ping,
    Pong,
    Register,
    Relay,
    Relayed,
    decode_frame,
    parse_object,
    peek_type,
)
from .rooms import RoomError, Rooms
from .security import candidates_of, check_candidate, check_token
from .shared import SharedRooms
from .webtorrent import (
    Remote,
    TrackerMessage,
    WebTorrentTracker,
    encode_message,
    is_tracker_message,
    tracker_room,
)
from .wire import Connection as ServerConnection

__all__ = ["Dispatcher", "Host", "Replace", "State"]

logger = logging.getLogger(__name__)

Replace = Callable[[ServerConnection, str], None]
"""Close a connection whose peer id registered again elsewhere (with the reason)."""


class State(Protocol):
    """The parts of a server its dispatcher and routes share, read at each use."""

    @property
    def rooms(self) -> Rooms: ...
    @property
    def shared(self) -> SharedRooms | None: ...
    @property
    def webtorrent(self) -> WebTorrentTracker: ...
    @property
    def secret(self) -> str | None: ...


class Host(State, Protocol):
    """What the dispatcher reads from its server."""

    @property
    def lan_mode(self) -> bool: ...
    @property
    def max_message_size(self) -> int: ...


class Dispatcher:
    """Frames in, ``(target, message)`` pairs out, for one server.

    Args:
        host: the server whose rooms and settings apply.
        counters: where relays and error replies are counted.
        replace: closes the previous connection of a peer id a client resumed.
    """

    def __init__(self, host: Host, counters: Counters, replace: Replace) -> None:
        self._host = host
        self._counters = counters
        self._replace = replace

    def receive_now(self, ws: ServerConnection, frame: str | bytes, observed: Address,
                    now: float) -> list[Any]:
        """:meth:`receive` without an event loop turn, for a server without shared
        rooms: nothing in it then waits (every ``await`` on the way is on Redis), so
        the coroutine runs to its end in one step."""
        assert self._host.shared is None
        coro = self.receive(ws, frame, observed, now)
        try:
            coro.send(None)
        except StopIteration as done:
            return list(done.value)
        coro.close()
        raise RuntimeError("Dispatcher.receive waited without shared rooms")

    async def receive(self, ws: ServerConnection, frame: str | bytes, observed: Address,
                      now: float = 0.0) -> list[Any]:
        """Turn one frame into ``(peer_id | ws, message)`` pairs to send."""
        if isinstance(frame, bytes):
            error = self.error("bad-frame", "binary frames are not accepted; send JSON text")
            return [(ws, error)]
        max_size = self._host.max_message_size
        try:
            # Decoded once: WebTorrent tracker messages go to the tracker, the rest on.
            obj, size = decode_frame(frame, max_size=max_size)
            if is_tracker_message(obj):
                return await self._track(ws, obj, now)
            message = parse_object(obj, size, sent_by="client", max_size=max_size)
        except MessageError as exc:
            return [(ws, self.error(exc.code, str(exc), peek_type(frame)))]
        logger.debug("< %s", message)
        self._host.rooms.touch(ws, now, relay=isinstance(message, Relay))
        try:
            return list(await self._apply(ws, message, observed, now))
        except RoomError as exc:
            return [(ws, self.error(exc.code, str(exc), message.TYPE))]
        except (RedisError, OSError) as exc:
            logger.warning("shared state unavailable while handling %s: %s", message, exc)
            return [(ws, self.error("internal-error", "shared state unavailable; retry",
                                    message.TYPE))]
        except Exception:
            # Internal details stay in the log; the peer learns only that we failed.
            logger.exception("failed to handle %s", message)
            return [(ws, self.error("internal-error", "internal server error", message.TYPE))]

    def error(self, code: str, text: str, ref: str | None = None) -> Error:
        """An ``error`` reply, counted by ``code`` (``text`` cut to 1000 characters)."""
        self._counters.errors[code] += 1
        if len(text) > 1000:
            text = text[:997] + "..."
        logger.debug("error %s: %s", code, text)
        return Error(code, text, ref)

    async def _track(self, ws: ServerConnection, obj: dict[str, Any],
                     now: float) -> list[Any]:
        """A WebTorrent tracker message: the tracker's answers (no ``register`` needed).
        With shared rooms, the swarm's members on other nodes take part: they are read
        from Redis before an announce, and messages for them are published to their
        node."""
        tracker, shared = self._host.webtorrent, self._host.shared
        logger.debug("< webtorrent %s", obj.get("action"))
        room = tracker_room(obj) if shared is not None else None
        if shared is not None and room is not None:
            try:
                tracker.set_remote(room, await shared.tracker_members(
                    room, tracker.peer_max_age))
            except (RedisError, OSError) as exc:
                logger.warning("shared swarms unavailable, this node's only: %s", exc)
        try:
            out = tracker.receive(ws, obj, now)
        except Exception:
            logger.exception("failed to handle a webtorrent %r", obj.get("action"))
            out = [(ws, {"failure reason": "internal server error"})]
        local = [(conn, TrackerMessage(body)) for conn, body in out
                 if not isinstance(conn, Remote)]
        if shared is None or room is None:
            return local
        try:
            peer_id = obj["peer_id"]
            seed = tracker.local_peer(room, peer_id)
            if seed is None:
                await shared.tracker_leave(room, peer_id)
            elif "answer" not in obj:
                await shared.tracker_announce(room, peer_id, seed, tracker.peer_max_age)
            for conn, body in out:
                if isinstance(conn, Remote):
                    await shared.tracker_send(conn.node, room, conn.peer_id,
                                              encode_message(body))
        except (RedisError, OSError) as exc:
            logger.warning("cannot share a webtorrent %s: %s", obj.get("action"), exc)
        return local

    async def _apply(self, ws: ServerConnection, message: Message, observed: Address,
                     now: float) -> list[Any]:
        if isinstance(message, Ping):
            return [(ws, Pong(message.id))]
        if isinstance(message, Register):
            return await self._register(ws, message, observed, now)
        rooms = self._host.rooms
        peer = rooms.peer_of(ws)
        if peer is None:
            raise RoomError("not-registered", f"register before {message.TYPE}")
        shared = self._host.shared
        if isinstance(message, Join):
            room = message.room
            rejoin = room in rooms.rooms_of(peer)
            out = list(rooms.join(peer, room))
            if shared is not None:
                # The listing covers every node; other nodes notify their own members.
                if rejoin:
                    others = [m for m in await shared.members(room) if m.peer_id != peer]
                    others = others[-MAX_JOINED_PEERS:]
                else:
                    others = await shared.join(
                        peer, rooms.session_key_of(ws), room,
                        PeerJoined(room, peer, rooms.info_of(peer).metadata))
                out[0] = (peer, Joined(room, tuple(others)))
            return out
        if isinstance(message, Leave):
            out = list(rooms.leave(peer, message.room))
            if shared is not None:
                await shared.leave(peer, rooms.session_key_of(ws), message.room,
                                   PeerLeft(message.room, peer))
            return out
        if isinstance(message, Relay):
            self._check_candidates(message.data, "relay data")
            if shared is not None and rooms.conn_of(message.to) is None:
                if message.room not in rooms.rooms_of(peer):
                    raise RoomError("not-in-room", f"not in room {message.room}")
                await shared.relay(message.to, message.room,
                                   Relayed(peer, message.room, message.data))
                self._counters.relayed += 1
                return []
            out = rooms.relay(peer, message.to, message.room, message.data)
            self._counters.relayed += 1
            return list(out)
        raise RoomError("unknown-type", f"unexpected message type {message.TYPE!r}")

    async def _register(self, ws: ServerConnection, message: Register, observed: Address,
                        now: float) -> list[Any]:
        host, rooms = self._host, self._host.rooms
        if host.secret is not None:
            check_token(host.secret, message.token, message.peer_id)
        self._check_candidates(message.metadata, "metadata")
        out: list[Any] = []
        holder = rooms.conn_of(message.peer_id)
        if message.resume is not None and holder is not None and holder is not ws \
                and rooms.peer_of(ws) is None:
            old, notes = rooms.evict(message.peer_id, message.resume)
            out.extend(notes)
            if isinstance(old, ServerConnection):
                self._replace(old, f"peer id {message.peer_id!r} "
                              "registered again on a new connection")
        key = secrets.token_hex(16)
        if host.shared is not None and rooms.peer_of(ws) is None \
                and rooms.conn_of(message.peer_id) is None:
            await host.shared.claim(message.peer_id, message.metadata, key, message.resume)
        out.extend(rooms.register(ws, message.peer_id, message.metadata, observed, key, now))
        logger.info("peer %s registered from %s:%d", message.peer_id, *observed)
        return out

    def _check_candidates(self, data: dict[str, Any], where: str) -> None:
        for key, host in candidates_of(data):
            check_candidate(host, lan_mode=self._host.lan_mode, where=f"{where} {key}")
