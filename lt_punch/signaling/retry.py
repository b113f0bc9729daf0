"""When and how soon a reconnecting signaling client tries again. No I/O.

The client reconnects after exponential backoff with full jitter: the delay before
attempt ``n`` is uniform in ``[0, min(maximum, initial * 2 ** (n - 1))]``, so clients
that lost the same server spread their returns instead of arriving together. Some
``register`` refusals cannot be fixed by retrying (:data:`FATAL_CODES`); others say the
server no longer knows the session to resume (:func:`forgets_session`). The randomness
is passed in (a seeded ``random.Random`` in tests).
"""

from __future__ import annotations

import random

__all__ = ["FATAL_CODES", "backoff_delay", "forgets_session"]

FATAL_CODES = frozenset({"auth-required", "bad-token", "token-expired", "bad-peer-id"})
"""``register`` refusals that stop reconnecting: retrying cannot fix them."""

_SESSION_KEPT = frozenset({"peer-id-taken", "rate-limited", "disconnected", "closed"})
"""Failures of a resuming ``register`` after which the session key may still be good:
the old connection still holds it, or the refusal had nothing to do with it."""


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Delay before reconnection attempt ``attempt`` (1, 2, ...): full jitter, uniform
    in ``[0, min(maximum, initial * 2 ** (attempt - 1))]``."""
    bound = min(maximum, initial * 2.0 ** min(attempt - 1, 60))
    return rng.uniform(0.0, bound)


def forgets_session(code: str | None) -> bool:
    """Should a client whose resuming ``register`` failed with ``code`` stop offering
    its session key (and register afresh next time)?"""
    return code not in _SESSION_KEPT
