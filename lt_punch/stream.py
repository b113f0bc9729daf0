"""HTTP streaming of torrent files while they download (aiohttp); ``lt-punch stream`` is
:mod:`lt_punch.stream_cli`.

:func:`make_app` serves the torrents of an :class:`EnhancedTorrentSession`:

* ``GET /`` - the files, as HTML, or JSON (``?format=json`` or ``Accept:
  application/json``), each with its stream URL;
* ``GET /playlist.m3u`` - an M3U playlist of every file;
* ``GET`` / ``HEAD /files/{infohash}/{index}`` - the file, with ``Range`` (206 and
  ``Content-Range``; 416 with ``Content-Range: bytes */size`` for a range that is
  malformed or outside the file; several ranges or another unit are ignored: 200),
  ``Content-Type`` from the name, ``Content-Length``.

Each request reads through its own :class:`~lt_punch.torrent.reader.TorrentReader`, so
the reading position of every client drives piece deadlines; several clients can read at
once. A client that goes away cancels its request, and with it the piece read it waits
on and that read's deadline: run the app with :func:`make_runner` (aiohttp cancels
handlers on disconnect only when asked to).

Every request first passes a :class:`Guard` (also ``lt-punch serve``'s): a
``Host`` that is not an IP address, ``localhost`` or an allowed name is refused (DNS
rebinding: a page of ``evil.example`` whose name now points at 127.0.0.1 would read the
user's files), and so is a state-changing request from another web origin (a form any
page can post). Both answer ``403`` with ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import mimetypes
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .errors import LtPunchError

logger = logging.getLogger(__name__)

CHUNK = 1 << 18
SESSION_KEY: web.AppKey[Any] = web.AppKey("session", object)

IDLE_TIMEOUT = 30.0
"""Seconds a connection may go without a complete request: idle between requests, or
sending request headers that never end (then it is closed without an answer)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(session: Any, *, allow_hosts: Iterable[str] = (),
             allow_origins: Iterable[str] = (), index: Handler | None = None,
             **options: Any) -> web.Application:
    """The aiohttp application serving ``session``'s torrents, behind
    :class:`Guard` (``allow_hosts``, ``allow_origins``); ``index`` answers ``GET /``
    instead of the file listing; ``options`` go to :class:`aiohttp.web.Application`
    (e.g. ``middlewares``, run after the guard)."""
    guard = Guard(allow_hosts, allow_origins)
    options["middlewares"] = [guard.middleware, *options.get("middlewares", ())]
    app = web.Application(**options)
    app.on_response_prepare.append(guard.on_response_prepare)
    app[SESSION_KEY] = session
    app.router.add_get("/", index or file_index)
    app.router.add_get("/playlist.m3u", _playlist)
    app.router.add_get("/files/{infohash}/{index}", _file)  # GET also answers HEAD
    return app


def make_runner(app: web.Application, *, idle_timeout: float = IDLE_TIMEOUT,
                **kwargs: Any) -> web.AppRunner:
    """An :class:`aiohttp.web.AppRunner` for :func:`make_app` and ``make_api``: a
    handler is cancelled when its client goes away (since aiohttp 3.9 it is not by
    default), so a read waiting for a missing piece gives its deadline back at once
    instead of holding it for up to a minute; a connection without a complete request
    for ``idle_timeout`` seconds is closed (aiohttp's keep-alive timer, armed from the
    connection's start, also covers headers that never end)."""
    return web.AppRunner(app, handler_cancellation=True, keepalive_timeout=idle_timeout,
                         **kwargs)


# -- Host and Origin ---------------------------------------------------------------------

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing (RFC 9110 §9.2.1): allowed from any origin (a page of
another origin cannot read the answers: no CORS header is sent for it)."""

_PORT = re.compile(r"[0-9]{0,5}", re.ASCII)


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header (RFC 9110 §7.2: ``uri-host [":" port]``):
    the name in lower case without brackets or a final dot; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if not name or not _PORT.fullmatch(port) or (port and int(port) > 65535):
        return None
    name = name[:-1] if name.endswith(".") else name
    return (name, int(port) if port else None) if name else None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(name: str, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` name may be served. IP addresses are: DNS rebinding needs a
    name that the attacker's DNS points at us, and a browser sends the URL's own name;
    so are ``localhost`` (browsers resolve it themselves) and the ``allowed`` names
    (``*``: any)."""
    return name == "localhost" or is_ip_literal(name) or name in allowed or "*" in allowed


def normal_origin(value: str) -> str | None:
    """``scheme://host:port`` of an ``Origin`` (RFC 6454), with the default port made
    explicit; None for ``null`` or a malformed one."""
    scheme, sep, authority = value.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in authority:
        return None
    parts = split_authority(authority)
    if parts is None:
        return None
    name, port = parts
    port = port if port is not None else (443 if scheme == "https" else 80)
    return f"{scheme}://[{name}]:{port}" if ":" in name else f"{scheme}://{name}:{port}"


