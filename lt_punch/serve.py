"""``lt-punch serve``: the daemon for media servers.

One :class:`~lt_punch.coordinator.P2PCoordinator` (one libtorrent session), several
torrents, kept across restarts in a state directory::

    STATE_DIR/torrents/<infohash>.resume   libtorrent resume data (with the info dict once
                                           known) and the peers and trackers the torrent
                                           was added with (:mod:`~lt_punch.torrent.persistence`):
                                           written on add, every --save-every seconds and
                                           at shutdown
    STATE_DIR/session.state                the DHT's node id and routing table
    STATE_DIR/peer_id                      our id on the signaling server, generated on
                                           the first start when none is given, so that a
                                           token made for it stays valid
    STATE_DIR/downloads/                   the default download directory

and one aiohttp server for the REST API (``docs/api.md``), the stream URLs of
``lt-punch stream`` (:func:`lt_punch.stream.make_app`) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hmac
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import click
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import Config, parse_peer_id
from .download import turn_option
from .errors import ConfigError, LtPunchError

logger = logging.getLogger(__name__)

MAX_TORRENT_FILE = 16 << 20
"""Largest accepted request body (a .torrent upload)."""

BODY_TIMEOUT = 30.0
"""Seconds a request body may take to arrive (then 408)."""

_SOURCE = re.compile(r"^(?:magnet:\?.*|[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$", re.DOTALL)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "lt_punch"


def _state_error(state_dir: Path, problem: str) -> ConfigError:
    return ConfigError(f"state directory {state_dir}: {problem}")


def _make_dir(state_dir: Path, path: Path) -> None:
    """Create ``path`` (in or at ``state_dir``); ConfigError saying what is wrong."""
    what = "it" if path == state_dir else str(path.relative_to(state_dir)) \
        if path.is_relative_to(state_dir) else str(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _state_error(state_dir, f"{what} is a file, not a directory") from None
    except NotADirectoryError:
        raise _state_error(state_dir, f"a part of the path of {path} is a file, not a "
                                      "directory") from None
    except OSError as exc:
        raise _state_error(state_dir, f"cannot create {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise _state_error(state_dir, f"{what} is not a directory")


def load_peer_id(state_dir: Path) -> str:
    """The peer id kept in ``state_dir/peer_id``; a new random one (saved) on the first
    call. Stable across restarts, so a signaling token made for it stays valid.

    Raises:
        ConfigError: the file cannot be read or written, or holds no valid peer id.
    """
    path = state_dir / "peer_id"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise _state_error(state_dir, f"cannot read peer_id: {reason}") from None
    if text is not None:
        try:
            return parse_peer_id(text, f"{path}")
        except ConfigError as exc:
            raise _state_error(state_dir, f"{exc}; fix or delete the file") from None
    peer_id = "ltp-" + secrets.token_hex(6)
    try:
        _write_atomic(path, (peer_id + "\n").encode())
    except OSError as exc:
        raise _state_error(state_dir, f"cannot write peer_id: {exc.strerror or exc}") from None
    return peer_id


class Daemon:
    """The session, its torrents and their state directory.

    Args:
        state_dir: where resume data, the session state and the peer id live (created if
            missing).
        config: the session's settings.
        download_dir: default download directory (``state_dir/downloads``).
        lt_settings: libtorrent settings over ours (e.g. ``ISOLATED_SETTINGS``).
        save_every: seconds between resume data saves.
        peer_id: our id on the signaling server; default ``config.peer_id``, else the one
            kept in ``state_dir/peer_id`` (generated on the first start).

    Raises:
        ConfigError: the state directory cannot be used (the message says why).
    """

    def __init__(self, state_dir: Path, config: Config, *, download_dir: Path | None = None,
                 lt_settings: dict[str, Any] | None = None, save_every: float = 30.0,
                 peer_id: str | None = None) -> None:
        from .coordinator import P2PCoordinator
        from .torrent.persistence import Origin, ResumeStore

        self.state_dir = state_dir
        self.torrent_dir = state_dir / "torrents"
        self.download_dir = download_dir or state_dir / "downloads"
        self._state_file = state_dir / "session.state"
        for path in (state_dir, self.torrent_dir, self.download_dir):
            _make_dir(state_dir, path)
        self.store = ResumeStore(self.torrent_dir)
        try:
            state = self._state_file.read_bytes() if self._state_file.exists() else None
        except OSError as exc:
            raise _state_error(state_dir, f"cannot read session.state: "
                                          f"{exc.strerror or exc}") from None
        self.peer_id = peer_id or config.peer_id or load_peer_id(state_dir)
        self.coordinator = P2PCoordinator(config, peer_id=self.peer_id,
                                          lt_settings=lt_settings,
                                          save_path=self.download_dir, session_state=state)
        self.save_every = save_every
        self.restored: list[str] = []
        """Infohashes brought back from the state directory at start."""
        self._origins: dict[str, Origin] = {}
        """Each torrent's peers and trackers from its sources, saved with its resume data."""
        self._saver: asyncio.Task[None] | None = None

    @property
    def session(self) -> Any:
        return self.coordinator.session

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the session and bring back the saved torrents.

        Raises:
            ConfigError: the configured BitTorrent listen port is taken.
        """
        await self.coordinator.initialize()
        wanted = self.coordinator.config.listen_port
        if wanted and self.session.session.listen_port() != wanted:
            await self.coordinator.close()
            raise ConfigError(f"cannot listen on port {wanted} for peers (in use?)")
        await self._restore()
        self._saver = asyncio.get_running_loop().create_task(self._save_periodically())

    async def close(self) -> None:
        """Save every torrent's resume data and the session state, then stop."""
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
            await self.save_all()
            with contextlib.suppress(LtPunchError, OSError):
                _write_atomic(self._state_file, self.session.session_state())
        await self.coordinator.close()

    async def _restore(self) -> None:
        entries, unusable = self.store.entries()
        bad = list(unusable)
        for entry in entries:
            try:
                # The params carry the origin's peers and trackers: a magnet's x.pe
                # peers are dialled again after a restart.
                torrent = await self.session.add(entry.params)
            except LtPunchError as exc:
                bad.append((entry.path, str(exc)))
                continue
            self._origins[torrent.infohash] = entry.origin
            self.restored.append(torrent.infohash)
        for path, reason in bad:
            aside = path.with_suffix(".bad")
            logger.warning("cannot restore %s (%s): moved to %s", path.name, reason, aside.name)
            with contextlib.suppress(OSError):
                os.replace(path, aside)
        if self.restored:
            logger.info("restored %d torrent(s) from %s", len(self.restored), self.torrent_dir)

    async def add(self, source: Any) -> tuple[Any, bool]:
        """Add a torrent (magnet, infohash or .torrent bytes) and save it at once;
        returns it and whether it is new. The peers and trackers its source names are
        kept with its resume data (and added again after a restart).

        Raises:
            ConfigError: a bad source.
            OSError: a new torrent's resume data could not be written (a full state
                directory): it is taken out again rather than forgotten at the next
                start.
        """
        from .torrent.persistence import Origin
        from .torrent.session import make_params

        origin = Origin.of(make_params(source))  # ConfigError on a bad source
        known = set(self.session.torrents)
        torrent = await self.session.add(source)
        new = torrent.infohash not in known
        old = self._origins.get(torrent.infohash, Origin())
        merged = old.merge(origin)
        self._origins[torrent.infohash] = merged
        if new or merged != old:
            try:
                await self.save(torrent.infohash)
            except OSError as exc:
                if new:
                    with contextlib.suppress(LtPunchError):
                        await self.remove(torrent.infohash, delete_files=False)
                    raise
                # A torrent saved before keeps its file; the next periodic save may work.
                logger.warning("cannot save resume data of %s: %s", torrent.infohash, exc)
        return torrent, new

    async def remove(self, infohash: str, *, delete_files: bool) -> None:
        """Remove a torrent (and its files) and forget it across restarts.

        Raises:
            LtPunchError: the files could not be deleted (the torrent is gone anyway).
        """
        try:
            await self.session.remove(infohash, delete_files=delete_files)
        finally:
            self._origins.pop(infohash, None)
            self.store.remove(infohash)

    async def save(self, infohash: str) -> None:
        """Write a torrent's resume data (and origin) atomically.

        Raises:
            LtPunchError: libtorrent produced no resume data.
            OSError: the file could not be written.
        """
        data = await self.session.resume_data(infohash)
        if infohash in self.session.torrents:  # not removed meanwhile
            self.store.save(infohash, data, self._origins.get(infohash))

    async def save_all(self) -> None:
        for infohash in list(self.session.torrents):
            try:
                await self.save(infohash)
            except (LtPunchError, OSError) as exc:
                logger.warning("cannot save resume data of %s: %s", infohash, exc)

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.save_every)
            await self.save_all()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- HTTP API --------------------------------------------------------------------------------

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)
BODY_TIMEOUT_KEY: web.AppKey[float] = web.AppKey("body_timeout", float)


