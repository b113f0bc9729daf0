"""Tokens, token buckets and candidate checks of the signaling server (no I/O)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lt_punch.signaling.rooms import RoomError
from lt_punch.signaling.security import (
    TokenBucket,
    candidates_of,
    check_authorization,
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


_MAC = "0" * 64
# Texts shaped like tokens reach the expiry and MAC checks; plain text the split.
_TOKENS = st.one_of(
    st.text(max_size=200),
    st.builds("v1.{}.{}".format, st.text(max_size=30), st.text(max_size=80)),
    st.builds("v1.{}.{}".format, st.integers(-(10**30), 10**30), st.just(_MAC)),
    st.builds("v1.{}.{}".format, st.text("0123456789²³¹١٢٣۴５", min_size=1, max_size=40),
              st.sampled_from([_MAC, "é" * 64, "\ud800", ""])),
)


@given(_TOKENS, st.one_of(st.just("alice"), st.text(max_size=70)))
@example("v1.².abc", "alice")  # int("²") raised ValueError: internal-error
@example("v1.1.é", "alice")  # compare_digest refused non-ASCII str: TypeError
@example("v1." + "9" * 5000 + ".ab", "alice")  # over int()'s 4300-digit limit
@example("v1.١٢٣." + _MAC, "alice")  # Arabic-Indic digits: another spelling of 123
@example("v1.1." + _MAC, "\ud800")  # a lone surrogate in the peer id
def test_any_token_text_is_refused_cleanly(text: str, peer_id: str) -> None:
    """check_token raises RoomError and nothing else, whatever the text."""
    with pytest.raises(RoomError) as info:
        check_token("s3cret", text, peer_id, now=NOW)
    assert info.value.code in ("bad-token", "token-expired")


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@given(st.one_of(
    st.none(),
    st.text(max_size=200),
    st.binary(max_size=300).map(_basic),
    st.builds("{}:{}".format, st.text(max_size=70), _TOKENS).map(
        lambda text: _basic(text.encode("utf-8", "surrogatepass"))),
))
def test_any_authorization_header_is_refused_cleanly(header: str | None) -> None:
    with pytest.raises(RoomError) as info:
        check_authorization("s3cret", header, now=NOW)
    assert info.value.code in ("auth-required", "bad-token", "token-expired")


def test_authorization_header_carries_peer_id_and_token() -> None:
    token = make_token("s3cret", "alice", ttl=60, now=NOW)
    assert check_authorization("s3cret", _basic(f"alice:{token}".encode()), now=NOW) == "alice"
    assert check_authorization("s3cret", "basic  " + _basic(f"alice:{token}".encode())[6:],
                               now=NOW) == "alice"  # the scheme is case-insensitive
    for header, code in [
        (None, "auth-required"),
        (f"Bearer {token}", "bad-token"),
        (_basic(f"bob:{token}".encode()), "bad-token"),
        (_basic(f"alice:{token}".encode()).replace("Basic", "Digest"), "bad-token"),
        (_basic(b"alice"), "bad-token"),
        (_basic(b"\xff:" + token.encode()), "bad-token"),
    ]:
        with pytest.raises(RoomError) as info:
            check_authorization("s3cret", header, now=NOW)
        assert info.value.code == code, header
        assert token not in str(info.value)
    with pytest.raises(RoomError, match="expired") as info:
        check_authorization("s3cret", _basic(f"alice:{token}".encode()), now=NOW + 60)
    assert info.value.code == "token-expired"


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
