"""The sans-I/O cores of the STUN responder and the lab's NAT-PMP gateway take any bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lt_punch.nat.server import StunResponder
from lt_punch.nat.stun import MessageClass, StunMessage, binding_request
from lt_punch.netlab.natpmp import answer

ADDRESSES = {(0, 0): ("192.0.2.1", 3478), (0, 1): ("192.0.2.1", 3479),
             (1, 0): ("192.0.2.2", 3478), (1, 1): ("192.0.2.2", 3479)}
GOOD = bytes(binding_request(bytes(12), change_ip=True, change_port=True))


@settings(max_examples=400)
@given(st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)).map(
        lambda m: GOOD[: m[0]] + bytes([GOOD[m[0]] ^ m[1]]) + GOOD[m[0] + 1:]),
    st.binary(max_size=60).map(lambda tail: GOOD[:20] + tail),
))
def test_stun_responder_answers_or_drops_any_datagram(data: bytes) -> None:
    responder = StunResponder(ADDRESSES)
    result = responder.receive_datagram(data, ("198.51.100.9", 40000), (0, 0))
    stats = responder.stats
    if result is None:
        assert stats.garbage + stats.ignored + stats.unsatisfiable + stats.errors == 1
        return
    reply, slot = result
    assert slot in ADDRESSES
    message = StunMessage.parse(reply)
    assert message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR)
    if message.message_class == MessageClass.SUCCESS:
        assert message.mapped_address == ("198.51.100.9", 40000)


@settings(max_examples=400)
@given(st.binary(max_size=40))
def test_natpmp_gateway_answers_or_ignores_any_datagram(data: bytes) -> None:
    result = answer(data, "203.0.113.11", 5)
    if result is None:
        return
    reply, mapping = result
    assert reply[0] == 0 and reply[1] >= 128  # a NAT-PMP response
    assert len(reply) in (8, 12, 16)
    if mapping is not None:
        assert mapping.protocol in ("udp", "tcp") and 1 <= mapping.internal_port <= 65535
