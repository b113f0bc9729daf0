"""``lt-punch lab``: check, clean up and try out the emulated NAT lab."""

from __future__ import annotations

import json
import sys

import click

from ..errors import LabError
from .lab import NatLab, cleanup_stale, lab_unavailable_reason, list_lab_namespaces
from .rules import LAB_KINDS


@click.group("lab")
def lab_group() -> None:
    """Build and inspect the emulated NAT lab (needs root)."""


@lab_group.command("check")
def check_command() -> None:
    """Print whether the lab can be built here, and why not."""
    reason = lab_unavailable_reason()
    if reason is None:
        click.echo("lab usable: root, ip netns, nftables NAT and turnserver are available")
        return
    click.echo(f"lab unavailable: {reason}")
    sys.exit(1)


@lab_group.command("cleanup")
@click.option(
    "--all", "include_alive", is_flag=True,
    help="Also remove labs of running processes (only when no lab is in use).",
)
def cleanup_command(include_alive: bool) -> None:
    """Remove namespaces left behind by lab runs whose process died."""
    removed = cleanup_stale(include_alive=include_alive)
    for name in removed:
        click.echo(f"removed {name}")
    left = list_lab_namespaces()
    click.echo(f"{len(removed)} namespace(s) removed, {len(left)} lab namespace(s) in use")


@lab_group.command("classify")
@click.argument("kind", type=click.Choice(LAB_KINDS))
@click.option("--loss", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Percent of packets dropped in each direction.")
@click.option("--timeout", type=float, default=0.3, show_default=True,
              help="pystun3 per-request timeout in seconds.")
def classify_command(kind: str, loss: int, timeout: float) -> None:
    """Build a one-side lab of KIND, classify it with pystun3 against coturn, tear down."""
    with NatLab({"a": kind}, loss={"a": loss}) as lab:
        server, port = lab.start_stun()
        host = lab.host("a")
        result = lab.run(
            "a",
            [sys.executable, "-m", "lt_punch.netlab.probe", "classify", "--bind", host.lan_ip,
             "--server", server, "--port", str(port), "--timeout", str(timeout)],
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"classification failed: {result.stderr.strip()}")
        found = json.loads(result.stdout.splitlines()[-1])
    click.echo(f"kind:     {kind}")
    click.echo(f"nat_type: {found['nat_type']}")
    click.echo(f"source:   {found['source'][0]}:{found['source'][1]}")
    ext_ip, ext_port = found["external"]
    if ext_ip is None:
        # pystun3 returns the answer of its *last* test, which timed out here.
        click.echo("external: unknown (pystun3's last test got no answer)")
    else:
        click.echo(f"external: {ext_ip}:{ext_port}")
