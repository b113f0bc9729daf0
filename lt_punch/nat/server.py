"""A small STUN Binding responder for the embedded demo and the tests.

The server owns a grid of UDP sockets: the primary ``(host, port)``, and when given an
alternate port and/or an alternate host, the same port(s) on the other host. A
Binding request arriving on one socket is answered from the socket its
CHANGE-REQUEST flags point to (RFC 3489 section 8.1, RFC 5780 section 6.1), with
MAPPED-ADDRESS, XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN/SOURCE-ADDRESS and, when there
is an alternate, OTHER-ADDRESS/CHANGED-ADDRESS.

A CHANGE-REQUEST the server cannot honour (change IP without an alternate host,
change port without an alternate port) gets no answer, and is counted in
``stats.unsatisfiable``. RFC 5780 would send a 420 error, but an RFC 3489 client
such as pystun3 re-sends on any non-success answer without end; silence makes it
conclude "filtered", which errs on the restrictive side (a server without an
alternate IP then reports an open host as "Symmetric UDP Firewall" and a full cone
as restricted, never the other way round).

:class:`StunResponder` is the sans-I/O core; :class:`StunServer` feeds it datagrams.
Garbage never crashes the server: it is counted in ``stats.garbage`` and dropped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from types import TracebackType

from ..errors import LocalProtocolError, RemoteProtocolError
from ..types import Address
from .stun import (
    ChangeRequest,
    MessageClass,
    Method,
    StunMessage,
    binding_error,
    binding_success,
)

logger = logging.getLogger(__name__)

Slot = tuple[int, int]
"""(host index, port index) in the server's socket grid: (0, 0) is the primary."""


@dataclass
class ServerStats:
    """Counters of what the server saw."""

    requests: int = 0
    """Binding requests parsed."""
    responses: int = 0
    """Responses sent (success and error)."""
    garbage: int = 0
    """Datagrams that were not valid STUN."""
    ignored: int = 0
    """Valid STUN that is not a Binding request (responses, indications, other methods)."""
    unsatisfiable: int = 0
    """CHANGE-REQUESTs the server cannot honour (left unanswered)."""
    errors: int = 0
    """Requests we failed to answer (e.g. a source address we cannot encode)."""