WEB_PAGE = Path(__file__).parent / "web" / "index.html"
"""The page ``GET /`` answers a browser with (plain HTML and JavaScript, no build)."""

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Only this server: its API, its stream URLs; no third-party script, frame or form.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}


async def _web_page(request: web.Request) -> web.Response:
    """``GET /``: the web page; the file listing as JSON for ``?format=json`` or
    ``Accept: application/json`` (what ``lt-punch stream`` answers there)."""
    from .stream import file_index, wants_json

    if wants_json(request):
        return await file_index(request)
    return web.Response(text=_page(), content_type="text/html", headers=PAGE_HEADERS)


@functools.cache
def _page() -> str:
    return WEB_PAGE.read_text(encoding="utf-8")


def make_api(daemon: Daemon, token: str | None = None, *, allow_hosts: Iterable[str] = (),
             allow_origins: Iterable[str] = (),
             body_timeout: float = BODY_TIMEOUT) -> web.Application:
    """The daemon's aiohttp application: the REST API, ``/metrics`` and the stream
    routes (run it with :func:`lt_punch.stream.make_runner`).

    Args:
        daemon: the started daemon.
        token: if set, every request needs ``Authorization: Bearer <token>`` (or
            ``?token=<token>``, for players that cannot send headers).
        allow_hosts: ``Host`` names served besides IP addresses and ``localhost``.
        allow_origins: web origins (``http://host:port``) allowed to change state
            (POST, DELETE) besides the server's own; ``*``: any.
        body_timeout: seconds a request body may take to arrive.
    """
    from .stream import make_app

    middlewares = [_json_errors, *([_auth_middleware(token)] if token else [])]
    app = make_app(daemon.session, allow_hosts=allow_hosts, allow_origins=allow_origins,
                   index=_web_page, middlewares=middlewares,
                   client_max_size=MAX_TORRENT_FILE)
    app[DAEMON_KEY] = daemon
    app[BODY_TIMEOUT_KEY] = body_timeout
    app.router.add_get("/p2p/nat", _p2p_nat)
    app.router.add_get("/p2p/stats", _p2p_stats)
    app.router.add_get("/p2p/health", _p2p_health)
    app.router.add_get("/events", _events)
    app.router.add_get("/torrents", _list_torrents)
    app.router.add_post("/torrents", _add_torrent)
    app.router.add_get("/torrents/{infohash}", _get_torrent)
    app.router.add_delete("/torrents/{infohash}", _delete_torrent)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SessionCollector(daemon))
    app.router.add_get("/metrics", _metrics_handler(registry))
    return app


