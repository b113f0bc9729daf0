"""``lt-punch nat``: detect the NAT in front of this host (no libtorrent needed).

Servers come from ``--stun host:port`` (repeatable), else from ``P2P_STUN_SERVERS``
(comma-separated): command line > environment. Without any server the command
says so and exits with code 2. Exit code 1 when detection failed (``error`` set).
"""

from __future__ import annotations

import asyncio
import json
import os

import click

from ..config import parse_hostport, parse_hostports
from ..errors import ConfigError
from ..types import Address
from .detect import detect_nat
from .info import NATInfo

_NO_SERVER = (
    "no STUN server configured: pass --stun host:port or set P2P_STUN_SERVERS "
    "(the server must honour CHANGE-REQUEST, e.g. coturn with two --listening-ip)"
)


def _servers(stun: tuple[str, ...]) -> tuple[Address, ...]:
    try:
        if stun:
            return tuple(parse_hostport(item, "--stun") for item in stun)
        return parse_hostports(os.environ.get("P2P_STUN_SERVERS", ""), "P2P_STUN_SERVERS")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _endpoint(ip: str | None, port: int | None) -> str:
    if ip is None:
        return "-"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port is not None else host


def format_table(info: NATInfo) -> str:
    """The human-readable report."""
    server = _endpoint(*info.stun_server) if info.stun_server else "-"
    rows = [
        ("NAT type", info.nat_type),
        ("classic name", info.classic_name),
        ("public endpoint", _endpoint(info.public_ip, info.public_port)),
        ("local endpoint", _endpoint(info.local_ip, info.local_port)),
        ("STUN server", server),
        ("duration", f"{info.duration:.3f} s"),
    ]
    if info.error:
        rows.append(("error", info.error))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@click.command("nat")
@click.option(
    "--stun",
    "stun",
    multiple=True,
    metavar="HOST:PORT",
    help="STUN server (repeatable); default: P2P_STUN_SERVERS.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=0.5,
    show_default=True,
    help="Seconds to wait for each STUN answer.",
)
@click.option(
    "--overall-timeout",
    type=click.FloatRange(min=0.001),
    default=5.0,
    show_default=True,
    help="Seconds for the whole detection.",
)
def nat_command(
    stun: tuple[str, ...], as_json: bool, timeout: float, overall_timeout: float
) -> None:
    """Detect the NAT type and public endpoint with RFC 3489 STUN tests."""
    servers = _servers(stun)
    if not servers:
        raise click.UsageError(_NO_SERVER)
    info = asyncio.run(detect_nat(servers, timeout=timeout, overall_timeout=overall_timeout))
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo(format_table(info))
    if info.error:
        raise click.exceptions.Exit(1)


__all__ = ["format_table", "nat_command"]