class Guard:
    """Refuse what a web page could make a browser send us (403, ``{"error": ...}``):

    - a ``Host`` that :func:`host_allowed` refuses (DNS rebinding), or several (400);
    - a state-changing request (not GET, HEAD, OPTIONS) whose ``Origin`` is neither
      ours (same scheme, host and port as the request) nor in ``allow_origins``
      (``*``: any); ``Origin: null`` included.

    An allowed other origin also gets CORS headers and answers to its preflights, so
    that a web UI there can call the API (and send ``Authorization``). Install both
    :meth:`middleware` (first) and :meth:`on_response_prepare` (streamed responses
    send their headers before the middleware sees them)."""

    def __init__(self, allow_hosts: Iterable[str] = (),
                 allow_origins: Iterable[str] = ()) -> None:
        self.hosts = frozenset(n for h in allow_hosts if (n := _allowed_name(h)))
        self.origins = frozenset("*" if o.strip() == "*" else normal_origin(o)
                                 or o.strip().lower() for o in allow_origins)

    def _origin(self, request: web.Request) -> tuple[bool, bool]:
        """Whether the request's ``Origin`` is ours, and whether it is listed."""
        origin = request.headers.get("Origin")
        normal = normal_origin(origin) if origin is not None else None
        if normal is None:
            return False, False
        host = request.headers.get("Host")
        ours = host is not None and normal == normal_origin(f"{request.scheme}://{host}")
        return ours, "*" in self.origins or normal in self.origins

    def _cors(self, request: web.Request) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": request.headers["Origin"], "Vary": "Origin",
                "Access-Control-Expose-Headers":
                    "Content-Range, Content-Length, Accept-Ranges, Location"}

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Handler) -> web.StreamResponse:
        given = request.headers.getall("Host", [])
        if len(given) > 1:
            raise _forbidden("several Host headers", web.HTTPBadRequest)
        parts = split_authority(given[0]) if given else None
        if given and (parts is None or not host_allowed(parts[0], self.hosts)):
            raise _forbidden(f"Host {given[0][:100]!r} is not allowed: use an IP address "
                             "or localhost, or allow the name with --allow-host")
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        ours, listed = self._origin(request)
        if not (ours or listed) and request.method not in SAFE_METHODS:
            raise _forbidden(f"cross-origin {request.method} from {origin[:100]!r} refused: "
                             "allow the origin with --allow-origin")
        if (listed and not ours and request.method == "OPTIONS"
                and "Access-Control-Request-Method" in request.headers):
            # A CORS preflight (Fetch standard, "CORS protocol"): before any token check.
            return web.Response(status=204, headers={
                **self._cors(request), "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Range",
                "Access-Control-Max-Age": "600"})
        return await handler(request)

    async def on_response_prepare(self, request: web.Request,
                                  response: web.StreamResponse) -> None:
        """CORS headers on every answer to a listed origin, errors too (the page can
        then read why)."""
        ours, listed = self._origin(request)
        if listed and not ours and "Access-Control-Allow-Origin" not in response.headers:
            response.headers.update(self._cors(request))


def _allowed_name(value: str) -> str | None:
    if value.strip() == "*":
        return "*"
    parts = split_authority(value)
    return parts[0] if parts else None


def _forbidden(message: str,
               kind: type[web.HTTPException] = web.HTTPForbidden) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


# -- Range ---------------------------------------------------------------------------------

class RangeNotSatisfiable(ValueError):
    """A ``Range`` header to answer with 416."""


