"""``lt-punch download``: one torrent from the command line, with progress and resume.

Peers come from the signaling room (punched through NATs), and from libtorrent's own
sources (trackers, DHT, LSD) unless the environment turns them off. Resume data is kept
in ``DIR/.lt_punch/<infohash>.resume``: written every ``--save-every`` seconds, when the
download finishes and on SIGINT/SIGTERM, and read when the same command starts again,
so verified pieces are never downloaded twice (after ``kill -9``, at most what arrived
since the last save).

Output: a live line on a terminal (rich), plain periodic lines otherwise, one JSON
object per line with ``--json``. Exit codes: 0 done, 1 the download failed, 2 bad input
(a bad source, an unwritable directory, a port in use...), 130 interrupted (resume
data saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from .config import Config, parse_hostport, parse_peer_id, parse_ws_url
from .errors import ConfigError, LtPunchError

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

PHASES = {
    "downloading_metadata": "fetching metadata",
    "checking": "checking",
    "checking_resume": "checking",
    "allocating": "checking",
    "queued": "queued",
    "downloading": "downloading",
    "finished": "finished",
    "seeding": "seeding",
}


@dataclass
class Progress:
    """One report of the download's state (what every output mode prints)."""

    phase: str
    progress: float
    download_rate: int
    upload_rate: int
    downloaded: int
    """Bytes of wanted pieces we have (verified), including those of earlier runs."""
    wanted: int
    session_download: int
    """Payload bytes received by this run (libtorrent's counter)."""
    eta: float | None
    peers: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"event": "progress", **self.__dict__}

    def line(self) -> str:
        peers = ", ".join(f"{k} {v}" for k, v in sorted(self.peers.items())) or "none"
        eta = "-" if self.eta is None else f"{self.eta:.0f} s"
        return (f"{self.phase}: {self.progress * 100:5.1f}%  "
                f"down {self.download_rate / 1e6:.2f} MB/s  up {self.upload_rate / 1e6:.2f} MB/s  "
                f"ETA {eta}  peers: {peers}")


