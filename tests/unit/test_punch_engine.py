"""PunchEngine driven by a fake relay, fake dialers and a virtual clock.

No libtorrent, no sockets: two engines exchange punch messages through
:class:`FakeNetwork`; :class:`FakeDialer` decides what libtorrent would do with each
dial; the event loop's clock is virtual (:class:`VirtualTimeLoop`: time jumps to the
next timer whenever nothing is ready), so retry schedules and timeouts of many seconds
run in microseconds and their times can be asserted exactly.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import itertools
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from lt_punch.config import Config
from lt_punch.errors import SignalingError
from lt_punch.punch import engine as engine_module
from lt_punch.punch import plan
from lt_punch.punch.engine import (
    MAX_REPUNCHES,
    REPUNCH_RESPONDER_DELAY,
    DialFailed,
    PunchEngine,
)
from lt_punch.punch.plan import NAT_RANK, PeerProfile
from lt_punch.punch.record import PunchState, TransitionError
from lt_punch.torrent.events import (
    ConnectionLost,
    Event,
    PeerLeft,
    PeerPunched,
    PunchAttemptFailed,
    PunchFailed,
)
from lt_punch.types import Address

IH = "ab" * 20
CONFIG = Config(signaling_enabled=False, connection_timeout=10.0, punch_attempts=3)


# --- a virtual clock ------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Never blocks: where the loop would sleep until its next timer, time jumps there."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing ready and no timer scheduled")
        self.loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# --- fakes ----------------------------------------------------------------------------


class FakeNetwork:
    """Relays punch messages between engines (on the next loop turn), or loses them."""

    def __init__(self) -> None:
        self.engines: dict[str, PunchEngine] = {}
        self.sent: list[tuple[float, str, str, dict[str, Any]]] = []
        self.drop: Callable[[str, dict[str, Any]], bool] = lambda to, data: False
        self.fail: Callable[[str, dict[str, Any]], bool] = lambda to, data: False

    def relay_for(self, me: str) -> Any:
        network = self

        class _Relay:
            async def relay(self, to: str, room: str, data: dict[str, Any]) -> None:
                if network.fail(to, data):
                    raise SignalingError("server gone")
                network.sent.append((asyncio.get_running_loop().time(), me, to, data))
                target = network.engines.get(to)
                if target is not None and not network.drop(to, data):
                    asyncio.get_running_loop().call_soon(target.receive, me, room, dict(data))

        return _Relay()

    def offers(self, sender: str | None = None) -> list[tuple[float, str, dict[str, Any]]]:
        return [(t, frm, d) for t, frm, _, d in self.sent
                if d["t"] == plan.OFFER and (sender is None or frm == sender)]


@dataclass
class FakeWatch:
    endpoint: Address
    outcome: str | Exception
    immediate: bool = False
    cancelled: bool = False

    async def wait(self) -> Address:
        if self.outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.endpoint

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeSocket:
    secret: str
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDialer:
    """``outcome(kind, method, endpoint)``: "connect", "hang" or a DialFailed."""

    outcome: Callable[[str, str, Address], str | Exception] = lambda *a: "connect"
    is_ready: asyncio.Event | None = None
    opened: list[Address] = field(default_factory=list)
    dials: list[tuple[str, Address]] = field(default_factory=list)
    expected: list[Address] = field(default_factory=list)
    closed: list[Address] = field(default_factory=list)

    async def ready(self, infohash: str) -> None:
        if self.is_ready is not None:
            await self.is_ready.wait()

    def open_nat(self, endpoint: Address) -> None:
        self.opened.append(endpoint)

    def expect(self, infohash: str, endpoint: Address, *, any_port: bool) -> FakeWatch:
        self.expected.append(endpoint)
        return FakeWatch(endpoint, self.outcome("expect", "utp", endpoint))

    async def dial(self, infohash: str, method: str, endpoint: Address) -> FakeWatch:
        self.dials.append((method, endpoint))
        return FakeWatch(endpoint, self.outcome("dial", method, endpoint), immediate=True)

    def disconnect(self, infohash: str, endpoint: Address) -> None:
        self.closed.append(endpoint)

    probe: Address | None = None
    """What ``predict_easy`` answers with (None: the probe socket's address, 203.0.113.x)."""
    predicted: list[tuple[str, Any]] = field(default_factory=list)

    async def predict_hard(self, infohash: str, secret: str, easy: Address,
                           within: float) -> FakeWatch:
        self.predicted.append(("hard", (secret, easy)))
        return FakeWatch(("127.0.0.1", 41001), self.outcome("predict", "predict", easy))

    async def predict_easy(self, infohash: str, secret: str, hard_ip: str,
                           within: float) -> tuple[Address, FakeWatch]:
        self.predicted.append(("easy", (secret, hard_ip)))
        return (self.probe or ("198.51.100.2", 50123),
                FakeWatch(("127.0.0.1", 41002), self.outcome("predict", "predict", ("", 0))))

    udp_mapping: Address = ("198.51.100.250", 50200)
    """What ``udp_socket`` maps a new socket to."""
    punched: list[tuple[Address, bool]] = field(default_factory=list)
    """``udp_punch`` calls: (the peer's mapping, carry_out)."""
    sockets: list[FakeSocket] = field(default_factory=list)

    async def udp_socket(self, secret: str) -> tuple[Address, FakeSocket]:
        self.sockets.append(FakeSocket(secret))
        return self.udp_mapping, self.sockets[-1]

    def udp_punch(self, infohash: str, sock: Any, peer: Address, within: float, *,
                  carry_out: bool) -> FakeWatch:
        self.punched.append((peer, carry_out))
        return FakeWatch(("127.0.0.1", 41003), self.outcome("udp", "udp", peer))

    relay: Address | Exception | None = None
    """What ``open_relay`` gives: our relayed address, or the DialFailed it raises
    (None: no TURN server here)."""
    permitted: list[tuple[str, ...]] = field(default_factory=list)

    async def open_relay(self, infohash: str, peer_ips: tuple[str, ...]
                         ) -> tuple[Address, FakeWatch]:
        if self.relay is None:
            raise DialFailed("no TURN server configured")
        if isinstance(self.relay, Exception):
            raise self.relay
        self.permitted.append(peer_ips)
        return self.relay, FakeWatch(("127.0.0.1", 40999),
                                     self.outcome("relay", "relay", self.relay))


def profile(peer_id: str, nat: str, n: int) -> PeerProfile:
    return PeerProfile(peer_id, nat, udp=(f"198.51.100.{n}", 6881), tcp=(f"198.51.100.{n}", 40000))


@dataclass
class Side:
    me: PeerProfile
    engine: PunchEngine
    dialer: FakeDialer
    events: list[Event]

    def failed(self) -> list[PunchFailed]:
        return [e for e in self.events if isinstance(e, PunchFailed)]

    def record(self, peer_id: str) -> Any:
        return self.engine.records[IH][peer_id]


def side(network: FakeNetwork, me: PeerProfile, dialer: FakeDialer | None = None,
         config: Config = CONFIG) -> Side:
    events: list[Event] = []
    dialer = dialer or FakeDialer()
    engine = PunchEngine(config, lambda: me, network.relay_for(me.peer_id), dialer,
                         events.append)
    engine.track(IH, {})
    network.engines[me.peer_id] = engine
    return Side(me, engine, dialer, events)


def meet(*sides: Side) -> None:
    """Every side meets every other in the room (as the signaling server tells them)."""
    for s in sides:
        for other in sides:
            if other is not s:
                s.engine.peer_joined(IH, other.me)


async def settle(*sides: Side, peer_ids: tuple[str, ...], within: float = 300.0) -> None:
    """Wait (virtual time) until every record is connected or failed."""
    async with asyncio.timeout(within):
        for s, pid in zip(sides, peer_ids, strict=True):
            await s.engine.wait_for(lambda s=s, pid=pid: s.engine.records[IH].get(pid)
                                    and s.record(pid).state in (PunchState.CONNECTED,
                                                                PunchState.FAILED))


async def close(*sides: Side) -> None:
    for s in sides:
        await s.engine.close()


# --- roles ----------------------------------------------------------------------------

NATS = sorted(NAT_RANK)


@pytest.mark.parametrize(("nat_a", "nat_b"), list(itertools.product(NATS, NATS)))
def test_roles_and_outcome_for_every_nat_pair(nat_a: str, nat_b: str) -> None:
    """Exactly the side plan.is_initiator names sends offers; both ends connect with the
    first method the plan lists, or the initiator fails once saying no method fits."""
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", nat_a, 1))
        b = side(net, profile("peer-b", nat_b, 2))
        assert a.engine.peer_joined(IH, b.me) and b.engine.peer_joined(IH, a.me)
        a_starts = plan.is_initiator(a.me, b.me)
        init, resp = (a, b) if a_starts else (b, a)
        methods = plan.plan_methods(init.me, resp.me, CONFIG.methods)
        assert init.record(resp.me.peer_id).role == "initiator"
        assert resp.record(init.me.peer_id).role == "responder"
        if not methods:
            await settle(init, peer_ids=(resp.me.peer_id,))
            assert [e.reason for e in init.failed()] == ["no punch method fits this pair "
                                                         "of NATs"]
            assert net.offers() == []
            assert resp.record(init.me.peer_id).state == PunchState.PENDING
        else:
            await settle(init, resp, peer_ids=(resp.me.peer_id, init.me.peer_id))
            assert {frm for _, frm, _ in net.offers()} == {init.me.peer_id}
            for s, other in ((init, resp), (resp, init)):
                punched = [e for e in s.events if isinstance(e, PeerPunched)]
                assert [(e.peer_id, e.method) for e in punched] == [(other.me.peer_id,
                                                                     methods[0])]
                assert s.failed() == []
            if methods[0] == "utp":
                # The responder opened its NAT towards the initiator; only the
                # initiator dialled (two uTP connects kill each other).
                assert resp.dialer.opened == [init.me.udp] and resp.dialer.dials == []
                assert init.dialer.dials == [("utp", resp.me.udp)]
        await close(a, b)

    run(main())


# --- retries and failures ---------------------------------------------------------------


def test_retry_schedule_follows_plan_retry_delay() -> None:
    """Every dial fails at once: offers go out per attempt and method, attempt n after
    plan.retry_delay(n); then one punch-failed with the last reason."""
    async def main() -> None:
        net = FakeNetwork()
        fail = DialFailed("connection refused")
        a = side(net, profile("peer-a", "port", 1), FakeDialer(lambda *x: fail))
        b = side(net, profile("peer-b", "port", 2))
        meet(a, b)
        init = a if plan.is_initiator(a.me, b.me) else b
        other = b if init is a else a
        start = asyncio.get_running_loop().time()
        await settle(init, peer_ids=(other.me.peer_id,))
        offers = net.offers(init.me.peer_id)
        assert [(d["attempt"], d["method"]) for _, _, d in offers] == [
            (n, m) for n in (1, 2, 3) for m in ("tcp", "utp")]
        firsts = [t - start for t, _, d in offers if d["method"] == "tcp"]
        expected, total = [], 0.0
        for n in (1, 2, 3):
            total += plan.retry_delay(n)
            expected.append(total)
        assert firsts == pytest.approx(expected, abs=1e-6)
        if init is a:
            assert [e.reason for e in a.failed()] == ["libtorrent: connection refused"]
            attempts = [e for e in a.events if isinstance(e, PunchAttemptFailed)]
            assert len(attempts) == 6
        await close(a, b)

    run(main())


def test_a_handshake_that_does_not_come_gives_way_after_handshake_wait() -> None:
    """A dial that never connects: each attempt with another after it waits
    HANDSHAKE_WAIT (a lost uTP SYN-ACK is never recovered: more waiting is wasted),
    the very last one the whole connection_timeout."""
    async def main() -> None:
        net = FakeNetwork()
        hang = FakeDialer(lambda *x: "hang")
        a = side(net, profile("peer-a", "port", 1), hang)
        b = side(net, profile("peer-b", "port", 2), FakeDialer(lambda *x: "hang"))
        meet(a, b)
        init, other = (a, b) if plan.is_initiator(a.me, b.me) else (b, a)
        start = asyncio.get_running_loop().time()
        await settle(init, peer_ids=(other.me.peer_id,))
        wait = engine_module.HANDSHAKE_WAIT
        reasons = [(f["method"], f["reason"]) for f in init.record(other.me.peer_id).failures]
        first, second = CONFIG.methods[:2]
        assert reasons == [(m, f"no connection within {wait:g} s")
                           for _ in (1, 2) for m in (first, second)] + [
            (first, f"no connection within {wait:g} s"), (second, "no connection within 10 s")]
        took = asyncio.get_running_loop().time() - start
        assert took == pytest.approx(
            5 * wait + 10 + plan.retry_delay(2) + plan.retry_delay(3), abs=1e-6)
        await close(a, b)

    run(main())


def _failing_pair(setup: Callable[[FakeNetwork, FakeDialer], None],
                  config: Config = CONFIG) -> tuple[Side, Side, FakeNetwork]:
    """peer-a (symmetric: always the initiator) and peer-b (port)."""
    net = FakeNetwork()
    dialer = FakeDialer()
    setup(net, dialer)
    a = side(net, profile("peer-a", "symmetric", 1), dialer, config)
    b = side(net, profile("peer-b", "port", 2), config=config)
    return a, b, net


@pytest.mark.parametrize(("setup", "reason"), [
    (lambda net, d: setattr(net, "drop", lambda to, data: data["t"] == plan.OFFER),
     "no punch-answer from peer"),
    (lambda net, d: setattr(net, "fail", lambda to, data: True), "signaling: server gone"),
    (lambda net, d: setattr(d, "outcome", lambda *x: "hang"), "no connection within 10 s"),
    (lambda net, d: setattr(d, "outcome", lambda *x: DialFailed("timed out")),
     "libtorrent: timed out"),
    (lambda net, d: setattr(d, "is_ready", asyncio.Event()),
     "torrent not ready for peers (still checking?)"),
], ids=["no-answer", "signaling", "no-connection", "dial-failed", "not-ready"])
def test_each_initiator_failure_emits_one_punch_failed(setup: Any, reason: str) -> None:
    async def main() -> None:
        a, b, net = _failing_pair(setup)
        meet(a, b)
        await settle(a, peer_ids=("peer-b",))
        assert [(e.peer_id, e.reason) for e in a.failed()] == [("peer-b", reason)]
        assert a.record("peer-b").state == PunchState.FAILED
        await close(a, b)

    run(main())


def test_a_refusing_peer_fails_the_punch_with_its_reason() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "symmetric", 1))
        b = side(net, profile("peer-b", "port", 2),
                 config=CONFIG.replace(methods=("tcp",)))
        meet(a, b)
        await settle(a, peer_ids=("peer-b",))
        assert [e.reason for e in a.failed()] == ["peer refused: method utp disabled"]
        await close(a, b)

    run(main())


