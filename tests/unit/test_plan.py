"""Punch planning (no I/O): profiles, roles, methods, messages, retries, strategy."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lt_punch.errors import ConfigError, RemoteProtocolError
from lt_punch.nat.info import NAT_TYPES, NATInfo
from lt_punch.netlab.rules import NAT_KINDS
from lt_punch.punch import plan
from lt_punch.punch.plan import NAT_RANK, PeerProfile, PunchMessage
from lt_punch.punch.strategy import (
    MEASURED_SUCCESS,
    STRATEGY_METHODS,
    measured,
    recommend_strategy,
)

IH = "0123456789abcdef0123456789abcdef01234567"
NATS = sorted(NAT_RANK)


def _profile(peer_id: str, nat: str = "port", **kwargs: Any) -> PeerProfile:
    kwargs.setdefault("udp", ("203.0.113.1", 6881))
    kwargs.setdefault("tcp", ("203.0.113.1", 6882))
    return PeerProfile(peer_id, nat, **kwargs)


# --- PeerProfile -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile",
    [
        _profile("a"),
        _profile("b", "symmetric", tcp=None, methods=("tcp", "utp")),
        PeerProfile("c"),
        _profile("d", "open", methods=("utp",)),
        _profile("e", "symmetric", nat_summary={
            "nat_type": "symmetric", "mapping": "address-and-port-dependent",
            "filtering": "address-and-port-dependent", "allocation": "sequential",
            "port_delta": 2}),
    ],
)
def test_profile_metadata_round_trip(profile: PeerProfile) -> None:
    data = profile.to_metadata()
    assert data["agent"] == "lt_punch"
    assert PeerProfile.from_metadata(profile.peer_id, data) == profile


def test_profile_defaults_and_foreign_peers() -> None:
    peer = PeerProfile.from_metadata("x", {})
    assert peer == PeerProfile("x")
    assert not peer.is_lt_punch()
    assert _profile("y").is_lt_punch()


def test_nat_summary_from_discovery_is_what_peers_parse() -> None:
    info = NATInfo(nat_type="symmetric", mapping="endpoint-dependent", filtering="unknown",
                   allocation="random")
    summary = plan.summarize(info)
    assert summary == {"nat_type": "symmetric", "mapping": "endpoint-dependent",
                       "filtering": "unknown", "allocation": "random", "port_delta": None}
    me = _profile("a", "symmetric", nat_summary=summary)
    parsed = PeerProfile.from_metadata("a", me.to_metadata())
    assert parsed.nat_summary == summary
    # Unknown keys from a newer peer are dropped, missing ones are None.
    assert plan.parse_summary({"nat_type": "port", "hairpin": True}, "p") == {
        "nat_type": "port", "mapping": None, "filtering": None, "allocation": None,
        "port_delta": None}
    # Both ends compute the same strategy from the two summaries.
    peer = {"nat_type": "restricted", "allocation": "preserved"}
    there, back = recommend_strategy(summary, peer), recommend_strategy(peer, summary)
    assert there["methods"] == back["methods"] == ["utp-punch", "port-prediction", "relay"]


def test_profile_drops_unknown_methods() -> None:
    peer = PeerProfile.from_metadata("x", {"methods": ["quic", "tcp"]})
    assert peer.methods == ("tcp",)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ([], "metadata is not an object"),
        ({"nat": "cone"}, "unknown nat 'cone'"),
        ({"nat": None}, "unknown nat None"),
        ({"methods": "utp"}, "methods must be a list of strings"),
        ({"methods": ["utp", 1]}, "methods must be a list of strings"),
        ({"udp": "1.2.3.4:5"}, "udp: expected [ip, port]"),
        ({"udp": ["1.2.3.4"]}, "udp: expected [ip, port]"),
        ({"udp": ["1.2.3.4", 5, 6]}, "udp: expected [ip, port]"),
        ({"udp": [1234, 5]}, "udp: expected [ip, port]"),
        ({"udp": ["1.2.3.4", "5"]}, "udp: expected [ip, port]"),
        ({"udp": ["1.2.3.4", True]}, "udp: expected [ip, port]"),
        ({"tcp": ["1.2.3.4", 0]}, "tcp: port out of range: 0"),
        ({"tcp": ["1.2.3.4", 65536]}, "tcp: port out of range: 65536"),
        ({"tcp": ["::1", 5]}, "tcp: not an IPv4 address"),
        ({"tcp": ["host.example", 5]}, "tcp: not an IPv4 address"),
        ({"nat_summary": "port"}, "nat_summary is not an object"),
        ({"nat_summary": {"mapping": "sideways"}}, "nat_summary.mapping: bad value 'sideways'"),
        ({"nat_summary": {"nat_type": 3}}, "nat_summary.nat_type: bad value 3"),
        ({"nat_summary": {"port_delta": "1"}}, "nat_summary.port_delta: bad value '1'"),
        ({"nat_summary": {"port_delta": True}}, "nat_summary.port_delta: bad value True"),
        ({"nat_summary": {"port_delta": 70000}}, "nat_summary.port_delta: bad value 70000"),
    ],
)
def test_profile_bad_metadata(metadata: Any, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        PeerProfile.from_metadata("p1", metadata)
    assert fragment in str(info.value)
    assert "peer p1" in str(info.value)


# --- roles and methods --------------------------------------------------------------------


@pytest.mark.parametrize(("nat_a", "nat_b"), list(itertools.product(NATS, repeat=2)))
def test_exactly_one_initiator_both_ways(nat_a: str, nat_b: str) -> None:
    a, b = _profile("peer-a", nat_a), _profile("peer-b", nat_b)
    assert plan.is_initiator(a, b) != plan.is_initiator(b, a)
    if NAT_RANK[nat_a] != NAT_RANK[nat_b]:
        # The harder NAT initiates, whatever the ids say.
        assert plan.is_initiator(a, b) == (NAT_RANK[nat_a] > NAT_RANK[nat_b])
        a2, b2 = _profile("z", nat_a), _profile("a", nat_b)
        assert plan.is_initiator(a2, b2) == plan.is_initiator(a, b)
    else:
        assert plan.is_initiator(a, b)  # smaller id on a tie


@pytest.mark.parametrize(("nat_a", "nat_b"), list(itertools.product(NATS, repeat=2)))
def test_plan_methods_same_both_ways(nat_a: str, nat_b: str) -> None:
    a, b = _profile("a", nat_a), _profile("b", nat_b)
    assert plan.plan_methods(a, b, plan.METHODS) == plan.plan_methods(b, a, plan.METHODS)


def test_plan_methods() -> None:
    a, b = _profile("a", "port"), _profile("b", "restricted")
    # The profiles' order (plan.METHODS: TCP first), whatever the order of ``wanted``.
    assert plan.plan_methods(a, b, ("utp", "tcp")) == ["tcp", "utp"]
    assert plan.plan_methods(a, b, ("tcp",)) == ["tcp"]
    # TCP simultaneous open never crosses a symmetric NAT. Port prediction needs the
    # cone side's STUN discovery; against a port-restricted NAT it goes before uTP
    # (which a symmetric NAT's new port does not get through), the relay last.
    sym = _profile("s", "symmetric")
    assert plan.plan_methods(a, sym, ("utp", "tcp")) == ["utp"]
    assert plan.plan_methods(sym, a, plan.METHODS) == ["utp"]  # "a" ran no discovery
    mapped = _profile("a", nat_summary={"nat_type": "port"})
    assert plan.plan_methods(sym, mapped, plan.METHODS) == ["predict", "utp"]
    assert plan.plan_methods(mapped, _profile("t", "symmetric", turn=True),
                             plan.METHODS) == ["predict", "utp", "relay"]
    full = _profile("f", "full", nat_summary={"nat_type": "full"})
    assert plan.plan_methods(full, sym, plan.METHODS) == ["utp", "predict"]
    assert "exactly one symmetric" in (plan.usable("predict", sym, sym) or "")
    # No endpoint, no method.
    assert plan.plan_methods(a, _profile("n", udp=None), ("utp", "tcp")) == ["tcp"]
    assert plan.plan_methods(a, _profile("n", udp=None, tcp=None), ("utp", "tcp")) == []
    # Methods both support, in the initiator's order ("s" is the initiator).
    utp_first = _profile("s", "symmetric-firewall", methods=("utp", "tcp"))
    assert plan.is_initiator(utp_first, a) is False  # same rank, "a" < "s"
    assert plan.plan_methods(utp_first, a, ("utp", "tcp")) == ["tcp", "utp"]
    assert plan.plan_methods(_profile("0", "port", methods=("utp", "tcp")), utp_first,
                             plan.METHODS) == ["utp", "tcp"]
    assert plan.plan_methods(a, _profile("b", methods=("tcp",)), ("utp", "tcp")) == ["tcp"]


def test_plan_methods_need_both_endpoints() -> None:
    a, b = _profile("a", udp=None), _profile("b")
    assert plan.plan_methods(a, b, plan.METHODS) == plan.plan_methods(b, a, plan.METHODS)


def test_usable_reasons() -> None:
    a = _profile("a")
    assert plan.usable("utp", a, _profile("b")) is None
    assert "UDP" in (plan.usable("utp", a, _profile("b", udp=None)) or "")
    assert "TCP" in (plan.usable("tcp", a, _profile("b", tcp=None)) or "")
    assert "symmetric" in (plan.usable("tcp", _profile("s", "symmetric"), a) or "")


# --- retry schedule -----------------------------------------------------------------------


def test_retry_delay_schedule_bounded() -> None:
    delays = [plan.retry_delay(n) for n in range(1, 50)]
    assert delays[0] == 0.0
    assert delays == sorted(delays)
    assert max(delays) == plan.RETRY_DELAYS[-1] <= 10.0
    assert sum(plan.retry_delay(n) for n in range(1, 21)) <= 20 * plan.RETRY_DELAYS[-1]
    with pytest.raises(ValueError, match="1-based"):
        plan.retry_delay(0)


# --- punch messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        PunchMessage(plan.OFFER, IH, "utp", 1, "a:1234"),
        PunchMessage(plan.ANSWER, "ab" * 32, "tcp", 100, "x" * 64),
        PunchMessage(plan.FAILED, IH, "tcp", 3, "p", reason="no such torrent here"),
    ],
)
def test_punch_message_round_trip(msg: PunchMessage) -> None:
    data = msg.to_data()
    assert ("reason" in data) == (msg.reason is not None)
    assert PunchMessage.from_data(data) == msg


def test_punch_message_lowercases_infohash_and_replies() -> None:
    msg = PunchMessage.from_data(PunchMessage(plan.OFFER, IH.upper(), "utp", 1, "p").to_data())
    assert msg.infohash == IH
    failed = msg.reply(plan.FAILED, "busy")
    assert (failed.kind, failed.reason, failed.punch_id, failed.attempt) == (
        plan.FAILED, "busy", "p", 1
    )
    assert msg.reply(plan.ANSWER).reason is None


_GOOD = PunchMessage(plan.OFFER, IH, "utp", 1, "p").to_data()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"t": None}, "unknown type None"),
        ({"t": "punch-maybe"}, "unknown type"),
        ({"method": "quic"}, "unknown method 'quic'"),
        ({"method": None}, "unknown method"),
        ({"attempt": 0}, "bad attempt 0"),
        ({"attempt": 101}, "bad attempt 101"),
        ({"attempt": True}, "bad attempt True"),
        ({"attempt": "1"}, "bad attempt '1'"),
        ({"attempt": 1.0}, "bad attempt 1.0"),
        ({"infohash": IH[:-1]}, "bad infohash"),
        ({"infohash": 1}, "bad infohash"),
        ({"infohash": None}, "bad infohash"),
        ({"punch_id": ""}, "bad punch_id"),
        ({"punch_id": "x" * 65}, "bad punch_id"),
        ({"punch_id": 7}, "bad punch_id"),
        ({"reason": 7}, "bad reason"),
        ({"reason": "x" * 201}, "bad reason"),
    ],
)
def test_punch_message_bad_fields(changes: dict[str, Any], fragment: str) -> None:
    data = {**_GOOD, **changes}
    data = {k: v for k, v in data.items() if v is not None or k in ("t", "method")}
    with pytest.raises(RemoteProtocolError) as info:
        PunchMessage.from_data(data)
    assert fragment in str(info.value)


def test_punch_message_rejects_non_hex_infohash() -> None:
    with pytest.raises(RemoteProtocolError):
        PunchMessage.from_data({**_GOOD, "infohash": "z" * 40})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
_ENDPOINT = st.lists(st.sampled_from(["1.2.3.4", "::1", "x"]) | st.integers(-1, 70000),
                     max_size=3)
_PROFILE_KEYS = st.sampled_from(["nat", "udp", "tcp", "methods", "agent"]) | st.text(max_size=4)
_PROFILE_VALUES = (
    _JSON | _ENDPOINT | st.sampled_from(NATS)
    | st.lists(st.sampled_from(["utp", "tcp", "quic"]), max_size=3)
)
_MESSAGE_KEYS = st.sampled_from(["t", "infohash", "method", "attempt", "punch_id", "reason"])
_MESSAGE_VALUES = _JSON | st.sampled_from(
    [plan.OFFER, plan.ANSWER, plan.FAILED, "utp", "tcp", IH, "p"]
) | st.integers(0, 101)


@given(st.dictionaries(_PROFILE_KEYS, _PROFILE_VALUES, max_size=6) | _JSON)
def test_profile_from_random_metadata_raises_only_protocol_errors(metadata: Any) -> None:
    try:
        peer = PeerProfile.from_metadata("p", metadata)
    except RemoteProtocolError:
        return
    assert PeerProfile.from_metadata("p", peer.to_metadata()) == peer


@given(st.dictionaries(_MESSAGE_KEYS | st.text(max_size=4), _MESSAGE_VALUES, max_size=7))
def test_punch_message_from_random_data_raises_only_protocol_errors(data: Any) -> None:
    try:
        msg = PunchMessage.from_data(data)
    except RemoteProtocolError:
        return
    assert PunchMessage.from_data(msg.to_data()) == msg


# --- strategy (lt_punch.punch.strategy.recommend_strategy: pure rules) --------------------

_MIRROR = {"us": "peer", "peer": "us", "either": "either"}


@pytest.mark.parametrize(("ours", "theirs"), list(itertools.product(NAT_TYPES, repeat=2)))
def test_strategy_both_ways_round(ours: str, theirs: str) -> None:
    there, back = recommend_strategy(ours, theirs), recommend_strategy(theirs, ours)
    assert (there["nat"], there["peer_nat"]) == (ours, theirs)
    assert there["methods"] == back["methods"]
    assert there["difficulty"] == back["difficulty"]
    assert there["excluded"] == back["excluded"]
    assert there["expected_success"] == back["expected_success"]
    assert there["initiator"] == _MIRROR[back["initiator"]]
    # Ordered, from the known list, relay always last, every left-out method explained.
    assert there["methods"] == [m for m in STRATEGY_METHODS if m in there["methods"]]
    assert there["methods"][-1] == "relay"
    assert set(there["methods"]) | set(there["excluded"]) == set(STRATEGY_METHODS)


@pytest.mark.parametrize(("ours", "theirs"), list(itertools.product(NAT_TYPES, repeat=2)))
def test_strategy_agrees_with_plan(ours: str, theirs: str) -> None:
    strategy = recommend_strategy(ours, theirs)
    me, peer = _profile("a", ours), _profile("b", theirs)
    if NAT_RANK[ours] != NAT_RANK[theirs]:
        assert (strategy["initiator"] == "us") == plan.is_initiator(me, peer)
    else:
        assert strategy["initiator"] == "either"
    if "tcp-simultaneous-open" in strategy["methods"]:
        assert plan.usable("tcp", me, peer) is None
    if plan.usable("tcp", me, peer) is not None:
        assert "tcp-simultaneous-open" not in strategy["methods"]
    if "udp-stream" in strategy["methods"]:  # a NAT kind known means discovery ran
        mapped = {"nat_type": ours}, {"nat_type": theirs}
        assert plan.usable("udp", dataclasses.replace(me, nat_summary=mapped[0]),
                           dataclasses.replace(peer, nat_summary=mapped[1])) is None


@pytest.mark.parametrize(
    ("ours", "theirs", "methods", "difficulty", "initiator"),
    [
        ("open", "open", ["direct", "tcp-simultaneous-open", "utp-punch", "udp-stream", "relay"],
         "easy", "either"),
        ("port", "open", ["direct", "tcp-simultaneous-open", "utp-punch", "udp-stream", "relay"],
         "easy", "us"),
        ("port", "port", ["tcp-simultaneous-open", "utp-punch", "udp-stream", "relay"], "medium",
         "either"),
        ("restricted", "full", ["tcp-simultaneous-open", "utp-punch", "udp-stream", "relay"],
         "medium", "us"),
        ("symmetric", "restricted", ["utp-punch", "port-prediction", "relay"], "hard", "us"),
        ("full", "symmetric", ["utp-punch", "port-prediction", "relay"], "hard", "peer"),
        ("symmetric", "port", ["port-prediction", "relay"], "hard", "us"),
        ("symmetric", "unknown", ["relay"], "impossible-without-relay", "us"),
        ("symmetric", "symmetric", ["relay"], "impossible-without-relay", "either"),
        ("blocked", "port", ["relay"], "impossible-without-relay", "us"),
        ("blocked", "open", ["direct", "relay"], "easy", "us"),
        ("full", "full", ["utp-punch", "udp-stream", "relay"], "medium", "either"),
        (None, None, ["tcp-simultaneous-open", "utp-punch", "relay"], "medium", "either"),
    ],
)
def test_strategy_cases(
    ours: str | None, theirs: str | None, methods: list[str], difficulty: str, initiator: str
) -> None:
    strategy = recommend_strategy(ours, theirs)
    assert strategy["methods"] == methods
    assert strategy["difficulty"] == difficulty
    assert strategy["initiator"] == initiator


def test_strategy_rejects_unknown_nat() -> None:
    with pytest.raises(ConfigError, match="peer_nat: unknown NAT type 'cone'"):
        recommend_strategy("open", "cone")
    with pytest.raises(ConfigError, match="nat: unknown NAT type"):
        recommend_strategy("Full Cone", None)


def test_strategy_from_summaries_and_port_prediction() -> None:
    # The birthday punch predicts a symmetric NAT against a cone, whatever its allocation.
    for allocation in ("sequential", "random"):
        hard = NATInfo(nat_type="symmetric", allocation=allocation)
        strategy = recommend_strategy(hard, "port")
        assert strategy["methods"] == ["port-prediction", "relay"]
        assert strategy["difficulty"] == "hard"
        assert strategy["expected_success_by_method"]["port-prediction"] == 1.0  # the lab
    both = recommend_strategy("symmetric", "symmetric")
    assert both["excluded"]["port-prediction"].startswith("two symmetric NATs")
    assert both["expected_success_by_method"]["relay"] == 1.0
    assert recommend_strategy("port", "port")["excluded"]["port-prediction"] == (
        "no symmetric NAT to predict")
    with pytest.raises(ConfigError, match="peer_nat: unknown NAT type 'cone'"):
        recommend_strategy("open", {"nat_type": "cone"})


def test_expected_success_comes_from_the_measured_table() -> None:
    for (a, b), row in MEASURED_SUCCESS.items():
        assert a in NAT_KINDS and b in NAT_KINDS
        assert set(row) <= {"utp", "tcp", "predict", "relay"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
        strategy = recommend_strategy(a, b)
        assert strategy["expected_success"] == max(
            (v for v in strategy["expected_success_by_method"].values() if v is not None),
            default=None,
        )
    # Kinds the lab does not build are never given a number.
    assert recommend_strategy("blocked", "port")["expected_success"] is None
    assert recommend_strategy(None, None)["expected_success"] is None
    assert measured("port", "port", "utp-punch") == MEASURED_SUCCESS[("port", "port")]["utp"]
    assert measured("port", "port", "relay") is None


@pytest.mark.parametrize("pair", sorted(MEASURED_SUCCESS))
def test_strategy_rules_agree_with_the_lab(pair: tuple[str, str]) -> None:
    """A punch method the rules list worked in the lab, one they exclude did not."""
    a, b = pair
    strategy = recommend_strategy(a, b)
    if "open" in pair:
        assert strategy["methods"][0] == "direct" and strategy["expected_success"] == 1.0
        return
    for method, engine in (("utp-punch", "utp"), ("tcp-simultaneous-open", "tcp")):
        assert (method in strategy["methods"]) == (MEASURED_SUCCESS[pair][engine] > 0), method


def test_prediction_packets_carry_an_hmac_of_the_attempt_secret() -> None:
    from lt_punch.punch import predict

    secret = predict.new_secret()
    data = predict.packet(predict.PROBE, secret)
    assert predict.verify(data, secret) == predict.PROBE
    assert predict.verify(data, predict.new_secret()) is None  # another attempt's
    assert predict.verify(data[:-1], secret) is None
    tampered = bytearray(data)
    tampered[5] ^= 1  # the nonce
    assert predict.verify(bytes(tampered), secret) is None
    assert predict.verify(b"\x41\x00" + data[2:], secret) is None  # not our magic
    assert predict.packet(predict.PROBE, secret) != data  # a fresh nonce each time
