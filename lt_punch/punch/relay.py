"""The TURN relay of one session: one allocation, bridged into libtorrent.

:class:`TurnRelay` allocates a TCP relay (:mod:`lt_punch.punch.turn`) on the first
server of the list that grants one, when a punch first needs it, and keeps it for
every peer after that (one allocation serves many peers: RFC 6062 hands each peer
connection over separately). Each peer gets a permission for the addresses signaling
saw it from, and nothing else can reach the relayed address. Every connection the
relay hands over is bridged (:class:`~lt_punch.punch.bridge.Bridge`) to libtorrent's
listen port, where libtorrent takes it as an incoming peer connection; whoever waits
for that peer (:meth:`TurnRelay.open`) is told the bridge's local endpoint first, so
that it can recognise the connection among libtorrent's alerts.

A relay that dies (the server restarts, the control connection drops) is allocated
afresh at the next punch that needs it, with a new relayed address: the punch engine's
re-punch of a lost connection does that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..types import Address
from .bridge import Bridge
from .turn import TurnAllocation, TurnError, TurnServer

logger = logging.getLogger(__name__)

Bridged = Callable[[Address], None]
"""Told the local endpoint of a bridge into libtorrent, before libtorrent sees it."""


class TurnRelay:
    """Args:
        servers: tried in order until one allocates.
        target: libtorrent's listen endpoint (where bridges connect), asked each time.
        timeout: seconds for each TURN request.
    """

    def __init__(self, servers: Sequence[TurnServer], target: Callable[[], Address], *,
                 timeout: float = 5.0) -> None:
        if not servers:
            raise ValueError("TurnRelay needs at least one server")
        self.servers = tuple(servers)
        self._target = target
        self.timeout = timeout
        self.allocation: TurnAllocation | None = None
        self.allocations = 0
        """Allocations made (more than one: the relay died and was made again)."""
        self.error: str | None = None
        """Why the last allocation attempt failed (None after a success)."""
        self.bridges: list[Bridge] = []
        self._bytes_done = 0
        self._cpu_done = 0.0
        self._lock = asyncio.Lock()
        self._waiting: dict[str, list[Bridged]] = {}
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, peer_ips: Iterable[str], bridged: Bridged) -> Address:
        """The relayed address for a peer seen from ``peer_ips``; ``bridged`` is told
        of each connection from those addresses until :meth:`forget`.

        Raises:
            TurnError: no server granted an allocation or the permission (the message
                names each server and why).
        """
        ips = sorted(set(peer_ips))
        if not ips:
            raise TurnError("no address of the peer to permit")
        allocation = await self._allocation()
        for ip in ips:
            if ip not in allocation.permitted:
                await allocation.permit(ip)
        for ip in ips:
            self._waiting.setdefault(ip, []).append(bridged)
        assert allocation.relayed is not None
        return allocation.relayed

    async def check(self) -> bool:
        """Allocate a relay at once, to learn now whether the servers grant one: a
        refused credential or a dead server is then one clear warning at start, not a
        surprise at the first punch that needs the relay. The allocation is kept for
        that punch. Returns whether one was granted (``error`` says why not)."""
        try:
            await self._allocation()
        except TurnError as exc:
            logger.warning("TURN relay unavailable (the other methods go on): %s", exc)
            return False
        return True

    def forget(self, bridged: Bridged) -> None:
        for ip in list(self._waiting):
            waiting = [b for b in self._waiting[ip] if b is not bridged]
            if waiting:
                self._waiting[ip] = waiting
            else:
                del self._waiting[ip]

    async def _allocation(self) -> TurnAllocation:
        async with self._lock:
            if self.allocation is not None and not self.allocation.closed:
                return self.allocation
            if self.allocation is not None:
                logger.info("TURN relay ended (%s): allocating again", self.allocation.error)
                await self._drop_allocation()
            errors = []
            for server in self.servers:
                try:
                    allocation = await TurnAllocation.open(server, timeout=self.timeout)
                except TurnError as exc:
                    errors.append(str(exc))
                    continue
                self.allocation = allocation
                self.allocations += 1
                self.error = None
                self._accepting = asyncio.ensure_future(self._accept_loop(allocation))
                return allocation
            self.error = "; ".join(errors)
            raise TurnError(self.error)

    async def _drop_allocation(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self.allocation is not None:
            await self.allocation.close()
        self.allocation = None

    async def _accept_loop(self, allocation: TurnAllocation) -> None:
        while not allocation.closed:
            try:
                attempt = await allocation.next_attempt()
            except TurnError as exc:
                logger.info("TURN relay: %s", exc)
                return
            task = asyncio.ensure_future(self._bridge(allocation, *attempt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _bridge(self, allocation: TurnAllocation, connection_id: int,
                      peer: Address) -> None:
        """Bind the peer's connection, connect to libtorrent and splice; the first
        waiter for ``peer`` hears of it before libtorrent does. A failed bind or
        connect loses this connection only (the peer's libtorrent dials again)."""
        try:
            relayed = await allocation.bind(connection_id)
        except TurnError as exc:
            logger.warning("TURN relay: connection from %s:%d not bound: %s", *peer, exc)
            return
        local: socket.socket | None = None
        try:
            host, port = self._target()
            local = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            local.setblocking(False)
            local.bind((host, 0))
            endpoint: Address = local.getsockname()[:2]
            waiting = self._waiting.get(peer[0])
            if waiting:
                bridged = waiting[0]
                self.forget(bridged)  # one connection per waiter (the same peer may
                bridged(endpoint)     # share several torrents with us)
            async with asyncio.timeout(self.timeout):
                await asyncio.get_running_loop().sock_connect(local, (host, port))
        except BaseException as exc:
            if local is not None:
                local.close()
            relayed.close()
            if isinstance(exc, Exception):
                logger.warning("TURN relay: cannot bridge %s:%d into libtorrent: %s",
                               *peer, exc)
                return
            raise
        bridge = Bridge(relayed, local, name=f"relay {peer[0]}:{peer[1]}")
        self.bridges.append(bridge)
        logger.info("TURN relay: %s:%d bridged to libtorrent from %s:%d", *peer, *endpoint)
        try:
            await bridge.wait()
        finally:
            self.bridges.remove(bridge)
            self._bytes_done += sum(bridge.bytes)
            self._cpu_done += sum(bridge.cpu)

    @property
    def bytes_relayed(self) -> int:
        """Bytes that crossed the relay, both ways, over all connections."""
        return self._bytes_done + sum(sum(b.bytes) for b in self.bridges)

    @property
    def bridge_cpu(self) -> float:
        """CPU seconds the bridges' threads used, over all connections."""
        return self._cpu_done + sum(sum(b.cpu) for b in self.bridges)

    def stats(self) -> dict[str, Any]:
        allocation = self.allocation
        live = allocation is not None and not allocation.closed
        return {
            "servers": [str(s) for s in self.servers],
            "allocated": live,
            "server": str(allocation.server) if live and allocation else None,
            "relayed": list(allocation.relayed) if live and allocation and allocation.relayed
            else None,
            "lifetime": allocation.lifetime if live and allocation else None,
            "rtt": allocation.rtt if allocation else None,
            "allocations": self.allocations,
            "connections": len(self.bridges),
            "bytes_relayed": self.bytes_relayed,
            "bridge_cpu": self.bridge_cpu,
            "error": self.error,
        }

    async def close(self) -> None:
        """Stop the bridges and release the allocation."""
        async with self._lock:
            await self._drop_allocation()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bridge in list(self.bridges):
            await bridge.close()
        self._waiting.clear()


__all__ = ["Bridged", "TurnRelay"]
