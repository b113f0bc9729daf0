"""A TURN client for TCP allocations (RFC 8656 with RFC 6062), on asyncio.

Why TCP allocations: the peer's libtorrent reaches the relayed address with a plain
outgoing TCP connection (``connect_peer``), which crosses any NAT; on our side each
connection the relay accepts for us arrives as a separate TCP "data connection" to the
server, which :mod:`lt_punch.punch.bridge` splices to our own libtorrent's listen port
in the kernel. No per-packet work in Python, and libtorrent's TCP does the congestion
control end to end of each leg.

One :class:`TurnAllocation` is one control connection to one server::

    allocation = await TurnAllocation.open(TurnServer("turn.example", 3478, "user", "pw"))
    await allocation.permit("203.0.113.7")         # only the peer signaling named
    sock, peer = await allocation.accept()         # a connection from that peer, bound
    ...
    await allocation.close()                       # released at the server (LIFETIME 0)

The allocation and its permissions are refreshed in the background at half their
lifetimes (RFC 8656 sections 7 and 9: 10 minutes and 5 minutes by default). Every
request has a timeout; the server's answers are parsed by the sans-I/O codec in
:mod:`lt_punch.nat.stun` and checked (MESSAGE-INTEGRITY) before they are believed.

Credentials: long-term (RFC 8489 section 9.2: key = MD5(username:realm:password)) or
coturn's REST API shared secret (``use-auth-secret``): a username
``<expiry>:<name>`` and the password base64(HMAC-SHA1(secret, username)), made fresh for
each allocation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import socket
import struct
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..errors import LtPunchError, LtTimeoutError, RemoteProtocolError
from ..nat.stun import (
    HEADER_LENGTH,
    Attribute,
    AttrType,
    MessageClass,
    Method,
    StunMessage,
    new_transaction_id,
)
from ..types import Address

logger = logging.getLogger(__name__)

TCP = 6
"""REQUESTED-TRANSPORT protocol number of a TCP allocation (RFC 6062 section 6.1)."""

DEFAULT_LIFETIME = 600
"""Seconds an allocation lives without a refresh (RFC 8656 section 7)."""

PERMISSION_LIFETIME = 300
"""Seconds a permission lives (RFC 8656 section 9); refreshed at half of it."""

REFRESH_EVERY = 120.0
"""Seconds between refreshes at most, whatever the lifetime: the control connection is
TCP through our NAT, and a NAT may drop an idle TCP mapping long before the 10 minutes of
an allocation (RFC 5382 asks for 2 hours; cheap routers keep a few minutes)."""

MAX_PENDING_ATTEMPTS = 16
"""ConnectionAttempt indications kept while nobody accepts (more are refused: the
server then closes the peer's connection after 30 s, RFC 6062 section 5.3)."""

MAX_MESSAGE = 4096
"""Largest control message accepted from the server (they are a few hundred bytes)."""


class TurnError(LtPunchError):
    """The TURN server refused a request or broke the protocol, or is unreachable."""


@dataclass(frozen=True)
class TurnServer:
    """A TURN server and the credentials to use there.

    ``secret`` set: coturn's REST API credentials (``use-auth-secret``), derived for
    each allocation from ``username`` (may be empty) and ``ttl``; ``password`` unused.
    """

    host: str
    port: int = 3478
    username: str = ""
    password: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    ttl: int = 86400

    def credentials(self, now: float | None = None) -> tuple[str, str]:
        """The (username, password) to present now."""
        if not self.secret:
            return self.username, self.password
        expiry = int(time.time() if now is None else now) + self.ttl
        user = f"{expiry}:{self.username}" if self.username else str(expiry)
        mac = hmac.new(self.secret.encode(), user.encode(), hashlib.sha1).digest()
        return user, base64.b64encode(mac).decode()

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 section 9.2.2 (SASLprep left out: ASCII credentials are unchanged)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def with_integrity(message: StunMessage, key: bytes) -> bytes:
    """``message`` encoded with a MESSAGE-INTEGRITY attribute (HMAC-SHA1) at the end."""
    raw = bytes(message)
    header = raw[:2] + struct.pack("!H", len(raw) - HEADER_LENGTH + 24) + raw[4:HEADER_LENGTH]
    mac = hmac.new(key, header + raw[HEADER_LENGTH:], hashlib.sha1).digest()
    return header + raw[HEADER_LENGTH:] + struct.pack("!HH", AttrType.MESSAGE_INTEGRITY, 20) + mac


def integrity_ok(raw: bytes, key: bytes) -> bool | None:
    """Whether the MESSAGE-INTEGRITY of the encoded message ``raw`` is right for
    ``key``; None when it has none."""
    pos = HEADER_LENGTH
    while pos + 4 <= len(raw):
        attr_type, length = struct.unpack("!HH", raw[pos:pos + 4])
        if attr_type == AttrType.MESSAGE_INTEGRITY:
            if length != 20 or pos + 24 > len(raw):
                return False
            header = raw[:2] + struct.pack("!H", pos - HEADER_LENGTH + 24) + raw[4:HEADER_LENGTH]
            mac = hmac.new(key, header + raw[HEADER_LENGTH:pos], hashlib.sha1).digest()
            return hmac.compare_digest(mac, raw[pos + 4:pos + 24])
        pos += 4 + length + (-length % 4)
    return None


def _u32(message: StunMessage, attr: int) -> int | None:
    value = message.get(attr)
    if isinstance(value, bytes) and len(value) == 4:
        number: int = struct.unpack("!I", value)[0]
        return number
    return None


def _address(message: StunMessage, attr: int) -> Address | None:
    value = message.get(attr)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value
    return None


def _body_length(header: bytes) -> int:
    """The length field of a STUN header read from a stream (RFC 8489 section 6.2.2:
    messages over TCP are self-delimiting), bounded."""
    (length,) = struct.unpack("!H", header[2:4])
    if length > MAX_MESSAGE:
        raise RemoteProtocolError(f"TURN message of {length} bytes (at most {MAX_MESSAGE})")
    return int(length)


async def read_message(reader: asyncio.StreamReader) -> tuple[StunMessage, bytes]:
    """One STUN message from a stream."""
    header = await reader.readexactly(HEADER_LENGTH)
    raw = header + await reader.readexactly(_body_length(header))
    return StunMessage.parse(raw, require_cookie=True), raw


async def _sock_read_message(sock: socket.socket) -> tuple[StunMessage, bytes]:
    """Like :func:`read_message` on a raw socket, reading no byte past the message
    (what follows is the peer's data on a bound data connection)."""
    loop = asyncio.get_running_loop()

    async def exactly(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:
                raise TurnError("the TURN server closed the data connection")
            data += chunk
        return bytes(data)

    header = await exactly(HEADER_LENGTH)
    raw = header + await exactly(_body_length(header))
    return StunMessage.parse(raw, require_cookie=True), raw


def _dead_peer_detection(sock: socket.socket) -> None:
    """A relay that dies silently must not hold a bridge (and its threads) for the
    ~15 minutes TCP takes to give up: keep-alives after 60 s of silence, and 60 s for
    unacknowledged data."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 60_000)


class TurnAllocation:
    """One TCP allocation on one TURN server (see the module's doc)."""

    def __init__(self, server: TurnServer, *, timeout: float = 5.0,
                 refresh_every: float = REFRESH_EVERY) -> None:
        self.server = server
        self.timeout = timeout
        self.refresh_every = refresh_every
        self.relayed: Address | None = None
        """The relayed transport address: where the peer connects."""
        self.mapped: Address | None = None
        """Our address as the server saw the control connection."""
        self.lifetime = 0
        """Seconds the allocation lives from its last refresh (the server's choice)."""
        self.refreshes = 0
        self.refreshed = asyncio.Event()
        """Set after each refresh (clear it to wait for the next one)."""
        self.rtt: float | None = None
        """Seconds the last request took to be answered."""
        self.connections = 0
        self.stale_nonces = 0
        """438 (Stale Nonce) answers, each followed by the request again."""
        """Data connections bound (one per peer connection)."""
        self.error: str | None = None
        """Why the control connection ended, once it has."""
        self.released = False
        """The server acknowledged the release (:meth:`close`)."""
        self._username = ""
        self._password = ""
        self._realm = ""
        self._nonce = ""
        self._key: bytes | None = None
        self._server_ip = ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[bytes, asyncio.Future[tuple[StunMessage, bytes]]] = {}
        self._attempts: asyncio.Queue[tuple[int, Address]] = asyncio.Queue(MAX_PENDING_ATTEMPTS)
        self._permissions: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @classmethod
    async def open(cls, server: TurnServer, *, timeout: float = 5.0,  # noqa: ASYNC109
                   lifetime: int = DEFAULT_LIFETIME,
                   refresh_every: float = REFRESH_EVERY) -> TurnAllocation:
        """Connect to ``server`` and allocate a TCP relay (``lifetime``: asked for; the
        server decides, coturn grants at least 600 s). Refreshed every
        ``refresh_every`` seconds, or at half the lifetime when that is sooner.

        Raises:
            TurnError: unreachable server, refused credentials, or no allocation.
        """
        allocation = cls(server, timeout=timeout, refresh_every=refresh_every)
        try:
            await allocation._allocate(lifetime)
        except BaseException:
            await allocation.close(release=False)
            raise
        return allocation

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _allocate(self, lifetime: int) -> None:
        self._username, self._password = self.server.credentials()
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.server.host, self.server.port)
        except TimeoutError:
            raise TurnError(f"TURN server {self.server}: no TCP connection in "
                            f"{self.timeout:g} s") from None
        except OSError as exc:
            raise TurnError(f"TURN server {self.server}: {exc.strerror or exc}") from None
        peer = self._writer.get_extra_info("peername")
        self._server_ip = peer[0]
        self._spawn(self._read_loop())
        response = await self._request(Method.ALLOCATE, [
            Attribute(AttrType.REQUESTED_TRANSPORT, struct.pack("!B3x", TCP)),
            Attribute(AttrType.LIFETIME, struct.pack("!I", lifetime)),
        ])
        self.relayed = _address(response, AttrType.XOR_RELAYED_ADDRESS)
        self.mapped = _address(response, AttrType.XOR_MAPPED_ADDRESS)
        if self.relayed is None:
            raise TurnError(f"TURN server {self.server}: allocation without a relayed address")
        self.lifetime = _u32(response, AttrType.LIFETIME) or lifetime
        logger.info("TURN %s: relayed %s:%d for %d s", self.server, *self.relayed, self.lifetime)
        self._spawn(self._refresh_loop())

    async def permit(self, ip: str) -> None:
        """Let connections from ``ip`` (the peer signaling named) reach the relayed
        address; kept until :meth:`close`."""
        await self._create_permissions([ip])
        self._permissions.add(ip)

    async def _create_permissions(self, ips: list[str]) -> None:
        await self._request(Method.CREATE_PERMISSION,
                            [Attribute(AttrType.XOR_PEER_ADDRESS, (ip, 0)) for ip in ips])

    @property
    def permitted(self) -> frozenset[str]:
        """The addresses this allocation lets in."""
        return frozenset(self._permissions)

    async def accept(self, timeout: float | None = None) -> tuple[socket.socket, Address]:  # noqa: ASYNC109
        """The next connection a peer made to the relayed address, bound: a connected
        blocking socket to the server that carries that peer's bytes, and the peer's
        address. ``timeout`` None: wait as long as the allocation lives.

        Raises:
            TurnError: the allocation ended, or the bind failed.
            LtTimeoutError: no connection within ``timeout``.
        """
        connection_id, peer = await self.next_attempt(timeout)
        return await self.bind(connection_id), peer

    async def next_attempt(self, timeout: float | None = None  # noqa: ASYNC109
                           ) -> tuple[int, Address]:
        """The next ConnectionAttempt: (connection id, peer address), to :meth:`bind`
        within 30 s (RFC 6062 section 5.3).

        Raises:
            TurnError: the allocation ended.
            LtTimeoutError: none within ``timeout``.
        """
        get = asyncio.ensure_future(self._attempts.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({get, closed}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (get, closed):
                task.cancel()
            await asyncio.gather(get, closed, return_exceptions=True)
        if get not in done or get.cancelled():
            if self.closed:
                raise TurnError(f"TURN server {self.server}: allocation ended ({self.error})")
            raise LtTimeoutError(f"no relayed connection in {timeout:g} s")
        return get.result()

    async def bind(self, connection_id: int) -> socket.socket:
        """A new data connection bound to ``connection_id``: a connected blocking socket
        carrying the peer's bytes.

        Raises:
            TurnError: the server refused or did not answer.
        """
        sock = await self._bind(connection_id)
        _dead_peer_detection(sock)
        self.connections += 1
        return sock

    async def _bind(self, connection_id: int) -> socket.socket:
        """A new data connection bound to ``connection_id``; once more with the new
        nonce when the server says ours is stale (the connection id lives 30 s)."""
        for _ in range(2):
            sock, response, raw = await self._try_bind(connection_id)
            error = response.error_code
            nonce = response.get(AttrType.NONCE)
            if (response.message_class is MessageClass.ERROR and error is not None
                    and error.code == 438 and isinstance(nonce, str)):
                sock.close()
                self.stale_nonces += 1
                self._nonce = nonce
                continue
            try:
                self._check(Method.CONNECTION_BIND, response, raw)
            except TurnError:
                sock.close()
                raise
            sock.setblocking(True)
            return sock
        raise TurnError(f"TURN server {self.server}: ConnectionBind: the nonce stayed stale")

    async def _try_bind(self, connection_id: int) -> tuple[socket.socket, StunMessage, bytes]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._server_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(sock, (self._server_ip, self.server.port))
                message = StunMessage(Method.CONNECTION_BIND, MessageClass.REQUEST,
                                      new_transaction_id(), self._auth([
                                          Attribute(AttrType.CONNECTION_ID,
                                                    struct.pack("!I", connection_id))]))
                await loop.sock_sendall(sock, self._encode(message))
                response, raw = await _sock_read_message(sock)
        except TimeoutError:
            sock.close()
            raise TurnError(f"TURN server {self.server}: ConnectionBind not answered in "
                            f"{self.timeout:g} s") from None
        except (OSError, RemoteProtocolError, TurnError) as exc:
            sock.close()
            if isinstance(exc, TurnError):
                raise
            raise TurnError(f"TURN server {self.server}: ConnectionBind: {exc}") from None
        except BaseException:
            sock.close()
            raise
        return sock, response, raw

    async def close(self, *, release: bool = True) -> None:
        """Release the allocation (a Refresh with LIFETIME 0) and close. Idempotent."""
        if release and not self.closed and self._writer is not None and self.relayed:
            with contextlib.suppress(LtPunchError, OSError):
                await self._request(Method.REFRESH,
                                    [Attribute(AttrType.LIFETIME, struct.pack("!I", 0))])
                self.released = True
        self._end("closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    # --- requests --------------------------------------------------------------------

    def _auth(self, attributes: list[Attribute]) -> tuple[Attribute, ...]:
        if self._key is None:
            return tuple(attributes)
        return (*attributes, Attribute(AttrType.USERNAME, self._username),
                Attribute(AttrType.REALM, self._realm), Attribute(AttrType.NONCE, self._nonce))

    def _encode(self, message: StunMessage) -> bytes:
        return with_integrity(message, self._key) if self._key is not None else bytes(message)

    def _check(self, method: int, response: StunMessage, raw: bytes) -> None:
        """Raise unless ``response`` is a success we can believe."""
        name = Method(method).name.replace("_", "").capitalize()
        if response.message_class is MessageClass.ERROR:
            error = response.error_code
            raise TurnError(f"TURN server {self.server}: {name} refused: "
                            f"{error or 'no ERROR-CODE'}")
        if self._key is not None and integrity_ok(raw, self._key) is not True:
            # RFC 8489 section 9.2.5: over TCP, an answer to an authenticated request
            # without a valid MESSAGE-INTEGRITY is a failure (its relayed address is
            # what we hand the peer).
            raise TurnError(f"TURN server {self.server}: {name} answer without a valid "
                            "MESSAGE-INTEGRITY")

    async def _request(self, method: int, attributes: list[Attribute]) -> StunMessage:
        """Send one request, authenticating when asked to; its success response."""
        for _ in range(3):
            message = StunMessage(method, MessageClass.REQUEST, new_transaction_id(),
                                  self._auth(attributes))
            response, raw = await self._transact(message)
            error = response.error_code
            if response.message_class is MessageClass.ERROR and error is not None:
                realm, nonce = response.get(AttrType.REALM), response.get(AttrType.NONCE)
                if error.code == 401 and self._key is None and isinstance(realm, str) \
                        and isinstance(nonce, str):
                    if not self._username:
                        raise TurnError(f"TURN server {self.server} asks for credentials "
                                        "and none are configured")
                    self._realm, self._nonce = realm, nonce
                    self._key = long_term_key(self._username, realm, self._password)
                    continue
                if error.code == 438 and isinstance(nonce, str):  # stale nonce
                    self.stale_nonces += 1
                    self._nonce = nonce
                    if isinstance(realm, str) and realm != self._realm:
                        self._realm = realm
                        self._key = long_term_key(self._username, realm, self._password)
                    continue
                if error.code == 401:
                    raise TurnError(f"TURN server {self.server} refused the credentials of "
                                    f"{self._username!r} (401 {error.reason or 'Unauthorized'})")
            self._check(method, response, raw)
            return response
        raise TurnError(f"TURN server {self.server}: authentication did not settle")

    async def _transact(self, message: StunMessage) -> tuple[StunMessage, bytes]:
        if self.closed or self._writer is None:
            raise TurnError(f"TURN server {self.server}: connection closed ({self.error})")
        future: asyncio.Future[tuple[StunMessage, bytes]] = (
            asyncio.get_running_loop().create_future())
        self._pending[message.transaction_id] = future
        started = time.monotonic()
        try:
            self._writer.write(self._encode(message))
            async with asyncio.timeout(self.timeout):
                result = await future
        except TimeoutError:
            raise TurnError(f"TURN server {self.server}: no answer in {self.timeout:g} s") \
                from None
        finally:
            self._pending.pop(message.transaction_id, None)
        self.rtt = time.monotonic() - started
        return result

    # --- background ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _end(self, why: str) -> None:
        if self.closed:
            return
        self.error = why
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TurnError(f"TURN server {self.server}: {why}"))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        why = "the server closed the connection"
        try:
            while True:
                message, raw = await read_message(self._reader)
                if message.message_class is MessageClass.INDICATION:
                    self._indication(message)
                    continue
                future = self._pending.get(message.transaction_id)
                if future is not None and not future.done():
                    future.set_result((message, raw))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            why = f"the server closed the connection ({exc.__class__.__name__})"
        except OSError as exc:
            why = f"the connection failed: {exc.strerror or exc}"
        except RemoteProtocolError as exc:
            why = f"protocol error: {exc}"
        finally:
            self._end(why)

    def _indication(self, message: StunMessage) -> None:
        if message.method != Method.CONNECTION_ATTEMPT:
            return
        connection_id = _u32(message, AttrType.CONNECTION_ID)
        peer = _address(message, AttrType.XOR_PEER_ADDRESS)
        if connection_id is None or peer is None:
            logger.info("TURN %s: ConnectionAttempt without its attributes: ignored",
                        self.server)
            return
        try:
            self._attempts.put_nowait((connection_id, peer))
        except asyncio.QueueFull:
            logger.warning("TURN %s: connection from %s:%d not accepted (%d waiting)",
                           self.server, *peer, MAX_PENDING_ATTEMPTS)

    def _refresh_interval(self) -> float:
        return min(self.lifetime / 2, self.refresh_every)

    async def _refresh_loop(self) -> None:
        allocation_due = time.monotonic() + self._refresh_interval()
        permission_due = time.monotonic() + PERMISSION_LIFETIME / 2
        try:
            while not self.closed:
                now = time.monotonic()
                await asyncio.sleep(max(0.0, min(allocation_due, permission_due) - now))
                now = time.monotonic()
                if now >= permission_due:
                    if self._permissions:
                        await self._create_permissions(sorted(self._permissions))
                    permission_due = now + PERMISSION_LIFETIME / 2
                if now >= allocation_due:
                    response = await self._request(
                        Method.REFRESH, [Attribute(AttrType.LIFETIME,
                                                   struct.pack("!I", self.lifetime))])
                    self.lifetime = _u32(response, AttrType.LIFETIME) or self.lifetime
                    self.refreshes += 1
                    self.refreshed.set()
                    allocation_due = now + self._refresh_interval()
        except TurnError as exc:
            logger.warning("TURN %s: refresh failed: %s", self.server, exc)
            self._end(f"refresh failed: {exc}")


__all__ = ["DEFAULT_LIFETIME", "TurnAllocation", "TurnError", "TurnServer",
           "integrity_ok", "long_term_key", "with_integrity"]