def test_a_responder_whose_connection_fails_emits_one_punch_failed() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "symmetric", 1))
        b = side(net, profile("peer-b", "port", 2),
                 FakeDialer(lambda *x: DialFailed("reset")),
                 config=CONFIG.replace(punch_attempts=1))
        meet(a, b)
        await settle(b, peer_ids=("peer-a",))
        assert [e.reason for e in b.failed()] == ["libtorrent: reset"]
        await close(a, b)

    run(main())


def test_a_responder_without_an_endpoint_for_the_method_fails_once() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "symmetric", 1))
        b = side(net, profile("peer-b", "port", 2))
        a.engine.peer_joined(IH, b.me)
        # The responder knows the initiator without its UDP endpoint.
        b.engine.peer_joined(IH, PeerProfile("peer-a", "symmetric", udp=None,
                                              tcp=a.me.tcp))
        await settle(b, peer_ids=("peer-a",))
        assert [e.reason for e in b.failed()] == ["no endpoint for method"]
        await close(a, b)

    run(main())


def test_transitions_outside_the_table_are_refused() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "port", 1))
        a.engine.peer_joined(IH, profile("peer-z", "port", 9))  # a responder: PENDING
        rec = a.record("peer-z")
        with pytest.raises(TransitionError, match="pending -> connected"):
            rec.transition(PunchState.CONNECTED, now=0.0, method="utp", endpoint=("1.2.3.4", 1))
        await close(a)

    run(main())