class Output:
    """Where reports go: JSON lines, plain lines, or a rich live line on a terminal."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        self.mode = mode
        self.stream = stream
        self._live: Any = None
        if mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=stream), auto_refresh=False, transient=False)
            self._live.start()

    def progress(self, report: Progress) -> None:
        if self.mode == "json":
            self._write(json.dumps(report.to_dict()))
        elif self._live is not None:
            self._live.update(report.line(), refresh=True)
        else:
            self._write(report.line())

    def event(self, kind: str, message: str, *, quiet: bool = False, **fields: Any) -> None:
        """An event: always a JSON line in JSON mode; printed otherwise unless ``quiet``."""
        if self.mode == "json":
            self._write(json.dumps({"event": kind, "message": message, **fields}))
        elif not quiet:
            self._write(message)

    def _write(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def state_dir(out_dir: Path) -> Path:
    """Where the command keeps resume data: ``DIR/.lt_punch``."""
    return out_dir / ".lt_punch"


def check_source(source: str) -> None:
    """Refuse a path that is not a regular file before anything opens it: a FIFO would
    block the open (and with it SIGINT and SIGTERM), a directory is no .torrent file.

    Raises:
        ConfigError: naming the path and what it is.
    """
    text = source.strip()
    if text.startswith("magnet:"):
        return
    try:
        mode = os.stat(text).st_mode  # stat does not open: a FIFO cannot block it
    except (OSError, ValueError):
        return  # not a path: make_params says what is wrong with it
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{text}: is a directory, not a .torrent file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{text}: not a regular file (a FIFO, socket or device); "
                          "give a .torrent file, a magnet link or an infohash")


def check_writable(out_dir: Path) -> None:
    """Raises ConfigError naming the problem when files cannot be written in ``out_dir``."""
    state = state_dir(out_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        for path in (out_dir, state):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"cannot write to {out_dir}: {path} is not a "
                                  "directory") from None
        raise ConfigError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None


def select_files(names: list[str], selectors: tuple[str, ...]) -> set[int]:
    """File indexes picked by ``--file`` values (an index or a glob on the path)."""
    picked: set[int] = set()
    for sel in selectors:
        if sel.isdigit():
            index = int(sel)
            if index >= len(names):
                raise ConfigError(f"--file {sel}: the torrent has {len(names)} file(s)")
            picked.add(index)
            continue
        matches = {i for i, name in enumerate(names)
                   if fnmatch.fnmatch(name, sel) or fnmatch.fnmatch(Path(name).name, sel)}
        if not matches:
            raise ConfigError(f"--file {sel!r} matches no file of the torrent")
        picked |= matches
    return picked


async def run_download(
    source: str,
    out_dir: Path,
    *,
    config: Config,
    output: Output,
    files: tuple[str, ...] = (),
    seed: bool = False,
    save_every: float = 10.0,
    report_every: float = 1.0,
    lt_settings: dict[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    download_limit: int = 0,
    upload_limit: int = 0,
) -> int:
    """The download; returns the exit code. ``stop`` set = interrupted (save and leave)."""
    import libtorrent as lt

    from .torrent.persistence import Origin, ResumeError, ResumeStore, infohash_of_params
    from .torrent.session import EnhancedTorrentSession, infohash_of, make_params

    stop = stop or asyncio.Event()
    check_writable(out_dir)
    check_source(source)
    atp = make_params(source)  # ConfigError on a bad source
    store = ResumeStore(state_dir(out_dir))
    # The source's peers and trackers (a magnet's x.pe and tr): kept with the resume
    # data, since libtorrent's own may have lost them by the time it is saved.
    origin = Origin.of(atp)
    infohash = infohash_of_params(atp)
    if infohash is not None:
        store.check(infohash)  # a directory where the resume file goes: bad input
        # Resume data of an earlier run of this command, if any.
        try:
            entry = store.load(infohash)
        except ResumeError as exc:
            output.event("warning", f"warning: ignoring unusable resume data: {exc}")
        else:
            if entry is not None:
                atp = entry.params
                origin.apply(atp)  # this run's source may name new peers and trackers
                origin = entry.origin.merge(origin)
                output.event("resume", f"resuming from {entry.path}", path=str(entry.path))
    settings = dict(lt_settings or {})
    async with EnhancedTorrentSession(config, peer_id=config.peer_id, lt_settings=settings,
                                      save_path=out_dir) as session:
        assert session.session is not None
        if config.listen_port and session.session.listen_port() != config.listen_port:
            raise ConfigError(f"cannot listen on port {config.listen_port} (in use?)")
        if config.signaling_enabled and session.signaling_error:
            output.event("warning", f"warning: signaling server unreachable "
                         f"({session.signaling_error}); using the other peer sources")
        atp.save_path = str(out_dir)
        # Per torrent, so that they hold for every peer (libtorrent exempts peers on local
        # networks from the session-wide limits), and from the start: a peer of the room
        # may connect before add() returns.
        atp.download_limit = download_limit or -1
        atp.upload_limit = upload_limit or -1
        atp.flags &= ~lt.torrent_flags.paused  # start now, not at the auto-manager's tick
        torrent = await session.add(atp, save_path=out_dir)
        handle = torrent.handle
        infohash = infohash_of(handle)
        resume = store.path(infohash)

        async def save_resume() -> int | None:
            """Save; the bytes of the pieces the saved data holds (None: not saved)."""
            # Received before the request: with ``verified``, what had been received but
            # was not in the data libtorrent built.
            received = handle.status().total_payload_download
            started = time.monotonic()
            try:
                verified = await _save_resume(session, handle, infohash, store, origin)
            except OSError as exc:  # a full disk, say: the download goes on
                output.event("warning", f"warning: cannot save resume data in {resume}: "
                             f"{exc.strerror or exc}")
                return None
            output.event("saved", "", quiet=True, verified=verified, received=received,
                         took=round(time.monotonic() - started, 3))
            return verified

        async def save_periodically() -> None:
            # Its own timer, so that a slow report or save never stretches the interval.
            while True:
                await asyncio.sleep(save_every)
                if handle.status().has_metadata:
                    with contextlib.suppress(LtPunchError):
                        await save_resume()

        saver = asyncio.create_task(save_periodically())
        printer = asyncio.create_task(_print_events(session, output))
        try:
            return await _report_until_done(
                torrent, session, output, out_dir, files, seed, stop, report_every,
                save_resume, resume)
        finally:
            for task in (saver, printer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for event in session.drain_events():
                _print_event(event, output)


PEER_EVENTS = {
    # type: (printed without --json, message)
    "punched": (True, "punched {peer_id} over {method} ({endpoint[0]}:{endpoint[1]})"),
    "punch-failed": (True, "could not punch {peer_id}: {reason}"),
    "connection-lost": (True, "lost the punched connection to {peer_id}: {reason}"),
    "peer-stalled": (True, "{transport} connection to {endpoint[0]}:{endpoint[1]} stalled "
                           "({waited} s without data); {action}"),
    "peer-connected": (False, "connected to {endpoint[0]}:{endpoint[1]} over {transport}"),
    "peer-disconnected": (False, "disconnected from {endpoint[0]}:{endpoint[1]}: {reason}"),
}
"""The session events ``download`` reports (all of them as JSON lines with --json)."""


def _print_event(event: dict[str, Any], output: Output) -> None:
    kind = event.pop("type", "")
    shown = PEER_EVENTS.get(kind)
    if shown is None:
        return
    loud, template = shown
    action = ("punching again" if event.get("repunch") else
              f"redialling over {event['redial']}" if event.get("redial") else "dropped it")
    output.event(kind, template.format(**event, action=action), quiet=not loud, **event)


async def _print_events(session: Any, output: Output) -> None:
    async for event in session.events():
        _print_event(event, output)


async def _report_until_done(
    torrent: Any, session: Any, output: Output, out_dir: Path, files: tuple[str, ...],
    seed: bool, stop: asyncio.Event, report_every: float, save_resume: Any, resume: Path,
) -> int:
    """Report progress until the download is done, failed or interrupted; the exit code."""
    handle = torrent.handle
    infohash = torrent.infohash
    files_set = False
    code: int | None = None
    while code is None:
        status = handle.status()
        if files and not files_set and status.has_metadata:
            ti = handle.torrent_file()
            assert ti is not None  # has_metadata
            fs = ti.layout()
            names = [fs.file_path(i) for i in range(fs.num_files())]
            picked = select_files(names, files)
            handle.prioritize_files([4 if i in picked else 0 for i in range(len(names))])
            files_set = True
        output.progress(_progress(torrent, status))
        if torrent.error:
            with contextlib.suppress(LtPunchError):
                await save_resume()  # what was verified is not fetched again
            output.event("error", f"error: {torrent.error}")
            code = EXIT_FAILED
            break
        if status.is_finished and (not files or files_set):
            await session.flush(infohash)
            await save_resume()
            punched = [{"peer_id": r.peer_id, "method": r.method}
                       for r in torrent.punches.values() if r.state == "connected"]
            output.event("done", f"done: {status.name} in {out_dir}", infohash=infohash,
                         name=status.name, punched=punched)
            if not seed:
                code = EXIT_DONE
                break
            output.event("seeding", "seeding; Ctrl-C to stop")
            await stop.wait()
            code = EXIT_DONE
            break
        if stop.is_set():
            verified = await save_resume()
            output.event("interrupted", f"interrupted: resume data saved in {resume}; run "
                         "the same command again to resume", path=str(resume),
                         verified=verified)
            code = EXIT_INTERRUPTED
            break
        # The next report, or at once when interrupted or finished (a finish seen only
        # at the next report added up to ``report_every`` to every download).
        await _wait_any(report_every, stop,
                        *(() if torrent.finished.is_set() else (torrent.finished,)))
    return code


async def _wait_any(timeout: float, *events: asyncio.Event) -> None:  # noqa: ASYNC109
    """Until one of ``events`` is set, at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _save_resume(session: Any, handle: Any, infohash: str, store: Any,
                       origin: Any) -> int:
    """Write the torrent's resume data and origin atomically; returns the bytes
    of the pieces it holds - what a restart does not fetch again. Read from the data
    itself, not from the torrent's status: once (a CI run) the status counted 15.4 MB of
    checked pieces just before a save, yet the restart after ``kill -9`` fetched 8.4 MB
    of the 16 MB again; the cause was not found."""
    import libtorrent as lt

    data = await session.resume_data(infohash)
    store.save(infohash, data, origin)
    ti = handle.torrent_file()
    if ti is None:
        return 0
    have = lt.read_resume_data(data).have_pieces
    return sum(ti.piece_size(i) for i, piece in enumerate(have) if piece)


