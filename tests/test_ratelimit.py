"""TokenBucket with a fake clock: no sleeping (netchat/protocol/ratelimit.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netchat.protocol.ratelimit import TokenBucket


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def take_all(bucket: TokenBucket, limit: int = 10_000) -> int:
    taken = 0
    while taken < limit and bucket.try_take():
        taken += 1
    return taken


def test_burst_then_refuse() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    assert take_all(bucket) == 5
    assert not bucket.try_take()
    assert bucket.wait_time() == pytest.approx(0.5)


def test_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    take_all(bucket)
    clock.advance(0.49)
    assert not bucket.try_take()
    clock.advance(0.01)
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.advance(1.0)
    assert take_all(bucket) == 2


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    take_all(bucket)
    clock.advance(3600)
    assert take_all(bucket) == 3


def test_wait_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    assert bucket.wait_time() == 0.0
    assert bucket.try_take()
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.wait_time() == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.wait_time() == 0.0
    assert bucket.try_take()


def test_zero_rate_is_unlimited() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=0, burst=0, clock=clock)
    assert bucket.unlimited
    assert take_all(bucket, limit=5000) == 5000
    assert bucket.wait_time() == 0.0


def test_burst_below_one_still_allows_one_event() -> None:
    bucket = TokenBucket(rate=1, burst=0, clock=FakeClock())
    assert bucket.burst == 1.0
    assert take_all(bucket) == 1


@pytest.mark.parametrize(("rate", "burst"), [(-1, 5), (1, -1)])
def test_negative_values_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, clock=FakeClock())


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0, 5), max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    taken = take_all(bucket)
    assert taken == burst
    for step in steps:
        clock.advance(step)
        wait = bucket.wait_time()
        got = take_all(bucket)
        assert (got > 0) == (wait == 0.0)
        taken += got
    elapsed = clock.now - 1000.0
    assert taken <= burst + rate * elapsed + 1e-6
    # wait_time() is exact: after waiting that long, one more event may go ahead.
    clock.advance(bucket.wait_time() + 1e-9)
    assert bucket.try_take()
