"""The aggregator's per-partition state without Kafka: applying batches, the record cache (one changelog
record per changed key, no totals records), exactly_once marks, window expiry, the retired counts, and the
changelog round trip of a restore."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from processors.filter_agent import SourceOrder
from processors.ns_state import NsState, Record, decode_value, encode_value, retired_counts
from processors.ns_stats_batch import DeltaBatch, DeltaRow, decode_batch, encode_batch

NS1, NS2 = "192.0.2.1", "2001:db8::53"


def batch(*rows: DeltaRow, part: int = 0) -> DeltaBatch:
    return decode_batch(encode_batch(part, rows))


def row(ns: str, start: int, failures: int, answered: int | None = None, **by_kind: int) -> DeltaRow:
    return (ns, start, failures if answered is None else answered, failures, 0, by_kind, {})


def restored(records: list[Record], expires: int = 0) -> NsState:
    state = NsState(expires)
    for key, value in records:
        state.load(key, value)
    state.loaded()
    return state


def test_apply_adds_to_totals_and_windows() -> None:
    state = NsState()
    state.apply(batch(row(NS1, 0, 2, 4, noopt=2), row(NS1, 3600, 1, formerr=1), row(NS2, 0, 0, 3)))
    state.apply(batch(row(NS1, 0, 1, noopt=1)))
    assert state.totals[NS1] == [6, 4, 0, {"noopt": 3, "formerr": 1}, None]
    assert state.totals[NS2] == [3, 0, 0, None, None]
    assert state.windows[0][NS1] == [5, 3, 0, {"noopt": 3}, None]
    assert state.windows[3600] == {NS1: [1, 1, 0, {"formerr": 1}, None]}


def test_one_changelog_record_per_changed_key_per_flush() -> None:
    state = NsState()
    for _ in range(3):
        state.apply(batch(row(NS1, 0, 1), row(NS2, 0, 1)))
    records = state.changelog()
    # the totals are not written: a restore adds up the windows (and the retired counts)
    assert sorted(k for k, _ in records) == [b"W0 " + NS1.encode(), b"W0 " + NS2.encode()]
    assert decode_value(dict(records)[b"W0 " + NS1.encode()]) == [3, 3, 0, None, None]
    assert state.changelog() == []
    state.apply(batch(row(NS2, 60, 1)))
    assert [k for k, _ in state.changelog()] == [b"W60 " + NS2.encode()]


def test_snapshots_name_each_changed_window_once_with_the_latest_totals() -> None:
    state = NsState()
    state.apply(batch(row(NS1, 0, 1), row(NS1, 60, 2)))
    state.apply(batch(row(NS1, 0, 1)))
    snaps = {(ns, start): (window[1], total[1]) for ns, start, window, total in state.snapshots()}
    assert snaps == {(NS1, 0): (2, 4), (NS1, 60): (2, 4)}
    assert state.snapshots() == []
    # the snapshots keep their own interval: the changelog was not taken by them
    assert len(state.changelog()) == 2


def test_marks_skip_records_applied_already_per_input_partition() -> None:
    state = NsState()
    assert state.apply(batch(row(NS1, 0, 2)), (1, 99, 0, 0))
    assert state.apply(batch(row(NS1, 3600, 5)), (1, 99, 0, 1))  # the same batch's next part
    assert not state.apply(batch(row(NS1, 0, 2)), (1, 99, 0, 0))  # consumed again after a restart
    assert not state.apply(batch(row(NS1, 0, 7)), (1, 50, 0, 0))
    assert state.apply(batch(row(NS1, 0, 3)), (2, 10, 0, 0))  # another input partition's marks
    assert state.totals[NS1][1] == 10
    assert state.marks == {1: (99, 0, 1), 2: (10, 0, 0)}
    assert restored(state.changelog()).marks == state.marks


def test_a_raw_record_refetched_after_later_ones_still_counts() -> None:
    """The consumer re-fetches a raw record Faust skipped (processors/consumer.py) after later offsets of
    its partition were processed; its batch comes next in :class:`SourceOrder`, not before."""
    order = SourceOrder()
    raw = TP("raw", 1)
    later = order.place(raw, 31)  # offsets 28-31
    refetched = order.place(raw, 27)  # offset 27, fetched again
    assert later < refetched
    state = NsState()
    assert state.apply(batch(row(NS1, 0, 4)), (1, *later, 0))
    assert state.apply(batch(row(NS1, 0, 3)), (1, *refetched, 0))
    assert not state.apply(batch(row(NS1, 0, 3)), (1, *refetched, 0))
    assert state.totals[NS1][1] == 7
    assert order.place(raw, 32) == (32, 0)


def test_source_order_headers() -> None:
    order = SourceOrder()
    raw = TP("raw", 1)
    order.place(raw, 20)
    assert dict(order.headers(raw, 12)) == {
        "dnsqr-source-partition": b"1",
        "dnsqr-source-offset": b"20",
        "dnsqr-source-seq": b"1",
    }


def test_old_windows_are_freed_totals_stay() -> None:
    state = NsState(expires=7200)
    state.apply(batch(row(NS1, 0, 1), row(NS2, 3600, 1)))
    state.changelog()
    state.apply(batch(row(NS1, 7200, 1)))
    assert sorted(state.windows) == [3600, 7200]  # 0 <= 7200 - 7200: expired
    records = dict(state.changelog())
    assert records[b"W0 " + NS1.encode()] is None  # a tombstone: compaction drops the window
    # what the freed window held is NS1's retired counts now; NS2's windows are all live
    assert decode_value(records[b"R" + NS1.encode()]) == [1, 1, 0, None, None]
    assert sorted(records) == [b"R" + NS1.encode(), b"W0 " + NS1.encode(), b"W7200 " + NS1.encode()]
    # a late delta for an expired window counts in the totals only, and in the retired counts
    state.apply(batch(row(NS1, 0, 5, noopt=2)))
    assert 0 not in state.windows
    assert state.totals[NS1][1] == 7
    assert state.changelog() == [(b"R" + NS1.encode(), encode_value([6, 6, 0, {"noopt": 2}, None]))]
    assert all(start != 0 for _, start, _, _ in state.snapshots())
    state.apply(batch(row(NS2, 3 * 3600, 1)))
    assert sorted(state.windows) == [7200, 10800]
    assert state.totals[NS2][1] == 2


def test_expires_zero_keeps_every_window() -> None:
    state = NsState(expires=0)
    state.apply(batch(*(row(NS1, start, 1) for start in (0, 10**6, 10**9))))
    assert sorted(state.windows) == [0, 10**6, 10**9]


def test_a_restore_expires_what_became_old() -> None:
    state = NsState()
    state.apply(batch(row(NS1, 0, 1), row(NS1, 86400, 1)))
    again = restored(state.changelog(), expires=3600)
    assert sorted(again.windows) == [86400]
    assert again.totals[NS1][1] == 2
    assert again.changelog() == [
        (b"W0 " + NS1.encode(), None),
        (b"R" + NS1.encode(), encode_value([1, 1, 0, None, None])),
    ]


def test_retired_counts_are_what_no_live_window_holds() -> None:
    """R = totals - sum(live windows); a tombstone when the windows hold it all; kinds kept exactly (a 0
    that only the retired part holds too), so that R + sum(W) gives back the totals."""
    total = [9, 4, 1, {"noopt": 3, "formerr": 0}, {"badvers": 2}]
    live = [[5, 2, 1, {"noopt": 1}, {"badvers": 2}], [1, 1, 0, {"noopt": 2, "formerr": 0}, None]]
    assert retired_counts(total, live) == [3, 1, 0, None, None]
    assert retired_counts([6, 3, 1, {"noopt": 3, "formerr": 0}, {"badvers": 2}], live) is None
    assert retired_counts([1, 0, 0, {"formerr": 0}, None], []) == [1, 0, 0, {"formerr": 0}, None]
    # a name server in no live window keeps an R record even when it is all zero (it stays in the totals)
    assert retired_counts([0, 0, 0, None, None], []) == [0, 0, 0, None, None]


def test_a_restore_rebuilds_the_totals_of_expired_windows_and_late_deltas() -> None:
    state = NsState(expires=3600)
    records = []
    state.apply(batch(row(NS1, 0, 1, noopt=1), row(NS2, 0, 2)))
    records += state.changelog()
    state.apply(batch(row(NS1, 3600, 1), row(NS2, 7200, 1, formerr=1)))  # frees window 0
    records += state.changelog()
    state.apply(batch(row(NS1, 0, 4, noopt=2), row(NS2, 3600, 1)))  # late deltas for freed windows
    records += state.changelog()
    again = restored(records, expires=3600)
    assert (
        again.totals
        == state.totals
        == {
            NS1: [6, 6, 0, {"noopt": 3}, None],
            NS2: [4, 4, 0, {"formerr": 1}, None],
        }
    )
    assert again.windows == state.windows == {7200: {NS2: [1, 1, 0, {"formerr": 1}, None]}}
    assert again.changelog() == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"T192.0.2.1", encode_value([1, 1, 0, None, None])),  # an older version's totals
        (b"R192.0.2.1", b"\x02[1,1,0,null,null]"),
        (b"R192.0.2.1", encode_value([1, 1])),
        (b"R192.0.2.1", b"\x01[1,"),
        (b"W192.0.2.1", encode_value([1, 1, 0, None, None])),
        (b"M1", encode_value([1, 2])),
        (b"X", encode_value([1])),
    ],
)
def test_a_record_this_version_did_not_write_is_refused(key: bytes, value: bytes) -> None:
    with pytest.raises(ValueError):
        NsState().load(key, value)


@pytest.mark.parametrize(
    ("key", "value"), [(b"T192.0.2.1", encode_value([1, 1, 0, None, None])), (b"R1", b"\x02[]")]
)
def test_an_older_changelog_says_to_start_afresh(key: bytes, value: bytes) -> None:
    with pytest.raises(ValueError, match="delete the changelog topic or use a new app id"):
        NsState().load(key, value)


NAMES = st.sampled_from([NS1, NS2, "198.51.100.7", "fd00::1"])
ROWS = st.lists(
    st.tuples(
        NAMES,
        st.sampled_from([0, 60, 120, 600]),
        st.integers(0, 5),
        st.integers(0, 5),
        st.integers(0, 5),
        st.dictionaries(st.sampled_from(["noopt", "formerr"]), st.integers(1, 3), max_size=2),
        st.dictionaries(st.sampled_from(["badvers"]), st.integers(1, 3), max_size=1),
    ),
    min_size=1,
    max_size=8,
)


@given(
    st.lists(st.tuples(ROWS, st.sampled_from(["", "flush", "restart"])), min_size=1, max_size=12),
    st.sampled_from([0, 120, 300]),
    st.booleans(),
)
def test_state_equals_the_sum_and_a_restore_equals_the_state(
    steps: list[tuple[list[DeltaRow], str]], expires: int, marks: bool
) -> None:
    """Batches applied in any cut (late deltas for expired windows too), the changelog taken at any points,
    the state restored from it at any points and going on: the totals are the sums of all rows, the live
    windows the sums of their rows, and a state restored from everything the changelog received equals the
    state, with nothing left to write."""
    state = NsState(expires)
    records: list[Record] = []
    sums: dict[str, Counter[str]] = defaultdict(Counter)
    for i, (rows, flush) in enumerate(steps):
        assert state.apply(batch(*sorted(rows, key=lambda r: r[1])), (0, i, 0, 0) if marks else None)
        for ns, _start, answered, failures, timeouts, by_kind, observations in rows:
            sums[ns].update(answered=answered, failures=failures, timeouts=timeouts)
            sums[ns].update({f"k:{k}": n for k, n in by_kind.items()})
            sums[ns].update({f"o:{k}": n for k, n in observations.items()})
        if flush:
            records += state.changelog()
        if flush == "restart":
            state = restored(records, expires)
    records += state.changelog()

    def as_counter(c: list[Any]) -> Counter[str]:
        out = Counter(answered=c[0], failures=c[1], timeouts=c[2])
        out.update({f"k:{k}": n for k, n in (c[3] or {}).items()})
        out.update({f"o:{k}": n for k, n in (c[4] or {}).items()})
        return +out

    assert {ns: as_counter(c) for ns, c in state.totals.items()} == {ns: +c for ns, c in sums.items()}
    newest = max(r[1] for rows, _ in steps for r in rows)
    live = {s for rows, _ in steps for r in rows for s in [r[1]] if not expires or s > newest - expires}
    assert set(state.windows) == live
    again = restored(records, expires)
    assert again.totals == state.totals
    assert again.windows == state.windows
    assert again.marks == state.marks
    assert again.changelog() == []
    # nothing was applied twice: replaying every step changes nothing once marks are on
    if marks:
        for i, (rows, _) in enumerate(steps):
            assert not again.apply(batch(*rows), (0, i, 0, 0))