# --- re-punch ----------------------------------------------------------------------------


def _connected_pair() -> tuple[Side, Side, FakeNetwork]:
    net = FakeNetwork()
    a = side(net, profile("peer-a", "port", 1), config=CONFIG.replace(methods=("tcp",)))
    b = side(net, profile("peer-b", "port", 2), config=CONFIG.replace(methods=("tcp",)))
    meet(a, b)
    return a, b, net


def _port_pair(methods: tuple[str, ...]) -> tuple[Side, Side, FakeNetwork]:
    """Two port-restricted peers that punch with ``methods`` (profiles and config), met."""
    net = FakeNetwork()
    config = CONFIG.replace(methods=methods)
    a = side(net, dataclasses.replace(profile("peer-a", "port", 1), methods=methods),
             config=config)
    b = side(net, dataclasses.replace(profile("peer-b", "port", 2), methods=methods),
             config=config)
    meet(a, b)
    return a, b, net


async def _stall_offers(s: Side, rec: Any, transport: str, net: FakeNetwork) -> list[str]:
    """``s`` reports ``rec``'s connection stalled; the methods offered until it is
    connected again."""
    before = len(net.offers())
    assert s.engine.stalled(IH, rec.endpoint, transport)
    await s.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
    return [d["method"] for _, _, d in net.offers()[before:]]


