"""Signaling messages: JSON text frames, validated strictly. No I/O.

Every message is a JSON object ``{"v": 1, "type": "<type>", ...fields}``. Each type is a
frozen dataclass whose ``serialize()`` output :func:`parse_message` turns back into an
equal object. Parsing checks, in this order: size, JSON, object, version, type, fields
(presence, JSON type, limits), and unknown fields (rejected: a version bump is the way to
add fields). Every failure raises :class:`MessageError`, a
:class:`~lt_punch.errors.RemoteProtocolError` carrying a machine-readable ``code``
(the ``code`` of the ``error`` reply the server sends) and a message naming the problem.

Client → server: ``register``, ``join``, ``leave``, ``relay`` (:class:`Relay`), ``ping``.
Server → client: ``registered``, ``joined``, ``left``, ``peer-joined``, ``peer-left``,
``relay`` (:class:`Relayed`: same type name, ``from`` instead of ``to``), ``pong``,
``error``. The full description is docs/signaling.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import orjson

from ..errors import LocalProtocolError, RemoteProtocolError
from ..types import Address, InfoHash, PeerId

__all__ = [
    "ERROR_CODES",
    "MAX_DATA_SIZE",
    "MAX_JOINED_PEERS",
    "MAX_MESSAGE_SIZE",
    "MAX_SERVER_MESSAGE_SIZE",
    "MAX_METADATA_SIZE",
    "PROTOCOL_VERSION",
    "REPLACED_CLOSE_CODE",
    "Error",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Message",
    "MessageError",
    "PeerInfo",
    "PeerJoined",
    "PeerLeft",
    "Ping",
    "Pong",
    "Register",
    "Registered",
    "Relay",
    "Relayed",
    "decode_frame",
    "normalize_infohash",
    "parse_message",
    "parse_object",
    "peek_type",
    "validate_peer_id",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE_SIZE = 64 * 1024
"""Largest client-to-server message, in bytes of UTF-8 JSON."""
MAX_SERVER_MESSAGE_SIZE = 1024 * 1024
"""Largest server-to-client message (a ``joined`` lists up to :data:`MAX_JOINED_PEERS`
peers with up to 4 KiB of metadata each)."""
MAX_JOINED_PEERS = 200
"""A ``joined`` lists at most this many peers (the most recent joiners)."""
MAX_METADATA_SIZE = 4 * 1024
"""Largest ``metadata`` object, serialized compactly."""
MAX_DATA_SIZE = 16 * 1024
"""Largest relay ``data`` object, serialized compactly."""
MAX_ID_LENGTH = 128
"""Largest ping ``id`` string; also the limit of ``ref``."""
REPLACED_CLOSE_CODE = 4000
"""Websocket close code (RFC 6455 section 7.4.2: 4000-4999 are for applications) of a
connection the server replaced: its peer id registered again elsewhere with its
``session_key``. A reconnecting client stops instead of fighting over the id."""
MAX_ERROR_MESSAGE_LENGTH = 1024
MAX_TOKEN_LEN = 512
"""Longest ``token``, ``resume`` or ``session_key`` string."""

ERROR_CODES: dict[str, str] = {
    "bad-json": "the frame is not valid UTF-8 JSON",
    "bad-frame": "a binary frame; only text frames are accepted",
    "bad-version": "'v' is missing or not 1",
    "bad-message": "not an object, or a field is missing, of the wrong type, or unknown",
    "unknown-type": "'type' names no client-to-server message",
    "too-large": "the message, metadata or relay data exceeds its limit",
    "bad-peer-id": "peer id is not 1..64 characters of [A-Za-z0-9._-]",
    "bad-infohash": "room is not a 40- or 64-hex-digit infohash",
    "not-registered": "the request needs a prior register",
    "already-registered": "this connection has already registered",
    "peer-id-taken": "another connection holds this peer id",
    "not-in-room": "the sender is not in that room",
    "unknown-peer": "the relay target is not registered in that room",
    "auth-required": "the server needs a token in register",
    "bad-token": "the token is malformed or not valid for this peer id",
    "token-expired": "the token's expiry time has passed",
    "bad-candidate": "an address in metadata or relay data is not usable by peers",
    "rate-limited": "too many messages; the connection closes if it goes on",
    "too-many-connections": "too many connections from this address (then closed)",
    "idle-timeout": "no message for the peer timeout (then closed)",
    "too-many-rooms": "the peer is in as many rooms as a peer may be",
    "room-full": "the room has as many peers as a room may have",
    "replaced": "the peer id registered again on a new connection (then closed)",
    "internal-error": "the server failed; details are in its log",
}
"""Every ``code`` an ``error`` message may carry, with its meaning."""

_PEER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


class MessageError(RemoteProtocolError):
    """A message broke the protocol; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def normalize_infohash(value: object) -> InfoHash:
    """Return the lower-case hex form of a v1 (40 hex) or v2 (64 hex) infohash.

    Accepts either case and the magnet-link forms ``urn:btih:<40 hex>`` (BEP 9) and
    ``urn:btmh:1220<64 hex>`` (BEP 52: multihash, 0x12 = SHA-256, 0x20 = 32 bytes).
    Base32 v1 hashes are not accepted.

    Raises:
        MessageError: code ``bad-infohash``.
    """
    if not isinstance(value, str):
        raise MessageError("bad-infohash", f"infohash must be a string, got {_jtype(value)}")
    text = value.strip()
    lowered = text.lower()
    if lowered.startswith("urn:btih:"):
        text = text[len("urn:btih:") :]
        allowed: tuple[int, ...] = (40,)
    elif lowered.startswith("urn:btmh:1220"):
        text = text[len("urn:btmh:1220") :]
        allowed = (64,)
    else:
        allowed = (40, 64)
    if len(text) not in allowed or not _HEX_RE.fullmatch(text):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise MessageError(
            "bad-infohash",
            f"bad infohash {shown!r}: expected 40 (v1) or 64 (v2) hex digits",
        )
    return InfoHash(text.lower())


