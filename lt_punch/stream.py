"""HTTP streaming of torrent files while they download (aiohttp), and ``lt-punch stream``.

:func:`make_app` serves the torrents of an :class:`EnhancedTorrentSession`:

* ``GET /`` - the files, as HTML, or JSON (``?format=json`` or ``Accept:
  application/json``), each with its stream URL;
* ``GET /playlist.m3u`` - an M3U playlist of every file;
* ``GET`` / ``HEAD /files/{infohash}/{index}`` - the file, with ``Range`` (206 and
  ``Content-Range``; 416 with ``Content-Range: bytes */size`` for a range that is
  malformed or outside the file), ``Content-Type`` from the name, ``Content-Length``.

Each request reads through its own :class:`~lt_punch.torrent.reader.TorrentReader`, so
the reading position of every client drives piece deadlines; several clients can read at
once, and a client that goes away mid-response just ends its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import mimetypes
import shutil
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from .errors import ConfigError, LtPunchError

logger = logging.getLogger(__name__)

CHUNK = 1 << 18
SESSION_KEY: web.AppKey[Any] = web.AppKey("session", object)


def make_app(session: Any, **options: Any) -> web.Application:
    """The aiohttp application serving ``session``'s torrents (``options`` go to
    :class:`aiohttp.web.Application`, e.g. ``middlewares``)."""
    app = web.Application(**options)
    app[SESSION_KEY] = session
    app.router.add_get("/", _index)
    app.router.add_get("/playlist.m3u", _playlist)
    app.router.add_get("/files/{infohash}/{index}", _file)  # GET also answers HEAD
    return app


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


async def _index(request: web.Request) -> web.Response:
    files = _files(request)
    wants_json = (request.query.get("format") == "json"
                  or "application/json" in request.headers.get("Accept", ""))
    if wants_json:
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
    if "Range" in request.headers:
        try:
            wanted = request.http_range
        except ValueError:
            wanted = None
        if wanted is None or wanted.step not in (None, 1):
            return _unsatisfiable(size)
        first = wanted.start if wanted.start is not None else 0
        if first < 0:  # "bytes=-N": the last N bytes
            first = max(0, size + first)
            last = size
        else:
            last = size if wanted.stop is None else min(wanted.stop, size)
        if first >= size or first >= last:
            return _unsatisfiable(size)
        start, stop, status = first, last, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    reader.seek(start)
    left = stop - start
    try:
        while left > 0:
            chunk = await reader.read(min(CHUNK, left))
            if not chunk:
                break
            await response.write(chunk)
            left -= len(chunk)
        await response.write_eof()
    except ConnectionResetError:
        logger.debug("client went away at byte %d of %s", stop - left, reader.name)
    finally:
        reader.close()  # its deadlines must not outrank the next request's
    return response


def prepare_stream(session: Any, infohash: str, file_index: int) -> Any:
    """Make file ``file_index`` of a torrent with metadata ready to stream: the other
    files at the lowest priority, its first and last pieces before the rest (container
    headers and indexes live there). Returns a reader of the file.

    Priorities, not deadlines: a deadline would put libtorrent in time-critical mode,
    where a seek no longer cancels the requests queued for other pieces (see
    :mod:`lt_punch.torrent.reader`)."""
    from .torrent.reader import DEFAULT_PRIORITY, READAHEAD_PRIORITY

    handle = session.torrents[infohash].handle
    reader = session.open(infohash, file_index)
    files = handle.torrent_file().layout().num_files()
    handle.prioritize_files([DEFAULT_PRIORITY if i == file_index else 1
                            for i in range(files)])
    for piece in {reader.piece_at(0), reader.piece_at(max(0, reader.size - 1))}:
        handle.piece_priority(piece, READAHEAD_PRIORITY)
    return reader


def _unsatisfiable(size: int) -> web.Response:
    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"},
                        text="requested range not satisfiable\n")


@click.command("stream")
@click.argument("source")
@click.option("--file", "file_index", type=click.IntRange(min=0), default=None,
              help="File index to stream (default: the largest).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8888, show_default=True)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="Directory to download into.")
@click.option("--player", type=click.Choice(["mpv", "vlc"]), default=None,
              help="Launch this player on the stream URL.")
@click.option("--signal", "signal_url", metavar="URL", help="Signaling server URL.")
@click.option("--peer-id", metavar="ID", default=None,
              help="Our id on the signaling server (for a server with a secret: "
                   "'lt-punch signal token --peer-id ID') [default: P2P_PEER_ID, else random].")
@click.option("--metadata-timeout", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True, help="Seconds to wait for the metadata of a magnet link; "
                                      "then exit with 1.")
@click.option("--isolated", is_flag=True, help="Only the signaling room as peer source.")
def stream_command(source: str, file_index: int | None, host: str, port: int, out_dir: Path,
                   player: str | None, signal_url: str | None, peer_id: str | None,
                   metadata_timeout: float, isolated: bool) -> None:
    """Stream SOURCE (magnet, .torrent or infohash) over HTTP while it downloads.

    SIGTERM (and SIGINT, unless the shell started it with SIGINT ignored) stops it at
    any time, also while it waits for the metadata; exit code 0. Exit codes otherwise:
    1 failed (no metadata in time), 2 bad input."""
    from .cli import run_server
    from .download import check_source, check_writable, config_from_options

    config = config_from_options(signal_url, peer_id=peer_id)
    try:
        check_writable(out_dir)
        check_source(source)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if player and shutil.which(player) is None:
        raise click.UsageError(f"--player {player}: not installed (not on PATH)")
    run_server(_serve(source, file_index, host, port, out_dir, player, config, isolated,
                      metadata_timeout), f"{host}:{port}")


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM sets ``stop``; so does SIGINT, unless it was ignored when we started (a
    job a non-interactive shell puts in the background): that choice is the caller's."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        loop.add_signal_handler(signal.SIGINT, stop.set)


async def _serve(source: str, file_index: int | None, host: str, port: int, out_dir: Path,
                 player: str | None, config: Any, isolated: bool,
                 metadata_timeout: float = 120.0) -> None:
    from .torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    # From the start: a stop while the metadata is awaited must not wait for it.
    stop = asyncio.Event()
    _stop_on_signals(stop)
    settings = dict(ISOLATED_SETTINGS) if isolated else {}
    async with EnhancedTorrentSession(config, peer_id=config.peer_id, lt_settings=settings,
                                      save_path=out_dir) as session:
        torrent = await session.add(source)
        if not torrent.handle.status().has_metadata:
            print(f"fetching the metadata of {torrent.infohash} (at most "  # noqa: T201
                  f"{metadata_timeout:g} s)", flush=True)
        metadata = asyncio.ensure_future(
            session.wait_metadata(torrent.infohash, timeout=metadata_timeout))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({metadata, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (metadata, stopped):
                task.cancel()
            await asyncio.gather(metadata, stopped, return_exceptions=True)
        if stop.is_set():
            return
        metadata.result()  # LtTimeoutError: no metadata in time
        ti = torrent.handle.torrent_file()
        assert ti is not None
        layout = ti.layout()
        sizes = [layout.file_size(i) for i in range(layout.num_files())]
        if file_index is None:
            file_index = max(range(len(sizes)), key=sizes.__getitem__)
        elif file_index >= len(sizes):
            raise ConfigError(f"--file {file_index}: the torrent has {len(sizes)} file(s)")
        reader = prepare_stream(session, torrent.infohash, file_index)
        runner = web.AppRunner(make_app(session))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0]
            url = f"http://{bound[0]}:{bound[1]}/files/{torrent.infohash}/{file_index}"
            print(f"streaming {reader.name} at {url}", flush=True)  # noqa: T201
            proc = await asyncio.create_subprocess_exec(player, url) if player else None
            await stop.wait()
            if proc is not None and proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await proc.wait()
        finally:
            await runner.cleanup()


__all__ = ["file_rows", "link_query", "make_app", "stream_command"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(stream_command())