def _udp_pair(methods: tuple[str, ...] = ("udp",)) -> tuple[Side, Side, FakeNetwork]:
    """Two port-restricted peers with STUN discovery that punch with ``methods``; each
    maps its new sockets to its own address."""
    net = FakeNetwork()
    config = CONFIG.replace(methods=methods)
    sides = []
    for name, n in (("peer-a", 1), ("peer-b", 2)):
        me = dataclasses.replace(profile(name, "port", n), methods=methods,
                                 nat_summary={"nat_type": "port"})
        sides.append(side(net, me, FakeDialer(udp_mapping=(f"198.51.100.{n}", 50200 + n)),
                          config=config))
    meet(*sides)
    return sides[0], sides[1], net


def test_a_udp_punch_trades_socket_mappings() -> None:
    """The initiator offers a secret and its socket's mapping, the responder answers
    with its own; each punches to the other's, and the responder's libtorrent dials
    the stream (carry_out) while the initiator's takes it in."""
    async def main() -> None:
        a, b, net = _udp_pair()
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        init = a if a.record("peer-b").role == "initiator" else b
        resp = b if init is a else a
        (offer,) = [d for _, _, d in net.offers()]
        assert offer["method"] == "udp" and len(offer["secret"]) == 32
        assert tuple(offer["probe"]) == init.dialer.udp_mapping
        assert init.dialer.punched == [(resp.dialer.udp_mapping, False)]
        assert resp.dialer.punched == [(init.dialer.udp_mapping, True)]
        assert [k.secret for k in resp.dialer.sockets] == [offer["secret"]]
        for s in (a, b):
            assert [e.method for e in s.events if isinstance(e, PeerPunched)] == ["udp"]
        await close(a, b)

    run(main())


def test_a_udp_mapping_away_from_the_peer_is_refused() -> None:
    """Our probes go only where signaling saw the peer: an answer naming another
    address fails the attempt, and the socket is closed."""
    async def main() -> None:
        a, b, net = _udp_pair()
        for s in (a, b):
            s.dialer.udp_mapping = ("203.0.113.66", 50000)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        failed = a.failed() + b.failed()
        assert failed and all("is not the peer's address" in f.reason for f in failed)
        assert not a.dialer.punched and not b.dialer.punched
        assert all(k.closed for s in (a, b) for k in s.dialer.sockets)
        await close(a, b)

    run(main())


@pytest.mark.parametrize("transport", ["tcp", "utp"])
def test_a_tcp_or_utp_stall_turns_to_the_udp_stream(transport: str) -> None:
    """A stall of libtorrent's TCP or uTP is a sign of loss, which they back off on and
    our stream does not: the re-punch offers ``udp`` first."""
    async def main() -> None:
        a, b, net = _udp_pair((transport, "udp"))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        assert rec.method == transport
        assert await _stall_offers(a, rec, transport, net) == ["udp"]
        assert rec.method == "udp"
        await close(a, b)

    run(main())


def test_a_punched_tcp_connection_has_a_stream_alternative_while_udp_fits() -> None:
    """What the stall watch asks before it hands over a crawling connection: a punched
    TCP (or uTP) one whose pair can punch ``udp``; not the stream itself, and not
    without ``udp`` in the pair's methods."""
    async def main() -> None:
        a, b, net = _udp_pair(("tcp", "udp"))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        assert rec.method == "tcp"
        assert a.engine.has_stream_alternative(IH, rec.endpoint, "tcp")
        assert not a.engine.has_stream_alternative(IH, ("192.0.2.9", 1), "tcp")
        await _stall_offers(a, rec, "tcp", net)
        assert rec.method == "udp"
        assert not a.engine.has_stream_alternative(IH, rec.endpoint, "tcp")
        await close(a, b)
        c, d, _ = _udp_pair(("tcp",))
        await settle(c, d, peer_ids=("peer-b", "peer-a"))
        rec = c.record("peer-b")
        assert not c.engine.has_stream_alternative(IH, rec.endpoint, "tcp")
        await close(c, d)

    run(main())


