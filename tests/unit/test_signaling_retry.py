"""The reconnecting client's retry policy (no I/O, seeded randomness)."""

from __future__ import annotations

import random

from lt_punch.signaling.retry import FATAL_CODES, backoff_delay, forgets_session


def test_backoff_bound_doubles_up_to_the_maximum() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert [backoff_delay(n, 0.5, 3.0, Top()) for n in (1, 2, 3, 4, 5)] == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(10_000, 0.5, 3.0, Top()) == 3.0  # no overflow


def test_backoff_is_full_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, 1.0, 30.0, rng) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays) and min(delays) < 1.0 < max(delays)


def test_which_refusals_stop_or_reset_the_session() -> None:
    assert "bad-token" in FATAL_CODES and "peer-id-taken" not in FATAL_CODES
    assert not forgets_session("peer-id-taken") and not forgets_session("disconnected")
    assert forgets_session("unknown-session") and forgets_session(None)