def validate_peer_id(value: object, where: str = "peer_id") -> PeerId:
    """Check a peer id (1..64 characters of ``[A-Za-z0-9._-]``)."""
    if not isinstance(value, str):
        raise MessageError("bad-message", f"field {where!r} must be a string, got {_jtype(value)}")
    if not _PEER_ID_RE.fullmatch(value):
        raise MessageError(
            "bad-peer-id", f"{where} must be 1..64 characters of [A-Za-z0-9._-], got {value!r}"
        )
    return PeerId(value)


# --- helpers -------------------------------------------------------------------------------


def _jtype(value: object) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_MISSING: Any = object()


class _Fields:
    """Read and check the fields of one decoded message object."""

    def __init__(self, type_: str, obj: dict[str, Any]) -> None:
        self.type = type_
        self.obj = obj
        self.seen = {"v", "type"}

    def _get(self, name: str, optional: bool) -> Any:
        """The field's value; ``_MISSING`` for an absent optional field."""
        self.seen.add(name)
        if name not in self.obj:
            if optional:
                return _MISSING
            raise MessageError("bad-message", f"{self.type}: missing field {name!r}")
        return self.obj[name]

    def _wrong(self, name: str, expected: str, value: Any) -> MessageError:
        return MessageError(
            "bad-message",
            f"{self.type}: field {name!r} must be {expected}, got {_jtype(value)}",
        )

    def text(self, name: str, *, optional: bool = False, max_len: int = 1024) -> Any:
        value = self._get(name, optional)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        if len(value) > max_len:
            raise MessageError(
                "too-large", f"{self.type}: field {name!r} is longer than {max_len} characters"
            )
        return value

    def peer_id(self, name: str) -> PeerId:
        value = self._get(name, False)
        try:
            return validate_peer_id(value, name)
        except MessageError as exc:
            raise MessageError(exc.code, f"{self.type}: {exc}") from None

    def room(self, name: str = "room") -> InfoHash:
        value = self._get(name, False)
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        try:
            return normalize_infohash(value)
        except MessageError as exc:
            raise MessageError(exc.code, f"{self.type}: {exc}") from None

    def object(self, name: str, limit: int) -> dict[str, Any]:
        value = self._get(name, False)
        return _check_object(self.type, name, value, limit)

    def ping_id(self) -> str | int | None:
        value = self._get("id", True)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self._wrong("id", "a string or an integer", value)
        if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            raise MessageError(
                "too-large", f"{self.type}: field 'id' is longer than {MAX_ID_LENGTH} characters"
            )
        if isinstance(value, int) and not -(2**53) < value < 2**53:
            raise MessageError("bad-message", f"{self.type}: field 'id' is out of range")
        return value

    def address(self, name: str) -> Address:
        value = self._get(name, False)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or isinstance(value[1], bool)
            or not isinstance(value[1], int)
        ):
            raise self._wrong(name, "an array [ip, port]", value)
        if not 0 <= value[1] <= 65535:
            raise MessageError("bad-message", f"{self.type}: port {value[1]} out of range")
        return (value[0], value[1])

    def peers(self, name: str) -> tuple[PeerInfo, ...]:
        value = self._get(name, False)
        if not isinstance(value, list):
            raise self._wrong(name, "an array", value)
        if len(value) > MAX_JOINED_PEERS:
            raise MessageError(
                "too-large", f"{self.type}: more than {MAX_JOINED_PEERS} entries in {name!r}"
            )
        result = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._wrong(f"{name}[{i}]", "an object", item)
            sub = _Fields(f"{self.type}.{name}[{i}]", item)
            sub.seen = set()
            info = PeerInfo(sub.peer_id("peer_id"), sub.object("metadata", MAX_METADATA_SIZE))
            sub.finish()
            result.append(info)
        return tuple(result)

    def finish(self) -> None:
        extra = sorted(set(self.obj) - self.seen)
        if extra:
            name = extra[0] if len(extra[0]) <= 32 else extra[0][:29] + "..."
            raise MessageError("bad-message", f"{self.type}: unknown field {name!r}")


