"""The state of one punch, and the only place it changes. No I/O.

Everything that affects a punch's state lives here (after h11's ``_state.py``):
:data:`TRANSITIONS` is the table of allowed moves and :meth:`PunchRecord.transition`
applies one, returning the event that announces it, so that no path can change a
state and forget to say so::

    PENDING ──► PUNCHING ──► CONNECTED ──► DROPPED ──► PUNCHING (re-punch)
       │           │ ▲                        │
       └───────────┴─┴──► FAILED ◄────────────┘      (a later offer may punch again)
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import LtPunchError
from ..torrent.events import ConnectionLost, PeerPunched, PunchAttemptFailed, PunchFailed
from ..types import Address

logger = logging.getLogger(__name__)


class PunchState(enum.StrEnum):
    """Where a punch between us and one peer of one torrent stands."""

    PENDING = "pending"
    """Met in the room; the initiator has not started (or we wait for its offer)."""
    PUNCHING = "punching"
    CONNECTED = "connected"
    DROPPED = "dropped"
    """The punched connection was lost; a re-punch may follow."""
    FAILED = "failed"


P = PunchState
TRANSITIONS: dict[PunchState, frozenset[PunchState]] = {
    P.PENDING: frozenset({P.PUNCHING, P.FAILED}),
    # PUNCHING -> PUNCHING: a responder answers the initiator's next attempt.
    P.PUNCHING: frozenset({P.PUNCHING, P.CONNECTED, P.FAILED}),
    P.CONNECTED: frozenset({P.DROPPED, P.PUNCHING}),
    P.DROPPED: frozenset({P.PUNCHING, P.FAILED}),
    P.FAILED: frozenset({P.PUNCHING, P.FAILED}),
}
"""Allowed moves. CONNECTED -> PUNCHING: an offer that comes after we saw the
connection (the other side lost it first). FAILED -> FAILED: a refused later attempt."""

SETTLED = frozenset({P.CONNECTED, P.FAILED})
"""States a caller waiting for the outcome of a punch stops at."""

PunchEvent = PeerPunched | PunchFailed | ConnectionLost | PunchAttemptFailed


class TransitionError(LtPunchError):
    """A move that :data:`TRANSITIONS` does not allow (a bug in the engine)."""


@dataclass
class PunchRecord:
    """What happened between us and one peer of one torrent."""

    infohash: str
    peer_id: str
    role: str
    started_at: float
    peer_nat: str = "unknown"
    state: PunchState = PunchState.PENDING
    repunches: int = 0
    """Punches again after a punched connection was lost or stalled."""
    stalled: set[str] = field(default_factory=set)
    """Methods whose connection stalled (tried last when punching again)."""
    method: str | None = None
    endpoint: Address | None = None
    attempts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    connected_at: float | None = None
    immediate: bool = False
    strategy: dict[str, Any] | None = None
    """:func:`~lt_punch.punch.strategy.recommend_strategy` for the pair (same on both ends)."""

    def __post_init__(self) -> None:
        self.state = PunchState(self.state)

    @property
    def time_to_connect(self) -> float | None:
        if self.connected_at is None:
            return None
        return self.connected_at - self.started_at

    @property
    def last_reason(self) -> str | None:
        return self.failures[-1]["reason"] if self.failures else None

    def fail(self, method: str, attempt: int, reason: str) -> PunchAttemptFailed:
        """Record a failed attempt (no change of state); returns its event."""
        self.failures.append({"method": method, "attempt": attempt, "reason": reason})
        logger.info("punch %s %s attempt %d failed: %s", self.peer_id, method, attempt, reason)
        return PunchAttemptFailed(self.infohash, self.peer_id, method, attempt, reason)

    def transition(
        self, state: PunchState, *, now: float, reason: str | None = None,
        method: str | None = None, endpoint: Address | None = None,
    ) -> PunchEvent | None:
        """Move to ``state``; returns the event announcing it (None: nothing to say).

        CONNECTED needs ``method`` and ``endpoint``; FAILED and DROPPED need ``reason``.

        Raises:
            TransitionError: the move is not in :data:`TRANSITIONS`.
        """
        old = self.state
        if state not in TRANSITIONS[old]:
            raise TransitionError(f"punch {self.peer_id}: {old} -> {state} is not allowed")
        self.state = state
        if state is P.CONNECTED:
            assert method is not None and endpoint is not None
            self.method, self.endpoint, self.connected_at = method, endpoint, now
            logger.info("punched %s via %s to %s:%d in %.3f s", self.peer_id, method,
                        endpoint[0], endpoint[1], self.time_to_connect or 0.0)
            return PeerPunched(self.infohash, self.peer_id, method, endpoint,
                               self.time_to_connect)
        if state is P.FAILED:
            assert reason is not None
            if old is P.FAILED:
                return None  # said already
            return PunchFailed(self.infohash, self.peer_id, reason)
        if state is P.DROPPED:
            assert reason is not None and self.method is not None
            logger.info("punched %s connection to %s lost: %s", self.method, self.peer_id,
                        reason)
            return ConnectionLost(self.infohash, self.peer_id, self.method, reason)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "role": self.role,
            "peer_nat": self.peer_nat,
            "state": str(self.state),
            "stalled": sorted(self.stalled),
            "method": self.method,
            "endpoint": list(self.endpoint) if self.endpoint else None,
            "attempts": self.attempts,
            "repunches": self.repunches,
            "failures": list(self.failures),
            "time_to_connect": self.time_to_connect,
            "immediate": self.immediate,
            "difficulty": self.strategy["difficulty"] if self.strategy else None,
            "expected_success": self.strategy["expected_success"] if self.strategy else None,
        }
