"""Rooms shared by several signaling server processes through Redis (``--redis-url``).

Each process keeps its own connections and their local bookkeeping in
:class:`~lt_punch.signaling.rooms.Rooms`; :class:`SharedRooms` adds what the other
processes (*nodes*) must see, in Redis:

``<prefix>peer:<peer_id>``
    JSON ``{"node", "metadata", "key"}``: who holds the peer id, with a TTL the holding
    node refreshes; a crashed node's peers vanish within ``peer_ttl``.
``<prefix>room:<infohash>``
    sorted set of ``"<peer_id> <session_key>"``, scored by join time: a membership
    belongs to one registration, so the end of a replaced (resumed) registration
    removes its own memberships, never the new one's; listings drop memberships whose
    registration is gone.
``<prefix>wt:<infohash>``
    hash of a WebTorrent swarm's members on every node: hex peer id -> ``"<node>
    <seed 0|1> <last announce, unix time>"``; members that stopped announcing for the
    tracker's peer age are dropped when read.
``<prefix>node:<node_id>``
    the pub/sub channel of a node: ``{"to": peer_id, "msg": <server message text>}``
    for its local peers, ``{"wt": <hex peer id>, "room": infohash, "msg": <tracker
    message text>}`` for its WebTorrent peers, and ``{"evict": peer_id}`` when a client
    resumed elsewhere.

A peer id is claimed with ``SET NX`` (``peer-id-taken`` across nodes); notifications and
relays to peers of other nodes are published on their node's channel. Relays are
delivered at most once, like on one server (pub/sub does not queue for absent nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..types import InfoHash, PeerId
from .protocol import MAX_JOINED_PEERS, Message, PeerInfo
from .rooms import RoomError

__all__ = ["SharedRooms"]

logger = logging.getLogger(__name__)

Deliver = Callable[[PeerId, str], None]
"""Hand a server message (encoded) to a local peer's connection."""
Evict = Callable[[PeerId], None]
"""Close a local peer's connection: it registered again on another node."""
DeliverTracker = Callable[[str, str, str], None]
"""Hand a WebTorrent tracker message (room, binary peer id, text) to a local peer."""