class StunResponder:
    """Sans-I/O core: datagram in, ``(reply, slot to send it from)`` out.

    Args:
        addresses: the bound address of every slot of the grid; ``(0, 0)`` is the
            primary, ``(1, p)`` the alternate host, ``(h, 1)`` the alternate port.
        software: SOFTWARE attribute to send, or None.
        ignore_change_request: answer every request from the socket it arrived on, as
            many public servers do (for testing clients against them).
    """

    def __init__(
        self,
        addresses: dict[Slot, Address],
        software: str | None = None,
        *,
        ignore_change_request: bool = False,
    ) -> None:
        self.addresses = dict(addresses)
        self.software = software
        self.ignore_change_request = ignore_change_request
        self.stats = ServerStats()
        self._has_alt_host = any(h == 1 for h, _ in self.addresses)
        self._has_alt_port = any(p == 1 for _, p in self.addresses)

    def receive_datagram(
        self, data: bytes, source: Address, slot: Slot
    ) -> tuple[bytes, Slot] | None:
        """Handle one datagram received on ``slot`` from ``source``."""
        try:
            request = StunMessage.parse(data)
        except RemoteProtocolError as exc:
            self.stats.garbage += 1
            logger.debug("< %s: dropped %d bytes: %s", source, len(data), exc)
            return None
        if request.message_class != MessageClass.REQUEST or request.method != Method.BINDING:
            self.stats.ignored += 1
            logger.debug("< %s: ignored %s", source, request)
            return None
        self.stats.requests += 1
        logger.debug("< %s %s", source, request)

        unknown = request.unknown_comprehension_required()
        if unknown:
            # RFC 5389 section 7.3.1: 420 with UNKNOWN-ATTRIBUTES.
            reply = binding_error(
                request, 420, "Unknown Attribute", unknown=unknown, software=self.software
            )
            self.stats.responses += 1
            return bytes(reply), slot

        try:
            return self._answer(request, source, slot)
        except LocalProtocolError as exc:  # a bug or an odd source: never crash the server
            self.stats.errors += 1
            logger.warning("< %s: cannot answer %s: %s", source, request, exc)
            return None

    def _answer(
        self, request: StunMessage, source: Address, slot: Slot
    ) -> tuple[bytes, Slot] | None:
        change = request.change_request
        if self.ignore_change_request:
            change = ChangeRequest()
        host_index, port_index = slot
        target = (host_index ^ int(change.change_ip), port_index ^ int(change.change_port))
        if target not in self.addresses:
            self.stats.unsatisfiable += 1
            logger.debug("< %s: cannot honour CHANGE-REQUEST %s", source, change)
            return None
        other_slot = (host_index ^ int(self._has_alt_host), port_index ^ int(self._has_alt_port))
        other = self.addresses[other_slot] if other_slot != slot else None
        reply = binding_success(
            request,
            source,
            response_origin=self.addresses[target],
            other_address=other,
            software=self.software,
        )
        self.stats.responses += 1
        logger.debug("> %s %s (from %s)", source, reply, self.addresses[target])
        return bytes(reply), target


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, slot: Slot) -> None:
        self.server = server
        self.slot = slot
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        self.server._receive(data, source, self.slot)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (e.g. port unreachable): nothing to do.
        logger.debug("socket %s: %s", self.slot, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class StunServer:
    """asyncio STUN responder.

    Args:
        primary: ``(host, port)`` to bind; port 0 picks a free one.
        alternate_port: a second port on each host (0 picks a free one), or None.
        alternate_host: a second IP address of this host (e.g. ``127.0.0.2``), or None.
        software: SOFTWARE attribute sent in answers, or None.
        ignore_change_request: answer from the receiving socket whatever CHANGE-REQUEST
            asks (OTHER-ADDRESS is still sent): a server half-supporting RFC 5780.

    Use ``async with StunServer(("127.0.0.1", 0), alternate_port=0) as server:``;
    ``server.address`` is the bound primary address.
    """

    def __init__(
        self,
        primary: Address = ("127.0.0.1", 0),
        alternate_port: int | None = None,
        alternate_host: str | None = None,
        *,
        software: str | None = "lt_punch",
        ignore_change_request: bool = False,
    ) -> None:
        self._primary = primary
        self._ignore_change_request = ignore_change_request
        self._alternate_port = alternate_port
        self._alternate_host = alternate_host
        self._software = software
        self._transports: dict[Slot, asyncio.DatagramTransport] = {}
        self._protocols: list[_Protocol] = []
        self._responder: StunResponder | None = None

    @property
    def address(self) -> Address:
        """The bound primary address."""
        return self._core.addresses[(0, 0)]

    @property
    def addresses(self) -> dict[Slot, Address]:
        """Every bound socket, by (host index, port index)."""
        return dict(self._core.addresses)

    @property
    def other_address(self) -> Address | None:
        """What OTHER-ADDRESS / CHANGED-ADDRESS says for the primary socket."""
        core = self._core
        slot = (int(core._has_alt_host), int(core._has_alt_port))
        return core.addresses[slot] if slot != (0, 0) else None

    @property
    def stats(self) -> ServerStats:
        return self._core.stats

    @property
    def _core(self) -> StunResponder:
        if self._responder is None:
            raise RuntimeError("StunServer is not started")
        return self._responder

    async def start(self) -> None:
        """Bind every socket of the grid.

        Raises:
            OSError: an address cannot be bound.
        """
        if self._responder is not None:
            raise RuntimeError("StunServer already started")
        # With ephemeral ports the second host's bind can collide; retry a few times.
        ephemeral = self._primary[1] == 0 or self._alternate_port == 0
        attempts = 5 if ephemeral and self._alternate_host is not None else 1
        for attempt in range(attempts):
            try:
                await self._bind_all()
                return
            except OSError as exc:
                await self._close_transports()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise

    async def _bind_all(self) -> None:
        host, port = self._primary
        addresses: dict[Slot, Address] = {}
        addresses[(0, 0)] = await self._bind((0, 0), host, port)
        ports = [addresses[(0, 0)][1]]
        if self._alternate_port is not None:
            addresses[(0, 1)] = await self._bind((0, 1), host, self._alternate_port)
            ports.append(addresses[(0, 1)][1])
        if self._alternate_host is not None:
            for port_index, p in enumerate(ports):
                slot = (1, port_index)
                addresses[slot] = await self._bind(slot, self._alternate_host, p)
        self._responder = StunResponder(
            addresses, software=self._software, ignore_change_request=self._ignore_change_request
        )
        logger.info("STUN server on %s", sorted(addresses.values()))

    async def _bind(self, slot: Slot, host: str, port: int) -> Address:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self, slot), local_addr=(host, port)
        )
        self._transports[slot] = transport
        self._protocols.append(protocol)
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def _receive(self, data: bytes, source: Address, slot: Slot) -> None:
        if self._responder is None:
            return
        result = self._responder.receive_datagram(data, source, slot)
        if result is not None:
            reply, send_slot = result
            transport = self._transports.get(send_slot)
            if transport is not None and not transport.is_closing():
                transport.sendto(reply, source)

    async def close(self) -> None:
        """Close every socket and wait until they are closed."""
        await self._close_transports()

    async def _close_transports(self) -> None:
        for transport in self._transports.values():
            transport.close()
        protocols, self._protocols = self._protocols, []
        self._transports = {}
        if protocols:
            await asyncio.gather(*(p.closed for p in protocols))

    async def __aenter__(self) -> StunServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def serve(
    host: str, port: int, alternate_host: str | None, alternate_port: int | None,
    ignore_change_request: bool,
) -> None:
    """Run a server until cancelled; prints one ``STUN server listening on ...`` line."""
    server = StunServer(
        (host, port), alternate_port, alternate_host,
        ignore_change_request=ignore_change_request,
    )
    async with server:
        addresses = " ".join(f"{h}:{p}" for h, p in sorted(server.addresses.values()))
        print(f"STUN server listening on {addresses}", flush=True)  # noqa: T201
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m lt_punch.nat.server``: the responder as a process (the NAT lab uses it)."""
    import argparse

    parser = argparse.ArgumentParser(description="STUN Binding responder (RFC 5780 subset)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3478)
    parser.add_argument("--alternate-host")
    parser.add_argument("--alternate-port", type=int)
    parser.add_argument("--ignore-change-request", action="store_true")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.alternate_host, args.alternate_port,
                          args.ignore_change_request))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        parser.exit(1, f"cannot start the STUN server: {exc}\n")


if __name__ == "__main__":
    main()


__all__ = ["ServerStats", "StunResponder", "StunServer", "serve"]
