"""The punch engine: initiator, responder, retries, re-punch and keep-alive.

Theory of operation
-------------------
The engine meets peers through the signaling room of each torrent
(:meth:`PunchEngine.peer_joined`), decides roles and methods with the pure rules of
:mod:`lt_punch.punch.plan`, and talks to the two worlds it sits between through two
small protocols, so that it can be driven in tests by fakes and a virtual clock:

* a :class:`Relay` carries punch messages to a peer (the signaling client);
* a :class:`Dialer` acts on libtorrent: it opens our NAT towards an endpoint with a
  packet from libtorrent's own socket, injects an endpoint (``connect_peer``) and
  watches for the connection (:mod:`lt_punch.punch.lt_dialer`).

The initiator sends ``punch-offer`` for a method, the responder prepares (opens its
NAT for uTP; sends its own SYN for TCP simultaneous open) and answers; the initiator
then dials. Attempts follow :func:`~lt_punch.punch.plan.retry_delay`. A punched TCP
connection that is lost is punched again: libtorrent redials it by itself, but a
plain SYN is dropped at the peer's NAT; the initiator starts at once, a responder
after :data:`REPUNCH_RESPONDER_DELAY` if the initiator did not (the loss may have been
seen on our side only), at most :data:`MAX_REPUNCHES` times.

Every change of a punch's state goes through :meth:`PunchRecord.transition
<lt_punch.punch.record.PunchRecord.transition>`, whose event this engine publishes:
one :class:`~lt_punch.torrent.events.PunchFailed` per punch that fails, whatever the
path. One punch per peer at a time: a second ``peer_joined`` while one runs is
refused, as go-libp2p's holepunch refuses a second concurrent punch to one peer.

A new method (port prediction, a relay) is a new :class:`Dialer` step and a new name
in :data:`~lt_punch.punch.plan.METHODS`, not a new branch here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from ..config import Config
from ..errors import SignalingError
from ..torrent.events import Event, PeerLeft
from ..types import Address
from . import plan
from .plan import PeerProfile, PunchMessage
from .predict import new_secret
from .record import PunchRecord, PunchState, TransitionError
from .strategy import recommend_strategy

logger = logging.getLogger(__name__)

MAX_REPUNCHES = 5
"""Punches again to one peer after its punched connection was lost or stalled, in a
row: a connection that lasted :data:`REPUNCH_FORGIVE` starts the count over."""

REPUNCH_FORGIVE = 30.0
"""Seconds a punched connection must have lasted for its loss not to count towards
:data:`MAX_REPUNCHES`: the cap ends loops of connections that die at once, not a long
download over a lossy path. (A stalled one is forgiven by what it delivered: 10% loss
in the lab stalls TCP every 5-20 s.)"""

REPUNCH_RESPONDER_DELAY = 3.0
"""Seconds a responder waits for the initiator to punch again before it does."""

OFFER_OVERTAKE_WAIT = 1.0
"""Seconds a responder waits for a room member whose offer came before its join."""

HANDSHAKE_WAIT = 3.5
"""Seconds a uTP or TCP attempt waits for its connection when another attempt follows
(the last one waits ``connection_timeout``). Both handshakes take one round trip
(0.02 s in the lab); a lost SYN is resent after 1 s (Linux TCP) or 3 s (libtorrent's
uTP), so 3.5 s covers one resend. A lost uTP SYN-ACK is not recovered at all:
libtorrent's responder keeps a half-open connection that ignores the resent SYN
(10% loss in the lab: the punch waited its 10 s timeout), so the next method is
better than more waiting."""

S = PunchState
_T = TypeVar("_T")


LOSSY = frozenset({"tcp", "utp"})
"""Methods whose stall says the path loses packets: libtorrent's TCP and uTP back off
on random loss (benchmarks/utp_loss.py); our stream (``udp``, ``predict``) does not."""


def _after_stalls(method: str, stalled: set[str]) -> int:
    """Sort key of ``method`` once connections stalled (sorted() keeps the order within
    a rank): ``udp`` first after a TCP or uTP stall (at 19% loss its stream carried 8x
    TCP's rate); a method that stalled last, but never TCP (a TCP stall is a
    retransmission backoff, which a new connection ends, and uTP under the same loss
    does worse)."""
    if method in stalled and method != "tcp":
        return 2
    if method == "udp" and stalled & LOSSY:
        return 0
    return 1


def _refused_mapping(mapping: Address | None, peer: PeerProfile, what: str) -> str | None:
    """Why a punch may not aim at ``mapping`` (named ``what``), or None: our probes go
    only to the address signaling saw the peer at."""
    if mapping is None:
        return f"peer answered without a {what}"
    if mapping[0] not in peer.ips():
        return f"{what} {mapping[0]} is not the peer's address"
    return None


class DialFailed(Exception):
    """libtorrent gave up on a connection (the reason is libtorrent's message)."""


class Relay(Protocol):
    """Carries punch messages to a peer (the signaling client)."""

    async def relay(self, to: str, room: str, data: dict[str, Any]) -> None:
        """Send ``data`` to peer ``to`` in ``room``; SignalingError when it cannot."""


class Watch(Protocol):
    """One expected connection."""

    immediate: bool
    """Whether the dial was made at once (not on libtorrent's next tick)."""

    async def wait(self) -> Address:
        """The endpoint connected (the peer's port may differ from the one expected).

        Raises:
            DialFailed: libtorrent gave up on it.
        """

    def cancel(self) -> None:
        """Stop watching."""


class Closable(Protocol):
    def close(self) -> None: ...


class Dialer(Protocol):
    """What the engine needs of libtorrent."""

    async def ready(self, infohash: str) -> None:
        """Return when the torrent accepts peers (not while it is checking)."""

    def open_nat(self, endpoint: Address) -> None:
        """Send one packet from libtorrent's UDP socket to ``endpoint``."""

    def expect(self, infohash: str, endpoint: Address, *, any_port: bool) -> Watch:
        """Watch for an incoming connection from ``endpoint`` (any port: its address)."""

    async def dial(self, infohash: str, method: str, endpoint: Address) -> Watch:
        """Inject ``endpoint`` for ``method`` and return at once (our SYN may still be
        on its way: :meth:`Watch.wait` covers it)."""

    def disconnect(self, infohash: str, endpoint: Address) -> None:
        """Close our connection to ``endpoint`` (its peer punches again: its side is
        gone, and a stale connection here would refuse the new one as a duplicate)."""

    async def predict_hard(self, infohash: str, secret: str, easy: Address,
                           within: float) -> Watch:
        """The symmetric side of a birthday punch (:mod:`lt_punch.punch.predict`)
        towards the cone side's probe mapping ``easy``; the watch covers the punch."""

    async def predict_easy(self, infohash: str, secret: str, hard_ip: str,
                           within: float) -> tuple[Address, Watch]:
        """The cone side: the public mapping of a new probe socket (for the answer) and
        a watch on the probing, then on the connection. Raises :class:`DialFailed`."""

    async def udp_socket(self, secret: str) -> tuple[Address, Closable]:
        """A new socket of ours for a ``udp`` punch with ``secret``, and its public
        mapping (STUN). Raises :class:`DialFailed`."""

    def udp_punch(self, infohash: str, sock: Closable, peer: Address, within: float, *,
                  carry_out: bool) -> Watch:
        """Punch from ``sock`` to the peer's mapping; the watch covers the punch and
        then the connection of libtorrent to the path's stream (it dials it with
        ``carry_out``, else takes it in). The watch owns ``sock`` from here."""

    async def open_relay(self, infohash: str, peer_ips: tuple[str, ...]
                         ) -> tuple[Address, Watch]:
        """Our relayed address for a peer seen from ``peer_ips`` (allocated when needed,
        permitted for those addresses only), and a watch on the peer's connection
        through it. Raises :class:`DialFailed` when there is no relay to be had."""


def endpoint_for(method: str, peer: PeerProfile) -> Address | None:
    """Where to send packets of ``method`` to ``peer``.

    uTP goes to libtorrent's UDP listen mapping. TCP goes to the mapping of the
    peer's outgoing port (simultaneous open) unless the peer is directly
    reachable, whose TCP listen port has the number of its UDP one.
    """
    if method in ("utp", "udp", "predict"):
        return peer.udp
    if method == "relay":  # not dialled: the address the relay lets in
        return peer.tcp or peer.udp
    if peer.nat == "open" and peer.udp is not None:
        return peer.udp
    return peer.tcp


class PunchEngine:
    """Punches to the lt_punch peers of each torrent's room.

    Args:
        config: ``methods``, ``punch_attempts``, ``connection_timeout``,
            ``keep_alive_interval``, ``hole_punching_enabled`` are used.
        me: our current profile (public endpoints, NAT), asked at each punch.
        relay: the signaling link; None until connected (offers then fail).
        dialer: the libtorrent side.
        emit: called with every event (on the loop, synchronously).
        changed: called with the infohash whenever a punch record of that torrent is
            added or changes state.
    """

    def __init__(self, config: Config, me: Callable[[], PeerProfile], relay: Relay | None,
                 dialer: Dialer, emit: Callable[[Event], None],
                 changed: Callable[[str], None] = lambda infohash: None) -> None:
        self.config = config
        self.relay = relay
        self._me = me
        self._dialer = dialer
        self._emit = emit
        self._changed_hook = changed
        self.records: dict[str, dict[str, PunchRecord]] = {}
        """Punch records by infohash, then peer id (dicts shared with the torrents)."""
        self._profiles: dict[str, PeerProfile] = {}
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        """Running work by (infohash, peer id, "punch" | "respond"): at most one punch
        (ours: initiate or re-punch) and one answer (to the peer's latest offer)."""
        self._answers: dict[str, asyncio.Future[PunchMessage]] = {}
        self._changed = asyncio.Event()

    # -- what the session tells us ---------------------------------------------------

    def track(self, infohash: str, records: dict[str, PunchRecord]) -> None:
        """Start keeping the punch records of a torrent in ``records``."""
        self.records[infohash] = records

    def forget(self, infohash: str) -> None:
        """The torrent was removed: stop its punches."""
        self.records.pop(infohash, None)
        for key in [k for k in self._tasks if k[0] == infohash]:
            self._tasks.pop(key).cancel()

    def peer_joined(self, infohash: str, peer: PeerProfile) -> bool:
        """A room member: punch to it (as initiator) or wait for its offer.

        Returns False when nothing new starts: a punch to that peer is under way, or
        the same peer (same profile) is seen again after a reconnection while it is
        connected or punching.
        """
        records = self.records.get(infohash)
        if records is None or not peer.is_lt_punch() or not self.config.hole_punching_enabled:
            return False
        key = (infohash, peer.peer_id, "punch")
        task = self._tasks.get(key)
        if task is not None and not task.done():
            logger.debug("punch to %s already under way: not starting another", peer.peer_id)
            return False
        old = records.get(peer.peer_id)
        if (old is not None and old.state in (S.CONNECTED, S.PUNCHING)
                and self._profiles.get(peer.peer_id) == peer):
            return False
        self._profiles[peer.peer_id] = peer
        me = self._me()
        role = "initiator" if plan.is_initiator(me, peer) else "responder"
        rec = PunchRecord(infohash, peer.peer_id, role, self._now(), peer_nat=peer.nat)
        rec.strategy = recommend_strategy(me.nat_summary or me.nat,
                                          peer.nat_summary or peer.nat)
        records[peer.peer_id] = rec
        self._touch(infohash)
        if role == "initiator":
            self._start(key, self._initiate(rec, me, peer), f"punch-{peer.peer_id}")
        return True

    def peer_left(self, infohash: str, peer_id: str) -> None:
        """A member left the room: its punch stops (a connection already made stays)."""
        if infohash not in self.records:
            return
        for part in ("punch", "respond"):
            task = self._tasks.pop((infohash, peer_id, part), None)
            if task is not None:
                task.cancel()
        rec = self.records[infohash].get(peer_id)
        if rec is not None and rec.state in (S.PENDING, S.PUNCHING, S.DROPPED):
            self._move(rec, S.FAILED, reason="peer left the room")
        self._emit(PeerLeft(infohash, peer_id))

    def receive(self, sender: str, room: str, data: dict[str, Any]) -> None:
        """A punch message relayed from ``sender``.

        Raises:
            RemoteProtocolError: ``data`` is not a punch message.
        """
        msg = PunchMessage.from_data(data)
        if msg.kind == plan.OFFER:
            # The initiator's next attempt supersedes our answer to its last one.
            key = (msg.infohash, sender, "respond")
            self._start(key, self._respond(sender, room, msg), f"respond-{sender}")
            return
        fut = self._answers.pop(msg.punch_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def connection_lost(self, infohash: str, endpoint: Address, reason: str, *,
                        repunch: bool = True) -> None:
        """libtorrent lost the connection to ``endpoint``: a punched TCP path, a
        stream's (its path may be gone) or a relayed one is punched
        again (plain uTP survives: our keep-alives hold the NAT mappings open and
        libtorrent redials). Not with ``repunch`` False (our torrent is complete: the
        end that still downloads punches again if it needs us; two seeds' connection
        is closed by libtorrent anyway)."""
        rec = next((r for r in self.records.get(infohash, {}).values()
                    if r.state == S.CONNECTED and r.method in ("tcp", "udp", "predict", "relay")
                    and r.endpoint == endpoint), None)
        if rec is None:
            return
        self._drop(rec, reason)
        if repunch or (rec.method == "predict" and self._me().nat == "symmetric"):
            # Only the symmetric side can start a prediction: it punches again even
            # when complete, or a peer that still downloads could not get it back.
            self.reconnect(infohash, rec.peer_id, wait=True)

    def reconnect(self, infohash: str, peer_id: str, *, wait: bool = False) -> bool:
        """Punch again to a peer whose punched connection was lost (DROPPED), unless a
        punch to it runs already; ``wait``: as responder, give the initiator
        :data:`REPUNCH_RESPONDER_DELAY` first. Returns whether a punch runs now."""
        rec = self.records.get(infohash, {}).get(peer_id)
        if rec is None:
            return False
        key = (infohash, rec.peer_id, "punch")
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return True
        if rec.state != S.DROPPED:
            return False
        self._start(key, self._repunch(rec, wait=wait), f"repunch-{rec.peer_id}")
        return True

    def stalled(self, infohash: str, endpoint: Address, transport: str,
                productive: bool = False) -> bool:
        """Our connection to ``endpoint`` stalled (:mod:`lt_punch.torrent.stall`): if it
        is a punched one, punch again, the stalled method last. ``productive``: it had
        delivered enough before (:data:`~lt_punch.torrent.stall.PRODUCTIVE`) for this
        not to count towards :data:`MAX_REPUNCHES`. Returns whether it was punched (the
        caller then only closes the connection: a plain redial would not cross the
        NATs)."""
        rec = self._punched_at(infohash, endpoint, transport)
        if rec is None or rec.method is None:
            return False
        rec.stalled.add(rec.method)
        self._drop(rec, f"{rec.method} connection stalled", productive=productive)
        # At once, whatever our role: only the downloading end sees a stall, so the
        # initiator may never punch again by itself.
        self.reconnect(infohash, rec.peer_id)
        return True

    def has_stream_alternative(self, infohash: str, endpoint: Address, transport: str) -> bool:
        """Whether the connection to ``endpoint`` is a punched one on libtorrent's TCP or
        uTP whose pair can punch the ``udp`` stream instead (a crawl under loss is then
        worth a re-punch: :data:`~lt_punch.torrent.stall.DEGRADED`)."""
        rec = self._punched_at(infohash, endpoint, transport)
        if rec is None or rec.method not in LOSSY or "udp" in rec.stalled or any(
                f.get("method") == "udp" for f in rec.failures):
            return False  # (a crawl is no reason to try again what did not connect)
        peer = self._profiles.get(rec.peer_id)
        return peer is not None and "udp" in plan.plan_methods(self._me(), peer,
                                                                self.config.methods)

    def _punched_at(self, infohash: str, endpoint: Address,
                    transport: str) -> PunchRecord | None:
        """The connected punch record of the connection ``endpoint`` over ``transport``."""
        return next((r for r in self.records.get(infohash, {}).values()
                     if r.state == S.CONNECTED and r.endpoint is not None
                     and r.endpoint[0] == endpoint[0]
                     and (r.endpoint == endpoint or r.method == transport)), None)

    async def wait_for(self, predicate: Callable[[], Any]) -> Any:
        """Wait until ``predicate()`` is truthy (checked at each change); returns it.
        No timeout of its own: callers bound it."""
        while True:
            result = predicate()
            if result:
                return result
            await self._changed.wait()

    async def keepalive(self, extra: Callable[[], Iterable[Address]] = tuple) -> None:
        """Refresh NAT mappings forever: ``extra()`` endpoints (the reflector) and
        every punched uTP peer."""
        while True:
            await asyncio.sleep(self.config.keep_alive_interval)
            targets = list(extra())
            targets += [r.endpoint for records in self.records.values()
                        for r in records.values()
                        if r.state == S.CONNECTED and r.method == "utp" and r.endpoint]
            for endpoint in targets:
                self._dialer.open_nat(endpoint)

    async def close(self) -> None:
        """Cancel every punch and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for fut in self._answers.values():
            fut.cancel()
        self._answers.clear()

    # -- state --------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _touch(self, infohash: str) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._changed_hook(infohash)

    def _move(self, rec: PunchRecord, state: PunchState, **how: Any) -> None:
        """The one place a punch changes state: move, publish, wake the waiters."""
        try:
            event = rec.transition(state, now=self._now(), **how)
        except TransitionError:
            logger.exception("punch state machine")  # a bug: say so, keep punching
            return
        if event is not None:
            self._emit(event)
        self._touch(rec.infohash)

    def _drop(self, rec: PunchRecord, reason: str, *, productive: bool = False) -> None:
        """A punched connection is gone: DROPPED (the re-punch count starts over when it
        was ``productive`` or had lasted :data:`REPUNCH_FORGIVE`)."""
        lasted = 0.0 if rec.connected_at is None else self._now() - rec.connected_at
        if productive or lasted >= REPUNCH_FORGIVE:
            rec.repunches = 0
        self._move(rec, S.DROPPED, reason=reason)

    def _give_up(self, rec: PunchRecord, reason: str) -> None:
        """FAILED, unless another path (an answer to the peer's own offer) connected."""
        if rec.state != S.CONNECTED:
            self._move(rec, S.FAILED, reason=reason)

    def _fail(self, rec: PunchRecord, method: str, attempt: int, reason: str) -> None:
        self._emit(rec.fail(method, attempt, reason))

    def _start(self, key: tuple[str, str, str], coro: Coroutine[Any, Any, None],
               name: str) -> None:
        old = self._tasks.pop(key, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None)
                               if self._tasks.get(key) is t else None)

    async def _until_ready(self, infohash: str) -> bool:
        try:
            async with asyncio.timeout(self.config.connection_timeout):
                await self._dialer.ready(infohash)
        except TimeoutError:
            return False
        return True

    # -- initiator ----------------------------------------------------------------------

    async def _initiate(self, rec: PunchRecord, me: PeerProfile, peer: PeerProfile) -> None:
        methods = plan.plan_methods(me, peer, self.config.methods)
        methods.sort(key=lambda m: _after_stalls(m, rec.stalled))
        if not methods:
            reason = "no punch method fits this pair of NATs"
            self._fail(rec, "none", 0, reason)
            self._move(rec, S.FAILED, reason=reason)
            return
        self._move(rec, S.PUNCHING)
        if not await self._until_ready(rec.infohash):
            reason = "torrent not ready for peers (still checking?)"
            self._fail(rec, methods[0], 0, reason)
            self._give_up(rec, reason)
            return
        attempts = self.config.punch_attempts
        for attempt in range(1, attempts + 1):
            delay = plan.retry_delay(attempt)
            if delay:
                await asyncio.sleep(delay)
            for i, method in enumerate(methods):
                last = attempt == attempts and i == len(methods) - 1
                why = await self._attempt(rec, peer, method, attempt, last=last)
                if why is None:
                    return
                self._fail(rec, method, attempt, why)
        self._give_up(rec, rec.last_reason or "no attempt")

    async def _attempt(self, rec: PunchRecord, peer: PeerProfile, method: str,
                       attempt: int, *, last: bool = True) -> str | None:
        """One offer and, when answered, one dial: None when connected, else why not.
        Unless it is the ``last`` attempt, a handshake gets :data:`HANDSHAKE_WAIT`."""
        rec.attempts += 1
        if method == "relay":
            return await self._attempt_relay(rec, peer, attempt)
        if method == "predict":
            return await self._attempt_predict(rec, peer, attempt)
        if method == "udp":
            return await self._attempt_udp(rec, peer, attempt)
        endpoint = endpoint_for(method, peer)
        assert endpoint is not None  # plan.usable() checked it
        answer = await self._exchange(rec, peer, PunchMessage(
            plan.OFFER, rec.infohash, method, attempt, self._punch_id()))
        if isinstance(answer, str):
            return answer
        watch = await self._dialer.dial(rec.infohash, method, endpoint)
        rec.immediate = watch.immediate
        timeout = self.config.connection_timeout
        return await self._connected(rec, method, watch,
                                     within=timeout if last else min(timeout, HANDSHAKE_WAIT))

    async def _attempt_relay(self, rec: PunchRecord, peer: PeerProfile,
                             attempt: int) -> str | None:
        """The allocating side (:func:`~lt_punch.punch.plan.relay_allocator`) sends its
        relayed address; the other dials it. When the peer was to allocate and could
        not (its TURN server refused it, say) and we have a TURN server, we allocate."""
        me = self._me()
        why = await self._relay_once(rec, peer, attempt,
                                     allocate=plan.relay_allocator(me, peer) is me)
        if (why is not None and why.startswith("peer refused: relay: ") and me.turn
                and plan.relay_allocator(me, peer) is not me):
            logger.info("the peer's relay failed (%s): allocating ours", why)
            self._fail(rec, "relay", attempt, why)
            return await self._relay_once(rec, peer, attempt, allocate=True)
        return why

    async def _relay_once(self, rec: PunchRecord, peer: PeerProfile, attempt: int, *,
                          allocate: bool) -> str | None:
        watch: Watch | None = None
        relayed = None
        if allocate:
            try:
                relayed, watch = await self._dialer.open_relay(rec.infohash, peer.ips())
            except DialFailed as exc:
                return f"relay: {exc}"
        exchange = self._exchange(rec, peer, PunchMessage(
            plan.OFFER, rec.infohash, "relay", attempt, self._punch_id(), relayed=relayed))
        answer = await (exchange if watch is None else self._watched(watch, exchange))
        if isinstance(answer, str):
            if watch is not None:
                watch.cancel()
            return answer
        if watch is None:
            if answer.relayed is None:
                return "peer answered without a relayed address"
            watch = await self._dialer.dial(rec.infohash, "relay", answer.relayed)
        return await self._connected(rec, "relay", watch)

    async def _attempt_predict(self, rec: PunchRecord, peer: PeerProfile,
                               attempt: int) -> str | None:
        """We are the symmetric side: offer a secret, then open our flows towards the
        probe mapping the cone side answers with. (The cone side never starts it: after
        a stall or a loss it may be the one punching again, and then leaves prediction
        to the symmetric side's next attempt.)"""
        if self._me().nat != "symmetric":
            return "port prediction is started by the symmetric side"
        secret = new_secret()
        answer = await self._exchange(rec, peer, PunchMessage(
            plan.OFFER, rec.infohash, "predict", attempt, self._punch_id(), secret=secret))
        if isinstance(answer, str):
            return answer
        # Our 256 flows go where the answer says: only to the peer's own address.
        why = _refused_mapping(answer.probe, peer, "probe mapping")
        if why is not None or answer.probe is None:
            return why
        watch = await self._dialer.predict_hard(rec.infohash, secret, answer.probe,
                                                within=self.config.connection_timeout)
        return await self._connected(rec, "predict", watch)

    async def _attempt_udp(self, rec: PunchRecord, peer: PeerProfile,
                           attempt: int) -> str | None:
        """Offer a secret and our new socket's mapping; punch to the mapping the peer
        answers with, and take its stream into libtorrent."""
        secret = new_secret()
        try:
            mapping, sock = await self._dialer.udp_socket(secret)
        except DialFailed as exc:
            return f"udp: {exc}"
        try:
            answer = await self._exchange(rec, peer, PunchMessage(
                plan.OFFER, rec.infohash, "udp", attempt, self._punch_id(), secret=secret,
                probe=mapping))
        except BaseException:
            sock.close()
            raise
        probe = None if isinstance(answer, str) else answer.probe
        why = answer if isinstance(answer, str) else _refused_mapping(probe, peer, "mapping")
        if why is not None or probe is None:
            sock.close()
            return why
        watch = self._dialer.udp_punch(rec.infohash, sock, probe,
                                       within=self.config.connection_timeout, carry_out=False)
        return await self._connected(rec, "udp", watch)

    @staticmethod
    async def _watched(watch: Watch, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro``; ``watch`` is cancelled if it is (a newer offer, the peer left)
        before the watch is handed to :meth:`_connected`, which cancels it itself."""
        try:
            return await coro
        except BaseException:
            watch.cancel()
            raise

    def _punch_id(self) -> str:
        return f"{self._me().peer_id}:{secrets.token_hex(4)}"

    async def _exchange(self, rec: PunchRecord, peer: PeerProfile,
                        offer: PunchMessage) -> PunchMessage | str:
        """Send ``offer``; the peer's answer, or why there is none to act on."""
        fut: asyncio.Future[PunchMessage] = asyncio.get_running_loop().create_future()
        self._answers[offer.punch_id] = fut
        try:
            if self.relay is None:
                raise SignalingError("not connected")
            await self.relay.relay(peer.peer_id, rec.infohash, offer.to_data())
            async with asyncio.timeout(min(5.0, self.config.connection_timeout)):
                answer = await fut
        except TimeoutError:
            return "no punch-answer from peer"
        except SignalingError as exc:
            return f"signaling: {exc}"
        finally:
            self._answers.pop(offer.punch_id, None)
            fut.cancel()
        if answer.kind != plan.ANSWER:
            return f"peer refused: {answer.reason}"
        return answer

    async def _connected(self, rec: PunchRecord, method: str, watch: Watch, *,
                         within: float | None = None) -> str | None:
        """Wait ``within`` seconds (default ``connection_timeout``) for the connection."""
        timeout = self.config.connection_timeout if within is None else within
        try:
            async with asyncio.timeout(timeout):
                endpoint = await watch.wait()
        except TimeoutError:
            return f"no connection within {timeout:g} s"
        except DialFailed as exc:
            return f"libtorrent: {exc}"
        finally:
            watch.cancel()
        if rec.state != S.CONNECTED:  # else another path connected first
            self._move(rec, S.CONNECTED, method=method, endpoint=endpoint)
        return None

    # -- responder ----------------------------------------------------------------------

    async def _respond(self, peer_id: str, room: str, offer: PunchMessage) -> None:
        records = self.records.get(offer.infohash)
        rec = records.get(peer_id) if records is not None else None
        if rec is None and records is not None:
            # The offer can overtake our own processing of the room's member list.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OFFER_OVERTAKE_WAIT):
                    rec = await self.wait_for(lambda: records.get(peer_id))
        peer = self._profiles.get(peer_id)
        refusal = None
        if records is None or offer.infohash != room:
            refusal = "no such torrent here"
        elif offer.method not in self.config.methods or not self.config.hole_punching_enabled:
            refusal = f"method {offer.method} disabled"
        elif rec is None or peer is None:
            refusal = "unknown peer"
        elif not await self._until_ready(offer.infohash):
            refusal = "torrent not ready for peers"
        elif endpoint_for(offer.method, peer) is None:
            refusal = "no endpoint for method"
            self._fail(rec, offer.method, offer.attempt, refusal)
            self._move(rec, S.FAILED, reason=refusal)
        if refusal is not None or rec is None or peer is None:
            await self._reply(peer_id, room, offer.reply(plan.FAILED, refusal))
            return
        endpoint = endpoint_for(offer.method, peer)
        assert endpoint is not None
        if rec.state == S.CONNECTED and rec.endpoint is not None:
            # The peer punches again while we hold a connection to it: its side is
            # gone (a stall, a loss we did not see). Ours would make libtorrent refuse
            # the new connection as a duplicate peer id ("end of file" at once).
            self._dialer.disconnect(rec.infohash, rec.endpoint)
        self._move(rec, S.PUNCHING)
        rec.attempts += 1
        reason = await self._prepare_and_answer(rec, peer, offer, endpoint)
        if reason is not None:
            self._fail(rec, offer.method, offer.attempt, reason)
            self._give_up(rec, reason)

    async def _prepare_and_answer(self, rec: PunchRecord, peer: PeerProfile,
                                  offer: PunchMessage, endpoint: Address) -> str | None:
        answer = offer.reply(plan.ANSWER)
        if offer.method == "relay":
            return await self._answer_relay(rec, peer, offer)
        if offer.method == "predict":
            return await self._answer_predict(rec, peer, offer)
        if offer.method == "udp":
            return await self._answer_udp(rec, peer, offer)
        if offer.method == "utp" or self._me().nat == "open":
            if offer.method == "utp":
                # Open our NAT towards the initiator from libtorrent's UDP socket,
                # then answer: its uTP SYN will find the hole open.
                self._dialer.open_nat(endpoint)
                source = endpoint
            else:
                # We are directly reachable: the initiator dials our listen port
                # from its outgoing port; nothing to open here.
                source = peer.tcp or endpoint
            watch = self._dialer.expect(rec.infohash, source,
                                        any_port=peer.nat == "symmetric")
            try:
                assert self.relay is not None
                await self.relay.relay(peer.peer_id, offer.infohash, answer.to_data())
            except SignalingError as exc:
                watch.cancel()
                return f"signaling: {exc}"
            return await self._connected(rec, offer.method, watch)
        # TCP simultaneous open: our SYN first (it opens our NAT), then the answer.
        watch = await self._dialer.dial(rec.infohash, "tcp", endpoint)
        rec.immediate = watch.immediate
        if not await self._reply(peer.peer_id, offer.infohash, answer):
            # The peer never hears of this attempt; let our SYN run its course.
            logger.info("punch answer to %s not sent", peer.peer_id)
        return await self._connected(rec, "tcp", watch)

    async def _answer_predict(self, rec: PunchRecord, peer: PeerProfile,
                              offer: PunchMessage) -> str | None:
        """We are the cone side: answer with our probe socket's mapping, then probe."""
        reason = None
        if offer.secret is None:
            reason = "predict offer without a secret"
        elif peer.udp is None:
            reason = "no address of the peer to probe"
        elif self._me().nat == "symmetric":
            reason = "port prediction needs the cone side to probe; we are symmetric"
        else:
            try:
                probe, watch = await self._dialer.predict_easy(
                    rec.infohash, offer.secret, peer.udp[0],
                    within=self.config.connection_timeout)
            except DialFailed as exc:
                reason = f"predict: {exc}"
        if reason is not None:
            await self._reply(peer.peer_id, offer.infohash, offer.reply(plan.FAILED, reason))
            return reason
        return await self._watched(watch, self._answer_then_wait(
            rec, peer, offer.reply(plan.ANSWER, probe=probe), watch))

    async def _answer_udp(self, rec: PunchRecord, peer: PeerProfile,
                          offer: PunchMessage) -> str | None:
        """Answer with a new socket's mapping, having started to probe the initiator's
        (our probes open our NAT for its own)."""
        reason = None
        if offer.secret is None or offer.probe is None:
            reason = "udp offer without a secret or a mapping"
        elif (reason := _refused_mapping(offer.probe, peer, "mapping")) is None:
            try:
                mapping, sock = await self._dialer.udp_socket(offer.secret)
            except DialFailed as exc:
                reason = f"udp: {exc}"
        if reason is not None or offer.probe is None:
            await self._reply(peer.peer_id, offer.infohash, offer.reply(plan.FAILED, reason))
            return reason
        watch = self._dialer.udp_punch(rec.infohash, sock, offer.probe,
                                       within=self.config.connection_timeout, carry_out=True)
        return await self._watched(watch, self._answer_then_wait(
            rec, peer, offer.reply(plan.ANSWER, probe=mapping), watch))

    async def _answer_relay(self, rec: PunchRecord, peer: PeerProfile,
                            offer: PunchMessage) -> str | None:
        if offer.relayed is not None:  # the initiator allocated: dial its relay
            watch = await self._dialer.dial(rec.infohash, "relay", offer.relayed)
            if not await self._reply(peer.peer_id, offer.infohash, offer.reply(plan.ANSWER)):
                logger.info("relay answer to %s not sent", peer.peer_id)
            return await self._connected(rec, "relay", watch)
        try:
            relayed, watch = await self._dialer.open_relay(rec.infohash, peer.ips())
        except DialFailed as exc:
            reason = f"relay: {exc}"
            await self._reply(peer.peer_id, offer.infohash, offer.reply(plan.FAILED, reason))
            return reason
        return await self._watched(watch, self._answer_then_wait(
            rec, peer, offer.reply(plan.ANSWER, relayed=relayed), watch))

    async def _answer_then_wait(self, rec: PunchRecord, peer: PeerProfile,
                                answer: PunchMessage, watch: Watch) -> str | None:
        """Send ``answer`` (the peer acts on what it carries), then wait for ``watch``."""
        if not await self._reply(peer.peer_id, answer.infohash, answer):
            watch.cancel()
            return f"signaling: {answer.method} answer not sent"
        return await self._connected(rec, answer.method, watch)

    async def _reply(self, peer_id: str, room: str, msg: PunchMessage) -> bool:
        if self.relay is None:
            return False
        try:
            await self.relay.relay(peer_id, room, msg.to_data())
        except SignalingError as exc:
            logger.info("cannot send %s to %s: %s", msg.kind, peer_id, exc)
            return False
        return True

    # -- re-punch ---------------------------------------------------------------------

    async def _repunch(self, rec: PunchRecord, *, wait: bool = True) -> None:
        if rec.role != "initiator" and wait:
            # The initiator punches again if it saw the loss too; if it did not (the
            # connection died on our side only), we do, as initiator of this punch.
            await asyncio.sleep(REPUNCH_RESPONDER_DELAY)
            if rec.state != S.DROPPED:
                return
        peer = self._profiles.get(rec.peer_id)
        if peer is None:
            self._move(rec, S.FAILED, reason="connection lost; the peer is gone")
            return
        if rec.repunches >= MAX_REPUNCHES:
            self._move(rec, S.FAILED, reason=f"connection lost again after "
                                             f"{MAX_REPUNCHES} re-punches: giving up")
            return
        rec.repunches += 1
        await self._initiate(rec, self._me(), peer)

