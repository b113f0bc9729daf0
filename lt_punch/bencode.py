"""Bencoding (BEP 3): the serialisation of torrents and of DHT KRPC messages.

Values map to Python as: byte string ↔ ``bytes``, integer ↔ ``int``, list ↔ ``list``,
dictionary ↔ ``dict[bytes, ...]``. :func:`encode` also takes ``str`` (encoded as UTF-8),
``tuple`` and ``bytearray`` for convenience; :func:`decode` always returns the canonical types.

:func:`decode` is strict, because it parses datagrams from anyone on the Internet:

- no trailing data after the value;
- integers have no leading zeros and no ``-0`` (BEP 3: "i-0e is invalid ... i03e is invalid");
- string lengths have no leading zeros;
- dictionary keys are byte strings and appear once; unsorted keys are accepted (some
  DHT implementations emit them) but :func:`encode` always sorts;
- nesting is limited (``max_depth``) so hostile input cannot exhaust the stack.

Every bad input raises :class:`BencodeError` (a :class:`ValueError`) naming the
problem and its byte offset.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BencodeError", "decode", "encode"]

DEFAULT_MAX_DEPTH = 32


class BencodeError(ValueError):
    """The input is not valid bencoding (or a value cannot be bencoded)."""


def encode(value: Any) -> bytes:
    """Bencode ``value``.

    Raises:
        BencodeError: if ``value`` contains a type that has no bencoding
            (float, None, bool, ...) or a dictionary with non-string keys.
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > 1000:
        raise BencodeError("value nested too deeply to encode")
    if isinstance(value, bool) or value is None:
        raise BencodeError(f"cannot bencode {type(value).__name__}")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out, depth)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items: dict[bytes, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode("utf-8")
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key must be bytes or str, not {type(key).__name__}")
            if key in items:
                raise BencodeError(f"duplicate dictionary key {key!r}")
            items[key] = item
        out.append(b"d")
        # BEP 3: "Keys must be strings and appear in sorted order (sorted as raw strings)".
        for key in sorted(items):
            _encode(key, out, depth + 1)
            _encode(items[key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Decode one bencoded value that spans all of ``data``.

    Raises:
        BencodeError: on any malformed, truncated or trailing input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    if not buf:
        raise BencodeError("empty input")
    value, pos = _decode(buf, 0, max_depth)
    if pos != len(buf):
        raise BencodeError(f"trailing data at offset {pos}")
    return value


def _digits(buf: bytes, start: int, end: int, what: str) -> int:
    text = buf[start:end]
    negative = text.startswith(b"-")
    body = text[1:] if negative else text
    if not body or not body.isdigit() or not body.isascii():
        raise BencodeError(f"invalid {what} at offset {start}")
    if body.startswith(b"0") and (len(body) > 1 or negative):
        raise BencodeError(f"invalid {what} (leading zero or -0) at offset {start}")
    return int(text)


def _decode(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise BencodeError(f"truncated input at offset {pos}")
    lead = buf[pos : pos + 1]
    if lead == b"i":
        end = buf.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        return _digits(buf, pos + 1, end, "integer"), end + 1
    if lead.isdigit():
        colon = buf.find(b":", pos)
        if colon < 0:
            raise BencodeError(f"unterminated string length at offset {pos}")
        length = _digits(buf, pos, colon, "string length")
        if length < 0:
            raise BencodeError(f"negative string length at offset {pos}")
        start = colon + 1
        if start + length > len(buf):
            raise BencodeError(f"string at offset {pos} runs past the end of input")
        return buf[start : start + length], start + length
    if lead in (b"l", b"d"):
        if depth <= 0:
            raise BencodeError(f"nesting deeper than the limit at offset {pos}")
        pos += 1
        if lead == b"l":
            items: list[Any] = []
            while True:
                if pos >= len(buf):
                    raise BencodeError(f"unterminated list at offset {pos}")
                if buf[pos : pos + 1] == b"e":
                    return items, pos + 1
                item, pos = _decode(buf, pos, depth - 1)
                items.append(item)
        result: dict[bytes, Any] = {}
        while True:
            if pos >= len(buf):
                raise BencodeError(f"unterminated dictionary at offset {pos}")
            if buf[pos : pos + 1] == b"e":
                return result, pos + 1
            if not buf[pos : pos + 1].isdigit():
                raise BencodeError(f"dictionary key is not a string at offset {pos}")
            key, pos = _decode(buf, pos, depth - 1)
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key!r}")
            if buf[pos : pos + 1] in (b"e", b""):
                raise BencodeError(f"dictionary key {key[:20]!r} has no value at offset {pos}")
            value, pos = _decode(buf, pos, depth - 1)
            result[key] = value
    raise BencodeError(f"unexpected byte {lead!r} at offset {pos}")