_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The bytes ``(start, stop)`` a ``Range`` header asks of a ``size``-byte file
    (RFC 9110 §14.1.2), or None to ignore the header and send the whole file.

    Raises:
        RangeNotSatisfiable: a malformed single range, or one outside the file.
    """
    unit, equals, ranges = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        # §14.2: "An origin server MUST ignore a Range header field that contains a
        # range unit it does not understand."
        return None
    specs = [spec.strip() for spec in ranges.split(",") if spec.strip()]  # §5.6.1 lists
    if len(specs) > 1:
        # §14.2: "A server MAY ignore the Range header field"; several ranges would
        # need a multipart/byteranges answer, which players do not ask for.
        return None
    match = _RANGE_SPEC.fullmatch(specs[0]) if specs else None
    if match is None or not (match[1] or match[2]):
        raise RangeNotSatisfiable(f"malformed range {header[:100]!r}")
    if match[1]:
        first, last = _number(match[1]), _number(match[2]) if match[2] else None
        if last is not None and last < first:  # §14.1.1: invalid
            raise RangeNotSatisfiable(f"malformed range {header[:100]!r}")
        # §14.1.1: satisfiable "if ... a first-pos that is less than the current length"
        if first >= size:
            raise RangeNotSatisfiable(f"range starts past the end ({size} bytes)")
        return first, size if last is None else min(last + 1, size)
    suffix = _number(match[2])
    if suffix == 0:  # §14.1.1: "a suffix-range with a non-zero suffix-length"
        raise RangeNotSatisfiable("empty suffix range")
    return (max(0, size - suffix), size) if size else None


def _number(digits: str) -> int:
    """A range position; beyond any file size, a huge one (int() refuses > 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 10 ** 20


def file_rows(session: Any, base: str, infohash: str | None = None,
              query: str = "") -> list[dict[str, Any]]:
    """The files of the session's torrents (or of one) with their stream URLs;
    ``query`` (e.g. ``"?token=..."``) is appended to each URL."""
    rows = []
    for ih, torrent in session.torrents.items():
        if infohash is not None and ih != infohash:
            continue
        ti = torrent.handle.torrent_file()
        if ti is None:
            continue
        layout = ti.layout()
        for index in range(layout.num_files()):
            rows.append({
                "infohash": ih,
                "index": index,
                "name": layout.file_path(index),
                "size": layout.file_size(index),
                "url": f"{base}/files/{ih}/{index}{query}",
            })
    return rows


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def link_query(request: web.Request) -> str:
    """What links in a response carry over from the request: its ``token`` parameter,
    so that a player given a tokenized playlist URL can open the files it lists."""
    token = request.query.get("token")
    return "?" + urllib.parse.urlencode({"token": token}) if token else ""


def _files(request: web.Request) -> list[dict[str, Any]]:
    return file_rows(request.app[SESSION_KEY], _base(request), query=link_query(request))


def wants_json(request: web.Request) -> bool:
    return (request.query.get("format") == "json"
            or "application/json" in request.headers.get("Accept", ""))


async def file_index(request: web.Request) -> web.Response:
    """``GET /``: the files, as HTML, or JSON (``?format=json``, ``Accept``)."""
    files = _files(request)
    if wants_json(request):
        return web.json_response({"files": files})
    items = "\n".join(
        f'<li><a href="{html.escape(f["url"])}">{html.escape(f["name"])}</a> '
        f'({f["size"]} bytes)</li>' for f in files)
    playlist = html.escape("/playlist.m3u" + link_query(request))
    body = (f"<!doctype html><title>lt_punch</title><h1>Files</h1><ul>\n{items}\n</ul>"
            f'<p><a href="{playlist}">playlist.m3u</a></p>')
    return web.Response(text=body, content_type="text/html")


async def _playlist(request: web.Request) -> web.Response:
    lines = ["#EXTM3U"]
    for f in _files(request):
        lines += [f"#EXTINF:-1,{f['name']}", f["url"]]
    return web.Response(text="\n".join(lines) + "\n", content_type="audio/x-mpegurl")


async def _file(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    infohash = request.match_info["infohash"].lower()
    try:
        index = int(request.match_info["index"])
        reader = session.open(infohash, index)
    except (ValueError, LtPunchError) as exc:
        raise web.HTTPNotFound(text=f"no such file: {exc}\n") from None
    size = reader.size
    content_type = mimetypes.guess_type(reader.name)[0] or "application/octet-stream"
    headers = {"Accept-Ranges": "bytes", "Content-Type": content_type}
    start, stop, status = 0, size, 200
    header = request.headers.get("Range")
    # §13.1.5: a Range with an If-Range whose validator does not match is ignored; we
    # give no validators (no ETag, no Last-Modified), so none matches.
    if header is not None and "If-Range" not in request.headers:
        try:
            wanted = byte_range(header, size)
        except RangeNotSatisfiable:
            reader.close()
            return _unsatisfiable(size)
        if wanted is not None:
            (start, stop), status = wanted, 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    client = request.remote
    left = stop - start
    try:
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        reader.seek(start)
        while left > 0:
            chunk = await reader.read(min(CHUNK, left))
            if not chunk:
                break
            await response.write(chunk)
            left -= len(chunk)
        await response.write_eof()
    except asyncio.CancelledError:
        # Gone (make_runner): the read waiting for a piece is cancelled with the
        # handler and gives its piece deadline back.
        logger.info("client %s left %s at byte %d of %d", client, reader.name, stop - left,
                    size)
        raise
    except ConnectionResetError:  # gone, found by a write (a runner without cancellation)
        logger.info("client %s left %s at byte %d of %d", client, reader.name, stop - left,
                    size)
    except LtPunchError as exc:
        # The headers are out: end the connection short of Content-Length, which the
        # client sees as a truncated body.
        logger.warning("cannot serve %s to %s at byte %d: %s", reader.name, client,
                       stop - left, exc)
        response.force_close()
    finally:
        reader.close()  # its deadlines must not outrank the next request's
    return response


def _unsatisfiable(size: int) -> web.Response:
    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"},
                        text="requested range not satisfiable\n")


__all__ = ["IDLE_TIMEOUT", "Guard", "RangeNotSatisfiable", "byte_range", "file_index",
           "file_rows", "link_query", "make_app", "make_runner", "wants_json"]
