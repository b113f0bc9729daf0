"""Port prediction across real NATs: a symmetric NAT with random ports (nftables
``masquerade fully-random``) against a port-restricted cone, which uTP and TCP punches
never connect (0 of 5 each), meets by the birthday punch and downloads through the
bridges (root)."""

from __future__ import annotations

import pytest

from lt_punch.netlab.scenario import run_pair

SIZE = 8 << 20


@pytest.mark.parametrize(("seed_kind", "leech_kind"),
                         [("port", "symmetric"), ("symmetric", "port")])
def test_port_restricted_and_symmetric_meet_by_prediction(nat_lab, seed_kind: str,
                                                          leech_kind: str) -> None:
    lab = nat_lab({"s": seed_kind, "l": leech_kind})
    result = run_pair(lab, seed_side="s", leech_side="l", size=SIZE,
                      methods=("utp", "tcp", "predict"), timeout=60, connection_timeout=5.0)
    assert result.error is None, result.error
    assert result.sha_ok
    assert result.method == "predict"
    stats = result.leech_stats()
    assert stats is not None
    (punch,) = stats["torrents"][0]["punches"]
    assert punch["failures"] == []  # prediction first: no uTP attempt lost before it
    assert punch["time_to_connect"] < 5.0
