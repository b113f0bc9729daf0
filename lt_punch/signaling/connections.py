"""The signaling server's websocket connections: admit, read, dispatch, send, close.

:meth:`Connections.serve` is the websocket handler: it admits the connection
(:class:`~.admission.Admission`), charges every frame to its quota, hands the frames to
:class:`~.dispatch.Dispatcher` and sends the messages that come back; when the
connection ends, its peer leaves its rooms (here, and with Redis on the other nodes).

Messages to the requester are sent with ``await send()`` (backpressure on the sender
of the request); notifications and relays to other peers go through
:func:`.wire.broadcast`, so a peer that stops reading cannot stall
the others -- its buffer grows until the websocket keepalive drops it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..errors import LocalProtocolError
from ..types import Address, InfoHash, PeerId
from .admission import Admission, Quota, Verdict, address_of
from .dispatch import Dispatcher
from .dispatch import Host as DispatchHost
from .metrics import Counters
from .protocol import (
    REPLACED_CLOSE_CODE,
    Error,
    PeerJoined,
    PeerLeft,
    Pong,
    Relayed,
    peek_type,
)
from .wire import Closed, broadcast
from .wire import Connection as ServerConnection

__all__ = ["Connections"]

logger = logging.getLogger(__name__)

_TRUSTED = (Relayed, PeerJoined, PeerLeft, Pong)
"""Server messages sent without a re-parse (see :meth:`Connections._send_all`)."""


class Host(DispatchHost, Protocol):
    """What the connections read from their server."""

    @property
    def admission(self) -> Admission: ...


class Connections:
    """Every websocket connection of one server.

    Args:
        host: the server whose rooms, limits and settings apply.
        counters: where connections, messages, closes and errors are counted.
    """

    def __init__(self, host: Host, counters: Counters) -> None:
        self._host = host
        self._counters = counters
        self.dispatcher = Dispatcher(host, counters, self.replace)
        """Turns each frame into the messages to send."""
        self._last_seen: dict[ServerConnection, float] = {}
        self._open: dict[ServerConnection, tuple[Quota, Address]] = {}

    async def serve(self, ws: ServerConnection) -> None:
        """Serve ``ws`` until it closes (the handler given to websockets' ``serve``)."""
        admission = self._host.admission
        observed = address_of(ws.remote_address)
        ip = observed[0]
        self._counters.connections += 1
        logger.debug("connection from %s:%d", *observed)
        quota = admission.admit(ip)
        if quota is None:
            self._refuse(ws, "too-many-connections", f"more than "
                               f"{admission.max_connections_per_address} connections from {ip}")
            return
        self._last_seen[ws] = time.monotonic()
        self._open[ws] = (quota, observed)
        try:
            async for frame in ws:
                now = self._last_seen[ws] = time.monotonic()
                self._counters.received += 1
                verdict = quota.take()
                if verdict is Verdict.CLOSE:
                    self._refuse(ws, "rate-limited", self._rate_text(quota, True))
                    break
                if verdict is Verdict.REFUSE:
                    await self._send_all(ws, [(ws, self._rate_error(quota, frame))])
                    continue
                out = await self.dispatcher.receive(ws, frame, observed, now)
                await self._send_all(ws, out)
        except Closed:
            pass
        finally:
            self._open.pop(ws, None)
            self._last_seen.pop(ws, None)
            admission.release(ip)
            await self._disconnect(ws)

    def receive_now(self, ws: ServerConnection, frame: str | bytes) -> bool:
        """The wire layer's fast path (its handler is idle): handle ``frame`` at once
        when nothing in it waits -- no Redis, and the client reads its replies; False:
        the handler (:meth:`serve`) takes it. Same limits, counters and replies."""
        entry = self._open.get(ws)
        if entry is None or self._host.shared is not None or not ws.writable:
            return False
        quota, observed = entry
        now = self._last_seen[ws] = time.monotonic()
        self._counters.received += 1
        verdict = quota.take()
        if verdict is Verdict.CLOSE:
            self._refuse(ws, "rate-limited", self._rate_text(quota, True))
            return True
        if verdict is Verdict.REFUSE:
            out = [(ws, self._rate_error(quota, frame))]
        else:
            out = self.dispatcher.receive_now(ws, frame, observed, now)
        for conn, text in self._prepare(out):
            if conn is ws:
                ws.send_nowait(text)  # writable: the client keeps up
            else:
                broadcast([conn], text)
        return True

    def _rate_text(self, quota: Quota, closing: bool) -> str:
        rate = self._host.admission.rate
        if closing:
            return (f"over {rate:g} messages per second, {quota.refusals} times in a row: "
                    "closing")
        return f"over {rate:g} messages per second; slow down"

    def _rate_error(self, quota: Quota, frame: str | bytes) -> Error:
        return self.dispatcher.error("rate-limited", self._rate_text(quota, False),
                                     peek_type(frame) if isinstance(frame, str) else None)

    def deliver(self, peer_id: PeerId, text: str) -> None:
        """A message from another node for a peer of ours."""
        conn = self._host.rooms.conn_of(peer_id)
        if isinstance(conn, ServerConnection):
            broadcast([conn], text)

    def deliver_tracker(self, room: str, peer_id: str, text: str) -> None:
        """A WebTorrent tracker message from another node for a swarm member of ours."""
        conn = self._host.webtorrent.conn_of(InfoHash(room), peer_id)
        if isinstance(conn, ServerConnection):
            broadcast([conn], text)

    def evict(self, peer_id: PeerId) -> None:
        """Our peer registered again on another node (with its session key)."""
        conn = self._host.rooms.conn_of(peer_id)
        if isinstance(conn, ServerConnection):
            self.replace(conn, f"peer id {peer_id!r} registered again on another server")

    def replace(self, ws: ServerConnection, text: str) -> None:
        """Close ``ws``: its peer id registered again (resumed) on another connection."""
        self._refuse(ws, "replaced", text, REPLACED_CLOSE_CODE)

    def close_idle(self, now: float, timeout: float) -> None:
        """Close the connections that sent nothing for ``timeout`` seconds."""
        stale = [ws for ws, seen in self._last_seen.items() if now - seen >= timeout]
        for ws in stale:
            self._refuse(ws, "idle-timeout", f"no message for {timeout:g} s", 1000)

    async def _disconnect(self, ws: ServerConnection) -> None:
        """``ws`` closed: its peer leaves its rooms, here and on the other nodes."""
        rooms, shared = self._host.rooms, self._host.shared
        peer = rooms.peer_of(ws)
        key = rooms.session_key_of(ws)
        left = rooms.rooms_of(peer) if peer is not None else set()
        out = rooms.disconnect(ws)
        swarms = self._host.webtorrent.disconnect(ws)
        if peer is not None:
            logger.info("peer %s disconnected", peer)
        await self._send_all(ws, out)
        if shared is not None:
            for room, member in swarms:
                try:
                    await shared.tracker_leave(room, member)
                except (RedisError, OSError) as exc:
                    logger.warning("cannot take a WebTorrent peer out of Redis: %s", exc)
                    break
        if shared is not None and peer is not None:
            try:
                await shared.release(peer, key, sorted(left), lambda room: PeerLeft(room, peer))
            except (RedisError, OSError) as exc:
                logger.warning("cannot release %s in Redis: %s", peer, exc)

    def _refuse(self, ws: ServerConnection, code: str, text: str,
                close_code: int = 1008) -> None:
        """Send an error with ``code`` and start closing the connection: nothing more
        is read from it or sent to it, and the wire layer bounds the close."""
        self._last_seen.pop(ws, None)  # once
        self._counters.closed[code] += 1
        logger.info("closing %s:%d: %s", *address_of(ws.remote_address), text)
        # Without waiting for the client to read it: a client that does not read is
        # one reason to close.
        ws.send_nowait(self.dispatcher.error(code, text).serialize())
        ws.start_close(close_code, code)

    async def _send_all(self, ws: ServerConnection, out: list[Any]) -> None:
        for conn, text in self._prepare(out):
            if conn is ws:
                try:
                    await ws.send(text)
                except Closed:
                    return
            else:
                broadcast([conn], text)

    def _prepare(self, out: list[Any]) -> Iterator[tuple[ServerConnection, str | bytes]]:
        """Each ``(target, message)`` as (its connection, the text to send); targets
        without a connection here are skipped."""
        for target, message in out:
            try:
                # Relays and notifications carry fields that passed parse_message on the
                # way in: skip the re-parse (a third of the relay cost at saturation).
                text = message.encode() if isinstance(message, _TRUSTED) \
                    else message.serialize()
            except (LocalProtocolError, TypeError, ValueError):
                logger.exception("not sending an invalid message to %s", target)
                continue
            conn = target if isinstance(target, ServerConnection) \
                else self._host.rooms.conn_of(target)
            if isinstance(conn, ServerConnection):
                logger.debug("> %s: %s", target, message)
                yield conn, text
