"""End to end across emulated NATs: two peers find each other by infohash only
(no tracker, no DHT bootstrap, no LSD) and download 20 MB through a punched hole."""

from __future__ import annotations

import pytest

from lt_punch.netlab.scenario import run_pair

SIZE = 20 << 20

CASES = [
    # (seed kind, leech kind, methods allowed, expected method)
    ("port", "port", ("utp",), "utp"),
    ("port", "port", ("tcp",), "tcp"),
    ("restricted", "port", ("utp", "tcp"), "utp"),
    ("full", "symmetric", ("utp", "tcp"), "utp"),
    ("symmetric", "full", ("utp", "tcp"), "utp"),
    ("open", "port", ("utp", "tcp"), "utp"),
]


@pytest.mark.parametrize(
    ("seed_kind", "leech_kind", "methods", "expected"),
    CASES,
    ids=[f"{a}-{b}-{'+'.join(m)}" for a, b, m, _ in CASES],
)
def test_download_through_punched_hole(nat_lab, seed_kind, leech_kind, methods, expected):
    lab = nat_lab({"s": seed_kind, "l": leech_kind})
    result = run_pair(lab, seed_side="s", leech_side="l", size=SIZE, methods=methods, timeout=60)
    assert result.error is None, result.error
    assert result.sha_ok, "downloaded data differs from the seed's"
    stats = result.leech_stats()
    assert stats is not None
    assert result.method == expected, [p["failures"] for t in stats["torrents"]
                                       for p in t["punches"]]
    # The NAT was classified as the lab built it (STUN against coturn).
    assert stats["nat"]["nat_type"] == leech_kind
    (torrent,) = stats["torrents"]
    (punch,) = torrent["punches"]
    assert punch["state"] == "connected" and punch["method"] == expected
    # The peer libtorrent connected to is the seed's real public endpoint:
    # its router's WAN address (or its own address when open).
    assert punch["endpoint"][0] == lab.host("s").public_ip
    assert torrent["progress"] == 1.0
    assert torrent["total_download"] >= SIZE


def test_a_pair_no_method_connects_fails_with_reason(nat_lab):
    """A symmetric NAT against a port-restricted one, with only uTP and TCP allowed (no
    prediction, no relay): the punch fails, reported, not hung."""
    lab = nat_lab({"s": "port", "l": "symmetric"})
    result = run_pair(lab, seed_side="s", leech_side="l", size=1 << 20, timeout=30,
                      connection_timeout=1.0)
    assert not result.ok
    assert result.error is not None and "punch failed" in result.error
    failures = [e for e in result.leech_events if e.get("event") == "punch-failed"]
    assert failures and failures[0]["reason"]
    # The last attempt (a retry) waited for its own connection: its pause + resume kick,
    # which aborts the previous attempt's dial, is not taken for its failure.
    assert failures[-1]["reason"] == "no connection within 1 s", failures


def test_two_symmetric_nats_without_a_relay_fail_at_once(nat_lab):
    """No punch fits two symmetric NATs: said at once, no attempt made."""
    lab = nat_lab({"s": "symmetric", "l": "symmetric"})
    result = run_pair(lab, seed_side="s", leech_side="l", size=1 << 20, timeout=30,
                      connection_timeout=1.0)
    assert not result.ok
    (failed,) = [e for e in result.leech_events if e.get("event") == "punch-failed"]
    assert failed["reason"] == "no punch method fits this pair of NATs", failed