class SharedRooms:
    """Cross-node room membership and delivery over Redis.

    Args:
        url: ``redis://host:port/db``.
        prefix: key prefix (several deployments can share a Redis).
        peer_ttl: seconds a peer id stays claimed without a refresh from its node.
        timeout: seconds for each Redis command.
    """

    def __init__(self, url: str, *, prefix: str = "ltp:", peer_ttl: float = 60.0,
                 timeout: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.peer_ttl = peer_ttl
        self.timeout = timeout
        self.node_id = secrets.token_hex(8)
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._local: dict[PeerId, tuple[str, str]] = {}
        """Our peers' (session key, JSON record), refreshed every ``peer_ttl`` / 3 s."""
        self.published = 0
        self.received = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, deliver: Deliver, evict: Evict,
                    deliver_tracker: DeliverTracker | None = None) -> None:
        """Connect, subscribe to our node channel and start the refresher.

        Raises:
            OSError: Redis is unreachable (the message names the URL).
        """
        self._redis = aioredis.from_url(self.url, socket_timeout=self.timeout,
                                        socket_connect_timeout=self.timeout)
        try:
            await self._redis.ping()
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(self._channel(self.node_id))
        except (RedisError, OSError) as exc:
            await self.close()
            raise OSError(f"cannot use Redis at {self.url}: {exc}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(deliver, evict, deliver_tracker)),
                       loop.create_task(self._refresh())]
        logger.info("shared rooms on %s as node %s", self.url, self.node_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
        self._tasks = []
        redis, self._redis = self._redis, None
        if redis is not None:
            with contextlib.suppress(RedisError, OSError):
                if self._local:
                    await redis.delete(*[self._peer_key(p) for p in self._local])
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()
        self._local.clear()

    # -- operations (each raises RoomError for a refusal, RedisError/OSError on failure) --

    async def claim(self, peer_id: PeerId, metadata: dict[str, Any], session_key: str,
                    resume: str | None) -> None:
        """Take ``peer_id`` for a connection of ours.

        Raises:
            RoomError: ``peer-id-taken`` (held by a connection of another node, and
                ``resume`` is not its session key).
        """
        redis = self._live()
        record = json.dumps({"node": self.node_id, "metadata": metadata, "key": session_key})
        key = self._peer_key(peer_id)
        if not await redis.set(key, record, nx=True, px=self._ttl_ms()):
            holder = await self._record(peer_id)
            if holder is not None and (resume is None or holder.get("key") != resume):
                raise RoomError("peer-id-taken", f"peer id {peer_id!r} is in use")
            if holder is not None and holder.get("node") != self.node_id:
                await self._publish(str(holder["node"]), {"evict": peer_id})
            await redis.set(key, record, px=self._ttl_ms())
        self._local[peer_id] = (session_key, record)

    async def release(self, peer_id: PeerId, session_key: str | None,
                      rooms: Iterable[InfoHash], notes: Callable[[InfoHash], Message]) -> None:
        """Our registration ``session_key`` of ``peer_id`` ended: free the id (unless
        it was registered again meanwhile, by a resumed client) and leave its rooms,
        telling the other nodes' members (``notes(room)``, a ``peer-left``)."""
        if self._local.get(peer_id, ("", ""))[0] == session_key:
            del self._local[peer_id]
        record = await self._record(peer_id)
        if record is not None and record.get("key") == session_key:
            await self._live().delete(self._peer_key(peer_id))
        for room in rooms:
            await self.leave(peer_id, session_key, room, notes(room))

    async def join(self, peer_id: PeerId, session_key: str | None, room: InfoHash,
                   note: Message) -> list[PeerInfo]:
        """Add our peer to ``room``; the other members (all nodes, most recent last, at
        most ``MAX_JOINED_PEERS``); ``note`` (its ``peer-joined``) goes to the members of
        other nodes."""
        redis = self._live()
        await redis.zadd(self._room_key(room), {_member(peer_id, session_key): time.time()},
                         nx=True)
        members = await self._members(room, exclude=peer_id)
        await self._send_remote(members, note)
        return [PeerInfo(p, r["metadata"]) for p, r in members[-MAX_JOINED_PEERS:]]

    async def leave(self, peer_id: PeerId, session_key: str | None, room: InfoHash,
                    note: Message) -> None:
        redis = self._live()
        if await redis.zrem(self._room_key(room), _member(peer_id, session_key)):
            await self._send_remote(await self._members(room, exclude=peer_id), note)

    async def relay(self, to: PeerId, room: InfoHash, message: Message) -> None:
        """Deliver a relay to a peer of another node.

        Raises:
            RoomError: ``unknown-peer`` if ``to`` is not in ``room`` on any node.
        """
        redis = self._live()
        record = await self._record(to)
        if record is None or await redis.zscore(
                self._room_key(room), _member(to, record.get("key"))) is None:
            raise RoomError("unknown-peer", f"no peer {to!r} in room {room}")
        await self._publish(str(record["node"]), {"to": to, "msg": message.encode()})

    # -- WebTorrent swarms ------------------------------------------------------------

    async def tracker_members(self, room: InfoHash, max_age: float
                              ) -> list[tuple[str, str, bool]]:
        """The WebTorrent members of ``room`` on other nodes: (binary peer id, node,
        seed), those that announced within ``max_age`` seconds (older ones removed)."""
        redis = self._live()
        key = self._tracker_key(room)
        now = time.time()
        members, stale = [], []
        for field, value in (await redis.hgetall(key)).items():
            peer = field.decode() if isinstance(field, bytes) else str(field)
            node, seed, seen = (value.decode() if isinstance(value, bytes)
                                else str(value)).split(" ")
            if now - float(seen) >= max_age:
                stale.append(peer)
            elif node != self.node_id:
                members.append((bytes.fromhex(peer).decode("latin-1"), node, seed == "1"))
        if stale:
            await redis.hdel(key, *stale)
        return members

    async def tracker_announce(self, room: InfoHash, peer_id: str, seed: bool,
                               ttl: float) -> None:
        """Our WebTorrent peer ``peer_id`` (binary) is in ``room``; the swarm's key lives
        ``ttl`` seconds after the last announce."""
        key = self._tracker_key(room)
        async with self._live().pipeline(transaction=False) as pipe:
            pipe.hset(key, _hex(peer_id), f"{self.node_id} {int(seed)} {time.time():.3f}")
            pipe.expire(key, int(ttl) + 1)
            await pipe.execute()

    async def tracker_leave(self, room: InfoHash, peer_id: str) -> None:
        await self._live().hdel(self._tracker_key(room), _hex(peer_id))

    async def tracker_send(self, node: str, room: InfoHash, peer_id: str, text: str) -> None:
        """A tracker message for a WebTorrent peer of another node."""
        await self._publish(node, {"wt": _hex(peer_id), "room": room, "msg": text})

    async def members(self, room: InfoHash) -> list[PeerInfo]:
        """Everyone in ``room``, on every node, in join order."""
        return [PeerInfo(p, r["metadata"]) for p, r in await self._members(room)]

    # -- internals ---------------------------------------------------------------------

    def _live(self) -> aioredis.Redis:
        if self._redis is None:
            raise OSError("shared rooms not started")
        return self._redis

    def _ttl_ms(self) -> int:
        return int(self.peer_ttl * 1000)

    def _peer_key(self, peer_id: str) -> str:
        return f"{self.prefix}peer:{peer_id}"

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def _tracker_key(self, room: str) -> str:
        return f"{self.prefix}wt:{room}"

    def _channel(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    async def _record(self, peer_id: str) -> dict[str, Any] | None:
        raw = await self._live().get(self._peer_key(peer_id))
        return _parse_record(raw)

    async def _members(self, room: InfoHash, exclude: str | None = None
                       ) -> list[tuple[PeerId, dict[str, Any]]]:
        """(peer id, record) of the live members of ``room``, in join order; memberships
        of registrations that are gone (expired: their node died; or replaced) are
        removed."""
        redis = self._live()
        key = self._room_key(room)
        entries = [e.decode() if isinstance(e, bytes) else str(e)
                   for e in await redis.zrange(key, 0, -1)]
        entries = [e for e in entries if e.partition(" ")[0] != exclude]
        if not entries:
            return []
        records = await redis.mget([self._peer_key(e.partition(" ")[0]) for e in entries])
        live, dead = [], []
        for entry, raw in zip(entries, records, strict=True):
            peer_id, _, session_key = entry.partition(" ")
            record = _parse_record(raw)
            if record is None or (record.get("key") or "") != session_key:
                dead.append(entry)
            else:
                live.append((PeerId(peer_id), record))
        if dead:
            await redis.zrem(key, *dead)
        return live

    async def _send_remote(self, members: list[tuple[PeerId, dict[str, Any]]],
                           message: Message) -> None:
        text = message.encode()
        for peer_id, record in members:
            if record.get("node") != self.node_id:
                await self._publish(str(record["node"]), {"to": peer_id, "msg": text})

    async def _publish(self, node: str, payload: dict[str, Any]) -> None:
        self.published += 1
        await self._live().publish(self._channel(node), json.dumps(payload))

    async def _listen(self, deliver: Deliver, evict: Evict,
                      deliver_tracker: DeliverTracker | None) -> None:
        assert self._pubsub is not None
        while True:
            try:
                item = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                logger.warning("Redis subscription failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if item is None or item.get("type") != "message":
                continue
            self.received += 1
            try:
                payload = json.loads(item["data"])
                if "evict" in payload:
                    evict(PeerId(str(payload["evict"])))
                elif "wt" in payload:
                    if deliver_tracker is not None:
                        deliver_tracker(str(payload["room"]),
                                        bytes.fromhex(str(payload["wt"])).decode("latin-1"),
                                        str(payload["msg"]))
                else:
                    deliver(PeerId(str(payload["to"])), str(payload["msg"]))
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("ignored a malformed message on our channel: %s", exc)

    async def _refresh(self) -> None:
        """Keep our peers' records alive (a dead node's expire)."""
        while True:
            await asyncio.sleep(self.peer_ttl / 3)
            if not self._local:
                continue
            try:
                async with self._live().pipeline(transaction=False) as pipe:
                    for peer_id, (_, record) in self._local.items():
                        pipe.set(self._peer_key(peer_id), record, px=self._ttl_ms())
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("cannot refresh peer records in Redis: %s", exc)


def _hex(binary: str) -> str:
    return binary.encode("latin-1").hex()


def _member(peer_id: str, session_key: str | None) -> str:
    return f"{peer_id} {session_key or ''}"


def _parse_record(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "node" in record else None
