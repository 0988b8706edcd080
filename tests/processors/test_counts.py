"""The counts vocabulary: slots, the arithmetic on counts lists, and their NsCountValues form."""

from __future__ import annotations

from processors.counts import (
    ANSWERED,
    BY_KIND,
    FAILURES,
    OBSERVATIONS,
    SLOTS,
    TIMEOUTS,
    add_counts,
    count_values,
    counts_of,
    failure_rate,
    zero,
)


def test_the_slots_are_the_positions_of_a_counts_list() -> None:
    assert tuple(range(SLOTS)) == (ANSWERED, FAILURES, TIMEOUTS, BY_KIND, OBSERVATIONS)
    assert zero() == [0, 0, 0, None, None]
    assert zero() is not zero()


def test_add_counts_adds_slot_by_slot_and_never_shares_a_map() -> None:
    into = zero()
    other = [4, 2, 1, {"noopt": 2}, {"badvers": 1}]
    add_counts(into, other)
    add_counts(into, [1, 1, 0, {"noopt": 1, "formerr": 0}, None])
    assert into == [5, 3, 1, {"noopt": 3, "formerr": 0}, {"badvers": 1}]
    assert into[BY_KIND] is not other[BY_KIND]
    assert other == [4, 2, 1, {"noopt": 2}, {"badvers": 1}]


def test_failure_rate_per_answer_and_zero_without_answers() -> None:
    assert failure_rate([4, 1]) == 0.25
    assert failure_rate(zero()) == 0.0


def test_counts_of_inverts_count_values() -> None:
    for counts in ([4, 2, 1, {"noopt": 2}, {"badvers": 1}], [3, 0, 0, None, None]):
        assert counts_of(count_values(counts)) == counts
    assert count_values([4, 1, 2, None, None]) == {
        "edns_answered": 4,
        "failures": 1,
        "failure_rate": 0.25,
        "by_kind": {},
        "timeouts": 2,
        "observations": {},
    }
