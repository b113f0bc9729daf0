"""``lt-punch demo``: two peers meet by infohash, punch, and download; data verified.

Default: everything on loopback (an embedded signaling server with its DHT
reflector, an embedded STUN responder, a seeding and a downloading session).
``--lab`` (root): the same across two emulated NATs in network namespaces.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from .config import METHODS, Config
from .errors import LtPunchError


def _print_summary(title: str, stats: dict[str, Any], extra: dict[str, Any]) -> None:
    nat = stats.get("nat") or {}
    click.echo(f"\n== {title} ==")
    click.echo(f"  NAT            : {nat.get('nat_type')} ({nat.get('classic_name')}),"
               f" detected via {nat.get('source')}")
    eps = stats.get("public_endpoints", {})
    click.echo(f"  public UDP/TCP : {eps.get('udp')} / {eps.get('tcp')}")
    for key, value in extra.items():
        click.echo(f"  {key:<15}: {value}")
    for t in stats.get("torrents", []):
        click.echo(f"  torrent        : {t['name']} {t['state']} {t['progress'] * 100:.1f}%"
                   f" down {t['total_download']} B, up {t['total_upload']} B")
        for p in t["punches"]:
            ttc = p["time_to_connect"]
            click.echo(f"  punched peer   : {p['peer_id']} role={p['role']} method={p['method']}"
                       f" endpoint={p['endpoint']} time_to_connect="
                       f"{'-' if ttc is None else f'{ttc * 1000:.1f} ms'}"
                       f" attempts={p['attempts']} failures={len(p['failures'])}")


async def run_loopback(size: int, methods: tuple[str, ...], as_json: bool) -> bool:
    from .nat.server import StunServer
    from .signaling.server import SignalingServer
    from .torrent.maketorrent import make_torrent, sha256_file, write_random_file
    from .torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession

    with tempfile.TemporaryDirectory(prefix="lt-punch-demo-") as tmp:
        base = Path(tmp)
        click.echo(f"generating a {size >> 20} MiB payload and its torrent ...")
        sha = write_random_file(base / "seed" / "demo.bin", size)
        torrent = make_torrent(base / "seed" / "demo.bin")
        async with SignalingServer("127.0.0.1", 0) as server, StunServer(
            ("127.0.0.1", 0), alternate_port=0, alternate_host="127.0.0.2"
        ) as stun:
            assert server.dht_address is not None
            click.echo(f"signaling server {server.url}, DHT reflector udp://"
                       f"{server.dht_address[0]}:{server.dht_address[1]}, STUN "
                       f"{stun.address[0]}:{stun.address[1]}")
            config = Config(
                signaling_url=server.url,
                signaling_udp_port=server.dht_address[1],
                stun_servers=(stun.address,),
                listen_host="127.0.0.1",
                methods=methods,
            )
            # Both peers share 127.0.0.1, which libtorrent refuses by default.
            settings = dict(ISOLATED_SETTINGS, allow_multiple_connections_per_ip=True)
            async with EnhancedTorrentSession(
                config, peer_id="demo-seed", lt_settings=settings, save_path=base / "seed"
            ) as seed, EnhancedTorrentSession(
                config, peer_id="demo-leech", lt_settings=settings, save_path=base / "leech"
            ) as leech:
                await seed.add(torrent)
                t0 = time.monotonic()
                handle = await leech.add(torrent)
                record = await leech.wait_punched(handle.infohash, 30)
                await leech.wait_finished(handle.infohash, 120)
                elapsed = time.monotonic() - t0
                ok = sha256_file(base / "leech" / "demo.bin") == sha
                stats = leech.stats()
                if as_json:
                    click.echo(json.dumps({"verified": ok, "elapsed": elapsed,
                                           "leech": stats, "seed": seed.stats()}, indent=2))
                else:
                    _print_summary("downloading peer", stats, {
                        "method": record.method,
                        "time_to_connect": f"{(record.time_to_connect or 0) * 1000:.1f} ms",
                        "download": f"{size >> 20} MiB in {elapsed:.2f} s",
                        "verified": "sha256 matches" if ok else "MISMATCH",
                    })
                    _print_summary("seeding peer", seed.stats(), {})
                return ok


def run_lab(seed_nat: str, leech_nat: str, size: int, methods: tuple[str, ...],
            as_json: bool) -> bool:
    from .netlab import NatLab, lab_unavailable_reason
    from .netlab.scenario import run_pair

    reason = lab_unavailable_reason()
    if reason:
        raise click.UsageError(f"--lab needs the NAT lab: {reason}")
    click.echo(f"building the NAT lab: seed behind '{seed_nat}', leech behind '{leech_nat}' ...")
    with NatLab({"seed": seed_nat, "leech": leech_nat}) as lab:
        # With the relay allowed, the seed gets the lab's TURN server (coturn): two
        # symmetric NATs then meet through it.
        result = run_pair(lab, seed_side="seed", leech_side="leech", size=size,
                          methods=methods, timeout=120,
                          turn=["seed"] if "relay" in methods else ())
    if result.error:
        click.echo(f"failed: {result.error}", err=True)
    stats = result.leech_stats() or {}
    if as_json:
        click.echo(json.dumps({"verified": result.sha_ok, "method": result.method,
                               "time_to_connect": result.time_to_connect,
                               "transfer_time": result.transfer_time, "leech": stats}, indent=2))
    elif stats:
        _print_summary("downloading peer (lab)", stats, {
            "method": result.method,
            "time_to_connect": f"{(result.time_to_connect or 0) * 1000:.1f} ms",
            "transfer": f"{size >> 20} MiB in {result.transfer_time or 0:.2f} s",
            "verified": "sha256 matches" if result.sha_ok else "MISMATCH",
        })
    return result.ok


@click.command("demo")
@click.option("--lab", "use_lab", is_flag=True, help="Run across two emulated NATs (root).")
@click.option("--seed-nat", default="port", show_default=True,
              type=click.Choice(["open", "full", "restricted", "port", "symmetric"]))
@click.option("--leech-nat", default="port", show_default=True,
              type=click.Choice(["open", "full", "restricted", "port", "symmetric"]))
@click.option("--size-mb", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--method", "methods", multiple=True,
              type=click.Choice(METHODS),
              help="Punch method(s) to allow, in order (default: tcp, utp; with --lab "
                   "also predict and relay, through the lab's TURN server).")
@click.option("--json", "as_json", is_flag=True, help="Print the merged stats as JSON.")
def demo_command(use_lab: bool, seed_nat: str, leech_nat: str, size_mb: int,
                 methods: tuple[str, ...], as_json: bool) -> None:
    """Two peers meet by infohash, punch a path and download; the data is verified."""
    methods = methods or (METHODS if use_lab else ("tcp", "utp"))
    size = size_mb << 20
    try:
        if use_lab:
            ok = run_lab(seed_nat, leech_nat, size, methods, as_json)
        else:
            ok = asyncio.run(run_loopback(size, methods, as_json))
    except LtPunchError as exc:
        click.echo(f"demo failed: {exc}", err=True)
        sys.exit(1)
    click.echo("\ndemo OK: download verified" if ok else "\ndemo FAILED", err=not ok)
    sys.exit(0 if ok else 1)
