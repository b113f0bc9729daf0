"""lt_punch.bencode: known vectors, strictness, round-trips and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lt_punch.bencode import BencodeError, decode, encode

# Values decode() can return: bytes, int, list, dict with bytes keys.
values = st.recursive(
    st.binary(max_size=40) | st.integers(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"i0e"),
        (-42, b"i-42e"),
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ([b"spam", 1], b"l4:spami1ee"),
        ({b"cow": b"moo", b"spam": b"eggs"}, b"d3:cow3:moo4:spam4:eggse"),
        ({b"t": b"aa", b"y": b"q"}, b"d1:t2:aa1:y1:qe"),
    ],
)
def test_known_vectors(value: object, encoded: bytes) -> None:
    assert encode(value) == encoded
    assert decode(encoded) == value


def test_encode_sorts_keys_and_accepts_str() -> None:
    assert encode({"b": 1, "a": "x"}) == b"d1:a1:x1:bi1ee"
    assert encode((1, bytearray(b"z"))) == b"li1e1:ze"


@pytest.mark.parametrize("bad", [None, 1.5, True, {1: b"x"}, object()])
def test_encode_rejects(bad: object) -> None:
    with pytest.raises(BencodeError):
        encode(bad)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"i03e", "leading zero"),
        (b"i-0e", "leading zero"),
        (b"ie", "invalid integer"),
        (b"i-e", "invalid integer"),
        (b"i12", "unterminated integer"),
        (b"03:abc", "leading zero"),
        (b"5:abc", "runs past the end"),
        (b"4spam", "unterminated string length"),
        (b"l4:spam", "unterminated list"),
        (b"d3:cowe", "has no value"),
        (b"d3:cow", "has no value"),
        (b"di1e3:mooe", "not a string"),
        (b"d1:ai1e1:ai2ee", "duplicate"),
        (b"i1ei2e", "trailing data"),
        (b"x", "unexpected byte"),
        (b"l" * 40 + b"e" * 40, "nesting deeper"),
    ],
)
def test_decode_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BencodeError, match=message):
        decode(data)


def test_unsorted_keys_are_accepted() -> None:
    assert decode(b"d1:bi1e1:ai2ee") == {b"a": 2, b"b": 1}


def test_depth_limit_is_configurable() -> None:
    assert decode(b"llee", max_depth=2) == [[]]
    with pytest.raises(BencodeError):
        decode(b"llee", max_depth=1)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(BencodeError):
        decode("i1e")  # type: ignore[arg-type]


@given(values)
def test_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


@given(st.binary(max_size=200))
def test_fuzz_never_raises_anything_but_bencode_error(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    # Whatever decodes is canonical enough to re-encode to something decodable.
    assert decode(encode(value)) == value


@given(values, st.binary(min_size=1, max_size=10))
def test_trailing_garbage_is_rejected(value: object, tail: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(encode(value) + tail)
