"""``lt-punch signal``: run a signaling server.

Options take their value from the command line, then from the environment
(``P2P_SIGNALING_*``, named in ``--help``), then the defaults.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from typing import Any

import click

from ..cli import fast_loop, run_server
from .security import make_token
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
@click.option("--tls-cert", envvar="P2P_SIGNALING_TLS_CERT", type=click.Path(dir_okay=False),
              default=None, help="PEM certificate (chain): serve wss:// and https://.")
@click.option("--tls-key", envvar="P2P_SIGNALING_TLS_KEY", type=click.Path(dir_okay=False),
              default=None, help="PEM private key of --tls-cert.")
@click.option("--secret", envvar="P2P_SIGNALING_SECRET", default=None,
              help="Shared secret: peers must register with a token made from it "
                   "('lt-punch signal token').")
@click.option("--rate", envvar="P2P_SIGNALING_RATE", type=click.FloatRange(min=0.1),
              default=50.0, show_default=True, help="Messages per second per connection.")
@click.option("--burst", envvar="P2P_SIGNALING_BURST", type=click.FloatRange(min=1),
              default=200.0, show_default=True, help="Burst of messages per connection.")
@click.option("--max-connections-per-address", envvar="P2P_SIGNALING_MAX_CONNECTIONS",
              type=click.IntRange(min=0), default=256, show_default=True,
              help="Concurrent connections per client address (0: no limit; loopback "
                   "is exempt).")
@click.option("--lan-mode/--no-lan-mode", envvar="P2P_SIGNALING_LAN_MODE", default=None,
              help="Accept loopback and link-local candidate addresses [default: only "
                   "when --host is loopback].")
@click.option("--peer-timeout", envvar="P2P_SIGNALING_PEER_TIMEOUT",
              type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Close connections silent for this many seconds (0: never).")
@click.option("--cleanup-interval", envvar="P2P_SIGNALING_CLEANUP_INTERVAL",
              type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between idle-connection sweeps.")
@click.option("--max-rooms-per-peer", envvar="P2P_SIGNALING_MAX_ROOMS_PER_PEER",
              type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rooms one peer may be in.")
@click.option("--max-peers-per-room", envvar="P2P_SIGNALING_MAX_PEERS_PER_ROOM",
              type=click.IntRange(min=1), default=5000, show_default=True,
              help="Members of one room on this server.")
@click.option("--redis-url", envvar="P2P_SIGNALING_REDIS_URL", default=None, metavar="URL",
              help="Share rooms with other servers through this Redis "
                   "(redis://host:port/db).")
def serve_command(host: str, port: int, dht_port: int | None, no_dht: bool,
                  tls_cert: str | None, tls_key: str | None, secret: str | None,
                  rate: float, burst: float, max_connections_per_address: int,
                  lan_mode: bool | None, peer_timeout: float, cleanup_interval: float,
                  max_rooms_per_peer: int, max_peers_per_room: int,
                  redis_url: str | None) -> None:
    """Serve signaling (websocket + HTTP) until SIGINT or SIGTERM."""
    if dht_port is None:
        dht_port = port
    if secret is not None and not secret.strip():
        raise click.UsageError("--secret: empty")
    options: dict[str, Any] = {
        "ssl": _tls_context(tls_cert, tls_key), "secret": secret, "rate": rate,
        "burst": burst, "max_connections_per_address": max_connections_per_address,
        "lan_mode": lan_mode, "peer_timeout": peer_timeout or None,
        "cleanup_interval": cleanup_interval, "freeze_gc": True, "redis_url": redis_url,
        "max_rooms_per_peer": max_rooms_per_peer, "max_peers_per_room": max_peers_per_room,
    }
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://",
                                                            "unix://")):
        raise click.UsageError(f"--redis-url: expected redis://, rediss:// or unix://, "
                               f"got {redis_url!r}")
    run_server(_serve(host, port, None if no_dht else dht_port, options), f"{host}:{port}",
               loop_factory=fast_loop())


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS certificate or key: {exc}") from None
    return context


async def _serve(host: str, port: int, dht_port: int | None, options: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SignalingServer(host, port, dht_port=dht_port, **options) as server:
            click.echo(f"signaling server listening on {server.url}")
            if server.dht_address is not None:
                click.echo("DHT reflector on udp://{}:{}".format(*server.dht_address))
            await stop.wait()
            click.echo("shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


@signal_group.command("token")
@click.option("--secret", envvar="P2P_SIGNALING_SECRET", required=True,
              help="The server's shared secret.")
@click.option("--peer-id", required=True, help="The peer id the token authorises.")
@click.option("--ttl", type=click.FloatRange(min=1), default=86400.0, show_default=True,
              help="Seconds of validity.")
def token_command(secret: str, peer_id: str, ttl: float) -> None:
    """Print a registration token for PEER_ID (HMAC of the peer id and expiry)."""
    from .protocol import MessageError, validate_peer_id

    try:
        validate_peer_id(peer_id)
    except MessageError as exc:
        raise click.UsageError(f"--peer-id: {exc}") from None
    if not secret.strip():
        raise click.UsageError("--secret: empty")
    click.echo(make_token(secret, peer_id, ttl))