def _auth_middleware(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), expected):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Bearer realm="lt_punch"'},
                text=_json_error("missing or bad token") if header or "token" in request.query
                else _json_error("this server needs a bearer token"),
                content_type="application/json")
        return await handler(request)

    return auth


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error of the API as ``{"error": ...}``, aiohttp's own too (413, 405, 404)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                message = f"request body over {MAX_TORRENT_FILE >> 20} MiB"
            else:
                message = (exc.text or exc.reason).strip()
            exc.text = _json_error(message)
            exc.content_type = "application/json"
        raise


def _json_error(message: str) -> str:
    return json.dumps({"error": message})


def _fail(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=_json_error(message), content_type="application/json")


def _torrent_or_404(request: web.Request) -> Any:
    daemon = request.app[DAEMON_KEY]
    infohash = request.match_info["infohash"].lower()
    torrent = daemon.session.torrents.get(infohash)
    if torrent is None:
        raise _fail(web.HTTPNotFound, f"unknown torrent {request.match_info['infohash']}")
    return torrent


def _describe(request: web.Request, torrent: Any) -> dict[str, Any]:
    """A torrent's merged stats, with its files and their stream URLs."""
    from .stream import file_rows, link_query

    data: dict[str, Any] = torrent.stats()
    base = f"{request.scheme}://{request.host}"
    data["files"] = file_rows(torrent.session, base, torrent.infohash, link_query(request))
    return data


