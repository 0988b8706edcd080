"""The token bucket that samples undecodable datagrams into the DLQ: the bound it keeps, what it counts."""

from __future__ import annotations

import pytest

from ingest.sampling import DeadLetterSampler


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rate", [10.0, 0.5, 250.0])
def test_dead_letters_stay_within_rate_times_seconds_plus_burst(rate: float):
    clock = Clock()
    sampler = DeadLetterSampler(rate, clock=clock)
    inputs, seconds = 100_000, 5.0
    letters = reported = 0
    for i in range(inputs):
        clock.now = 100.0 + i * seconds / inputs
        skipped = sampler.sample("garbage" if i % 3 else "short")
        if skipped is not None:
            letters += 1
            reported += skipped
    burst = max(1.0, rate)
    assert rate * seconds <= letters <= rate * seconds + burst
    unsampled = sum(sampler.unsampled.values())
    assert letters + unsampled == inputs
    assert set(sampler.unsampled) == {"garbage", "short"}
    # every refused input is reported by the next letter, but for those after the last letter
    assert 0 <= unsampled - reported <= inputs / seconds / rate + 1


def test_each_letter_reports_the_inputs_refused_since_the_previous_one():
    clock = Clock()
    sampler = DeadLetterSampler(2.0, clock=clock)
    assert [sampler.sample("garbage") for _ in range(5)] == [0, 0, None, None, None]
    clock.now += 0.5  # one token
    assert sampler.sample("short") == 3
    assert sampler.sample("short") is None
    assert dict(sampler.unsampled) == {"garbage": 3, "short": 1}


def test_a_long_silence_refills_only_the_burst():
    clock = Clock()
    sampler = DeadLetterSampler(3.0, clock=clock)
    clock.now += 3600.0
    outcomes = [sampler.sample("garbage") for _ in range(10)]
    assert sum(o is not None for o in outcomes) == 3


def test_rate_zero_only_counts_and_a_negative_rate_is_refused():
    clock = Clock()
    sampler = DeadLetterSampler(0.0, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        assert sampler.sample("garbage") is None
    assert sampler.unsampled == {"garbage": 100}
    with pytest.raises(ValueError, match="0 or more"):
        DeadLetterSampler(-1.0)
