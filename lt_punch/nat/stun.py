"""Sans-I/O STUN codec: RFC 8489 / 5389 messages and the RFC 3489 attributes.

No sockets and no clocks here: :meth:`StunMessage.parse` turns bytes into a frozen
:class:`StunMessage`, ``bytes(message)`` turns it back. Hostile or truncated input
raises :class:`~lt_punch.errors.RemoteProtocolError` with an exact message, never
anything else; building an invalid message raises
:class:`~lt_punch.errors.LocalProtocolError`.

Two wire formats share the 20-byte header (RFC 5389 section 6)::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |0 0|     STUN Message Type     |         Message Length        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |            Magic Cookie 0x2112A442  (RFC 5389 only)           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                Transaction ID (96 bits; 128 in RFC 3489)      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

A message whose bytes 4..8 are the magic cookie is RFC 5389 and has a 12-byte
``transaction_id``; any other is RFC 3489 (pystun3 sends those) and keeps all 16
bytes as ``transaction_id``. Attributes are decoded by one table of
``(type, name, pack, unpack)`` rows, in the style of aioice; attributes not in the
table are kept as raw bytes so that ``bytes(StunMessage.parse(data)) == data`` for
well-formed input (padding bytes are kept too: RFC 5769 pads with spaces).
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Union

from ..errors import LocalProtocolError, RemoteProtocolError
from ..types import Address

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_LENGTH = 20

# RFC 5389 section 15.1: address families.
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


class Method(IntEnum):
    """STUN methods (12 bits). Unknown methods parse as plain ints."""

    BINDING = 0x001
    # TURN (RFC 8656 section 18) and its TCP allocations (RFC 6062 section 6.1).
    ALLOCATE = 0x003
    REFRESH = 0x004
    CREATE_PERMISSION = 0x008
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 5389 section 6)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class AttrType(IntEnum):
    """Attribute types this codec decodes (others are kept as bytes)."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 3489 section 11.2.4, RFC 5780 section 7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489 section 11.2.5
    CHANGED_ADDRESS = 0x0005  # RFC 3489 section 11.2.3
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    LIFETIME = 0x000D  # RFC 8656 section 18 (TURN)
    XOR_PEER_ADDRESS = 0x0012
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_TRANSPORT = 0x0019
    XOR_MAPPED_ADDRESS = 0x0020
    CONNECTION_ID = 0x002A  # RFC 6062 section 6.2
    SOFTWARE = 0x8022
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 section 7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 section 7.4


@dataclass(frozen=True)
class ErrorCode:
    """ERROR-CODE value: ``code`` is 300..699 (class * 100 + number)."""

    code: int
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.reason}".rstrip()


@dataclass(frozen=True)
class ChangeRequest:
    """CHANGE-REQUEST flags: answer from the other IP and/or the other port."""

    change_ip: bool = False
    change_port: bool = False

    def __str__(self) -> str:
        flags = [n for n, on in (("ip", self.change_ip), ("port", self.change_port)) if on]
        return "+".join(flags) or "none"


AttributeValue = Union[Address, str, ErrorCode, ChangeRequest, tuple[int, ...], bytes]  # noqa: UP007
"""Address for the *-ADDRESS attributes, str for SOFTWARE, ErrorCode, ChangeRequest,
a tuple of types for UNKNOWN-ATTRIBUTES, raw bytes for anything else."""


# --- pack / unpack: (value, xor_key) -> bytes and (bytes, xor_key) -> value ------------
# xor_key is the 16 header bytes after the length field as RFC 5389 uses them for
# XOR-MAPPED-ADDRESS: magic cookie + 96-bit transaction id (section 15.2).


def _unpack_address(data: bytes, key: bytes, name: str) -> Address:
    if len(data) < 4:
        raise RemoteProtocolError(f"{name}: value of {len(data)} bytes is too short")
    family, port = struct.unpack("!xBH", data[:4])
    if family == _FAMILY_IPV4:
        size = 4
    elif family == _FAMILY_IPV6:
        size = 16
    else:
        raise RemoteProtocolError(f"{name}: unknown address family 0x{family:02x}")
    if len(data) != 4 + size:
        family_name = "IPv4" if size == 4 else "IPv6"
        raise RemoteProtocolError(
            f"{name}: {family_name} value must be {4 + size} bytes, got {len(data)}"
        )
    raw = data[4:]
    if key:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, key, strict=False))
    return str(ipaddress.ip_address(raw)), port