def _check_object(where: str, name: str, value: Any, limit: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(
            "bad-message", f"{where}: field {name!r} must be an object, got {_jtype(value)}"
        )
    size = len(_dumps(value).encode("utf-8"))
    if size > limit:
        raise MessageError(
            "too-large", f"{where}: {name} is {size} bytes serialized, limit {limit}"
        )
    return value


# --- messages ------------------------------------------------------------------------------

Sender: TypeAlias = Literal["client", "server"]


@dataclass(frozen=True)
class PeerInfo:
    """A room member as listed in ``joined`` and ``GET /rooms/{infohash}/peers``."""

    peer_id: PeerId
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "metadata": self.metadata}


_SECRET_FIELDS = frozenset({"token", "resume", "session_key"})
"""Fields that are credentials: never in ``str()`` or ``repr()`` of a message, so never
in a log line."""


class _Base:
    TYPE: ClassVar[str]
    SENT_BY: ClassVar[Sender]

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON-ready dict (``v`` and ``type`` included)."""
        return {"v": PROTOCOL_VERSION, "type": self.TYPE, **self._fields()}

    def encode(self) -> str:
        """Encode as JSON text without :meth:`serialize`'s self-check: for messages
        built only from values that were validated on the way in (the server's relays
        and notifications, a hot path)."""
        return _dumps(self.to_json())

    def serialize(self) -> str:
        """Encode as JSON text.

        Raises:
            LocalProtocolError: if the message would not pass :func:`parse_message`
                (a bad field value, or over a size limit).
        """
        try:
            text = _dumps(self.to_json())
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"{self.TYPE}: cannot encode: {exc}") from None
        try:
            parsed = parse_message(text, sent_by=self.SENT_BY)
        except MessageError as exc:
            raise LocalProtocolError(f"refusing to send an invalid message: {exc}") from None
        if parsed != self:
            raise LocalProtocolError(f"{self.TYPE}: fields do not survive encoding: {self!r}")
        return text

    @classmethod
    def parse(cls, text: str | bytes) -> Message:
        """Parse ``text``; the result must be of this class."""
        message = parse_message(text, sent_by=cls.SENT_BY)
        if not isinstance(message, cls):
            raise MessageError(
                "unknown-type", f"expected a {cls.TYPE!r} message, got {message.TYPE!r}"
            )
        return message

    def __str__(self) -> str:
        """``type field=value ...`` for logs: without ``data`` and ``metadata``, and with
        credentials (``token``, ``resume``, ``session_key``) shown as ``***``."""
        parts = " ".join(
            f"{k}={'***' if k in _SECRET_FIELDS else v}"
            for k, v in self._fields().items() if k not in ("data", "metadata")
        )
        return f"{self.TYPE} {parts}".rstrip()


# client -> server


@dataclass(frozen=True)
class Register(_Base):
    """Claim a peer id on this connection; the server replies ``registered``."""

    TYPE: ClassVar[str] = "register"
    SENT_BY: ClassVar[Sender] = "client"
    peer_id: PeerId
    metadata: dict[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    """Authentication token (``lt-punch signal token``), when the server needs one."""
    resume: str | None = field(default=None, repr=False)
    """The ``session_key`` of an earlier ``registered`` for this peer id: replaces that
    (stale) connection instead of failing with ``peer-id-taken``."""

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_id": self.peer_id, "metadata": self.metadata}
        if self.token is not None:
            out["token"] = self.token
        if self.resume is not None:
            out["resume"] = self.resume
        return out

    @classmethod
    def _from(cls, f: _Fields) -> Register:
        return cls(f.peer_id("peer_id"), f.object("metadata", MAX_METADATA_SIZE),
                   f.text("token", optional=True, max_len=MAX_TOKEN_LEN),
                   f.text("resume", optional=True, max_len=MAX_TOKEN_LEN))


@dataclass(frozen=True)
class Join(_Base):
    """Enter the room of an infohash; the server replies ``joined``."""

    TYPE: ClassVar[str] = "join"
    SENT_BY: ClassVar[Sender] = "client"
    room: InfoHash

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room}

    @classmethod
    def _from(cls, f: _Fields) -> Join:
        return cls(f.room())


@dataclass(frozen=True)
class Leave(_Base):
    """Leave a room; the server replies ``left``."""

    TYPE: ClassVar[str] = "leave"
    SENT_BY: ClassVar[Sender] = "client"
    room: InfoHash

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room}

    @classmethod
    def _from(cls, f: _Fields) -> Leave:
        return cls(f.room())


@dataclass(frozen=True)
class Relay(_Base):
    """Ask the server to pass ``data`` (opaque to it) to ``to``, a member of ``room``."""

    TYPE: ClassVar[str] = "relay"
    SENT_BY: ClassVar[Sender] = "client"
    to: PeerId
    room: InfoHash
    data: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"to": self.to, "room": self.room, "data": self.data}

    @classmethod
    def _from(cls, f: _Fields) -> Relay:
        return cls(f.peer_id("to"), f.room(), f.object("data", MAX_DATA_SIZE))


@dataclass(frozen=True)
class Ping(_Base):
    """Application-level ping; the server echoes ``id`` in ``pong``."""

    TYPE: ClassVar[str] = "ping"
    SENT_BY: ClassVar[Sender] = "client"
    id: str | int | None = None

    def _fields(self) -> dict[str, Any]:
        return {} if self.id is None else {"id": self.id}

    @classmethod
    def _from(cls, f: _Fields) -> Ping:
        return cls(f.ping_id())


# server -> client


@dataclass(frozen=True)
class Registered(_Base):
    """Registration accepted; ``observed`` is this connection's TCP source address."""

    TYPE: ClassVar[str] = "registered"
    SENT_BY: ClassVar[Sender] = "server"
    peer_id: PeerId
    observed: Address
    session_key: str | None = field(default=None, repr=False)
    """Secret of this registration: ``register`` with ``resume`` set to it replaces
    this connection (a client reconnecting before the server noticed the old one died)."""

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_id": self.peer_id,
                               "observed": [self.observed[0], self.observed[1]]}
        if self.session_key is not None:
            out["session_key"] = self.session_key
        return out

    @classmethod
    def _from(cls, f: _Fields) -> Registered:
        return cls(f.peer_id("peer_id"), f.address("observed"),
                   f.text("session_key", optional=True, max_len=MAX_TOKEN_LEN))