def _prediction_pair() -> tuple[Side, Side, FakeNetwork]:
    """A symmetric peer (peer-a) and a port-restricted one with STUN discovery, met."""
    net = FakeNetwork()
    hard = side(net, profile("peer-a", "symmetric", 1))
    easy = side(net, dataclasses.replace(profile("peer-b", "port", 2),
                                         nat_summary={"nat_type": "port"}))
    meet(hard, easy)
    return hard, easy, net


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_a_lost_tcp_connection_is_punched_again(who: str) -> None:
    """The initiator punches again at once; a responder after REPUNCH_RESPONDER_DELAY,
    when the initiator did not (it lost the connection on its side only)."""
    async def main() -> None:
        a, b, net = _connected_pair()
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        init = a if a.record("peer-b").role == "initiator" else b
        resp = b if init is a else a
        loser = init if who == "initiator" else resp
        other = resp if loser is init else init
        before = len(net.offers())
        lost_at = asyncio.get_running_loop().time()
        loser.engine.connection_lost(IH, other.me.tcp, "connection reset")
        rec = loser.record(other.me.peer_id)
        assert rec.state == PunchState.DROPPED
        assert [type(e) for e in loser.events[-1:]] == [ConnectionLost]
        await loser.engine.wait_for(lambda: len(net.offers()) > before)
        offer_at, sender, _ = net.offers()[before]
        assert sender == loser.me.peer_id
        delay = 0.0 if loser is init else REPUNCH_RESPONDER_DELAY
        assert offer_at - lost_at == pytest.approx(delay, abs=1e-6)
        await loser.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
        assert rec.repunches == 1
        await close(a, b)

    run(main())


def test_a_complete_torrent_does_not_punch_again_until_asked() -> None:
    """connection_lost(repunch=False) (our torrent is complete: two seeds' connection is
    closed by libtorrent, and a peer that still downloads punches again itself): the
    record is DROPPED and nothing is sent; reconnect() punches when asked."""
    async def main() -> None:
        a, b, net = _connected_pair()
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        before = len(net.offers())
        a.engine.connection_lost(IH, b.me.tcp, "End of file", repunch=False)
        assert rec.state == PunchState.DROPPED
        await asyncio.sleep(2 * REPUNCH_RESPONDER_DELAY)
        assert len(net.offers()) == before and rec.state == PunchState.DROPPED
        assert not a.engine.reconnect(IH, "nobody")
        assert a.engine.reconnect(IH, "peer-b")
        await a.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
        assert len(net.offers()) == before + 1 and rec.repunches == 1
        assert not a.engine.reconnect(IH, "peer-b")  # connected: nothing to do
        await close(a, b)

    run(main())


def test_a_responder_does_not_repunch_when_the_initiator_did() -> None:
    async def main() -> None:
        a, b, net = _connected_pair()
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        init = a if a.record("peer-b").role == "initiator" else b
        resp = b if init is a else a
        before = len(net.offers())
        init.engine.connection_lost(IH, resp.me.tcp, "reset")
        resp.engine.connection_lost(IH, init.me.tcp, "reset")
        await asyncio.sleep(REPUNCH_RESPONDER_DELAY + 1)
        assert [frm for _, frm, _ in net.offers()[before:]] == [init.me.peer_id]
        assert resp.record(init.me.peer_id).repunches == 0
        await close(a, b)

    run(main())


def test_the_repunch_cap_ends_in_one_punch_failed() -> None:
    async def main() -> None:
        a, b, net = _connected_pair()
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        init = a if a.record("peer-b").role == "initiator" else b
        resp = b if init is a else a
        rec = init.record(resp.me.peer_id)
        for n in range(1, MAX_REPUNCHES + 1):
            init.engine.connection_lost(IH, resp.me.tcp, "reset")
            await init.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
            assert rec.repunches == n
        init.engine.connection_lost(IH, resp.me.tcp, "reset")
        await init.engine.wait_for(lambda: rec.state == PunchState.FAILED)
        assert len(init.failed()) == 1 and "re-punches" in init.failed()[0].reason
        assert len([e for e in init.events if isinstance(e, ConnectionLost)]) == MAX_REPUNCHES + 1
        await close(a, b)

    run(main())


def test_a_connection_that_lasted_starts_the_repunch_count_over() -> None:
    """The cap ends loops of connections that die at once; one that lasted
    REPUNCH_FORGIVE before it was lost does not count."""
    async def main() -> None:
        a, b, net = _port_pair(("tcp",))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        for _ in range(MAX_REPUNCHES + 3):
            await asyncio.sleep(engine_module.REPUNCH_FORGIVE)
            assert rec.state == PunchState.CONNECTED
            a.engine.connection_lost(IH, rec.endpoint, "timed out")
            await a.engine.wait_for(lambda: rec.state in (PunchState.CONNECTED,
                                                          PunchState.FAILED))
        assert rec.state == PunchState.CONNECTED and rec.repunches == 1
        # Lost at once, again and again: the cap.
        for _ in range(MAX_REPUNCHES + 1):
            if rec.state != PunchState.CONNECTED:
                break
            a.engine.connection_lost(IH, rec.endpoint, "timed out")
            await a.engine.wait_for(lambda: rec.state in (PunchState.CONNECTED,
                                                          PunchState.FAILED))
        assert rec.state == PunchState.FAILED and rec.repunches == MAX_REPUNCHES
        await close(a, b)

    run(main())


def test_a_productive_stall_does_not_count_towards_the_repunch_cap() -> None:
    """At 10% loss TCP stalls every 5-20 s: a stalled connection that had delivered
    enough (the stall watch says ``productive``) does not bring the cap nearer."""
    async def main() -> None:
        a, b, net = _port_pair(("tcp",))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        for _ in range(MAX_REPUNCHES + 3):
            assert a.engine.stalled(IH, rec.endpoint, "tcp", True)
            await a.engine.wait_for(lambda: rec.state in (PunchState.CONNECTED,
                                                          PunchState.FAILED))
            assert rec.state == PunchState.CONNECTED
        assert rec.repunches == 1
        await close(a, b)

    run(main())


