"""The emulated NAT lab: network namespaces, veths and nftables per RFC 4787 behaviour.

Pure parts (names, addresses, rulesets) live in :mod:`.rules`; :mod:`.lab` builds them with
``ip``/``nft`` and runs processes inside; :mod:`.probe` holds small probes run inside the
namespaces; :mod:`.cli` is ``lt-punch lab``.
"""

from __future__ import annotations

from .lab import (
    LabHost,
    NatLab,
    cleanup_stale,
    coturn_argv,
    lab_unavailable_reason,
    list_lab_namespaces,
    stop_process,
    turn_argv,
)
from .rules import NAT_KINDS, loss_ruleset, router_ruleset

__all__ = [
    "NAT_KINDS",
    "LabHost",
    "NatLab",
    "cleanup_stale",
    "coturn_argv",
    "turn_argv",
    "lab_unavailable_reason",
    "list_lab_namespaces",
    "stop_process",
    "loss_ruleset",
    "router_ruleset",
]