async def _p2p_nat(request: web.Request) -> web.Response:
    coordinator = request.app[DAEMON_KEY].coordinator
    return web.json_response({"nat_info": await coordinator.get_nat_info(),
                              "strategy": coordinator.get_recommended_strategy()})


async def _p2p_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON_KEY].coordinator.get_stats())


async def _p2p_health(request: web.Request) -> web.Response:
    health = await request.app[DAEMON_KEY].coordinator.health_check()
    return web.json_response(health, status=503 if health["status"] == "down" else 200)


EVENTS_KEEPALIVE = 15.0
"""Seconds between two comment lines on an idle ``/events`` stream (proxies and
clients drop a silent connection)."""


async def _events(request: web.Request) -> web.StreamResponse:
    """The session's events as Server-Sent Events (``event: <type>``, ``data: <JSON>``),
    from the moment of the request, until the client leaves or the daemon stops."""
    session = request.app[DAEMON_KEY].session
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    async with session.subscribe() as stream:
        events = aiter(stream)
        while True:
            try:
                async with asyncio.timeout(EVENTS_KEEPALIVE):
                    event = await anext(events)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            except StopAsyncIteration:
                break
            kind = event.get("type", "event")
            await response.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())
    return response


async def _list_torrents(request: web.Request) -> web.Response:
    torrents = request.app[DAEMON_KEY].session.torrents.values()
    return web.json_response({"torrents": [_describe(request, t) for t in torrents]})


async def _get_torrent(request: web.Request) -> web.Response:
    return web.json_response(_describe(request, _torrent_or_404(request)))


async def _delete_torrent(request: web.Request) -> web.Response:
    torrent = _torrent_or_404(request)
    flag = request.query.get("delete_files", "false").lower()
    if flag not in ("true", "false", "1", "0"):
        raise _fail(web.HTTPBadRequest, f"delete_files: expected true or false, got {flag!r}")
    delete_files = flag in ("true", "1")
    # Without metadata there are no files (libtorrent knows no names to write), and
    # libtorrent answers a delete with a failure whose error is "Success".
    has_files = torrent.handle.torrent_file() is not None
    try:
        await request.app[DAEMON_KEY].remove(torrent.infohash,
                                              delete_files=delete_files and has_files)
    except LtPunchError as exc:
        raise _fail(web.HTTPInternalServerError, str(exc)) from None
    return web.json_response({"removed": torrent.infohash, "files_deleted": delete_files})


