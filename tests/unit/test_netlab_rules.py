"""The pure part of the NAT lab: names, addresses and nftables rulesets (no root needed)."""

from __future__ import annotations

import re

import pytest

from lt_punch.errors import ConfigError
from lt_punch.netlab import rules
from lt_punch.netlab.rules import (
    IFNAMSIZ,
    MAX_NETNS_NAME,
    NAT_KINDS,
    loss_ruleset,
    ns_name,
    parse_ns_name,
    plan_lab,
    router_ruleset,
)

NATTED = ["full", "restricted", "port", "symmetric"]


def _chain(ruleset: str, name: str) -> str:
    match = re.search(rf"chain {name} {{(.*?)\n\t}}", ruleset, re.S)
    assert match, f"no chain {name}"
    return match.group(1)


@pytest.mark.parametrize("kind", NATTED)
def test_every_router_drops_silently_and_guards_its_wan(kind: str) -> None:
    text = router_ruleset(kind, host_ip="10.1.0.2")
    forward = _chain(text, "forward")
    assert "policy drop;" in forward
    assert "ct state established,related accept" in forward
    assert 'iifname "lan" oifname "wan" accept' in forward
    assert 'iifname "wan" ct state new,invalid drop' in _chain(text, "input")
    # Silent: never reject (no ICMP errors, no TCP RST).
    assert "reject" not in text
    assert text.count("{") == text.count("}")


@pytest.mark.parametrize("kind", NATTED)
def test_mapping_behaviour(kind: str) -> None:
    post = _chain(router_ruleset(kind, host_ip="10.1.0.2"), "postrouting")
    if kind == "symmetric":
        assert 'oifname "wan" masquerade fully-random' in post
    else:
        assert re.search(r'oifname "wan" masquerade$', post, re.M)


def test_full_cone_dnats_mapped_ports_for_udp_and_tcp() -> None:
    text = router_ruleset("full", host_ip="10.7.0.2", mapping_timeout=33)
    assert "set mapped" in text and "timeout 33s" in text
    assert "type inet_proto . inet_service" in text
    pre = _chain(text, "prerouting")
    assert "meta l4proto { tcp, udp }" in pre
    assert "meta l4proto . th dport @mapped dnat ip to 10.7.0.2" in pre
    forward = _chain(text, "forward")
    assert "update @mapped { meta l4proto . th sport }" in forward
    assert 'iifname "wan" oifname "lan" ct status dnat accept' in forward
    # The set is refreshed before established packets are accepted (outbound refresh).
    assert forward.index("update @mapped") < forward.index("ct state established")
    assert "contacted" not in text


def test_restricted_only_lets_contacted_addresses_in() -> None:
    text = router_ruleset("restricted", host_ip="10.2.0.2")
    assert "set contacted" in text
    assert "type ipv4_addr . inet_proto . inet_service" in text
    pre = _chain(text, "prerouting")
    assert "ip saddr . meta l4proto . th dport @contacted dnat ip to 10.2.0.2" in pre
    assert "update @contacted { ip daddr . meta l4proto . th sport }" in _chain(text, "forward")
    assert "@mapped" not in text


@pytest.mark.parametrize("kind", ["port", "symmetric"])
def test_apdf_kinds_have_no_inbound_dnat(kind: str) -> None:
    text = router_ruleset(kind, host_ip="10.1.0.2")
    assert "dnat ip to" not in text  # only a NAT-PMP mapping adds one
    assert "set " not in text


def test_open_has_no_router() -> None:
    with pytest.raises(ValueError, match="no router"):
        router_ruleset("open", host_ip="203.0.113.11")


def test_loss_ruleset_drops_both_directions() -> None:
    text = loss_ruleset({"p1": 5, "p2": 0, "p3": 100})
    assert text.startswith("table bridge ltp_loss {")
    assert 'iifname "p1" ether type ip numgen random mod 100 < 5 drop' in text
    assert 'oifname "p1" ether type ip numgen random mod 100 < 5 drop' in text
    assert '"p2"' not in text
    assert 'oifname "p3" ether type ip numgen random mod 100 < 100 drop' in text


def test_plan_addresses_and_kinds() -> None:
    plan = plan_lab({"a": "port", "b": "open"}, pid=1234, rand="ab12", loss={"a": 5})
    a, b = plan.side("a"), plan.side("b")
    assert plan.server_ips == ("203.0.113.1", "203.0.113.2")
    assert (a.lan_ip, a.public_ip, a.router_lan_ip, a.loss) == (
        "10.1.0.2", "203.0.113.11", "10.1.0.1", 5)
    assert a.is_natted and not b.is_natted
    assert b.router_ns is None and b.lan_ip == b.public_ip == "203.0.113.12"
    assert plan.namespaces == (
        "ltp1234-ab12-inet", "ltp1234-ab12-srv", "ltp1234-ab12-r1", "ltp1234-ab12-h1",
        "ltp1234-ab12-h2",
    )
    with pytest.raises(KeyError):
        plan.side("c")


@pytest.mark.parametrize(
    ("sides", "loss", "message"),
    [
        ({}, None, "at least one"),
        ({"a": "cone"}, None, "unknown NAT kind"),
        ({"a": "open"}, {"b": 3}, "unknown side"),
        ({"a": "open"}, {"a": 101}, "0-100"),
        ({"server": "open"}, None, "reserved"),
    ],
)
def test_plan_rejects_bad_input(
    sides: dict[str, str], loss: dict[str, int] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_lab(sides, pid=1, rand="ab", loss=loss)


def test_names_are_unique_short_and_parse_back() -> None:
    pid = 4194304  # the largest Linux pid (pid_max limit)
    sides = {f"side-{i} with a long free name": NAT_KINDS[i % 5] for i in range(rules.MAX_SIDES)}
    plan = plan_lab(sides, pid=pid, rand="ffff")
    names = plan.namespaces
    assert len(names) == len(set(names))
    for name in names:
        assert len(name) <= MAX_NETNS_NAME, name
        assert re.fullmatch(r"[a-z0-9-]+", name), name
        parsed = parse_ns_name(name)
        assert parsed is not None and parsed[:2] == (pid, "ffff")
    ifnames = [rules.BRIDGE_IF, rules.WAN_IF, rules.LAN_IF, rules.HOST_IF, rules.SERVER_PORT_IF]
    ifnames += [side.bridge_port for side in plan.sides]
    assert len(set(ifnames)) == len(ifnames)
    assert all(len(n) < IFNAMSIZ for n in ifnames)
    # Two runs of one process differ by their random token.
    other = plan_lab(sides, pid=pid, rand="0000")
    assert not set(names) & set(other.namespaces)


def test_parse_ns_name_ignores_foreign_names() -> None:
    assert parse_ns_name(ns_name(77, "a1", "r3")) == (77, "a1", "r3")
    for foreign in ("ltp", "ltpx-1-h1", "blue", "ltp12-ab-", "myltp12-ab-h1"):
        assert parse_ns_name(foreign) is None
