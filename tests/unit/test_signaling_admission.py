"""Connection and rate limits of the signaling server (no I/O, fake clock)."""

from __future__ import annotations

import pytest

from lt_punch.signaling.admission import Admission, Verdict, address_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_connections_per_address_are_capped_except_for_trusted() -> None:
    admission = Admission(max_connections_per_address=2, clock=Clock())
    assert admission.admit("192.0.2.1") and admission.admit("192.0.2.1")
    assert admission.admit("192.0.2.1") is None
    assert all(admission.admit("127.0.0.1") for _ in range(5))  # trusted: loopback
    admission.release("192.0.2.1")
    assert admission.admit("192.0.2.1") is not None


def test_refusals_in_a_row_close_and_a_refill_resets_them() -> None:
    clock = Clock()
    admission = Admission(rate=1.0, burst=2.0, max_refusals=3, clock=clock)
    quota = admission.admit("192.0.2.1")
    assert quota is not None
    assert [quota.take() for _ in range(4)] == [Verdict.ACCEPT, Verdict.ACCEPT,
                                                Verdict.REFUSE, Verdict.REFUSE]
    clock.now += 1.0
    assert quota.take() is Verdict.ACCEPT and quota.refusals == 0
    assert [quota.take() for _ in range(3)] == [Verdict.REFUSE] * 2 + [Verdict.CLOSE]


def test_address_bucket_is_shared_by_connections_and_swept_when_idle() -> None:
    clock = Clock()
    admission = Admission(address_rate=1.0, address_burst=1.0, clock=clock)
    first, second = admission.admit("192.0.2.1"), admission.admit("192.0.2.1")
    assert first is not None and second is not None
    assert first.take() is Verdict.ACCEPT
    assert second.take() is Verdict.REFUSE  # the address's one token is spent
    admission.release("192.0.2.1")
    admission.release("192.0.2.1")
    clock.now += 1.0
    admission.sweep()
    assert admission._address_buckets == {}


@pytest.mark.parametrize("raw, expected", [
    (("192.0.2.1", 80), ("192.0.2.1", 80)),
    (("2001:db8::1", 443, 0, 0), ("2001:db8::1", 443)),
    (None, ("", 0)),
])
def test_address_of(raw: object, expected: tuple[str, int]) -> None:
    assert address_of(raw) == expected


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="address_rate must be > 0"):
        Admission(address_rate=0)
    with pytest.raises(ValueError, match="max_refusals >= 1"):
        Admission(max_refusals=0)