def test_a_complete_symmetric_side_still_punches_a_lost_prediction_again() -> None:
    """Only the symmetric side can start a prediction: complete or not, it punches a
    lost predicted connection again (the cone side, still downloading, cannot)."""
    async def main() -> None:
        hard, easy, net = _prediction_pair()
        await settle(hard, easy, peer_ids=("peer-b", "peer-a"))
        rec = hard.record("peer-b")
        assert rec.method == "predict"
        before = len(net.offers())
        hard.engine.connection_lost(IH, rec.endpoint, "timed out", repunch=False)
        await hard.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
        assert [d["method"] for _, _, d in net.offers()[before:]] == ["predict"]
        # The cone side, complete, leaves it to the symmetric side.
        crec = easy.record("peer-a")
        before = len(net.offers())
        easy.engine.connection_lost(IH, crec.endpoint, "timed out", repunch=False)
        assert crec.state == PunchState.DROPPED
        await asyncio.sleep(2 * REPUNCH_RESPONDER_DELAY)
        assert len(net.offers()) == before
        await close(hard, easy)

    run(main())


def test_a_lost_utp_connection_is_left_to_libtorrent() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "port", 1), config=CONFIG.replace(methods=("utp",)))
        b = side(net, profile("peer-b", "port", 2), config=CONFIG.replace(methods=("utp",)))
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        a.engine.connection_lost(IH, b.me.udp, "reset")
        assert a.record("peer-b").state == PunchState.CONNECTED
        await close(a, b)

    run(main())


@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_a_stalled_utp_punch_is_punched_again_over_tcp(who: str) -> None:
    """The stall watch hands a stalled punched connection to the engine: it punches
    again at once (as responder too), the stalled method last."""
    async def main() -> None:
        a, b, net = _port_pair(("utp", "tcp"))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        init = a if a.record("peer-b").role == "initiator" else b
        resp = b if init is a else a
        staller = init if who == "initiator" else resp
        other = resp if staller is init else init
        rec = staller.record(other.me.peer_id)
        assert rec.method == "utp"
        before = len(net.offers())
        stalled_at = asyncio.get_running_loop().time()
        assert staller.engine.stalled(IH, other.me.udp, "utp")
        assert rec.state == PunchState.DROPPED and rec.stalled == {"utp"}
        assert isinstance(staller.events[-1], ConnectionLost)
        assert "stalled" in staller.events[-1].reason
        await staller.engine.wait_for(lambda: rec.state == PunchState.CONNECTED)
        assert rec.method == "tcp" and rec.repunches == 1
        # The other end still held the stalled connection: it closed it before
        # answering (else libtorrent refuses the new one as a duplicate peer id).
        assert other.dialer.closed == [staller.me.udp]
        assert [d["method"] for _, _, d in net.offers()[before:]][:1] == ["tcp"]
        # At once, also as responder: only the downloading end sees a stall.
        offer_at, sender, _ = net.offers()[before]
        assert sender == staller.me.peer_id
        assert offer_at - stalled_at == pytest.approx(0.0, abs=1e-6)
        # Not a punched endpoint: left to the caller.
        assert not staller.engine.stalled(IH, ("192.0.2.9", 1), "utp")
        await close(a, b)

    run(main())


def test_a_stalled_tcp_punch_is_punched_again_over_tcp_first() -> None:
    """A TCP stall is a retransmission backoff under loss: a new TCP connection ends it,
    so TCP stays first (uTP does worse under the same loss)."""
    async def main() -> None:
        a, b, net = _port_pair(("tcp", "utp"))
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        rec = a.record("peer-b")
        assert rec.method == "tcp"
        assert await _stall_offers(a, rec, "tcp", net) == ["tcp"]
        assert rec.method == "tcp" and rec.stalled == {"tcp"}
        await close(a, b)

    run(main())


# --- one punch per peer, peer-left ------------------------------------------------------


def test_a_second_punch_to_the_same_peer_is_refused_while_one_runs() -> None:
    async def main() -> None:
        net = FakeNetwork()
        net.drop = lambda to, data: True  # keeps the first punch waiting for answers
        a = side(net, profile("peer-a", "symmetric", 1))
        peer = profile("peer-b", "port", 2)
        assert a.engine.peer_joined(IH, peer)
        await asyncio.sleep(0)
        moved = PeerProfile("peer-b", "port", udp=("203.0.113.9", 1), tcp=("203.0.113.9", 2))
        assert not a.engine.peer_joined(IH, moved)
        assert not a.engine.peer_joined(IH, peer)
        await asyncio.sleep(1)
        assert {d["attempt"] for _, _, d in net.offers()} == {1}
        assert len(net.offers()) == 1  # one punch, still on its first offer
        await close(a)

    run(main())


def test_peer_left_cancels_the_punch() -> None:
    async def main() -> None:
        net = FakeNetwork()
        net.drop = lambda to, data: True
        a = side(net, profile("peer-a", "symmetric", 1))
        a.engine.peer_joined(IH, profile("peer-b", "port", 2))
        await asyncio.sleep(0.1)
        assert a.record("peer-b").state == PunchState.PUNCHING
        a.engine.peer_left(IH, "peer-b")
        assert a.record("peer-b").state == PunchState.FAILED
        assert [e.reason for e in a.failed()] == ["peer left the room"]
        assert isinstance(a.events[-1], PeerLeft)
        offers = len(net.offers())
        await asyncio.sleep(60)
        assert len(net.offers()) == offers  # nothing more was sent
        assert len(a.failed()) == 1
        await close(a)

    run(main())