async def _add_torrent(request: web.Request) -> web.Response:
    """A magnet link or infohash as JSON ``{"magnet": ...}``, a .torrent file as the body
    (``application/x-bittorrent``) or as the ``torrent`` field of a multipart form."""
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            source = await _source_of(request)
    except TimeoutError:
        late = _fail(web.HTTPRequestTimeout, "request body not received within "
                     f"{request.app[BODY_TIMEOUT_KEY]:g} s")
        late.force_close()  # RFC 9110 §15.5.9: "the server ... wishes to close"
        raise late from None
    daemon = request.app[DAEMON_KEY]
    try:
        torrent, new = await daemon.add(source)
    except ConfigError as exc:
        raise _fail(web.HTTPBadRequest, str(exc)) from None
    except LtPunchError as exc:
        raise _fail(web.HTTPUnprocessableEntity, str(exc)) from None
    except OSError as exc:  # not saved, so taken out again (Daemon.add)
        logger.warning("cannot save an added torrent: %s", exc)
        kind = (web.HTTPInsufficientStorage if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else web.HTTPInternalServerError)
        raise _fail(kind, "cannot save the torrent in the state directory: "
                    f"{exc.strerror or exc}; not added") from None
    data = _describe(request, torrent)
    return web.json_response(data, status=201 if new else 200, headers={
        "Location": f"/torrents/{torrent.infohash}"})