@dataclass(frozen=True)
class Joined(_Base):
    """Join accepted; ``peers`` are the *other* members already in the room."""

    TYPE: ClassVar[str] = "joined"
    SENT_BY: ClassVar[Sender] = "server"
    room: InfoHash
    peers: tuple[PeerInfo, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room, "peers": [p.to_json() for p in self.peers]}

    @classmethod
    def _from(cls, f: _Fields) -> Joined:
        return cls(f.room(), f.peers("peers"))


@dataclass(frozen=True)
class Left(_Base):
    """Leave accepted."""

    TYPE: ClassVar[str] = "left"
    SENT_BY: ClassVar[Sender] = "server"
    room: InfoHash

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room}

    @classmethod
    def _from(cls, f: _Fields) -> Left:
        return cls(f.room())


@dataclass(frozen=True)
class PeerJoined(_Base):
    """Another peer entered a room we are in."""

    TYPE: ClassVar[str] = "peer-joined"
    SENT_BY: ClassVar[Sender] = "server"
    room: InfoHash
    peer_id: PeerId
    metadata: dict[str, Any] = field(default_factory=dict)

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room, "peer_id": self.peer_id, "metadata": self.metadata}

    @classmethod
    def _from(cls, f: _Fields) -> PeerJoined:
        return cls(f.room(), f.peer_id("peer_id"), f.object("metadata", MAX_METADATA_SIZE))