def _pack_address(value: AttributeValue, key: bytes, name: str) -> bytes:
    bad = LocalProtocolError(f"{name}: expected (ip, port), got {value!r}")
    if not (isinstance(value, tuple) and len(value) == 2):
        raise bad
    host, port = value
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise bad
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    raw = ip.packed
    if key:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, key, strict=False))
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return struct.pack("!xBH", family, port) + raw


def _unpack_plain(data: bytes, key: bytes, name: str) -> AttributeValue:
    return _unpack_address(data, b"", name)


def _pack_plain(value: AttributeValue, key: bytes, name: str) -> bytes:
    return _pack_address(value, b"", name)


def _unpack_xor(data: bytes, key: bytes, name: str) -> AttributeValue:
    return _unpack_address(data, key, name)


def _pack_xor(value: AttributeValue, key: bytes, name: str) -> bytes:
    return _pack_address(value, key, name)


def _unpack_text(data: bytes, key: bytes, name: str) -> AttributeValue:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{name}: value is not valid UTF-8") from None


def _pack_text(value: AttributeValue, key: bytes, name: str) -> bytes:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{name}: expected str, got {value!r}")
    return value.encode("utf-8")


def _unpack_error_code(data: bytes, key: bytes, name: str) -> AttributeValue:
    # RFC 5389 section 15.6: 21 reserved bits, 3-bit class, 8-bit number, reason.
    if len(data) < 4:
        raise RemoteProtocolError(f"{name}: value of {len(data)} bytes is too short")
    error_class = data[2] & 0x07
    number = data[3]
    if not 3 <= error_class <= 6:
        raise RemoteProtocolError(f"{name}: class {error_class} out of range 3..6")
    if number > 99:
        raise RemoteProtocolError(f"{name}: number {number} out of range 0..99")
    reason = _unpack_text(data[4:], key, name)
    assert isinstance(reason, str)
    return ErrorCode(error_class * 100 + number, reason)


