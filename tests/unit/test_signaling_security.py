"""Tokens, token buckets and candidate checks of the signaling server (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lt_punch.signaling.rooms import RoomError
from lt_punch.signaling.security import (
    TokenBucket,
    candidates_of,
    check_candidate,
    check_token,
    make_token,
)

NOW = 1_800_000_000.0


def test_token_round_trip_and_refusals() -> None:
    token = make_token("s3cret", "alice", ttl=60, now=NOW)
    check_token("s3cret", token, "alice", now=NOW + 59)
    cases = [
        (None, "alice", NOW, "auth-required"),
        (token, "bob", NOW, "bad-token"),  # made for another peer id
        (token, "alice", NOW + 60, "token-expired"),
        (token.replace("v1.", "v2."), "alice", NOW, "bad-token"),
        ("v1.x.abc", "alice", NOW, "bad-token"),
        ("garbage", "alice", NOW, "bad-token"),
        (make_token("other", "alice", 60, NOW), "alice", NOW, "bad-token"),
    ]
    for given_token, peer, now, code in cases:
        with pytest.raises(RoomError) as info:
            check_token("s3cret", given_token, peer, now=now)
        assert info.value.code == code, (given_token, peer)
    # The expiry is inside the MAC: a later expiry does not verify.
    expires = token.split(".")[1]
    forged = token.replace(expires, str(int(expires) + 3600))
    with pytest.raises(RoomError, match="not valid"):
        check_token("s3cret", forged, "alice", now=NOW)


@given(st.text(max_size=200))
def test_any_token_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(RoomError) as info:
        check_token("s3cret", text, "alice", now=NOW)
    assert info.value.code in ("bad-token", "token-expired")


def test_token_bucket_rate_and_burst() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: clock[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock[0] += 0.1  # one token back
    assert bucket.take() and not bucket.take()
    assert not bucket.full
    clock[0] += 10
    assert bucket.full and bucket.take()


@pytest.mark.parametrize(("host", "lan", "kind"), [
    ("127.0.0.1", False, "loopback"),
    ("::1", False, "loopback"),
    ("169.254.1.1", False, "link-local"),
    ("::ffff:127.0.0.1", False, "loopback"),
    ("224.0.0.1", True, "multicast"),
    ("0.0.0.0", True, "unspecified"),
    ("255.255.255.255", True, "broadcast"),
    ("example.org", True, "not an IP address"),
])
def test_bad_candidates(host: str, lan: bool, kind: str) -> None:
    with pytest.raises(RoomError, match=kind) as info:
        check_candidate(host, lan_mode=lan, where="metadata udp")
    assert info.value.code == "bad-candidate"
    assert "metadata udp" in str(info.value)


@pytest.mark.parametrize(("host", "lan"), [
    ("203.0.113.5", False), ("10.0.0.2", False), ("2001:db8::1", False),
    ("127.0.0.1", True), ("169.254.1.1", True),
])
def test_good_candidates(host: str, lan: bool) -> None:
    check_candidate(host, lan_mode=lan, where="x")


def test_candidates_found_in_lt_punch_fields_only() -> None:
    data = {"udp": ["1.2.3.4", 1], "tcp": None, "endpoint": ["5.6.7.8", 2],
            "candidates": [["9.9.9.9", 3], "junk", [4]], "other": ["127.0.0.1", 4]}
    assert candidates_of(data) == [("udp", "1.2.3.4"), ("endpoint", "5.6.7.8"),
                                   ("candidates[0]", "9.9.9.9")]
    for odd in (5, "x", {"a": 1}, None):
        assert candidates_of({"candidates": odd, "udp": odd}) == []