async def _source_of(request: web.Request) -> str | bytes:
    kind = request.content_type
    if kind == "application/json":
        # RFC 8259 §8.1: "JSON text exchanged between systems ... MUST be encoded using
        # UTF-8"; its media type defines no charset parameter (§11).
        charset = (request.charset or "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise _fail(web.HTTPBadRequest, f"charset {charset[:40]!r}: JSON must be UTF-8")
        raw = await request.read()
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise _fail(web.HTTPBadRequest, "body is not valid JSON") from None
        text = body.get("magnet") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise _fail(web.HTTPBadRequest, 'expected {"magnet": "magnet:?xt=..." or an '
                                            "infohash}")
        return _checked_source(text)
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.post()
        except (ValueError, LookupError) as exc:
            # A bad boundary or charset, a malformed part (aiohttp's messages).
            raise _fail(web.HTTPBadRequest, f"malformed form: {exc}"[:200]) from None
        field = form.get("torrent")
        if isinstance(field, web.FileField):
            return bytes(field.file.read())
        magnet = form.get("magnet")
        if isinstance(magnet, str):
            return _checked_source(magnet)
        raise _fail(web.HTTPBadRequest, "expected a 'torrent' file field or a 'magnet' field")
    if kind in ("application/x-bittorrent", "application/octet-stream"):
        return bytes(await request.read())
    raise _fail(web.HTTPUnsupportedMediaType,
                f"unsupported Content-Type {kind!r}: send application/json "
                '({"magnet": ...}), application/x-bittorrent or multipart/form-data')


def _checked_source(text: str) -> str:
    """A magnet link or infohash; never a path (the API must not read server files)."""
    text = text.strip()
    if not _SOURCE.match(text):
        raise _fail(web.HTTPBadRequest, f"not a magnet link or infohash: {text[:100]!r}")
    return text


def _metrics_handler(registry: CollectorRegistry) -> Handler:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


class _SessionCollector(Collector):
    """Torrent and P2P metrics, read from the session at each scrape."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Any:
        session = self._daemon.session
        torrents = list(session.torrents.values())
        yield GaugeMetricFamily("lt_punch_torrents", "Torrents in the session.",
                                value=len(torrents))
        labels = ["infohash", "name"]
        progress = GaugeMetricFamily("lt_punch_torrent_progress",
                                     "Fraction of the wanted bytes downloaded.", labels=labels)
        down = GaugeMetricFamily("lt_punch_torrent_download_rate_bytes",
                                 "Payload download rate, bytes per second.", labels=labels)
        up = GaugeMetricFamily("lt_punch_torrent_upload_rate_bytes",
                               "Payload upload rate, bytes per second.", labels=labels)
        received = CounterMetricFamily("lt_punch_torrent_downloaded_bytes",
                                       "Payload bytes received since the daemon started.",
                                       labels=labels)
        sent = CounterMetricFamily("lt_punch_torrent_uploaded_bytes",
                                   "Payload bytes sent since the daemon started.",
                                   labels=labels)
        peers = GaugeMetricFamily("lt_punch_torrent_peers", "Connected peers by source.",
                                  labels=[*labels, "source"])
        for torrent in torrents:
            st = torrent.stats()  # one status and peer list read per torrent
            values = [torrent.infohash, st["name"]]
            progress.add_metric(values, st["progress"])
            down.add_metric(values, st["download_rate"])
            up.add_metric(values, st["upload_rate"])
            received.add_metric(values, st["total_download"])
            sent.add_metric(values, st["total_upload"])
            for source, count in st["peers_by_source"].items():
                peers.add_metric([*values, source], count)
        yield from (progress, down, up, received, sent, peers)
        punches = CounterMetricFamily("lt_punch_punches", "Punch attempts by method and "
                                      "result since the daemon started.",
                                      labels=["method", "result"])
        for (method, result), count in sorted(session.punch_tally.items()):
            punches.add_metric([method, result], count)
        yield punches
        client = session.client
        yield GaugeMetricFamily("lt_punch_signaling_connected",
                                "1 when connected to the signaling server.",
                                value=int(bool(client is not None and client.connected)))
        nat = session.nat_info
        info = GaugeMetricFamily("lt_punch_nat_info", "Our NAT as detected (value 1).",
                                 labels=["type", "mapping", "filtering"])
        if nat is not None:
            info.add_metric([nat.nat_type, nat.mapping or "unknown",
                             nat.filtering or "unknown"], 1)
        yield info
        relay = session.relay.stats() if session.relay is not None else None
        if relay is not None:
            yield GaugeMetricFamily("lt_punch_relay_allocated",
                                    "1 while a TURN relay is allocated.",
                                    value=int(relay["allocated"]))
            yield CounterMetricFamily("lt_punch_relay_bytes",
                                      "Bytes through the TURN relay, both ways.",
                                      value=relay["bytes_relayed"])
            yield GaugeMetricFamily("lt_punch_relay_connections",
                                    "Peer connections through the relay now.",
                                    value=relay["connections"])
            if relay["rtt"] is not None:
                yield GaugeMetricFamily("lt_punch_relay_rtt_seconds",
                                        "Round trip of the last TURN request.",
                                        value=relay["rtt"])
            if relay["lifetime"] is not None:
                yield GaugeMetricFamily("lt_punch_relay_lifetime_seconds",
                                        "Lifetime the TURN server granted the allocation.",
                                        value=relay["lifetime"])


# -- the command -----------------------------------------------------------------------------

@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the API.")
@click.option("--port", type=click.IntRange(0, 65535), default=8899, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Resume data and session state [default: "
              "$XDG_STATE_HOME/lt_punch or ~/.local/state/lt_punch].")
@click.option("--download-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where torrents are saved [default: STATE_DIR/downloads].")
@click.option("--token", envvar="P2P_API_TOKEN", default=None, metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every request "
                   "[env: P2P_API_TOKEN].")
@click.option("--allow-host", "allow_hosts", multiple=True, envvar="P2P_API_ALLOW_HOST",
              metavar="NAME", help="Also answer requests for this Host name (repeatable; "
              "IP addresses and localhost always are; * for any) [env: P2P_API_ALLOW_HOST, "
              "space-separated].")
@click.option("--allow-origin", "allow_origins", multiple=True, envvar="P2P_API_ALLOW_ORIGIN",
              metavar="ORIGIN", help="Let web pages of this origin (http://host:port) add "
              "and remove torrents, with CORS (repeatable; * for any) "
              "[env: P2P_API_ALLOW_ORIGIN, space-separated].")
@click.option("--signal", "signal_url", metavar="URL", help="Signaling server URL.")
@click.option("--stun", multiple=True, metavar="HOST:PORT", help="STUN server (repeatable).")
@click.option("--peer-id", metavar="ID", default=None,
              help="Our id on the signaling server (a server with a secret needs a token "
                   "made for it: 'lt-punch signal token --peer-id ID') [default: "
                   "P2P_PEER_ID, else one generated once and kept in STATE_DIR/peer_id].")
@turn_option
@click.option("--listen-host", default=None,
              help="BitTorrent listen address [default: P2P_LISTEN_HOST or 0.0.0.0].")
@click.option("--listen-port", type=click.IntRange(0, 65535), default=None,
              help="BitTorrent listen port, 0 for any [default: P2P_LISTEN_PORT or 0].")
@click.option("--save-every", type=click.FloatRange(min=1.0), default=30.0, show_default=True,
              help="Seconds between resume data saves.")
@click.option("--isolated", is_flag=True, help="Only the signaling room as peer source.")
def serve_command(host: str, port: int, state_dir: Path | None, download_dir: Path | None,
                  token: str | None, allow_hosts: tuple[str, ...],
                  allow_origins: tuple[str, ...], signal_url: str | None, stun: tuple[str, ...],
                  peer_id: str | None, turn: tuple[str, ...], listen_host: str | None,
                  listen_port: int | None, save_every: float, isolated: bool) -> None:
    """Run the daemon: several torrents kept across restarts, the REST API, the stream
    URLs and /metrics on one HTTP server (docs/api.md)."""
    from .cli import run_server
    from .download import check_writable, config_from_options

    config = config_from_options(signal_url, stun, peer_id, turn, listen_host=listen_host,
                                 listen_port=listen_port)
    state_dir = state_dir or default_state_dir()
    if token is not None and not token.strip():
        raise click.UsageError("--token: empty")
    api = _api_options(host, allow_hosts, allow_origins)
    try:
        _make_dir(state_dir, state_dir)
        _check_writable_state(state_dir)
        if download_dir is not None:
            check_writable(download_dir)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    run_server(_serve(host, port, state_dir, download_dir, token, config, save_every,
                      isolated, api), f"{host}:{port}")


def _api_options(host: str, allow_hosts: tuple[str, ...],
                 allow_origins: tuple[str, ...]) -> dict[str, Any]:
    """make_api's Host and Origin options, checked; the bound name is always served."""
    from .stream import normal_origin, split_authority

    for name in allow_hosts:
        if name != "*" and split_authority(name) is None:
            raise click.UsageError(f"--allow-host {name!r}: not a host name")
    for origin in allow_origins:
        if origin != "*" and normal_origin(origin) is None:
            raise click.UsageError(f"--allow-origin {origin!r}: expected "
                                   "http(s)://host[:port] or *")
    return {"allow_hosts": [host, *allow_hosts], "allow_origins": list(allow_origins)}


def _check_writable_state(state_dir: Path) -> None:
    probe = state_dir / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _state_error(state_dir, f"not writable: {exc.strerror or exc}") from None


async def _serve(host: str, port: int, state_dir: Path, download_dir: Path | None,
                 token: str | None, config: Config, save_every: float, isolated: bool,
                 api: dict[str, Any]) -> None:
    from .stream import make_runner
    from .torrent.session import ISOLATED_SETTINGS

    settings = dict(ISOLATED_SETTINGS) if isolated else None
    async with Daemon(state_dir, config, download_dir=download_dir, lt_settings=settings,
                      save_every=save_every) as daemon:
        runner = make_runner(make_api(daemon, token, **api))
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound = runner.addresses[0]
            print(f"serving http://{bound[0]}:{bound[1]}/ (state in {state_dir}, "  # noqa: T201
                  f"{len(daemon.restored)} torrent(s) restored)", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            print("stopping: saving resume data", flush=True)  # noqa: T201
        finally:
            await runner.cleanup()


__all__ = ["Daemon", "default_state_dir", "load_peer_id", "make_api", "serve_command"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_command())
