"""Signaling rooms, one per torrent: members go to the punch engine, relayed punch
messages too; after a reconnection the rooms are brought back in line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LtTimeoutError, ProtocolError, SignalingError
from ..punch.engine import PunchEngine
from ..punch.plan import PeerProfile
from ..signaling import protocol as sp
from ..signaling.client import ConnectionState, SignalingClient

logger = logging.getLogger(__name__)


class RoomLink:
    """Keeps the signaling client's rooms equal to the session's torrents.

    Args:
        client: the connected signaling client.
        engine: the punch engine that meets the members.
        torrents: the session's torrents by infohash (read only).
        spawn: starts a background task owned by the session.
    """

    def __init__(self, client: SignalingClient, engine: PunchEngine,
                 torrents: Mapping[str, Any],
                 spawn: Callable[[Any, str], asyncio.Task[Any]]) -> None:
        self.client = client
        self._engine = engine
        self._torrents = torrents
        self._spawn = spawn
        self.error: str | None = None
        """Why signaling is not connected now (None while it is)."""
        self.closing = False

    async def join(self, infohash: str) -> None:
        """Join a torrent's room and meet its members (a failure is logged: the
        torrent works without its room)."""
        if not self.client.connected:
            return  # joined after the reconnection
        try:
            peers = await self.client.join(infohash)
        except (SignalingError, LtTimeoutError) as exc:
            logger.warning("cannot join room %s: %s", infohash, exc)
            return
        self._meet(infohash, peers)

    async def leave(self, infohash: str) -> None:
        if self.client.connected:
            with contextlib.suppress(SignalingError, LtTimeoutError):
                await self.client.leave(infohash)

    async def run(self) -> None:
        """Dispatch the client's events until it closes."""
        try:
            async for event in self.client.events():
                if isinstance(event, ConnectionState):
                    self._on_connection_state(event)
                    continue
                try:
                    self._on_signal(event)
                except ProtocolError as exc:
                    logger.warning("ignored bad signaling event %s: %s", event, exc)
        except SignalingError as exc:
            self.error = str(exc)
            logger.warning("signaling connection lost: %s", exc)
        else:
            if not self.closing and self.error is None:
                self.error = "signaling connection closed"
                logger.warning("signaling connection closed")

    def _on_connection_state(self, event: ConnectionState) -> None:
        """Track the connection; after a reconnection, join the rooms missed."""
        if event.state == "connected":
            self.error = None
            if event.attempt:
                logger.info("signaling reconnected (attempt %d)", event.attempt)
            for infohash in set(self._torrents) ^ self.client.rooms:
                self._spawn(self._sync_room(infohash), "sync-room")
        elif event.state == "disconnected":
            self.error = f"signaling disconnected: {event.error}"
            logger.warning("%s; reconnecting", self.error)
        elif event.state == "reconnecting":
            logger.info("signaling: reconnection attempt %d in %.1f s (%s)",
                        event.attempt, event.delay, event.error)
        elif event.state == "closed" and not self.closing:
            self.error = f"signaling closed: {event.error or 'closed'}"
            logger.warning("%s; not reconnecting", self.error)

    async def _sync_room(self, infohash: str) -> None:
        """Join the room of a torrent added while disconnected, or leave the room of
        one removed meanwhile (the client re-joined it)."""
        try:
            if infohash not in self._torrents:
                if infohash in self.client.rooms:
                    await self.client.leave(infohash)
                return
            if infohash not in self.client.rooms:
                self._meet(infohash, await self.client.join(infohash))
        except (SignalingError, LtTimeoutError, ProtocolError) as exc:
            logger.warning("cannot sync room %s after reconnecting: %s", infohash, exc)

    def _meet(self, infohash: str, members: list[sp.PeerInfo] | tuple[sp.PeerInfo, ...]) -> None:
        for info in members:
            self._member(infohash, str(info.peer_id), info.metadata)

    def _member(self, infohash: str, peer_id: str, metadata: Any) -> None:
        try:
            peer = PeerProfile.from_metadata(peer_id, metadata)
        except ProtocolError as exc:
            logger.info("room peer %s not usable: %s", peer_id, exc)
            return
        self._engine.peer_joined(infohash, peer)

    def _on_signal(self, event: sp.Message) -> None:
        if isinstance(event, sp.PeerJoined):
            if event.room in self._torrents:
                self._member(event.room, str(event.peer_id), event.metadata)
        elif isinstance(event, sp.Joined):
            # The reply to a re-join after a reconnection.
            if event.room not in self._torrents:  # removed while we were away
                self._spawn(self._sync_room(event.room), "sync-room")
                return
            self._meet(event.room, event.peers)
        elif isinstance(event, sp.PeerLeft):
            self._engine.peer_left(event.room, str(event.peer_id))
        elif isinstance(event, sp.Relayed):
            self._engine.receive(str(event.from_), event.room, event.data)
        elif isinstance(event, sp.Error):
            logger.warning("signaling error: %s", event)
