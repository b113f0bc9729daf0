"""The session's stats: torrent metrics merged with P2P metrics (plain dicts, JSON-ready)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..nat.info import NATInfo
from ..types import Address


def session_stats(
    *, peer_id: str, uptime: float, nat: NATInfo | None, udp: Address | None,
    tcp: Address | None, listen_port: int | None, port_mappings: Iterable[dict[str, Any]],
    signaling: dict[str, Any], torrents: list[dict[str, Any]],
    first_peer: float | None = None, stall_recoveries: int = 0,
    relay: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``stats()`` of a session from its parts (each torrent's ``Torrent.stats()``)."""
    punches = [p for t in torrents for p in t["punches"]]
    by_method: dict[str, int] = {}
    for p in punches:
        if p["state"] == "connected" and p["method"]:
            by_method[p["method"]] = by_method.get(p["method"], 0) + 1
    times = sorted(p["time_to_connect"] for p in punches if p["time_to_connect"] is not None)
    return {
        "peer_id": peer_id,
        "uptime": uptime,
        "first_peer_after": first_peer,
        "nat": nat.to_dict() if nat else None,
        "public_endpoints": {
            "udp": list(udp) if udp else None,
            "tcp": list(tcp) if tcp else None,
        },
        "listen_port": listen_port,
        "port_mappings": list(port_mappings),
        "signaling": signaling,
        "relay": relay,
        "totals": {
            "torrents": len(torrents),
            "punches": len(punches),
            "connected": sum(1 for p in punches if p["state"] == "connected"),
            "failed": sum(1 for p in punches if p["state"] == "failed"),
            "failures": sum(len(p["failures"]) for p in punches),
            "by_method": by_method,
            "median_time_to_connect": times[len(times) // 2] if times else None,
            "stall_recoveries": stall_recoveries,
            "download_rate": sum(t["download_rate"] for t in torrents),
            "upload_rate": sum(t["upload_rate"] for t in torrents),
        },
        "torrents": torrents,
    }
