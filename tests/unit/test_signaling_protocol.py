"""lt_punch.signaling.protocol and .rooms: codecs, validation, room rules. No I/O."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lt_punch.errors import LocalProtocolError, RemoteProtocolError
from lt_punch.signaling import protocol as p
from lt_punch.signaling.reflector import compact_address, handle_datagram
from lt_punch.signaling.rooms import RoomError, Rooms
from lt_punch.types import InfoHash, PeerId

IH1 = InfoHash("0123456789abcdef0123456789abcdef01234567")
IH2 = InfoHash("ab" * 32)
A, B, C = PeerId("alice"), PeerId("bob"), PeerId("carol")

ALL_MESSAGES: list[p.Message] = [
    p.Register(A, {"nat": "full-cone", "ports": [1, 2]}),
    p.Register(B),
    p.Join(IH1),
    p.Join(IH2),
    p.Leave(IH1),
    p.Relay(B, IH1, {"type": "punch-offer", "endpoints": [["1.2.3.4", 5]]}),
    p.Ping(),
    p.Ping(7),
    p.Ping("abc"),
    p.Registered(A, ("203.0.113.5", 40000)),
    p.Joined(IH1, (p.PeerInfo(B, {"x": 1}), p.PeerInfo(C))),
    p.Joined(IH1),
    p.Left(IH1),
    p.PeerJoined(IH1, B, {"nat": "symmetric"}),
    p.PeerLeft(IH1, B),
    p.Relayed(A, IH1, {"type": "punch-answer"}),
    p.Pong(),
    p.Pong("x"),
    p.Error("not-in-room", "not in room", "relay"),
    p.Error("bad-json", "invalid JSON"),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: f"{m.TYPE}")
def test_round_trip(message: p.Message) -> None:
    text = message.serialize()
    obj = json.loads(text)
    assert obj["v"] == 1 and obj["type"] == message.TYPE
    assert p.parse_message(text) == message
    assert p.parse_message(text.encode(), sent_by=message.SENT_BY) == message
    assert type(message).parse(text) == message
    assert str(message).startswith(message.TYPE)


def test_relay_wire_names() -> None:
    assert json.loads(p.Relayed(A, IH1, {}).serialize())["from"] == "alice"
    assert json.loads(p.Relay(B, IH1, {}).serialize())["to"] == "bob"
    assert p.Registered(A, ("1.2.3.4", 5)).to_json()["observed"] == ["1.2.3.4", 5]


def test_sent_by_restricts_types() -> None:
    with pytest.raises(p.MessageError, match="unknown message type 'pong'") as info:
        p.parse_message('{"v":1,"type":"pong"}', sent_by="client")
    assert info.value.code == "unknown-type"
    with pytest.raises(p.MessageError, match="unknown message type 'ping'"):
        p.parse_message('{"v":1,"type":"ping"}', sent_by="server")
    # relay from a client is always Relay; a server relay is Relayed
    relay = f'{{"v":1,"type":"relay","to":"bob","room":"{IH1}","data":{{}}}}'
    assert isinstance(p.parse_message(relay, sent_by="client"), p.Relay)
    with pytest.raises(p.MessageError, match="missing field 'from'"):
        p.parse_message(relay, sent_by="server")


def test_room_is_normalised_on_parse() -> None:
    msg = p.parse_message(f'{{"v":1,"type":"join","room":"urn:btih:{IH1.upper()}"}}')
    assert msg == p.Join(IH1)


def _msg(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


BAD: list[tuple[str | bytes, str, str]] = [
    ("{", "bad-json", "invalid JSON: unexpected end of data at position 1"),
    ("", "bad-json", "invalid JSON: Input is a zero-length, empty document at position 0"),
    (b"\xff\xfe", "bad-json", "message is not valid UTF-8"),
    ('{"v":1,"type":"ping","id":NaN}', "bad-json", "NaN"),
    ("[1]", "bad-message", "message must be a JSON object, got array"),
    ('"hi"', "bad-message", "message must be a JSON object, got string"),
    ('{"type":"ping"}', "bad-version", "missing protocol version 'v'"),
    ('{"v":2,"type":"ping"}', "bad-version", "unsupported protocol version 2 (expected 1)"),
    ('{"v":true,"type":"ping"}', "bad-version", "unsupported protocol version true"),
    ('{"v":"1","type":"ping"}', "bad-version", 'unsupported protocol version "1"'),
    ('{"v":1}', "bad-message", "missing field 'type'"),
    ('{"v":1,"type":3}', "bad-message", "field 'type' must be a string, got number"),
    ('{"v":1,"type":"hello"}', "unknown-type", "unknown message type 'hello'"),
    (_msg(type="register"), "bad-message", "register: missing field 'peer_id'"),
    (
        _msg(type="register", peer_id=5, metadata={}),
        "bad-message",
        "register: field 'peer_id' must be a string, got number",
    ),
    (
        _msg(type="register", peer_id="", metadata={}),
        "bad-peer-id",
        "register: peer_id must be 1..64 characters of [A-Za-z0-9._-], got ''",
    ),
    (_msg(type="register", peer_id="a b", metadata={}), "bad-peer-id", "got 'a b'"),
    (_msg(type="register", peer_id="x" * 65, metadata={}), "bad-peer-id", "1..64"),
    (
        _msg(type="register", peer_id="a", metadata=[]),
        "bad-message",
        "register: field 'metadata' must be an object, got array",
    ),
    (
        _msg(type="register", peer_id="a", metadata={"k": "x" * 5000}),
        "too-large",
        "register: metadata is 5008 bytes serialized, limit 4096",
    ),
    (
        _msg(type="register", peer_id="a", metadata={}, extra=1),
        "bad-message",
        "register: unknown field 'extra'",
    ),
    (_msg(type="join"), "bad-message", "join: missing field 'room'"),
    (_msg(type="join", room=1), "bad-message", "join: field 'room' must be a string, got number"),
    (
        _msg(type="join", room="xyz"),
        "bad-infohash",
        "join: bad infohash 'xyz': expected 40 (v1) or 64 (v2) hex digits",
    ),
    (_msg(type="leave", room="g" * 40), "bad-infohash", "leave: bad infohash"),
    (
        _msg(type="relay", to="bob", room=IH1, data="x"),
        "bad-message",
        "relay: field 'data' must be an object, got string",
    ),
    (
        _msg(type="relay", to="bob", room=IH1, data={"k": "x" * 17000}),
        "too-large",
        "relay: data is 17008 bytes serialized, limit 16384",
    ),
    (_msg(type="relay", room=IH1, data={}), "bad-message", "relay: missing field 'to'"),
    (_msg(type="ping", id=True), "bad-message", "ping: field 'id' must be a string or an integer"),
    (_msg(type="ping", id=None), "bad-message", "got null"),
    (_msg(type="ping", id="x" * 200), "too-large", "ping: field 'id' is longer than 128"),
    (_msg(type="ping", id=2**60), "bad-message", "ping: field 'id' is out of range"),
    (_msg(type="ping", pad="x" * 70000), "too-large", "message is 70035 bytes, limit 65536"),
    (
        _msg(type="registered", peer_id="a", observed=["1.2.3.4"]),
        "bad-message",
        "registered: field 'observed' must be an array [ip, port], got array",
    ),
    (
        _msg(type="registered", peer_id="a", observed=["1.2.3.4", 70000]),
        "bad-message",
        "registered: port 70000 out of range",
    ),
    (
        _msg(type="joined", room=IH1, peers=[{"peer_id": "b"}]),
        "bad-message",
        "joined.peers[0]: missing field 'metadata'",
    ),
    (
        _msg(type="joined", room=IH1, peers=[1]),
        "bad-message",
        "joined: field 'peers[0]' must be an object, got number",
    ),
    (_msg(type="error", code="x"), "bad-message", "error: missing field 'message'"),
    (
        _msg(type="error", code="x", message="m", ref=None),
        "bad-message",
        "error: field 'ref' must be a string, got null",
    ),
]


@pytest.mark.parametrize(("text", "code", "message"), BAD)
def test_bad_input(text: str | bytes, code: str, message: str) -> None:
    with pytest.raises(p.MessageError) as info:
        p.parse_message(text)
    assert info.value.code == code
    assert info.value.code in p.ERROR_CODES
    assert message in str(info.value)
    assert isinstance(info.value, RemoteProtocolError)


def test_max_size_argument() -> None:
    with pytest.raises(p.MessageError, match="limit 10"):
        p.parse_message('{"v":1,"type":"ping"}', max_size=10)


def test_serialize_refuses_invalid_messages() -> None:
    with pytest.raises(LocalProtocolError, match="peer_id must be"):
        p.Register(PeerId("bad id")).serialize()
    with pytest.raises(LocalProtocolError, match="too-large|limit"):
        p.Relay(B, IH1, {"k": "x" * 20000}).serialize()
    with pytest.raises(LocalProtocolError):
        p.Relay(B, IH1, {"k": {1, 2}}).serialize()  # not JSON
    with pytest.raises(LocalProtocolError, match="do not survive"):
        p.Relay(B, IH1, {1: "int key"}).serialize()  # type: ignore[dict-item]


def test_parse_classmethod_checks_type() -> None:
    with pytest.raises(p.MessageError, match="expected a 'join' message, got 'leave'"):
        p.Join.parse(p.Leave(IH1).serialize())


# --- infohash ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (IH1, IH1),
        (IH1.upper(), IH1),
        (f"urn:btih:{IH1}", IH1),
        (f"URN:BTIH:{IH1.upper()}", IH1),
        (IH2, IH2),
        (f"urn:btmh:1220{IH2.upper()}", IH2),
        (f"  {IH1}  ", IH1),
    ],
)
def test_normalize_infohash(raw: str, expected: str) -> None:
    assert p.normalize_infohash(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        IH1[:-1],
        IH1 + "0",
        "g" * 40,
        f"urn:btih:{IH2}",  # v2 length under the v1 prefix
        f"urn:btmh:1220{IH1}",  # v1 length under the v2 prefix
        f"urn:btmh:1114{IH2}",  # not SHA-256
        "CIBN46EH3SFDK7WYHAMDNHS2HFK6YEWN",  # base32 v1 is not accepted
        "0x" + IH1[2:],
        None,
        42,
    ],
)
def test_normalize_infohash_rejects(raw: object) -> None:
    with pytest.raises(p.MessageError) as info:
        p.normalize_infohash(raw)
    assert info.value.code == "bad-infohash"


@given(st.text(max_size=80))
def test_normalize_infohash_never_crashes(raw: str) -> None:
    try:
        result = p.normalize_infohash(raw)
    except p.MessageError as exc:
        assert exc.code == "bad-infohash"
    else:
        assert len(result) in (40, 64) and result == result.lower()


@given(st.text(max_size=300))
def test_parse_random_text_only_raises_message_error(text: str) -> None:
    try:
        p.parse_message(text)
    except p.MessageError as exc:
        assert exc.code in p.ERROR_CODES


# --- rooms -------------------------------------------------------------------------------

OBS = ("198.51.100.1", 1234)


def _rooms_with(*peers: PeerId) -> Rooms:
    rooms = Rooms()
    for peer in peers:
        rooms.register(f"conn-{peer}", peer, {"name": peer}, OBS)
    return rooms


def test_register_reply_and_lookup() -> None:
    rooms = Rooms()
    assert rooms.register("c1", A, {}, OBS) == [(A, p.Registered(A, OBS))]
    assert rooms.peer_of("c1") == A and rooms.conn_of(A) == "c1"
    assert rooms.peer_count == 1


def test_register_twice_and_taken() -> None:
    rooms = _rooms_with(A)
    with pytest.raises(RoomError) as info:
        rooms.register("conn-alice", B, {}, OBS)
    assert info.value.code == "already-registered"
    with pytest.raises(RoomError) as info:
        rooms.register("other", A, {}, OBS)
    assert info.value.code == "peer-id-taken"
    assert rooms.conn_of(A) == "conn-alice"  # the holder keeps its id


def test_peer_id_free_again_after_disconnect() -> None:
    rooms = _rooms_with(A)
    rooms.disconnect("conn-alice")
    rooms.register("new", A, {}, OBS)
    assert rooms.conn_of(A) == "new"


@pytest.mark.parametrize(("first", "second"), [(A, B), (B, A)])
def test_join_notifies_both_ways(first: PeerId, second: PeerId) -> None:
    rooms = _rooms_with(A, B)
    assert rooms.join(first, IH1) == [(first, p.Joined(IH1, ()))]
    out = rooms.join(second, IH1)
    assert out == [
        (second, p.Joined(IH1, (p.PeerInfo(first, {"name": first}),))),
        (first, p.PeerJoined(IH1, second, {"name": second})),
    ]
    assert [m.peer_id for m in rooms.members(IH1)] == [first, second]


def test_join_again_is_idempotent() -> None:
    rooms = _rooms_with(A, B)
    rooms.join(A, IH1)
    rooms.join(B, IH1)
    assert rooms.join(A, IH1) == [(A, p.Joined(IH1, (p.PeerInfo(B, {"name": B}),)))]


def test_leave_notifies_others_and_drops_empty_room() -> None:
    rooms = _rooms_with(A, B, C)
    for peer in (A, B, C):
        rooms.join(peer, IH1)
    assert rooms.leave(B, IH1) == [
        (B, p.Left(IH1)),
        (A, p.PeerLeft(IH1, B)),
        (C, p.PeerLeft(IH1, B)),
    ]
    with pytest.raises(RoomError) as info:
        rooms.leave(B, IH1)
    assert info.value.code == "not-in-room"
    rooms.leave(A, IH1)
    assert rooms.leave(C, IH1) == [(C, p.Left(IH1))]
    assert rooms.room_count == 0


def test_disconnect_leaves_every_room() -> None:
    rooms = _rooms_with(A, B, C)
    rooms.join(A, IH1)
    rooms.join(A, IH2)
    rooms.join(B, IH1)
    rooms.join(C, IH2)
    out = rooms.disconnect("conn-alice")
    assert sorted(out, key=lambda o: o[0]) == [(B, p.PeerLeft(IH1, A)), (C, p.PeerLeft(IH2, A))]
    assert rooms.peer_of("conn-alice") is None and rooms.conn_of(A) is None
    assert rooms.disconnect("conn-alice") == []


@pytest.mark.parametrize(("sender", "target"), [(A, B), (B, A)])
def test_relay_between_room_members(sender: PeerId, target: PeerId) -> None:
    rooms = _rooms_with(A, B)
    rooms.join(A, IH1)
    rooms.join(B, IH1)
    data = {"type": "punch-offer"}
    assert rooms.relay(sender, target, IH1, data) == [(target, p.Relayed(sender, IH1, data))]


def test_relay_refusals() -> None:
    rooms = _rooms_with(A, B, C)
    rooms.join(A, IH1)
    rooms.join(B, IH1)
    rooms.join(C, IH2)
    cases = [
        (A, C, IH1, "unknown-peer"),  # C is registered but not in IH1
        (A, PeerId("nobody"), IH1, "unknown-peer"),
        (A, B, IH2, "not-in-room"),  # A is not in IH2
        (C, A, IH1, "not-in-room"),
        (PeerId("ghost"), A, IH1, "not-registered"),
    ]
    for sender, target, room, code in cases:
        with pytest.raises(RoomError) as info:
            rooms.relay(sender, target, room, {})
        assert info.value.code == code, (sender, target, room)


def test_requests_need_registration() -> None:
    rooms = Rooms()
    with pytest.raises(RoomError) as info:
        rooms.join(A, IH1)
    assert info.value.code == "not-registered"
    with pytest.raises(RoomError) as info:
        rooms.leave(A, IH1)
    assert info.value.code == "not-registered"


# --- reflector core ----------------------------------------------------------------------

NODE = b"N" * 20


def test_reflector_answers_queries() -> None:
    from lt_punch.bencode import decode, encode

    addr = ("192.0.2.7", 6881)
    for method in (b"ping", b"find_node", b"get_peers", b"announce_peer", b"vote"):
        query = encode({b"t": b"xy", b"y": b"q", b"q": method, b"a": {b"id": b"i" * 20}})
        reply = decode(handle_datagram(query, addr, NODE) or b"")
        assert reply[b"t"] == b"xy" and reply[b"y"] == b"r"
        assert reply[b"ip"] == bytes([192, 0, 2, 7]) + (6881).to_bytes(2, "big")
        assert reply[b"r"][b"id"] == NODE
        assert (b"nodes" in reply[b"r"]) == (method in (b"find_node", b"get_peers"))
        assert (b"token" in reply[b"r"]) == (method == b"get_peers")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"d1:t2:aa1:y1:re",  # a response
        b"d1:t2:aa1:y1:ee",  # an error
        b"d1:y1:q1:q4:pinge",  # no t
        b"d1:t0:1:y1:q1:q4:pinge",  # empty t
        b"d1:ti1e1:y1:q1:q4:pinge",  # t not bytes
        b"d1:t2:aa1:y1:q1:qi1ee",  # q not bytes
        b"li1ee",
        b"d1:t2:aa1:y1:q1:q4:ping1:ai1ee",  # a not a dict
        b"x" * 2000,
    ],
)
def test_reflector_ignores_garbage(data: bytes) -> None:
    assert handle_datagram(data, ("192.0.2.7", 6881), NODE) is None


def test_compact_address_v6_and_mapped() -> None:
    assert compact_address(("::ffff:10.0.0.1", 1)) == bytes([10, 0, 0, 1, 0, 1])
    assert len(compact_address(("2001:db8::1", 80))) == 18


@given(st.binary(max_size=300))
def test_reflector_fuzz(data: bytes) -> None:
    handle_datagram(data, ("192.0.2.7", 6881), NODE)


# --- no I/O in the cores -----------------------------------------------------------------


_IO_PACKAGES = ("websockets", "aiohttp", "libtorrent", "redis", "prometheus_client")
_IO_MODULES = ("asyncio", "socket", "selectors", "ssl")


def _loaded_after(imports: str) -> set[str]:
    """The modules a fresh interpreter holds after ``import <imports>``."""
    code = f"import {imports}, sys; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return set(ast.literal_eval(done.stdout))


def _top(names: set[str], banned: tuple[str, ...]) -> set[str]:
    return {n for n in names if n.split(".")[0] in banned}


def test_codecs_import_no_io_packages() -> None:
    """Read sys.modules in a fresh process: parsing a module's own import lines misses
    what its package __init__ pulls in (lt_punch.signaling loaded websockets, redis and
    prometheus_client for ``import lt_punch.signaling.protocol``)."""
    loaded = _loaded_after("lt_punch.signaling.protocol, lt_punch.nat.stun")
    assert "lt_punch.signaling.protocol" in loaded  # the probe really ran
    assert not _top(loaded, _IO_PACKAGES)


def test_lazy_packages_still_export_every_name() -> None:
    code = (
        "import lt_punch, lt_punch.signaling as s\n"
        "from lt_punch import EnhancedTorrentSession, P2PCoordinator, Config\n"
        "from lt_punch.signaling import SignalingServer, SignalingClient, whoami\n"
        "assert sorted(s.__all__) == sorted(s._LAZY), s.__all__\n"
        "for pkg in (lt_punch, s):\n"
        "    for name in pkg.__all__:\n"
        "        assert getattr(pkg, name) is not None and name in dir(pkg), name\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize(
    "module", ["protocol", "rooms", "security", "webtorrent", "admission", "retry"])
def test_signaling_cores_import_no_io(module: str) -> None:
    loaded = _loaded_after(f"lt_punch.signaling.{module}")
    assert f"lt_punch.signaling.{module}" in loaded
    assert not _top(loaded, _IO_PACKAGES + _IO_MODULES)


def test_joined_listing_is_capped_and_fits_the_server_limit() -> None:
    rooms = Rooms()
    big = {"pad": "x" * 4000}
    for i in range(p.MAX_JOINED_PEERS + 2):
        rooms.register(f"c{i}", PeerId(f"peer{i}"), big, OBS)
        out = rooms.join(PeerId(f"peer{i}"), IH1)
    reply = out[0][1]
    assert isinstance(reply, p.Joined) and len(reply.peers) == p.MAX_JOINED_PEERS
    assert reply.peers[-1].peer_id == f"peer{p.MAX_JOINED_PEERS}"  # most recent kept
    assert len(out) == p.MAX_JOINED_PEERS + 2  # but everyone is notified
    text = reply.serialize()
    assert len(text) > p.MAX_MESSAGE_SIZE
    assert p.parse_message(text, sent_by="server") == reply


def test_joined_with_too_many_peers_is_rejected() -> None:
    peers = [{"peer_id": f"p{i}", "metadata": {}} for i in range(p.MAX_JOINED_PEERS + 1)]
    with pytest.raises(p.MessageError, match="more than 200 entries"):
        p.parse_message(_msg(type="joined", room=IH1, peers=peers))


def test_integers_beyond_64_bits_are_kept_exact() -> None:
    big = 123456789012345678901234567890
    obj, _ = p.decode_frame(f'{{"v":1,"data":{{"n":{big}}}}}', max_size=1000)
    assert obj["data"]["n"] == big


def test_lone_surrogates_are_refused() -> None:
    for text in ('{"id":"\\ud800"}', '{"id":"\\ud800","n":12345678901234567890123}'):
        with pytest.raises(p.MessageError) as info:
            p.decode_frame(text, max_size=1000)
        assert info.value.code == "bad-json"
