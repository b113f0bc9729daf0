"""``lt-punch nat``: discover the NAT in front of this host (no libtorrent needed).

Servers come from ``--stun host:port`` (repeatable), else from ``P2P_STUN_SERVERS``
(comma-separated): command line > environment. Without any server the command
says so and exits with code 2. Exit code 1 when detection failed (``error`` set).

With TURN servers (``--turn`` or ``P2P_TURN_SERVER``, credentials from
``P2P_TURN_USERNAME``/``P2P_TURN_PASSWORD`` or ``P2P_TURN_SECRET``) it also says
whether each grants a relay (an allocation made and released at once); exit code 1
when none does.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import click

from ..config import parse_hostport, parse_hostports
from ..errors import ConfigError
from ..types import Address
from .discover import Retransmission, discover_nat
from .info import NATInfo

_NO_SERVER = (
    "no STUN server configured: pass --stun host:port or set P2P_STUN_SERVERS "
    "(one server that honours CHANGE-REQUEST, e.g. coturn with two --listening-ip, "
    "or two ordinary servers)"
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


def _failed(info: NATInfo) -> bool:
    """Detection failed: no verdict at all (``blocked``, with its error, is one)."""
    return info.error is not None and info.nat_type == "unknown"


def to_json(info: NATInfo) -> dict[str, Any]:
    """The JSON report: :meth:`NATInfo.to_dict`, without a confidence when detection
    failed (there is nothing to be confident about)."""
    data = info.to_dict()
    if _failed(info):
        data["confidence"] = None
    return data


def format_table(info: NATInfo, extra: list[tuple[str, str]] | None = None) -> str:
    """The human-readable report: the verdict (and ``extra`` rows), then each test with
    its duration."""
    server = _endpoint(*info.stun_server) if info.stun_server else "-"
    allocation = info.allocation or "-"
    if info.port_delta is not None:
        allocation += f" (step {info.port_delta:+d})"
    rows = [
        ("NAT type", f"{info.nat_type} ({info.classic_name})"),
        ("mapping", info.mapping or "-"),
        ("filtering", info.filtering or "-"),
        ("port allocation", allocation),
        ("public endpoint", _endpoint(info.public_ip, info.public_port)),
        ("local endpoint", _endpoint(info.local_ip, info.local_port)),
        ("STUN server", server),
        ("confidence", "-" if _failed(info) else f"{info.confidence:.2f}"),
        ("duration", f"{info.duration:.3f} s"),
    ]
    if info.error:
        rows.append(("error", info.error))
    rows += [(f"not known: {test}", reason) for test, reason in info.skipped]
    rows += extra or []
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if info.tests:
        lines.append("")
        lines.append("tests:")
        name_width = max(len(t.name) for t in info.tests)
        lines += [
            f"  {t.name:<{name_width}}  {t.duration * 1000:7.1f} ms  {t.server:<21}  {t.outcome}"
            for t in info.tests
        ]
    return "\n".join(lines)


async def check_relays(config: Any) -> list[dict[str, Any]]:
    """Allocate (and release) a relay on each TURN server of ``config``: whether it
    works, its relayed address and round-trip time, or why not."""
    from ..punch.turn import TurnAllocation, TurnError, TurnServer

    results = []
    for host, port in config.turn_servers:
        server = TurnServer(host, port, config.turn_username, config.turn_password,
                            config.turn_secret)
        row: dict[str, Any] = {"server": str(server), "ok": False, "relayed": None,
                               "rtt": None, "error": None}
        try:
            allocation = await TurnAllocation.open(server)
        except TurnError as exc:
            row["error"] = str(exc)
        else:
            row.update(ok=True, relayed=list(allocation.relayed or ()), rtt=allocation.rtt)
            await allocation.close()
        results.append(row)
    return results


def relay_rows(relays: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    if relays is None:
        return [("relay", "not configured (--turn, P2P_TURN_SERVER)")]
    rows = []
    for r in relays:
        if r["ok"]:
            rtt = f", {r['rtt'] * 1000:.1f} ms" if r["rtt"] is not None else ""
            rows.append(("relay", f"{r['server']} grants relays "
                                  f"({_endpoint(*r['relayed'])}{rtt})"))
        else:
            rows.append(("relay", f"{r['server']}: {r['error']}"))
    return rows


@click.command("nat")
@click.option(
    "--stun",
    "stun",
    multiple=True,
    metavar="HOST:PORT",
    help="STUN server (repeatable); default: P2P_STUN_SERVERS.",
)
@click.option("--turn", multiple=True, metavar="HOST:PORT",
              help="TURN server to check (repeatable); default: P2P_TURN_SERVER.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--rto",
    type=click.FloatRange(min=0.001),
    default=Retransmission.rto,
    show_default=True,
    help="Seconds before a STUN request is first re-sent (then doubling).",
)
@click.option(
    "--sends",
    type=click.IntRange(min=1, max=10),
    default=Retransmission.count,
    show_default=True,
    help="Sends of each STUN request before it counts as unanswered.",
)
@click.option(
    "--overall-timeout",
    type=click.FloatRange(min=0.001),
    default=5.0,
    show_default=True,
    help="Seconds for the whole detection.",
)
def nat_command(
    stun: tuple[str, ...], turn: tuple[str, ...], as_json: bool, rto: float, sends: int,
    overall_timeout: float,
) -> None:
    """Discover the NAT's mapping and filtering behaviour (RFC 5780) and its classic type,
    and whether the configured TURN servers grant a relay."""
    from ..config import Config

    servers = _servers(stun)
    if not servers:
        raise click.UsageError(_NO_SERVER)
    try:
        turn_servers = tuple(parse_hostport(t, "--turn") for t in turn)
        config = Config.from_env(turn_servers=turn_servers or None)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    schedule = Retransmission(rto=rto, count=sends)

    async def run() -> tuple[NATInfo, list[dict[str, Any]] | None]:
        info = await discover_nat(servers, retransmission=schedule,
                                  overall_timeout=overall_timeout)
        relays = await check_relays(config) if config.turn_servers else None
        return info, relays

    info, relays = asyncio.run(run())
    if as_json:
        click.echo(json.dumps({**to_json(info), "relay": relays}, indent=2))
    else:
        click.echo(format_table(info, relay_rows(relays)))
    if info.error or (relays is not None and not any(r["ok"] for r in relays)):
        raise click.exceptions.Exit(1)


__all__ = ["format_table", "nat_command", "to_json"]