@dataclass(frozen=True)
class PeerLeft(_Base):
    """Another peer left a room we are in (or disconnected)."""

    TYPE: ClassVar[str] = "peer-left"
    SENT_BY: ClassVar[Sender] = "server"
    room: InfoHash
    peer_id: PeerId

    def _fields(self) -> dict[str, Any]:
        return {"room": self.room, "peer_id": self.peer_id}

    @classmethod
    def _from(cls, f: _Fields) -> PeerLeft:
        return cls(f.room(), f.peer_id("peer_id"))


@dataclass(frozen=True)
class Relayed(_Base):
    """``data`` relayed from ``from_`` (``"from"`` on the wire, set by the server)."""

    TYPE: ClassVar[str] = "relay"
    SENT_BY: ClassVar[Sender] = "server"
    from_: PeerId
    room: InfoHash
    data: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"from": self.from_, "room": self.room, "data": self.data}

    @classmethod
    def _from(cls, f: _Fields) -> Relayed:
        return cls(f.peer_id("from"), f.room(), f.object("data", MAX_DATA_SIZE))


@dataclass(frozen=True)
class Pong(_Base):
    """Reply to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    SENT_BY: ClassVar[Sender] = "server"
    id: str | int | None = None

    def _fields(self) -> dict[str, Any]:
        return {} if self.id is None else {"id": self.id}

    @classmethod
    def _from(cls, f: _Fields) -> Pong:
        return cls(f.ping_id())


@dataclass(frozen=True)
class Error(_Base):
    """A request failed or a message was rejected; the connection stays open.

    ``ref`` is the ``type`` of the offending message when it could be read.
    """

    TYPE: ClassVar[str] = "error"
    SENT_BY: ClassVar[Sender] = "server"
    code: str
    message: str
    ref: str | None = None

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        return out

    @classmethod
    def _from(cls, f: _Fields) -> Error:
        return cls(
            f.text("code", max_len=64),
            f.text("message", max_len=MAX_ERROR_MESSAGE_LENGTH),
            f.text("ref", optional=True, max_len=MAX_ID_LENGTH),
        )


Message: TypeAlias = (
    Register
    | Join
    | Leave
    | Relay
    | Ping
    | Registered
    | Joined
    | Left
    | PeerJoined
    | PeerLeft
    | Relayed
    | Pong
    | Error
)

_CLIENT_TYPES: dict[str, Any] = {c.TYPE: c for c in (Register, Join, Leave, Relay, Ping)}
_SERVER_TYPES: dict[str, Any] = {
    c.TYPE: c for c in (Registered, Joined, Left, PeerJoined, PeerLeft, Relayed, Pong, Error)
}


def peek_type(text: str | bytes) -> str | None:
    """Best-effort ``type`` of a raw message, for the ``ref`` of an error reply."""
    try:
        obj = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(obj, dict):
        t = obj.get("type")
        if isinstance(t, str) and 0 < len(t) <= 32:
            return t
    return None


def parse_message(
    text: str | bytes, *, sent_by: Sender | None = None, max_size: int | None = None
) -> Message:
    """Parse and validate one message.

    Args:
        text: the frame's content (``bytes`` must be UTF-8).
        sent_by: ``"client"`` accepts only client-to-server types, ``"server"`` only
            server-to-client types; ``None`` accepts both (``relay`` is then read as
            :class:`Relayed` when it has a ``from`` field, else as :class:`Relay`).
        max_size: the size limit in bytes (``too-large`` above it); by default
            :data:`MAX_MESSAGE_SIZE` for client-to-server types and
            :data:`MAX_SERVER_MESSAGE_SIZE` for server-to-client types.

    Raises:
        MessageError: with the code and message of the first problem found.
    """
    limit = max_size
    if limit is None:
        limit = MAX_MESSAGE_SIZE if sent_by == "client" else MAX_SERVER_MESSAGE_SIZE
    obj, size = decode_frame(text, max_size=limit)
    return parse_object(obj, size, sent_by=sent_by, max_size=max_size)


def decode_frame(text: str | bytes, *, max_size: int) -> tuple[Any, int]:
    """The JSON value of a frame and its size in UTF-8 bytes (no validation beyond JSON).

    Raises:
        MessageError: ``too-large`` over ``max_size`` bytes (not decoded), ``bad-json``.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    size = len(data)
    if size > max_size:
        raise MessageError("too-large", f"message is {size} bytes, limit {max_size}")
    if _BIG_INT.search(data):
        return _decode_exact(data), size
    try:
        # orjson: RFC 8259 only (no NaN/Infinity), UTF-8 checked, nesting bounded, and
        # escaped lone surrogates refused (they could not be sent on as UTF-8); 5-10x
        # the json module's speed, which was a tenth of the server's time under load.
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError("bad-json", "message is not valid UTF-8") from None
        near = data[exc.pos:exc.pos + 16].decode("utf-8", "replace")
        raise MessageError("bad-json", f"invalid JSON: {exc.msg} at position {exc.pos}"
                           + (f" ({near!r})" if near else "")) from None
    return obj, size


