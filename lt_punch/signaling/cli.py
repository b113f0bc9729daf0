"""``lt-punch signal``: run a signaling server.

Options take their value from the command line, then from the environment
(``P2P_SIGNALING_HOST``, ``P2P_SIGNALING_PORT``), then the defaults.
"""

from __future__ import annotations

import asyncio
import signal

import click

from .server import SignalingServer


@click.group("signal")
def signal_group() -> None:
    """Run or query a signaling server."""


@signal_group.command("serve")
@click.option(
    "--host",
    envvar="P2P_SIGNALING_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (TCP and UDP).",
)
@click.option(
    "--port",
    envvar="P2P_SIGNALING_PORT",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port for websockets and HTTP (0: any free port).",
)
@click.option(
    "--dht-port",
    envvar="P2P_SIGNALING_UDP_PORT",
    type=click.IntRange(0, 65535),
    default=None,
    help="UDP port of the DHT endpoint reflector (default: the same number as --port, "
    "which is where clients look for it; 0: any free port).",
)
@click.option("--no-dht", is_flag=True, help="Do not run the DHT endpoint reflector.")
def serve_command(host: str, port: int, dht_port: int | None, no_dht: bool) -> None:
    """Serve signaling (websocket + HTTP) until SIGINT or SIGTERM."""
    if dht_port is None:
        dht_port = port
    asyncio.run(_serve(host, port, None if no_dht else dht_port))


async def _serve(host: str, port: int, dht_port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SignalingServer(host, port, dht_port=dht_port) as server:
            click.echo(f"signaling server listening on {server.url}")
            if server.dht_address is not None:
                click.echo("DHT reflector on udp://{}:{}".format(*server.dht_address))
            await stop.wait()
            click.echo("shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
