"""The lab probes' parsing (lt_punch.netlab.probe)."""

from __future__ import annotations

import struct

from lt_punch.netlab.probe import query_name


def _query(name: bytes) -> bytes:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0"
    return header + labels + struct.pack("!HH", 1, 1)


def test_query_name_of_a_query() -> None:
    assert query_name(_query(b"dht.libtorrent.org")) == "dht.libtorrent.org"


def test_query_name_of_bad_packets_is_none() -> None:
    good = _query(b"dht.libtorrent.org")
    for bad in (b"", good[:12], good[:20], good[:12] + b"\xc0\x0c",
                good[:12] + b"\x03\xff\xfe\xfd\x00"):
        assert query_name(bad) is None, bad