def test_keepalive_refreshes_the_reflector_and_punched_utp_peers() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = side(net, profile("peer-a", "port", 1), config=CONFIG.replace(methods=("utp",)))
        b = side(net, profile("peer-b", "port", 2), config=CONFIG.replace(methods=("utp",)))
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        reflector = ("192.0.2.1", 8765)
        task = asyncio.get_running_loop().create_task(a.engine.keepalive(lambda: [reflector]))
        a.dialer.opened.clear()
        await asyncio.sleep(CONFIG.keep_alive_interval * 2 + 1)
        assert a.dialer.opened == [reflector, b.me.udp] * 2
        task.cancel()
        await close(a, b)

    run(main())


def test_the_engine_loads_no_libtorrent_and_no_network_library() -> None:
    """Read sys.modules in a fresh process (a package __init__ can pull the world in)."""
    import subprocess
    import sys

    code = ("import sys, lt_punch.punch.engine, lt_punch.punch.record; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert engine_module.__name__.split(".")[0] in loaded  # the probe really ran
    assert not loaded & {"libtorrent", "websockets", "aiohttp", "redis", "prometheus_client"}


# --- the TURN relay -----------------------------------------------------------------------

RELAYED = ("192.0.2.50", 49200)


def only_the_relay_connects(kind: str, method: str, endpoint: Address) -> str:
    return "connect" if method == "relay" else "hang"


def relay_side(net: FakeNetwork, peer_id: str, nat: str, n: int, *, turn: bool,
               relay: Address | Exception | None = None) -> Side:
    me = dataclasses.replace(profile(peer_id, nat, n), turn=turn)
    dialer = FakeDialer(outcome=only_the_relay_connects,
                        relay=relay if relay is not None else RELAYED if turn else None)
    return side(net, me, dialer)


def offered(net: FakeNetwork) -> list[str]:
    return [d["method"] for _, _, d in net.offers()]


@pytest.mark.parametrize("allocator", ["responder", "initiator"])
def test_two_symmetric_nats_meet_through_the_relay(allocator: str) -> None:
    """No punch fits two symmetric NATs: the relay at once. The side with a TURN server
    allocates and permits the other's public addresses only; the other dials the
    relayed address."""
    async def main() -> None:
        net = FakeNetwork()
        # Two symmetric NATs: peer ids decide, "peer-a" initiates.
        a = relay_side(net, "peer-a", "symmetric", 1, turn=allocator == "initiator")
        b = relay_side(net, "peer-b", "symmetric", 2, turn=allocator == "responder")
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        allocating, dialing = (b, a) if allocator == "responder" else (a, b)
        assert dialing.me.udp is not None
        assert allocating.dialer.permitted == [(dialing.me.udp[0],)]
        assert dialing.dialer.dials == [("relay", RELAYED)]
        assert allocating.dialer.dials == []
        for s in (a, b):
            assert [e.method for e in s.events if isinstance(e, PeerPunched)] == ["relay"]
        assert offered(net) == ["relay"]
        assert ("relayed" in net.offers()[-1][2]) == (allocator == "initiator")
        await close(a, b)

    run(main())


def test_without_a_turn_server_the_relay_is_not_tried() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = relay_side(net, "peer-a", "symmetric", 1, turn=False)
        b = relay_side(net, "peer-b", "symmetric", 2, turn=False)
        meet(a, b)
        await settle(a, peer_ids=("peer-b",))
        assert offered(net) == []
        assert [e.reason for e in a.failed()] == ["no punch method fits this pair of NATs"]
        await close(a, b)

    run(main())


def test_the_relay_comes_after_the_direct_methods_fail() -> None:
    """port/port: TCP and uTP are tried first (both hang here), then the relay, even
    when the configured order puts it first."""
    async def main() -> None:
        net = FakeNetwork()
        a = relay_side(net, "peer-a", "port", 1, turn=False)
        b = relay_side(net, "peer-b", "port", 2, turn=True)
        a.engine.config = CONFIG.replace(methods=("relay", "utp", "tcp"))
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        assert offered(net) == ["tcp", "utp", "relay"]
        assert [(f["method"], f["reason"]) for f in a.record("peer-b").failures] == [
            ("tcp", "no connection within 3.5 s"), ("utp", "no connection within 3.5 s")]
        assert a.failed() == []
        assert a.record("peer-b").method == "relay"
        await close(a, b)

    run(main())


def test_refused_turn_credentials_fail_the_relay_with_the_servers_words() -> None:
    """The responder's TURN server refuses it: that one reason reaches the initiator at
    each attempt, and the punch then fails."""
    async def main() -> None:
        net = FakeNetwork()
        refused = DialFailed("TURN server 192.0.2.9:3478 refused the credentials of "
                             "'alice' (401 Unauthorized)")
        a = relay_side(net, "peer-a", "symmetric", 1, turn=False)
        b = relay_side(net, "peer-b", "symmetric", 2, turn=True, relay=refused)
        meet(a, b)
        await settle(a, peer_ids=("peer-b",))
        assert offered(net) == ["relay"] * CONFIG.punch_attempts
        failures = a.record("peer-b").failures
        assert {f["reason"] for f in failures if f["method"] == "relay"} == {
            f"peer refused: relay: {refused}"}
        assert [e.reason for e in a.failed()] == [f"peer refused: relay: {refused}"]
        assert a.record("peer-b").state == PunchState.FAILED
        await close(a, b)

    run(main())


def test_a_lost_relayed_connection_is_punched_again() -> None:
    async def main() -> None:
        net = FakeNetwork()
        a = relay_side(net, "peer-a", "symmetric", 1, turn=False)
        b = relay_side(net, "peer-b", "symmetric", 2, turn=True)
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        a.engine.connection_lost(IH, RELAYED, "connection reset")
        assert a.record("peer-b").state == PunchState.DROPPED
        await a.engine.wait_for(lambda: a.record("peer-b").state == PunchState.CONNECTED)
        assert a.dialer.dials.count(("relay", RELAYED)) == 2
        await close(a, b)

    run(main())


# --- port prediction ----------------------------------------------------------------------


def test_a_symmetric_nat_meets_a_port_restricted_one_by_prediction_first() -> None:
    """The symmetric side initiates with a secret; the cone side answers with its probe
    socket's mapping and probes the symmetric side's address; uTP is not tried first."""
    async def main() -> None:
        hard, easy, net = _prediction_pair()
        await settle(hard, easy, peer_ids=("peer-b", "peer-a"))
        (offer,) = [d for _, _, d in net.offers("peer-a")]
        assert offer["method"] == "predict" and len(offer["secret"]) == 32
        assert easy.dialer.predicted == [("easy", (offer["secret"], "198.51.100.1"))]
        assert hard.dialer.predicted == [("hard", (offer["secret"], ("198.51.100.2", 50123)))]
        for s in (hard, easy):
            assert [e.method for e in s.events if isinstance(e, PeerPunched)] == ["predict"]
        await close(hard, easy)

    run(main())


def test_after_a_utp_stall_prediction_comes_before_the_relay() -> None:
    """A prediction's path carries our loss-tolerant stream, not libtorrent's uTP, which
    froze under loss: after a uTP stall it is next, before the relay (full cone vs
    symmetric: uTP first)."""
    async def main() -> None:
        net = FakeNetwork()
        hard = side(net, dataclasses.replace(profile("peer-a", "symmetric", 1), turn=True),
                    FakeDialer(relay=RELAYED))
        easy = side(net, dataclasses.replace(profile("peer-b", "full", 2),
                                             nat_summary={"nat_type": "full"}))
        meet(hard, easy)
        await settle(hard, easy, peer_ids=("peer-b", "peer-a"))
        rec = hard.record("peer-b")
        assert rec.method == "utp"
        assert await _stall_offers(hard, rec, "utp", net) == ["predict"]
        assert rec.method == "predict"
        await close(hard, easy)

    run(main())


def test_a_probe_mapping_elsewhere_than_the_peer_is_refused() -> None:
    """Our 256 flows only ever go to the peer's own address: an answer naming another
    address fails the attempt."""
    async def main() -> None:
        net = FakeNetwork()
        hard = side(net, profile("peer-a", "symmetric", 1),
                    config=CONFIG.replace(methods=("predict",)))
        easy = side(net, dataclasses.replace(profile("peer-b", "port", 2),
                                             nat_summary={"nat_type": "port"}),
                    FakeDialer(probe=("192.0.2.200", 80)))
        meet(hard, easy)
        await settle(hard, peer_ids=("peer-b",))
        assert hard.dialer.predicted == []
        assert {f["reason"] for f in hard.record("peer-b").failures} == {
            "probe mapping 192.0.2.200 is not the peer's address"}
        await close(hard, easy)

    run(main())


def test_the_cone_side_never_starts_a_prediction() -> None:
    """A stall seen on the cone side makes it punch again at once, as initiator: it does
    not play the symmetric side's part (256 flows from a cone NAT would help nobody);
    the symmetric side does not probe either."""
    async def main() -> None:
        net = FakeNetwork()

        def no_utp(kind: str, method: str, endpoint: Address) -> str:
            return "hang" if method == "utp" else "connect"

        hard = side(net, profile("peer-a", "symmetric", 1), FakeDialer(outcome=no_utp))
        easy = side(net, dataclasses.replace(profile("peer-b", "port", 2),
                                             nat_summary={"nat_type": "port"}),
                    FakeDialer(outcome=no_utp))
        meet(hard, easy)
        await settle(hard, easy, peer_ids=("peer-b", "peer-a"))
        assert easy.record("peer-a").method == "predict"
        endpoint = easy.record("peer-a").endpoint
        assert easy.engine.stalled(IH, endpoint, "predict")
        await easy.engine.wait_for(
            lambda: any(f["reason"] == "port prediction is started by the symmetric side"
                        for f in easy.record("peer-a").failures))
        assert [kind for kind, _ in hard.dialer.predicted] == ["hard"]
        await close(hard, easy)

    run(main())


def test_when_the_peers_relay_fails_ours_is_used() -> None:
    """Both sides have a TURN server; the responder (who allocates first) is refused by
    its own: the initiator then allocates on its server and the pair connects."""
    async def main() -> None:
        net = FakeNetwork()
        refused = DialFailed("TURN server 192.0.2.9:3478 refused the credentials of 'b' "
                             "(401 Unauthorized)")
        a = relay_side(net, "peer-a", "symmetric", 1, turn=True)
        b = relay_side(net, "peer-b", "symmetric", 2, turn=True, relay=refused)
        meet(a, b)
        await settle(a, b, peer_ids=("peer-b", "peer-a"))
        assert a.record("peer-b").method == "relay"
        assert b.dialer.dials == [("relay", RELAYED)]  # ours, in the second offer
        assert [d.get("relayed") for _, _, d in net.offers("peer-a")] == [None, list(RELAYED)]
        assert a.failed() == []
        await close(a, b)

    run(main())
