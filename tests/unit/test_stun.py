"""The sans-I/O STUN codec: golden vectors, every error path, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lt_punch.errors import LocalProtocolError, RemoteProtocolError
from lt_punch.nat.stun import (
    MAGIC_COOKIE,
    Attribute,
    AttrType,
    ChangeRequest,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    attribute_name,
    binding_error,
    binding_request,
    binding_success,
    new_transaction_id,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 section 2.1: sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME
# padded with spaces, MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_REQUEST = _hex("""
    0001 0058 2112 a442 b7e7 a701 bc34 d686 fa87 dfae
    8022 0010 5354 554e 2074 6573 7420 636c 6965 6e74
    0024 0004 6e00 01ff
    8029 0008 932f f9b1 5126 3b36
    0006 0009 6576 746a 3a68 3676 5920 2020
    0008 0014 9aea a70c bfd8 cb56 781e f2b5 b2d3 f249 c1b5 71a2
    8028 0004 e57a 3bcf
""")

# RFC 5769 section 2.2: sample IPv4 response (XOR-MAPPED-ADDRESS 192.0.2.1:32853).
RFC5769_IPV4_RESPONSE = _hex("""
    0101 003c 2112 a442 b7e7 a701 bc34 d686 fa87 dfae
    8022 000b 7465 7374 2076 6563 746f 7220
    0020 0008 0001 a147 e112 a643
    0008 0014 2b91 f599 fd9e 90c3 8c74 89f9 2af9 ba53 f06b e7d7
    8028 0004 c07d 4c96
""")

# RFC 5769 section 2.3: sample IPv6 response.
RFC5769_IPV6_RESPONSE = _hex("""
    0101 0048 2112 a442 b7e7 a701 bc34 d686 fa87 dfae
    8022 000b 7465 7374 2076 6563 746f 7220
    0020 0014 0002 a147 0113 a9fa a5d3 f179 bc25 f4b5 bed2 b9d9
    0008 0014 a382 954e 4be6 7bf1 1784 c97c 8292 c275 bfe3 ed41
    8028 0004 c8fb 0b4c
""")

RFC5769_TID = _hex("b7e7 a701 bc34 d686 fa87 dfae")
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# An RFC 3489 Binding request exactly as pystun3 2.0.0 builds it for Test II:
# no magic cookie, 128-bit transaction id, CHANGE-REQUEST change IP + change port.
PYSTUN_CHANGE_REQUEST = _hex("""
    0001 0008 0123 4567 89ab cdef 0123 4567 89ab cdef
    0003 0004 0000 0006
""")

# An RFC 3489 Binding response as a classic server sends it.
RFC3489_RESPONSE = _hex("""
    0101 0024 0123 4567 89ab cdef 0123 4567 89ab cdef
    0001 0008 0001 d431 c633 6407
    0004 0008 0001 0d96 c000 0201
    0005 0008 0001 0d97 c000 0202
