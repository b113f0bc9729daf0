"""HTTP on the signaling server's port: health, counters, address echo, room listing.

websockets hands every request to :meth:`Routes.process_request` before the handshake
(its ``process_request`` hook): a :class:`~websockets.http11.Response` answers it there,
``None`` goes on with the websocket upgrade.

``GET /health``, ``GET /stats``, ``GET /metrics`` (Prometheus), ``GET /whoami`` (the
caller's address) and ``GET /rooms/{infohash}/peers``; ``GET /`` without an upgrade gets
a short text, other paths a JSON 404. With a ``secret``, the room listing (peer ids,
public endpoints, NAT kinds) needs the credential the websocket needs: a peer id and its
token, as ``Authorization: Basic`` (401 otherwise). The rest stays open: counters only,
or the caller's own address (docs/signaling.md, "Security model").
"""

from __future__ import annotations

import http
import json
import logging
import time
import urllib.parse
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .admission import address_of
from .dispatch import State
from .metrics import metrics_registry
from .protocol import MessageError, normalize_infohash
from .rooms import RoomError
from .security import check_authorization
from .wire import Connection as ServerConnection

__all__ = ["Routes", "json_response", "response"]

logger = logging.getLogger(__name__)


class Host(State, Protocol):
    """What the routes read from their server (at each request)."""

    @property
    def url(self) -> str: ...
    @property
    def uptime(self) -> float: ...
    def stats(self) -> dict[str, Any]: ...


def json_response(status: http.HTTPStatus, body: Any,
                  extra: tuple[tuple[str, str], ...] = ()) -> Response:
    """``body`` as compact JSON."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return response(status, data, "application/json", extra)


def response(status: http.HTTPStatus, data: bytes, content_type: str,
             extra: tuple[tuple[str, str], ...] = ()) -> Response:
    """A complete response that closes the connection and is never cached."""
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, data)


class Routes:
    """The HTTP side of a signaling server (see the module docstring)."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._metrics = metrics_registry(host.stats)

    async def process_request(self, connection: ServerConnection, request: Request
                              ) -> Response | None:
        """The response to ``request``, or ``None`` for a websocket handshake."""
        host = self._host
        path = urllib.parse.urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == "/health":
            return json_response(
                http.HTTPStatus.OK,
                {
                    "status": "ok",
                    "peers": host.rooms.peer_count,
                    "rooms": host.rooms.room_count,
                    "uptime": round(host.uptime, 3),
                },
            )
        if path == "/stats":
            return json_response(http.HTTPStatus.OK, host.stats())
        if path == "/metrics":
            return response(http.HTTPStatus.OK, generate_latest(self._metrics),
                            CONTENT_TYPE_LATEST)
        if path == "/whoami":
            ip, port = address_of(connection.remote_address)
            return json_response(http.HTTPStatus.OK, {"ip": ip, "port": port})
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "rooms" and parts[3] == "peers":
            refusal = self._authorize(connection, request)
            if refusal is not None:
                return refusal
            return await self._room_peers(parts[2])
        if upgrade:
            return None  # a websocket client: go on with the handshake
        if path == "/":
            text = (
                "lt-punch signaling server. Connect a WebSocket client to "
                f"{host.url}; HTTP: /health /stats /metrics /whoami /rooms/<infohash>/peers\n"
            )
            return response(http.HTTPStatus.OK, text.encode(), "text/plain; charset=utf-8")
        return json_response(
            http.HTTPStatus.NOT_FOUND, {"error": "not-found", "message": f"no such path {path!r}"}
        )

    async def _room_peers(self, quoted_room: str) -> Response:
        """``GET /rooms/{infohash}/peers``: the members of a room, on every node."""
        host = self._host
        try:
            room = normalize_infohash(urllib.parse.unquote(quoted_room))
        except MessageError as exc:
            return json_response(
                http.HTTPStatus.BAD_REQUEST, {"error": exc.code, "message": str(exc)}
            )
        now = time.monotonic()
        # lt_punch members, then WebTorrent peers (metadata.agent "webtorrent").
        members = host.rooms.member_states(room, now)
        if host.shared is not None:  # and those connected to the other servers
            local = {m["peer_id"] for m in members}
            try:
                remote = [m for m in await host.shared.members(room)
                          if m.peer_id not in local]
            except (RedisError, OSError) as exc:
                return json_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {
                    "error": "unavailable", "message": f"shared state: {exc}"})
            members += [{**m.to_json(), "state": "remote"} for m in remote]
        return json_response(http.HTTPStatus.OK,
                             members + host.webtorrent.member_states(room, now))

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """``None`` if the request may read the address book, else the 401 to send.

        Any peer id with a valid token may list any room: over the websocket the same
        token may ``join`` any room and read the same list in ``joined``, so requiring
        membership here would protect nothing and would lock out operators' tools
        (they mint a token for a peer id of their own). Checked before the path is
        parsed, so a caller without a credential learns nothing else.
        """
        secret = self._host.secret
        if secret is None:
            return None
        try:
            check_authorization(secret, request.headers.get("Authorization"))
        except RoomError as exc:
            # The message names the problem, never the header's content.
            logger.info("refused GET %s from %s:%d: %s", request.path.split("?")[0][:100],
                        *address_of(connection.remote_address), exc.code)
            return json_response(
                http.HTTPStatus.UNAUTHORIZED, {"error": exc.code, "message": str(exc)},
                # RFC 9110 section 11.6.1: a 401 carries the scheme it wants.
                (("WWW-Authenticate", 'Basic realm="lt-punch signaling", charset="UTF-8"'),))
        return None