def _progress(torrent: Any, status: Any) -> Progress:
    from .torrent.session import STATE_NAMES

    state = STATE_NAMES.get(int(status.state), str(status.state))
    rate = status.download_payload_rate
    left = max(0, status.total_wanted - status.total_wanted_done)
    stats = torrent.stats()
    return Progress(
        phase=PHASES.get(state, state),
        progress=round(status.progress, 4),
        download_rate=rate,
        upload_rate=status.upload_payload_rate,
        downloaded=status.total_wanted_done,
        wanted=status.total_wanted,
        session_download=status.total_payload_download,
        eta=round(left / rate, 1) if rate > 0 and left else None,
        peers=stats["peers_by_source"],
    )


def config_from_options(
    signal_url: str | None, stun: tuple[str, ...] = (), peer_id: str | None = None,
    turn: tuple[str, ...] = (), **overrides: Any,
) -> Config:
    """The Config of a command: its options over ``P2P_*``; signaling off without a URL.

    Raises:
        click.UsageError: a bad option or environment value (exit code 2).
    """
    try:
        if signal_url:
            overrides["signaling_url"] = parse_ws_url(signal_url, "--signal")
        if peer_id is not None:
            overrides["peer_id"] = parse_peer_id(peer_id.strip(), "--peer-id")
        if stun:
            overrides["stun_servers"] = tuple(parse_hostport(s, "--stun") for s in stun)
        if turn:
            overrides["turn_servers"] = tuple(parse_hostport(t, "--turn") for t in turn)
        config = Config.from_env(**overrides)
        if not config.signaling_url:
            config = Config.from_env(**{**overrides, "signaling_enabled": False})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return config