""")


@pytest.mark.parametrize("data", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_rfc5769_vectors_are_transcribed_right(data: bytes) -> None:
    # Proves the hex above is the RFC's: the FINGERPRINT (RFC 5389 section 15.5) and
    # MESSAGE-INTEGRITY (section 15.4, short-term password of RFC 5769) both verify.
    assert zlib.crc32(data[:-8]) ^ 0x5354554E == int.from_bytes(data[-4:], "big")
    mi_at = len(data) - 8 - 24
    signed = bytearray(data[:mi_at])
    signed[2:4] = struct.pack("!H", len(data) - 20 - 8)
    digest = hmac.new(RFC5769_PASSWORD, bytes(signed), hashlib.sha1).digest()
    assert data[mi_at + 4 : mi_at + 24] == digest


@pytest.mark.parametrize(
    "data",
    [
        RFC5769_REQUEST,
        RFC5769_IPV4_RESPONSE,
        RFC5769_IPV6_RESPONSE,
        PYSTUN_CHANGE_REQUEST,
        RFC3489_RESPONSE,
    ],
)
def test_golden_round_trip(data: bytes) -> None:
    message = StunMessage.parse(data)
    assert bytes(message) == data
    assert message.serialize() == data
    assert StunMessage.parse(bytes(message)) == message


def test_rfc5769_request_decoded() -> None:
    message = StunMessage.parse(RFC5769_REQUEST, require_cookie=True)
    assert message.method == Method.BINDING
    assert message.message_class == MessageClass.REQUEST
    assert message.transaction_id == RFC5769_TID
    assert not message.is_rfc3489
    assert message.get("SOFTWARE") == "STUN test client"
    assert message.get("USERNAME") == "evtj:h6vY"
    assert message.attributes[3].padding == b"   "  # RFC 5769 pads with spaces
    # PRIORITY (ICE) and MESSAGE-INTEGRITY are comprehension-required, not in our table.
    assert message.unknown_comprehension_required() == (0x0024, 0x0008)


def test_rfc5769_message_integrity() -> None:
    """The TURN client's HMAC (lt_punch.punch.turn) against RFC 5769's vectors: the
    request's and the IPv4 response's MESSAGE-INTEGRITY (short-term key: the password),
    each before a FINGERPRINT; a wrong key or a flipped byte fails; none -> None."""
    from lt_punch.punch.turn import integrity_ok, with_integrity

    assert integrity_ok(RFC5769_REQUEST, RFC5769_PASSWORD) is True
    assert integrity_ok(RFC5769_IPV4_RESPONSE, RFC5769_PASSWORD) is True
    assert integrity_ok(RFC5769_REQUEST, b"wrong") is False
    flipped = bytearray(RFC5769_REQUEST)
    flipped[30] ^= 1  # inside SOFTWARE
    assert integrity_ok(bytes(flipped), RFC5769_PASSWORD) is False
    plain = binding_request(RFC5769_TID)
    assert integrity_ok(bytes(plain), b"k") is None
    signed = with_integrity(plain, b"k")
    assert integrity_ok(signed, b"k") is True
    assert StunMessage.parse(signed).get(0x0008) is not None


def test_rfc5769_ipv4_response_decoded() -> None:
    message = StunMessage.parse(RFC5769_IPV4_RESPONSE)
    assert message.message_class == MessageClass.SUCCESS
    assert message.get("SOFTWARE") == "test vector"
    assert message.get(AttrType.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    assert message.mapped_address == ("192.0.2.1", 32853)
    assert str(message).startswith("Binding success b7e7a701 [SOFTWARE='test vector', ")
    assert "XOR-MAPPED-ADDRESS=192.0.2.1:32853" in str(message)


def test_rfc5769_ipv6_response_decoded() -> None:
    message = StunMessage.parse(RFC5769_IPV6_RESPONSE)
    assert message.mapped_address == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert "[2001:db8:1234:5678:11:2233:4455:6677]:32853" in str(message)


def test_rfc5769_ipv4_response_rebuilt_from_values() -> None:
    # Build the same message from values: the software padding is zeros instead of
    # the RFC's space, otherwise identical.
    parsed = StunMessage.parse(RFC5769_IPV4_RESPONSE)
    rebuilt = StunMessage(
        Method.BINDING,
        MessageClass.SUCCESS,
        RFC5769_TID,
        (
            Attribute(AttrType.SOFTWARE, "test vector"),
            Attribute(AttrType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853)),
            *parsed.attributes[2:],
        ),
    )
    assert rebuilt == parsed
    expected = bytearray(RFC5769_IPV4_RESPONSE)
    expected[20 + 4 + 11] = 0
    assert bytes(rebuilt) == bytes(expected)


def test_pystun_request_decoded() -> None:
    message = StunMessage.parse(PYSTUN_CHANGE_REQUEST)
    assert message.is_rfc3489
    assert message.transaction_id == _hex("0123456789abcdef0123456789abcdef")
    assert message.change_request == ChangeRequest(change_ip=True, change_port=True)
    assert message.unknown_comprehension_required() == ()
    with pytest.raises(RemoteProtocolError, match=r"^bad magic cookie 0x01234567 "):
        StunMessage.parse(PYSTUN_CHANGE_REQUEST, require_cookie=True)


def test_rfc3489_response_decoded() -> None:
    message = StunMessage.parse(RFC3489_RESPONSE)
    assert message.mapped_address == ("198.51.100.7", 54321)
    assert message.get("SOURCE-ADDRESS") == ("192.0.2.1", 3478)
    assert message.other_address == ("192.0.2.2", 3479)
    assert message.change_request == ChangeRequest()


def test_xor_and_plain_mapped_both_decoded() -> None:
    request = binding_request(new_transaction_id())
    reply = binding_success(
        request,
        ("203.0.113.9", 40000),
        response_origin=("192.0.2.1", 3478),
        other_address=("192.0.2.2", 3479),
        software="test",
    )
    parsed = StunMessage.parse(bytes(reply), require_cookie=True)
    assert parsed == reply
    assert parsed.get("XOR-MAPPED-ADDRESS") == ("203.0.113.9", 40000)
    assert parsed.get("MAPPED-ADDRESS") == ("203.0.113.9", 40000)
    assert parsed.get("RESPONSE-ORIGIN") == ("192.0.2.1", 3478)
    assert parsed.get("SOURCE-ADDRESS") == ("192.0.2.1", 3478)
    assert parsed.get("OTHER-ADDRESS") == ("192.0.2.2", 3479)
    assert parsed.get("CHANGED-ADDRESS") == ("192.0.2.2", 3479)
    # The XOR'd bytes on the wire differ from the plain ones.
    raw = bytes(reply)
    assert raw[24:28] == struct.pack("!xBH", 1, 40000 ^ (MAGIC_COOKIE >> 16))


def test_xor_mapped_prefers_xor_over_plain() -> None:
    tid = new_transaction_id()
    message = StunMessage(
        Method.BINDING,
        MessageClass.SUCCESS,
        tid,
        (
            Attribute(AttrType.MAPPED_ADDRESS, ("10.0.0.1", 1)),  # rewritten by an ALG
            Attribute(AttrType.XOR_MAPPED_ADDRESS, ("203.0.113.9", 2)),
        ),
    )
    assert StunMessage.parse(bytes(message)).mapped_address == ("203.0.113.9", 2)


@pytest.mark.parametrize("rfc3489", [False, True])
def test_xor_ipv6_round_trip_both_formats(rfc3489: bool) -> None:
    tid = new_transaction_id(rfc3489=rfc3489)
    assert len(tid) == (16 if rfc3489 else 12)
    message = StunMessage(
        Method.BINDING,
        MessageClass.SUCCESS,
        tid,
        (Attribute(AttrType.XOR_MAPPED_ADDRESS, ("2001:db8::1", 65535)),),
    )
    parsed = StunMessage.parse(bytes(message))
    assert parsed == message
    assert parsed.is_rfc3489 is rfc3489


@pytest.mark.parametrize(
    ("method", "message_class", "wire"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (0x003, MessageClass.REQUEST, 0x0003),  # TURN Allocate
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ],
)
def test_message_type_bits(method: int, message_class: MessageClass, wire: int) -> None:
    message = StunMessage(method, message_class, bytes(12))
    data = bytes(message)
    assert struct.unpack("!H", data[:2])[0] == wire
    assert StunMessage.parse(data) == message


def test_error_response_round_trip() -> None:
    request = binding_request(new_transaction_id(), change_ip=True)
    reply = binding_error(request, 420, "Unknown Attribute", unknown=(0x0006, 0x0008, 0x0024))
    parsed = StunMessage.parse(bytes(reply))
    assert parsed == reply
    assert parsed.error_code == ErrorCode(420, "Unknown Attribute")
    assert str(parsed.error_code) == "420 Unknown Attribute"
    assert parsed.get("UNKNOWN-ATTRIBUTES") == (0x0006, 0x0008, 0x0024)
    assert len(bytes(reply)) % 4 == 0  # odd count of types is padded


def test_binding_request_builder() -> None:
    request = binding_request(bytes(12), change_port=True, software="lt")
    assert request.change_request == ChangeRequest(change_ip=False, change_port=True)
    assert str(request.change_request) == "port"
    assert str(ChangeRequest()) == "none"
    assert bytes(request)[-4:] == b"\x00\x00\x00\x02"
    assert binding_request(bytes(12)).attributes == ()


def test_unknown_attributes_kept_and_skipped() -> None:
    message = StunMessage(
        Method.BINDING,
        MessageClass.SUCCESS,
        bytes(12),
        (
            Attribute(0xC001, b"\x01\x02\x03"),  # comprehension-optional
            Attribute(AttrType.XOR_MAPPED_ADDRESS, ("1.2.3.4", 5)),
            Attribute(0x7FFF, b""),  # comprehension-required, empty
        ),
    )
    parsed = StunMessage.parse(bytes(message))
    assert parsed == message
    assert parsed.mapped_address == ("1.2.3.4", 5)
    assert parsed.unknown_comprehension_required() == (0x7FFF,)
    assert attribute_name(0xC001) == "0xc001"
    assert "0xc001=010203" in str(parsed)


def test_str_of_unknown_method() -> None:
    assert str(StunMessage(0x123, MessageClass.INDICATION, bytes(12))).startswith(
        "method 0x123 indication 00000000 ["
    )


def _msg(body: bytes, *, cookie: bool = True, length: int | None = None) -> bytes:
    head = struct.pack("!HH", 0x0101, len(body) if length is None else length)
    head += struct.pack("!I", MAGIC_COOKIE) if cookie else b"\x99\x99\x99\x99"
    return head + bytes(12) + body


def _attr(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "STUN message too short: 0 bytes (header is 20)"),
        (bytes(19), "STUN message too short: 19 bytes (header is 20)"),
        (
            b"\x40\x01" + bytes(18),
            "not a STUN message: first two bits of type 0x4001 are not zero",
        ),
        (
            _msg(b"\x00" * 8, length=6),
            "STUN message length 6 is not a multiple of 4 (attributes are padded to 4 bytes)",
        ),
        (_msg(b"", length=4), "STUN length field says 4 bytes but 0 follow the header"),
        (_msg(bytes(8), length=4), "STUN length field says 4 bytes but 8 follow the header"),
        (
            _msg(struct.pack("!HH", 0x0001, 12) + bytes(8)),
            "attribute MAPPED-ADDRESS at offset 20: length 12 overruns the message (8 bytes left)",
        ),
        (
            _msg(struct.pack("!HH", 0x8022, 0x0D) + b"abcd"),
            "attribute SOFTWARE at offset 20: length 13 overruns the message (4 bytes left)",
        ),
        (
            _msg(_attr(0x0001, b"\x00\x03\x00\x01" + bytes(4))),
            "MAPPED-ADDRESS: unknown address family 0x03",
        ),
        (
            _msg(_attr(0x0020, b"\x00\x00\x00\x01" + bytes(4))),
            "XOR-MAPPED-ADDRESS: unknown address family 0x00",
        ),
        (
            _msg(_attr(0x0001, b"\x00\x01\x00\x01" + bytes(16))),
            "MAPPED-ADDRESS: IPv4 value must be 8 bytes, got 20",
        ),
        (
            _msg(_attr(0x802C, b"\x00\x02\x00\x01" + bytes(4))),
            "OTHER-ADDRESS: IPv6 value must be 20 bytes, got 8",
        ),
        (_msg(_attr(0x0005, b"\x00\x01")), "CHANGED-ADDRESS: value of 2 bytes is too short"),
        (_msg(_attr(0x8022, b"\xff\xfe")), "SOFTWARE: value is not valid UTF-8"),
        (_msg(_attr(0x0009, b"\x00\x00")), "ERROR-CODE: value of 2 bytes is too short"),
        (_msg(_attr(0x0009, b"\x00\x00\x07\x00")), "ERROR-CODE: class 7 out of range 3..6"),
        (_msg(_attr(0x0009, b"\x00\x00\x04\x64")), "ERROR-CODE: number 100 out of range 0..99"),
        (
            _msg(_attr(0x0009, b"\x00\x00\x04\x00\xc3")),
            "ERROR-CODE: value is not valid UTF-8",
        ),
        (_msg(_attr(0x0003, bytes(8))), "CHANGE-REQUEST: value must be 4 bytes, got 8"),
        (_msg(_attr(0x000A, bytes(3))), "UNKNOWN-ATTRIBUTES: length 3 is odd"),
    ],
)
def test_remote_errors_are_exact(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        StunMessage.parse(data)
    assert str(info.value) == message


def test_bad_cookie_only_when_required() -> None:
    data = _msg(b"", cookie=False)
    assert StunMessage.parse(data).is_rfc3489
    with pytest.raises(RemoteProtocolError) as info:
        StunMessage.parse(data, require_cookie=True)
    assert str(info.value) == "bad magic cookie 0x99999999 (expected 0x2112a442)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: StunMessage(Method.BINDING, MessageClass.REQUEST, bytes(11)),
            "transaction id must be 12 or 16 bytes, got 11",
        ),
        (
            lambda: StunMessage(0x1000, MessageClass.REQUEST, bytes(12)),
            "method 0x1000 does not fit in 12 bits",
        ),
        (
            lambda: StunMessage(
                Method.BINDING, MessageClass.REQUEST, struct.pack("!I", MAGIC_COOKIE) + bytes(12)
            ),
            "a 16-byte transaction id must not start with the cookie",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.MAPPED_ADDRESS, ("nope", 1)))),
            "MAPPED-ADDRESS: expected (ip, port), got ('nope', 1)",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.MAPPED_ADDRESS, ("1.2.3.4", 70000)))),
            "MAPPED-ADDRESS: expected (ip, port), got ('1.2.3.4', 70000)",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.XOR_MAPPED_ADDRESS, "1.2.3.4"))),
            "XOR-MAPPED-ADDRESS: expected (ip, port), got '1.2.3.4'",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.SOFTWARE, b"x"))),
            "SOFTWARE: expected str, got b'x'",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.ERROR_CODE, ErrorCode(200)))),
            "ERROR-CODE: expected ErrorCode with code 300..699, got ErrorCode(code=200, reason='')",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.CHANGE_REQUEST, 6))),  # type: ignore[arg-type]
            "CHANGE-REQUEST: expected ChangeRequest, got 6",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.UNKNOWN_ATTRIBUTES, (70000,)))),
            "UNKNOWN-ATTRIBUTES: expected a tuple of types, got (70000,)",
        ),
        (
            lambda: bytes(_one(Attribute(AttrType.UNKNOWN_ATTRIBUTES, [1]))),  # type: ignore[arg-type]
            "UNKNOWN-ATTRIBUTES: expected a tuple of types, got [1]",
        ),
        (
            lambda: bytes(_one(Attribute(0xC000, "text"))),
            "attribute 0xc000: unknown type needs a bytes value",
        ),
        (
            lambda: bytes(_one(Attribute(0xC000, bytes(0x10000)))),
            "attribute 0xc000: value too long",
        ),
        (
            lambda: bytes(
                StunMessage(
                    Method.BINDING,
                    MessageClass.REQUEST,
                    bytes(12),
                    (Attribute(0xC000, bytes(0x8000)), Attribute(0xC001, bytes(0x8000))),
                )
            ),
            "STUN message too long: 65544 bytes of attributes",
        ),
        (
            lambda: StunMessage.parse(RFC5769_REQUEST).get("NO-SUCH-THING"),
            "unknown attribute name 'NO-SUCH-THING'",
        ),
    ],
)
def test_local_errors_are_exact(build: object, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()  # type: ignore[operator]
    assert str(info.value) == message


def _one(attribute: Attribute) -> StunMessage:
    return StunMessage(Method.BINDING, MessageClass.REQUEST, bytes(12), (attribute,))


# --- property tests ----------------------------------------------------------------------

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_address = st.tuples(_ipv4 | _ipv6, st.integers(0, 0xFFFF))
_text = st.text(max_size=40)
_attribute = st.one_of(
    st.builds(
        Attribute,
        st.sampled_from(
            [
                AttrType.MAPPED_ADDRESS,
                AttrType.XOR_MAPPED_ADDRESS,
                AttrType.SOURCE_ADDRESS,
                AttrType.CHANGED_ADDRESS,
                AttrType.RESPONSE_ORIGIN,
                AttrType.OTHER_ADDRESS,
            ]
        ),
        _address,
    ),
    st.builds(Attribute, st.just(AttrType.SOFTWARE), _text),
    st.builds(
        Attribute,
        st.just(AttrType.ERROR_CODE),
        st.builds(ErrorCode, st.integers(300, 699), _text),
    ),
    st.builds(
        Attribute,
        st.just(AttrType.CHANGE_REQUEST),
        st.builds(ChangeRequest, st.booleans(), st.booleans()),
    ),
    st.builds(
        Attribute,
        st.just(AttrType.UNKNOWN_ATTRIBUTES),
        st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
    ),
    st.builds(
        Attribute,
        st.integers(0, 0xFFFF).filter(lambda t: t not in set(AttrType)),
        st.binary(max_size=24),
    ),
)
_message = st.builds(
    StunMessage,
    st.integers(0, 0xFFF),
    st.sampled_from(list(MessageClass)),
    st.binary(min_size=12, max_size=12)
    | st.binary(min_size=16, max_size=16).filter(
        lambda b: b[:4] != struct.pack("!I", MAGIC_COOKIE)
    ),
    st.lists(_attribute, max_size=6).map(tuple),
)


def _parse_or_protocol_error(data: bytes) -> None:
    try:
        message = StunMessage.parse(data)
    except RemoteProtocolError:
        return
    # Whatever parses re-encodes to something that parses to the same message.
    assert StunMessage.parse(bytes(message)) == message


@given(_message)
def test_valid_messages_round_trip(message: StunMessage) -> None:
    data = bytes(message)
    parsed = StunMessage.parse(data)
    assert parsed == message
    assert bytes(parsed) == data
    str(parsed)


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _parse_or_protocol_error(data)


@settings(max_examples=500)
@given(st.binary(max_size=100))
def test_random_bodies_behind_a_valid_header(body: bytes) -> None:
    # Random bytes rarely pass the header checks; here they reach the attribute parser.
    body = body + bytes(-len(body) % 4)
    _parse_or_protocol_error(
        struct.pack("!HHI", 0x0101, len(body), MAGIC_COOKIE) + bytes(12) + body
    )


@settings(max_examples=500)
@given(
    st.sampled_from(
        [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE, RFC3489_RESPONSE]
    )
    | _message.map(bytes),
    st.data(),
)
def test_mutated_messages_raise_only_protocol_errors(original: bytes, data: st.DataObject) -> None:
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "add", "length"]))
        if action == "flip" and mutated:
            i = data.draw(st.integers(0, len(mutated) - 1))
            mutated[i] = data.draw(st.integers(0, 255))
        elif action == "cut" and mutated:
            del mutated[data.draw(st.integers(0, len(mutated) - 1)) :]
        elif action == "add":
            mutated += data.draw(st.binary(min_size=1, max_size=8))
        elif action == "length" and len(mutated) >= 4:
            # Keep the header length consistent so the attribute parser gets the bytes.
            mutated[2:4] = struct.pack("!H", max(0, len(mutated) - 20) & 0xFFFF)
    _parse_or_protocol_error(bytes(mutated))


def test_codec_imports_no_io() -> None:
    code = (
        "import sys, lt_punch.nat.stun, lt_punch.nat.info\n"
        "bad = [m for m in ('asyncio', 'socket', 'stun', 'libtorrent', 'websockets')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
