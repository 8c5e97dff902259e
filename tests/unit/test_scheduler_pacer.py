"""Pacer and TokenBucket on a fake clock."""

from __future__ import annotations

import pytest

from hpcagent.scheduler.pacer import Pacer, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_caps_rate_whatever_the_demand() -> None:
    clock = FakeClock()
    bucket = TokenBucket(30, burst=5, clock=clock, sleep=clock.sleep)
    for _ in range(65):
        bucket.acquire()
    # 5 at once, then 30 per minute: 60 more need 120 s.
    assert clock.now == pytest.approx(120.0)


def test_try_acquire_never_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, burst=2, clock=clock, sleep=clock.sleep)
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    clock.now += 1.0
    assert bucket.try_acquire()
    assert clock.now == 1.0


def test_pacer_backs_off_while_nothing_changes() -> None:
    clock = FakeClock()
    pacer = Pacer(
        interval_s=10, max_interval_s=40, backoff_factor=2, clock=clock, sleep=clock.sleep
    )
    waits = [pacer.record_cycle(changed=False) for _ in range(4)]
    assert waits == [20, 40, 40, 40]
    assert pacer.record_cycle(changed=True) == 10
    assert pacer.wait(changed=False) == 20
    assert clock.now == 20
    pacer.reset()
    assert pacer.current_s == 10


def test_pacer_slow_controller_gets_fewer_calls() -> None:
    pacer = Pacer(interval_s=5, max_interval_s=60, min_call_factor=10)
    assert pacer.record_cycle(changed=True, duration_s=2.0) == 20.0


def test_bad_settings_rejected() -> None:
    with pytest.raises(ValueError, match="interval"):
        Pacer(interval_s=10, max_interval_s=5)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