_BIG_INT = re.compile(rb"[:\[,]\s*-?[0-9]{19}")
"""What may be an integer beyond 64 bits, which orjson would turn into a float (an SDP
string's long numbers follow a space, so they do not send WebTorrent messages here)."""


def _decode_exact(data: bytes) -> Any:
    """The json module, whose integers have no size limit (relay data is opaque: its
    numbers must reach the peer unchanged); the same refusals as orjson."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        _dumps(obj).encode("utf-8")  # lone surrogates: refused, as orjson refuses them
    except UnicodeDecodeError:
        raise MessageError("bad-json", "message is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise MessageError("bad-json", f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError):
        raise MessageError("bad-json", "invalid JSON: NaN/Infinity, nesting too deep or a "
                           "lone surrogate") from None
    return obj


def parse_object(
    obj: Any, size: int, *, sent_by: Sender | None = None, max_size: int | None = None
) -> Message:
    """:func:`parse_message` for a frame already decoded by :func:`decode_frame`."""
    limit = max_size
    if limit is None:
        limit = MAX_MESSAGE_SIZE if sent_by == "client" else MAX_SERVER_MESSAGE_SIZE
    if size > limit:
        raise MessageError("too-large", f"message is {size} bytes, limit {limit}")
    if not isinstance(obj, dict):
        raise MessageError("bad-message", f"message must be a JSON object, got {_jtype(obj)}")
    if "v" not in obj:
        raise MessageError("bad-version", "missing protocol version 'v'")
    version = obj["v"]
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise MessageError(
            "bad-version",
            f"unsupported protocol version {_dumps(version)[:20]} (expected {PROTOCOL_VERSION})",
        )
    if "type" not in obj:
        raise MessageError("bad-message", "missing field 'type'")
    type_ = obj["type"]
    if not isinstance(type_, str):
        raise MessageError("bad-message", f"field 'type' must be a string, got {_jtype(type_)}")
    if sent_by == "client":
        cls = _CLIENT_TYPES.get(type_)
    elif sent_by == "server":
        cls = _SERVER_TYPES.get(type_)
    elif type_ == "relay":
        cls = Relayed if "from" in obj else Relay
    else:
        cls = _CLIENT_TYPES.get(type_) or _SERVER_TYPES.get(type_)
    if cls is None:
        shown = type_ if len(type_) <= 32 else type_[:29] + "..."
        raise MessageError("unknown-type", f"unknown message type {shown!r}")
    if max_size is None and cls.SENT_BY == "client" and size > MAX_MESSAGE_SIZE:
        raise MessageError("too-large", f"message is {size} bytes, limit {MAX_MESSAGE_SIZE}")
    fields = _Fields(type_, obj)
    message: Message = cls._from(fields)
    fields.finish()
    return message


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON (RFC 8259 section 6).
    raise ValueError(f"{name} is not valid JSON")
