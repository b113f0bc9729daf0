"""``lt-punch stream``: one torrent's file over HTTP while it downloads.

Kept apart from the HTTP app (:mod:`lt_punch.stream`) so that the peer is dialled
before aiohttp is imported: the import (~0.13 s) runs in a thread while the metadata
and the first piece are on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .download import turn_option
from .errors import ConfigError


def stream_params(source: str) -> Any:
    """``add_torrent_params`` for a torrent added to be streamed: started at once and
    downloading in order until :func:`prepare_stream` sets the priorities.

    libtorrent sends its first requests the moment the metadata of a magnet link
    arrives, before any alert can set priorities: they went to random pieces (its
    first picks), and a rate-capped seeder served those before the first piece of the
    file (measured: the first 64 KiB half a second later, one more tick of the
    seeder's rate limiter). In order, the first requests are for the first pieces."""
    import libtorrent as lt

    from .torrent.handle import make_params

    params = make_params(source)
    params.flags &= ~lt.torrent_flags.paused
    params.flags |= lt.torrent_flags.sequential_download
    return params


def prepare_stream(session: Any, infohash: str, file_index: int) -> Any:
    """Make file ``file_index`` of a torrent with metadata ready to stream: the other
    files at the lowest priority, its first and last pieces before the rest (container
    headers and indexes live there). Returns a reader of the file.

    Priorities, not deadlines: a deadline would put libtorrent in time-critical mode,
    where a seek no longer cancels the requests queued for other pieces (see
    :mod:`lt_punch.torrent.reader`)."""
    import libtorrent as lt

    from .torrent.reader import DEFAULT_PRIORITY, READAHEAD_PRIORITY

    handle = session.torrents[infohash].handle
    handle.unset_flags(lt.torrent_flags.sequential_download)  # see stream_params
    reader = session.open(infohash, file_index)
    files = handle.torrent_file().layout().num_files()
    handle.prioritize_files([DEFAULT_PRIORITY if i == file_index else 1
                            for i in range(files)])
    for piece in {reader.piece_at(0), reader.piece_at(max(0, reader.size - 1))}:
        handle.piece_priority(piece, READAHEAD_PRIORITY)
    return reader



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
@turn_option
@click.option("--metadata-timeout", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True, help="Seconds to wait for the metadata of a magnet link; "
                                      "then exit with 1.")
@click.option("--isolated", is_flag=True, help="Only the signaling room as peer source.")
def stream_command(source: str, file_index: int | None, host: str, port: int, out_dir: Path,
                   player: str | None, signal_url: str | None, peer_id: str | None,
                   turn: tuple[str, ...], metadata_timeout: float, isolated: bool) -> None:
    """Stream SOURCE (magnet, .torrent or infohash) over HTTP while it downloads.

    SIGTERM (and SIGINT, unless the shell started it with SIGINT ignored) stops it at
    any time, also while it waits for the metadata; exit code 0. Exit codes otherwise:
    1 failed (no metadata in time), 2 bad input."""
    from .cli import run_server
    from .download import check_source, check_writable, config_from_options

    config = config_from_options(signal_url, peer_id=peer_id, turn=turn)
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
    # The HTTP app loads while the peer is dialled; an import cannot be cancelled, so
    # every way out waits for it (a fraction of a second).
    http = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, "lt_punch.stream"))
    try:
        await _stream(source, file_index, host, port, out_dir, player, config, isolated,
                      metadata_timeout, http)
    finally:
        await asyncio.gather(http, return_exceptions=True)


async def _stream(source: str, file_index: int | None, host: str, port: int, out_dir: Path,
                  player: str | None, config: Any, isolated: bool, metadata_timeout: float,
                  http: asyncio.Future[Any]) -> None:
    from .torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    # From the start: a stop while the metadata is awaited must not wait for it.
    stop = asyncio.Event()
    _stop_on_signals(stop)
    settings = dict(ISOLATED_SETTINGS) if isolated else {}
    async with EnhancedTorrentSession(config, peer_id=config.peer_id, lt_settings=settings,
                                      save_path=out_dir) as session:
        torrent = await session.add(stream_params(source))
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
        stream = await http
        runner = stream.make_runner(stream.make_app(session, allow_hosts=[host]))
        await runner.setup()
        try:
            site = stream.web.TCPSite(runner, host, port)
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


__all__ = ["prepare_stream", "stream_command", "stream_params"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(stream_command())