def turn_option(command: Any) -> Any:
    """``--turn HOST:PORT`` (repeatable) on a command."""
    return click.option(
        "--turn", multiple=True, metavar="HOST:PORT",
        help="TURN server for the relay, the last resort when no punch connects "
             "(repeatable, tried in order; TCP relays as coturn gives). Credentials: "
             "P2P_TURN_USERNAME and P2P_TURN_PASSWORD, or P2P_TURN_SECRET (coturn's "
             "use-auth-secret) [default: P2P_TURN_SERVER].")(command)


PEER_ID_HELP = ("Our id on the signaling server (1..64 of A-Z a-z 0-9 . _ -); a server with "
                "a secret needs a token made for it: 'lt-punch signal token --peer-id ID' "
                "[default: P2P_PEER_ID, else random].")


@click.command("download")
@click.argument("source")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="Directory to download into.")
@click.option("--file", "files", multiple=True, metavar="INDEX|GLOB",
              help="Only these files (repeatable): an index or a glob on the path.")
@click.option("--seed/--no-seed", default=False, show_default=True,
              help="Keep seeding after the download (until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--signal", "signal_url", metavar="URL",
              help="Signaling server (ws:// or wss://); default P2P_SIGNALING_URL.")
@click.option("--stun", multiple=True, metavar="HOST:PORT",
              help="STUN server for NAT discovery (repeatable); default P2P_STUN_SERVERS.")
@click.option("--peer-id", metavar="ID", default=None, help=PEER_ID_HELP)
@turn_option
@click.option("--listen-port", type=click.IntRange(0, 65535), default=None,
              help="TCP/UDP port for peers (0: any free port) [default: P2P_LISTEN_PORT or 0].")
@click.option("--max-download-rate", type=click.IntRange(min=0), default=0, metavar="KB/s",
              help="Download limit in KB/s (0: none).")
@click.option("--max-upload-rate", type=click.IntRange(min=0), default=0, metavar="KB/s",
              help="Upload limit in KB/s (0: none).")
@click.option("--save-every", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between resume data saves.")
@click.option("--isolated", is_flag=True,
              help="Only the signaling room as peer source (no DHT bootstrap, LSD, UPnP).")
def download_command(
    source: str, out_dir: Path, files: tuple[str, ...], seed: bool, as_json: bool,
    signal_url: str | None, stun: tuple[str, ...], peer_id: str | None,
    turn: tuple[str, ...], listen_port: int | None, max_download_rate: int,
    max_upload_rate: int, save_every: float, isolated: bool,
) -> None:
    """Download SOURCE (a magnet link, a .torrent file or an infohash)."""
    config = config_from_options(signal_url, stun, peer_id, turn, listen_port=listen_port)
    settings: dict[str, Any] = {}
    if isolated:
        from .torrent.session import ISOLATED_SETTINGS

        settings.update(ISOLATED_SETTINGS)
    mode = "json" if as_json else "live" if sys.stdout.isatty() else "plain"
    output = Output(mode, sys.stdout)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_download(
            source, out_dir, config=config, output=output, files=files, seed=seed,
            save_every=save_every, report_every=1.0 if mode != "plain" else 5.0,
            lt_settings=settings, stop=stop, download_limit=max_download_rate * 1000,
            upload_limit=max_upload_rate * 1000,
        )

    try:
        code = asyncio.run(main())
    except ConfigError as exc:
        output.close()
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_BAD_INPUT) from None
    except LtPunchError as exc:
        output.close()
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    output.close()
    raise click.exceptions.Exit(code)


__all__ = ["Progress", "download_command", "run_download", "select_files"]
