"""The ``lt-punch`` command.

Subcommands are imported lazily so that ``lt-punch nat`` and ``lt-punch signal serve``
work without libtorrent being importable. Exit codes: 0 success, 1 failure,
2 bad input (click's usage errors and :class:`ConfigError`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from .errors import ConfigError, LtPunchError

# name -> (module, attribute, short help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("lt_punch.demo", "demo_command", "Run two peers that meet by infohash and download."),
    "download": ("lt_punch.download", "download_command",
                 "Download a magnet link, .torrent file or infohash, with resume."),
    "serve": ("lt_punch.serve", "serve_command",
              "Run the daemon: several torrents, REST API, stream URLs, /metrics."),
    "stream": ("lt_punch.stream_cli", "stream_command",
               "Stream a torrent's file over HTTP while it downloads."),
    "signal": ("lt_punch.signaling.cli", "signal_group", "Run or query a signaling server."),
    "nat": ("lt_punch.nat.cli", "nat_command", "Detect the NAT in front of this host."),
    "lab": ("lt_punch.netlab.cli", "lab_group", "Build and inspect the emulated NAT lab."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr, _ = _COMMANDS[cmd_name]
            module = importlib.import_module(module_name)
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except LtPunchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory where it is installed (not on Windows), else None
    (asyncio's own). The signaling server relays about 1.4x more messages per CPU
    second on it (docs/performance.md, "Browsers and the WebTorrent tracker path")."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_server(main: Coroutine[Any, Any, None], address: str, *,
               loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Run a serving command's coroutine (on ``loop_factory``'s loop, by default
    asyncio's); its failures end it with one line: bad input (:class:`ConfigError`) and
    an address that cannot be bound exit with 2, other failures with 1."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    except LtPunchError as exc:
        # Before OSError: LtTimeoutError is a TimeoutError, hence an OSError, yet a
        # failure (no metadata in time, say), not bad input.
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except OSError as exc:
        # A bind error carries strerror; our own OSErrors (e.g. Redis) say it all.
        reason = f"cannot serve on {address}: {exc.strerror}" if exc.strerror else str(exc)
        click.echo(f"error: {reason}", err=True)
        raise click.exceptions.Exit(2) from None


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="lt_punch")
def main(verbose: int) -> None:
    """lt-punch: let libtorrent reach peers behind NATs."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
