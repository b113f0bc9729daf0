"""The ``udp`` method across real NATs (root): a UDP punch between sockets of
lt_punch's own on two cone NATs (or an open host and a symmetric NAT) carries the
loss-tolerant stream into both libtorrents (benchmarks/loss_matrix.py has the figures
under loss)."""

from __future__ import annotations

import pytest

from lt_punch.netlab.scenario import run_pair

SIZE = 8 << 20


@pytest.mark.parametrize(("seed_kind", "leech_kind"),
                         [("port", "port"), ("full", "restricted"), ("open", "symmetric")])
def test_two_cone_nats_meet_by_a_udp_punch(nat_lab, seed_kind: str, leech_kind: str) -> None:
    lab = nat_lab({"s": seed_kind, "l": leech_kind})
    result = run_pair(lab, seed_side="s", leech_side="l", size=SIZE, methods=("udp",),
                      timeout=60)
    assert result.error is None, result.error
    assert result.sha_ok
    assert result.method == "udp"
    stats = result.leech_stats()
    assert stats is not None
    (punch,) = stats["torrents"][0]["punches"]
    assert punch["failures"] == []


def test_the_udp_stream_keeps_moving_under_loss(nat_lab) -> None:
    """10% of the packets lost on both NATs: 8 MB well within 30 s over the stream
    (TCP between the same NATs finished 20 MB within 30 s in 2 of 3 runs)."""
    lab = nat_lab({"s": "port", "l": "port"}, loss={"s": 10, "l": 10})
    result = run_pair(lab, seed_side="s", leech_side="l", size=SIZE, methods=("udp",),
                      timeout=30)
    assert result.error is None, result.error
    assert result.sha_ok
    assert result.method == "udp"
