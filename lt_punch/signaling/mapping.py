"""``whoami``: the public mapping of a local TCP port, from the signaling server.

(Not ``whoami.py``: importing that submodule would set ``lt_punch.signaling.whoami`` to
the module and shadow the function exported under that name.)

The request (``GET /whoami``) leaves from a chosen local port -- libtorrent's outgoing
TCP port -- so the ``{"ip", "port"}`` the server answers is the NAT's mapping of that
port. Built on aiohttp; what matters is the socket underneath:

- It is bound with ``SO_REUSEADDR``, as libtorrent binds its outgoing sockets, so that
  on Linux the two may share the port (neither listens) and a TIME_WAIT left on it by
  an earlier connection does not block the bind.
- One connection, no keep-alive (``force_close``), and the connector is closed before
  :func:`whoami` returns: nothing holds the port afterwards, so libtorrent can dial
  from it at once. The server answers with ``Connection: close`` and closes first, so
  TIME_WAIT normally stays on its side.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from ssl import SSLContext
from typing import Any

import aiohttp

from ..errors import LtTimeoutError, SignalingError
from ..types import Address

__all__ = ["whoami"]

MAX_ANSWER_SIZE = 64 * 1024
"""Largest ``/whoami`` body read (the real one is about 30 bytes)."""


async def whoami(
    url: str,
    *,
    local_port: int | None = None,
    local_host: str = "0.0.0.0",
    timeout: float = 3.0,  # noqa: ASYNC109 (one deadline for resolve + connect + read)
    ssl: SSLContext | None = None,
) -> Address:
    """Ask the server which (ip, port) our TCP connection comes from.

    The request leaves from ``local_host:local_port`` (any port when ``None``), bound with
    ``SO_REUSEADDR``, so the answer is the public mapping of that local port; the port is
    free again when this returns.

    Args:
        url: the server's ``ws://`` URL or an ``http://`` base.
        local_port: the local TCP port to send from.
        local_host: the local address to bind (``0.0.0.0`` means ``::`` for an IPv6
            server).
        timeout: seconds for everything: resolution, connection, TLS, answer.
        ssl: the TLS context for ``wss://`` / ``https://`` (default: the system's CAs).

    Raises:
        SignalingError: unreachable, bad URL, non-200 status or a malformed answer. When
            a socket call failed (bind, connect), ``__cause__`` is that ``OSError``: a
            caller can retry from another port on ``EADDRINUSE`` / ``EADDRNOTAVAIL``.
        LtTimeoutError: no complete answer within ``timeout``.
    """
    host, port, secure = _http_target(url)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = f"{'https' if secure else 'http'}://{hostport}/whoami"
    try:
        async with asyncio.timeout(timeout):
            connector = await _connector(host, port, local_host, local_port)
            # Closing the session closes the connector and with it the socket.
            async with aiohttp.ClientSession(connector=connector) as session, \
                    session.get(target, ssl=ssl if ssl is not None else True,
                                headers={"Accept": "application/json",
                                         "Connection": "close"},
                                allow_redirects=False) as response:
                body = await _read_body(response)
                status, reason = response.status, response.reason
    except TimeoutError:
        raise LtTimeoutError(f"whoami {hostport} timed out after {timeout} s") from None
    except aiohttp.ClientConnectorError as exc:
        # Chained to the socket's own error (errno intact) for the caller's retry.
        raise SignalingError(f"whoami {hostport}: {exc.os_error}") from exc.os_error
    except OSError as exc:  # resolution, bind, aiohttp.ClientOSError
        raise SignalingError(f"whoami {hostport}: {exc}") from exc
    except aiohttp.ClientError as exc:  # not HTTP, cut short
        raise SignalingError(f"whoami {hostport}: {type(exc).__name__}: {exc}") from exc
    if status != 200:
        raise SignalingError(f"whoami: HTTP {status} {reason or ''}".rstrip())
    return _parse_answer(body)


def _http_target(url: str) -> tuple[str, int, bool]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SignalingError(f"expected a ws://, wss://, http:// or https:// URL, got {url!r}")
    secure = scheme in ("wss", "https")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise SignalingError(f"bad port in URL {url!r}") from None
    return parts.hostname, port, secure


async def _connector(host: str, port: int, local_host: str,
                     local_port: int | None) -> aiohttp.TCPConnector:
    """A one-connection connector bound to ``local_host:local_port``, of the family of
    the server's first address (so ``0.0.0.0`` can become ``::``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise SignalingError(f"cannot resolve {host!r}")
    family = infos[0][0]
    if family == socket.AF_INET6 and local_host == "0.0.0.0":
        local_host = "::"
    return aiohttp.TCPConnector(
        family=family, local_addr=(local_host, local_port or 0), socket_factory=_socket,
        force_close=True, limit=1, use_dns_cache=False,
    )


def _socket(addr_info: tuple[int, int, int, str, tuple[Any, ...]]) -> socket.socket:
    """aiohttp's socket factory: a plain TCP socket with ``SO_REUSEADDR`` set before
    aiohttp binds it to the local address."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError:
        sock.close()
        raise
    return sock


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_ANSWER_SIZE:
        raise SignalingError(f"whoami: answer larger than {MAX_ANSWER_SIZE // 1024} KiB")
    body = b""
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_ANSWER_SIZE:
            raise SignalingError(f"whoami: answer larger than {MAX_ANSWER_SIZE // 1024} KiB")
    return body


def _parse_answer(body: bytes) -> Address:
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SignalingError("whoami: the answer is not JSON") from None
    ip = answer.get("ip") if isinstance(answer, dict) else None
    port = answer.get("port") if isinstance(answer, dict) else None
    if not isinstance(ip, str) or isinstance(port, bool) or not isinstance(port, int):
        raise SignalingError(f"whoami: expected {{'ip': str, 'port': int}}, got {answer!r:.80}")
    if not 0 < port <= 65535:
        raise SignalingError(f"whoami: port {port} out of range")
    return (ip, port)
