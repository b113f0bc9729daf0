"""The HTTP layer's pure rules (lt_punch.stream): Range (RFC 9110 §14), Host names and
origins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lt_punch.stream import (
    RangeNotSatisfiable,
    byte_range,
    host_allowed,
    normal_origin,
    split_authority,
)


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 100)),
    ("bytes=90-1000", 100, (90, 100)),
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-1000", 100, (0, 100)),
    ("BYTES = 5-5", 100, (5, 6)),
    ("bytes=0-1,", 100, (0, 2)),  # §5.6.1: empty list elements are accepted
    ("bytes=007-8", 100, (7, 9)),
    ("bytes=0-1,5-6", 100, None),
    ("items=0-1", 100, None),
    ("bytes 0-1", 100, None),
    ("bytes=-5", 0, None),
])
def test_byte_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=-0", 100), ("bytes=100-", 100), ("bytes=5-2", 100), ("bytes=", 100),
    ("bytes=-", 100), ("bytes=1", 100), ("bytes=1-2-3", 100), ("bytes=٣-4", 100),
    ("bytes=0-0", 0), (f"bytes={'9' * 5000}-", 100),
])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)


@given(st.text(max_size=60), st.integers(0, 1 << 40))
def test_byte_range_never_fails_otherwise(header: str, size: int) -> None:
    try:
        got = byte_range(header, size)
    except RangeNotSatisfiable:
        return
    if got is not None:
        start, stop = got
        assert 0 <= start < stop <= size


@pytest.mark.parametrize(("value", "expected"), [
    ("Example.COM.:8080", ("example.com", 8080)),
    ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)),
    ("127.0.0.1", ("127.0.0.1", None)),
    ("a:b", None), ("[::1", None), ("[::1]x", None), (":80", None), ("a:99999", None),
    ("", None),
])
def test_split_authority(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_authority(value) == expected


def test_hosts() -> None:
    none: frozenset[str] = frozenset()
    assert all(host_allowed(n, none) for n in ("localhost", "127.0.0.1", "::1", "10.1.2.3"))
    assert not host_allowed("evil.example", none)
    assert not host_allowed("localhost.evil.example", none)
    assert host_allowed("media.lan", frozenset({"media.lan"}))
    assert host_allowed("anything", frozenset({"*"}))


@pytest.mark.parametrize(("value", "expected"), [
    ("http://Example.com", "http://example.com:80"),
    ("https://example.com", "https://example.com:443"),
    ("http://[::1]:8899", "http://[::1]:8899"),
    ("null", None), ("file://", None), ("http://a/b", None), ("http://", None),
])
def test_normal_origin(value: str, expected: str | None) -> None:
    assert normal_origin(value) == expected


def test_the_stream_command_dials_before_it_loads_the_http_server() -> None:
    """``lt-punch stream`` imports aiohttp in a thread while the peer is dialled: its
    module must not pull it in (read in a fresh process)."""
    import ast
    import subprocess
    import sys

    code = ("import sys, lt_punch.cli, lt_punch.stream_cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert {"lt_punch", "click"} <= loaded  # the probe really ran
    assert "aiohttp" not in loaded