def _pack_error_code(value: AttributeValue, key: bytes, name: str) -> bytes:
    if not isinstance(value, ErrorCode) or not 300 <= value.code <= 699:
        raise LocalProtocolError(f"{name}: expected ErrorCode with code 300..699, got {value!r}")
    return struct.pack("!HBB", 0, value.code // 100, value.code % 100) + value.reason.encode()


def _unpack_change_request(data: bytes, key: bytes, name: str) -> AttributeValue:
    if len(data) != 4:
        raise RemoteProtocolError(f"{name}: value must be 4 bytes, got {len(data)}")
    (flags,) = struct.unpack("!I", data)
    return ChangeRequest(change_ip=bool(flags & 0x04), change_port=bool(flags & 0x02))


def _pack_change_request(value: AttributeValue, key: bytes, name: str) -> bytes:
    if not isinstance(value, ChangeRequest):
        raise LocalProtocolError(f"{name}: expected ChangeRequest, got {value!r}")
    return struct.pack("!I", (0x04 if value.change_ip else 0) | (0x02 if value.change_port else 0))


def _unpack_type_list(data: bytes, key: bytes, name: str) -> AttributeValue:
    if len(data) % 2:
        raise RemoteProtocolError(f"{name}: length {len(data)} is odd")
    return struct.unpack(f"!{len(data) // 2}H", data)


def _pack_type_list(value: AttributeValue, key: bytes, name: str) -> bytes:
    if not isinstance(value, tuple):
        raise LocalProtocolError(f"{name}: expected a tuple of types, got {value!r}")
    try:
        return struct.pack(f"!{len(value)}H", *value)
    except struct.error:
        raise LocalProtocolError(f"{name}: expected a tuple of types, got {value!r}") from None


_Pack = Callable[[AttributeValue, bytes, str], bytes]
_Unpack = Callable[[bytes, bytes, str], AttributeValue]

# The table that drives both directions (aioice style).
ATTRIBUTES: tuple[tuple[int, str, _Pack, _Unpack], ...] = (
    (AttrType.MAPPED_ADDRESS, "MAPPED-ADDRESS", _pack_plain, _unpack_plain),
    (AttrType.CHANGE_REQUEST, "CHANGE-REQUEST", _pack_change_request, _unpack_change_request),
    (AttrType.SOURCE_ADDRESS, "SOURCE-ADDRESS", _pack_plain, _unpack_plain),
    (AttrType.CHANGED_ADDRESS, "CHANGED-ADDRESS", _pack_plain, _unpack_plain),
    (AttrType.USERNAME, "USERNAME", _pack_text, _unpack_text),
    (AttrType.ERROR_CODE, "ERROR-CODE", _pack_error_code, _unpack_error_code),
    (AttrType.XOR_PEER_ADDRESS, "XOR-PEER-ADDRESS", _pack_xor, _unpack_xor),
    (AttrType.REALM, "REALM", _pack_text, _unpack_text),
    (AttrType.NONCE, "NONCE", _pack_text, _unpack_text),
    (AttrType.XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS", _pack_xor, _unpack_xor),
    (AttrType.UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", _pack_type_list, _unpack_type_list),
    (AttrType.XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS", _pack_xor, _unpack_xor),
    (AttrType.SOFTWARE, "SOFTWARE", _pack_text, _unpack_text),
    (AttrType.RESPONSE_ORIGIN, "RESPONSE-ORIGIN", _pack_plain, _unpack_plain),
    (AttrType.OTHER_ADDRESS, "OTHER-ADDRESS", _pack_plain, _unpack_plain),
)
_BY_TYPE = {row[0]: row for row in ATTRIBUTES}
_BY_NAME = {row[1]: row for row in ATTRIBUTES}


def attribute_name(attr_type: int) -> str:
    """``"XOR-MAPPED-ADDRESS"`` for known types, ``"0x8028"`` for others."""
    row = _BY_TYPE.get(attr_type)
    return row[1] if row else f"0x{attr_type:04x}"


def _type_of(name_or_type: str | int) -> int:
    if isinstance(name_or_type, str):
        try:
            return _BY_NAME[name_or_type][0]
        except KeyError:
            raise LocalProtocolError(f"unknown attribute name {name_or_type!r}") from None
    return int(name_or_type)


@dataclass(frozen=True)
class Attribute:
    """One attribute: its type and decoded value (raw bytes if the type is unknown).

    ``padding`` holds the padding bytes seen on the wire so that re-encoding is
    byte-exact; it does not take part in equality. RFC 5389 section 15: "the
    padding bits are ignored, and may be any value".
    """

    type: int
    value: AttributeValue
    padding: bytes = field(default=b"", compare=False, repr=False)

    @property
    def name(self) -> str:
        return attribute_name(self.type)

    @property
    def is_comprehension_required(self) -> bool:
        # RFC 5389 section 15: 0x0000-0x7FFF are comprehension-required.
        return self.type < 0x8000

    @property
    def is_known(self) -> bool:
        return self.type in _BY_TYPE

    def __str__(self) -> str:
        value = self.value
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            text = _format_address(value)
        elif isinstance(value, bytes):
            text = value.hex()
        else:
            text = repr(value) if isinstance(value, str) else str(value)
        return f"{self.name}={text}"


def _format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _xor_key(transaction_id: bytes) -> bytes:
    # RFC 5389: cookie + 96-bit id. For a 16-byte RFC 3489 id we still XOR the port
    # and IPv4 address with the fixed cookie (what servers answering classic clients
    # do) and use the id's last 12 bytes for the rest of an IPv6 address.
    return _COOKIE_BYTES + transaction_id[-12:]


def _encode_type(method: int, message_class: int) -> int:
    # RFC 5389 section 6: M11..M7 C1 M6..M4 C0 M3..M0.
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def _decode_type(message_type: int) -> tuple[int, MessageClass]:
    method = (
        (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80)
    )
    message_class = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10)
    return method, MessageClass(message_class)


def new_transaction_id(*, rfc3489: bool = False) -> bytes:
    """A random transaction id: 12 bytes (RFC 5389) or 16 bytes (RFC 3489)."""
    while True:
        tid = secrets.token_bytes(16 if rfc3489 else 12)
        # An RFC 3489 id that starts with the cookie would parse as RFC 5389.
        if not (rfc3489 and tid[:4] == _COOKIE_BYTES):
            return tid


@dataclass(frozen=True)
class StunMessage:
    """A STUN message. ``bytes(msg)`` encodes; :meth:`parse` decodes."""

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.method <= 0x0FFF:
            raise LocalProtocolError(f"method 0x{self.method:x} does not fit in 12 bits")
        if len(self.transaction_id) not in (12, 16):
            raise LocalProtocolError(
                f"transaction id must be 12 or 16 bytes, got {len(self.transaction_id)}"
            )
        if len(self.transaction_id) == 16 and self.transaction_id[:4] == _COOKIE_BYTES:
            raise LocalProtocolError("a 16-byte transaction id must not start with the cookie")

    # --- decoding --------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, *, require_cookie: bool = False) -> StunMessage:
        """Decode one STUN message (the whole datagram).

        Args:
            data: the datagram.
            require_cookie: reject RFC 3489 messages (no magic cookie).

        Raises:
            RemoteProtocolError: the bytes are not a well-formed STUN message.
        """
        data = bytes(data)
        if len(data) < HEADER_LENGTH:
            raise RemoteProtocolError(
                f"STUN message too short: {len(data)} bytes (header is {HEADER_LENGTH})"
            )
        message_type, length, cookie = struct.unpack("!HHI", data[:8])
        if message_type & 0xC000:
            raise RemoteProtocolError(
                f"not a STUN message: first two bits of type 0x{message_type:04x} are not zero"
            )
        if length % 4:
            raise RemoteProtocolError(
                f"STUN message length {length} is not a multiple of 4 "
                "(attributes are padded to 4 bytes)"
            )
        if length != len(data) - HEADER_LENGTH:
            raise RemoteProtocolError(
                f"STUN length field says {length} bytes but "
                f"{len(data) - HEADER_LENGTH} follow the header"
            )
        if cookie == MAGIC_COOKIE:
            transaction_id = data[8:20]
        elif require_cookie:
            raise RemoteProtocolError(
                f"bad magic cookie 0x{cookie:08x} (expected 0x{MAGIC_COOKIE:08x})"
            )
        else:
            transaction_id = data[4:20]  # RFC 3489: 128-bit transaction id
        method, message_class = _decode_type(message_type)
        key = _xor_key(transaction_id)

        attributes: list[Attribute] = []
        pos = HEADER_LENGTH
        while pos < len(data):
            if len(data) - pos < 4:  # unreachable while length % 4 == 0, kept as a guard
                raise RemoteProtocolError(f"truncated attribute header at offset {pos}")
            attr_type, attr_length = struct.unpack("!HH", data[pos : pos + 4])
            start = pos + 4
            padded = attr_length + (-attr_length % 4)
            left = len(data) - start
            if attr_length > left:
                raise RemoteProtocolError(
                    f"attribute {attribute_name(attr_type)} at offset {pos}: "
                    f"length {attr_length} overruns the message ({left} bytes left)"
                )
            if padded > left:  # unreachable while length % 4 == 0, kept as a guard
                raise RemoteProtocolError(
                    f"attribute {attribute_name(attr_type)} at offset {pos}: "
                    f"padding overruns the message ({left} bytes left)"
                )
            raw = data[start : start + attr_length]
            padding = data[start + attr_length : start + padded]
            row = _BY_TYPE.get(attr_type)
            value = row[3](raw, key, row[1]) if row else raw
            attributes.append(Attribute(attr_type, value, padding))
            pos = start + padded
        return cls(method, message_class, transaction_id, tuple(attributes))

    # --- encoding --------------------------------------------------------------------

    def __bytes__(self) -> bytes:
        key = _xor_key(self.transaction_id)
        body = bytearray()
        for attribute in self.attributes:
            row = _BY_TYPE.get(attribute.type)
            if row is not None:
                value = row[2](attribute.value, key, row[1])
            elif isinstance(attribute.value, bytes):
                value = attribute.value
            else:
                raise LocalProtocolError(
                    f"attribute {attribute.name}: unknown type needs a bytes value"
                )
            if len(value) > 0xFFFF:
                raise LocalProtocolError(f"attribute {attribute.name}: value too long")
            pad = -len(value) % 4
            padding = attribute.padding if len(attribute.padding) == pad else bytes(pad)
            body += struct.pack("!HH", attribute.type, len(value)) + value + padding
        if len(body) > 0xFFFF:
            raise LocalProtocolError(f"STUN message too long: {len(body)} bytes of attributes")
        header = struct.pack("!HH", _encode_type(self.method, self.message_class), len(body))
        if len(self.transaction_id) == 12:
            header += _COOKIE_BYTES
        return header + self.transaction_id + bytes(body)

    serialize = __bytes__

    # --- access ----------------------------------------------------------------------

    @property
    def is_rfc3489(self) -> bool:
        """True for a classic message without the magic cookie."""
        return len(self.transaction_id) == 16

    def get(self, name_or_type: str | int) -> AttributeValue | None:
        """The value of the first attribute of that name or type, or None."""
        attr_type = _type_of(name_or_type)
        for attribute in self.attributes:
            if attribute.type == attr_type:
                return attribute.value
        return None

    def _get_address(self, attr_type: int) -> Address | None:
        value = self.get(attr_type)
        return value if isinstance(value, tuple) and len(value) == 2 else None  # type: ignore[return-value]

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS if present, else MAPPED-ADDRESS."""
        return self._get_address(AttrType.XOR_MAPPED_ADDRESS) or self._get_address(
            AttrType.MAPPED_ADDRESS
        )

    @property
    def other_address(self) -> Address | None:
        """OTHER-ADDRESS (RFC 5780) if present, else CHANGED-ADDRESS (RFC 3489)."""
        return self._get_address(AttrType.OTHER_ADDRESS) or self._get_address(
            AttrType.CHANGED_ADDRESS
        )

    @property
    def change_request(self) -> ChangeRequest:
        value = self.get(AttrType.CHANGE_REQUEST)
        return value if isinstance(value, ChangeRequest) else ChangeRequest()

    @property
    def error_code(self) -> ErrorCode | None:
        value = self.get(AttrType.ERROR_CODE)
        return value if isinstance(value, ErrorCode) else None

    def unknown_comprehension_required(self) -> tuple[int, ...]:
        """Types of attributes we do not understand but must (RFC 5389 section 7.3)."""
        return tuple(
            a.type for a in self.attributes if a.is_comprehension_required and not a.is_known
        )

    def __str__(self) -> str:
        try:
            method = Method(self.method).name.capitalize()
        except ValueError:
            method = f"method 0x{self.method:03x}"
        kind = self.message_class.name.lower()
        attrs = ", ".join(str(a) for a in self.attributes)
        return f"{method} {kind} {self.transaction_id.hex()[:8]} [{attrs}]"


# --- builders ----------------------------------------------------------------------------


def binding_request(
    transaction_id: bytes,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    software: str | None = None,
) -> StunMessage:
    """A Binding request; the id's length (12 or 16) picks RFC 5389 or RFC 3489."""
    attributes: list[Attribute] = []
    if software is not None:
        attributes.append(Attribute(AttrType.SOFTWARE, software))
    if change_ip or change_port:
        attributes.append(Attribute(AttrType.CHANGE_REQUEST, ChangeRequest(change_ip, change_port)))
    return StunMessage(Method.BINDING, MessageClass.REQUEST, transaction_id, tuple(attributes))


def binding_success(
    request: StunMessage,
    mapped: Address,
    *,
    response_origin: Address | None = None,
    other_address: Address | None = None,
    software: str | None = None,
) -> StunMessage:
    """The success response to ``request`` reporting the ``mapped`` source address.

    Carries both MAPPED-ADDRESS (RFC 3489 clients such as pystun3 read only that)
    and XOR-MAPPED-ADDRESS (RFC 5389 section 15.2: survives ALGs that rewrite
    addresses), RESPONSE-ORIGIN/SOURCE-ADDRESS, and OTHER-ADDRESS/CHANGED-ADDRESS
    when the server has an alternate endpoint.
    """
    attributes = [
        Attribute(AttrType.XOR_MAPPED_ADDRESS, mapped),
        Attribute(AttrType.MAPPED_ADDRESS, mapped),
    ]
    if response_origin is not None:
        attributes.append(Attribute(AttrType.RESPONSE_ORIGIN, response_origin))
        attributes.append(Attribute(AttrType.SOURCE_ADDRESS, response_origin))
    if other_address is not None:
        attributes.append(Attribute(AttrType.OTHER_ADDRESS, other_address))
        attributes.append(Attribute(AttrType.CHANGED_ADDRESS, other_address))
    if software is not None:
        attributes.append(Attribute(AttrType.SOFTWARE, software))
    return StunMessage(
        request.method, MessageClass.SUCCESS, request.transaction_id, tuple(attributes)
    )


def binding_error(
    request: StunMessage,
    code: int,
    reason: str,
    *,
    unknown: tuple[int, ...] = (),
    software: str | None = None,
) -> StunMessage:
    """An error response to ``request`` (UNKNOWN-ATTRIBUTES added for 420)."""
    attributes = [Attribute(AttrType.ERROR_CODE, ErrorCode(code, reason))]
    if unknown:
        attributes.append(Attribute(AttrType.UNKNOWN_ATTRIBUTES, unknown))
    if software is not None:
        attributes.append(Attribute(AttrType.SOFTWARE, software))
    return StunMessage(
        request.method, MessageClass.ERROR, request.transaction_id, tuple(attributes)
    )


__all__ = [
    "ATTRIBUTES",
    "MAGIC_COOKIE",
    "AttrType",
    "Attribute",
    "AttributeValue",
    "ChangeRequest",
    "ErrorCode",
    "MessageClass",
    "Method",
    "StunMessage",
    "attribute_name",
    "binding_error",
    "binding_request",
    "binding_success",
    "new_transaction_id",
]
