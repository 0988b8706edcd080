"""The aggregator's per-partition state without Kafka: applying batches, the record cache (one changelog
record per changed key, no totals records), exactly_once marks, window expiry, the retired counts, and the
changelog round trip of a restore."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processors.state
from processors import snapshots
from processors.delta_batch import DeltaBatch, DeltaRow, decode_batch, encode_batch
from processors.state import NsState, Record, decode_value, encode_value, retired_counts

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


def test_the_mark_skips_records_applied_already_by_offset() -> None:
    state = NsState()
    assert state.apply(batch(row(NS1, 0, 2)), 40)
    assert state.apply(batch(row(NS1, 3600, 5)), 42)
    assert not state.apply(batch(row(NS1, 0, 2)), 40)  # consumed again after a restart
    state.committed(41)  # every record below 41 processed
    assert not state.apply(batch(row(NS1, 0, 7)), 12)
    assert (state.base, state.applied_offsets) == (41, {42})
    again = restored(state.changelog())
    assert (again.base, again.applied_offsets) == (41, {42})
    assert not again.apply(batch(row(NS1, 0, 5)), 42)
    assert state.totals[NS1][1] == 7
    state.committed(43)  # nothing applied since the last changelog: nothing to write
    assert state.changelog() == []
    assert state.apply(batch(row(NS1, 0, 1)), 44)
    assert dict(state.changelog())[b"M"] == encode_value([43, 44])


def test_a_record_delivered_after_later_ones_still_counts() -> None:
    """Faust can deliver a record after later ones of its partition (the consumer fetches a record it
    skipped again, processors/commit_guard.py); the mark holds exact offsets, so it is applied, once. A
    "last applied" mark lost it (the exactly_once crash test on a high-cardinality input)."""
    state = NsState()
    for offset in (32, 33, 35):
        assert state.apply(batch(row(NS1, 0, 1)), offset)
    assert state.apply(batch(row(NS1, 0, 1)), 31)  # fetched again, after the later ones
    assert not state.apply(batch(row(NS1, 0, 1)), 31)
    assert not state.apply(batch(row(NS1, 0, 1)), 33)
    assert state.totals[NS1][1] == 4
    # restored mid-way, as a new owner would: the same records are skipped, the missing one counts
    again = restored(state.changelog())
    assert [again.apply(batch(row(NS1, 0, 1)), o) for o in (31, 32, 34, 35)] == [False, False, True, False]
    assert again.totals[NS1][1] == 5


def test_an_earlier_versions_mark_is_refused() -> None:
    with pytest.raises(ValueError, match="start afresh"):
        restored([(b"M3", encode_value([5, 0, 0]))])


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
    assert (state.late_deltas, state.early_deltas) == (1, 0)
    # the freed window's last counts are published (it changed since the last snapshots), and every
    # snapshot carries the totals with the late delta
    snaps = {(ns, start): (window, total) for ns, start, window, total in state.snapshots()}
    assert snaps[(NS1, 0)] == ([1, 1, 0, None, None], [7, 7, 0, {"noopt": 2}, None])
    assert set(snaps) == {(NS1, 0), (NS2, 3600), (NS1, 7200)}
    # a late delta alone publishes its name server's totals without a window
    state.apply(batch(row(NS1, 0, 1)))
    assert state.snapshots() == [(NS1, None, None, [8, 8, 0, {"noopt": 2}, None])]
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
        assert state.apply(batch(*sorted(rows, key=lambda r: r[1])), i if marks else None)
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
    assert (again.base, again.applied_offsets) == (state.base, state.applied_offsets)
    assert again.changelog() == []
    # nothing was applied twice: replaying every step changes nothing once marks are on
    if marks:
        for i, (rows, _) in enumerate(steps):
            assert not again.apply(batch(*rows), i)


# --- record time in any order: the counts topic stays exact (late and early deltas) --------------------

NOW = 1_800_000_000  # the workers' clock in these tests
DAY = 86400
#: window starts far in the past, around the clock, just inside and far beyond its bound
FAR_STARTS = st.sampled_from(
    [
        0,
        3600,
        NOW - 400 * DAY,
        NOW - 30 * DAY,
        NOW - 7 * DAY,
        NOW - 3600,
        NOW,
        NOW + 3600,
        NOW + 20 * 365 * DAY,
    ]
)
FAR_ROWS = st.lists(
    st.tuples(
        NAMES,
        FAR_STARTS,
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 2),
        st.dictionaries(st.sampled_from(["noopt", "formerr"]), st.integers(1, 3), max_size=2),
        st.just({}),
    ),
    min_size=1,
    max_size=6,
)
#: what a worker does between records: a snapshot tick, a commit (snapshots, then the changelog: the
#: aggregator's commit path), an expiry pass, a crash (restore from the changelog, then the records
#: applied since the last commit are consumed again) or a clean restart after a commit
STEPS = st.lists(
    st.tuples(FAR_ROWS, st.sampled_from(["", "", "tick", "commit", "expire", "crash", "restart"])),
    min_size=1,
    max_size=14,
)
IMPLEMENTATIONS = ["python"] + (["c"] if processors.state._ext is not None else [])


class Worker:
    """One ns-stats partition's state as the aggregator drives it, with what it published and wrote."""

    def __init__(
        self, expires: int, max_ahead: int, marks: bool, implementation: str, hot_windows: int = 0
    ) -> None:
        self.expires, self.max_ahead, self.marks, self.c = expires, max_ahead, marks, implementation == "c"
        self.hot_windows = hot_windows  # with a budget of 1 hot totals: they freeze at every commit that can
        self.state = self.new_state()
        self.changelog: list[Record] = []
        #: name server -> its newest published totals, decoded from the counts topic's values
        self.published: dict[str, dict[str, Any]] = {}
        self.uncommitted: list[tuple[int, bytes]] = []
        self.offset = 0

    def new_state(self) -> NsState:
        return NsState(
            self.expires,
            self.max_ahead,
            clock=lambda: NOW,
            hot_windows=self.hot_windows,
            hot_totals=1 if self.hot_windows else 0,
        )

    def apply(self, data: bytes, offset: int) -> None:
        mark = offset if self.marks else None
        if self.c:
            assert processors.state._ext.apply(self.state, data, mark) is True
        else:
            assert self.state.apply(decode_batch(data), mark)

    def feed(self, rows: list[DeltaRow]) -> None:
        data = encode_batch(0, rows)
        self.apply(data, self.offset)
        self.uncommitted.append((self.offset, data))
        self.offset += 1

    def tick(self) -> None:
        snapshot_records = snapshots.snapshot_records if self.c else snapshots.snapshot_records_py
        with mock.patch.object(snapshots, "snapshot_records", snapshot_records):
            records = snapshots.state_snapshots(self.state, 3600, snapshot_time_ms=len(self.published))
        for key, value in records:
            snap = snapshots.decode_snapshot(value)
            assert snap["name_server"] == key.decode()
            assert snap["expired_through"] == self.state.expired_through()
            self.published[key.decode()] = snap["total"]

    def commit(self) -> list[Record]:
        """The aggregator's commit; the changelog records it wrote."""
        self.state.committed(self.offset)
        self.tick()
        records = self.state.changelog()
        self.changelog += records
        self.uncommitted = []
        return records

    def step(self, step: str) -> list[Record]:
        """One of :data:`STEPS`' steps between records; the changelog records a commit in it wrote."""
        records: list[Record] = []
        if step == "tick":
            self.tick()
        elif step == "commit":
            records = self.commit()
        elif step == "expire":
            self.state.expire()
        elif step == "crash":
            self.crash()
        elif step == "restart":
            records = self.commit()
            self.restore()
        return records

    def restore(self) -> None:
        self.state = self.new_state()
        for key, value in self.changelog:
            self.state.load(key, value)
        self.state.loaded()

    def crash(self) -> None:
        self.restore()
        for offset, data in self.uncommitted:
            self.apply(data, offset)


def totals_of(sums: dict[str, Counter[str]]) -> dict[str, tuple[int, int, int, dict[str, int]]]:
    """(EDNS answered, failures, timeouts, failures by kind) per name server of the summed deltas."""
    return {
        ns: (
            c["answered"],
            c["failures"],
            c["timeouts"],
            {k[2:]: n for k, n in c.items() if k[:2] == "k:" and n},
        )
        for ns, c in sums.items()
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None)
@given(STEPS, st.sampled_from([0, 3600, 7 * DAY, 30 * DAY]), st.sampled_from([0, DAY]), st.booleans())
def test_published_totals_equal_the_state_whatever_the_record_times(
    implementation: str, steps: list[tuple[list[DeltaRow], str]], expires: int, max_ahead: int, marks: bool
) -> None:
    """Deltas with window starts from the distant past to far beyond the clock, in any order, with
    snapshots, commits, expiry, crashes and restarts between them. Once the last commit is done: each name
    server's newest published totals equal its totals in memory, which equal the sum of every delta; a state
    restored from the changelog has the same totals and live windows; late and early deltas were counted;
    and no live window lies beyond the clock's bound."""
    worker = Worker(expires, max_ahead, marks, implementation)
    sums: dict[str, Counter[str]] = defaultdict(Counter)
    early = 0
    for rows, step in steps:
        worker.feed(rows)
        for ns, start, answered, failures, timeouts, by_kind, _observations in rows:
            sums[ns].update(answered=answered, failures=failures, timeouts=timeouts)
            sums[ns].update({f"k:{k}": n for k, n in by_kind.items()})
            early += start > NOW + max_ahead
        worker.step(step)
    worker.commit()
    state = worker.state
    expected = totals_of(sums)
    published = {
        ns: (t["edns_answered"], t["failures"], t["timeouts"], {k: n for k, n in t["by_kind"].items() if n})
        for ns, t in worker.published.items()
    }
    assert published == expected
    assert {
        ns: (c[0], c[1], c[2], {k: n for k, n in (c[3] or {}).items() if n}) for ns, c in state.totals.items()
    } == (expected)
    assert all(start <= NOW + max_ahead for start in state.windows)
    again = worker.new_state()
    for key, value in worker.changelog:
        again.load(key, value)
    again.loaded()
    assert again.totals == state.totals
    assert again.windows == state.windows
    if not any(step in ("crash", "restart") for _, step in steps):  # a restored state counts from 0
        assert state.early_deltas == early
        if not expires:
            assert state.late_deltas == 0


def windows_of(state: NsState) -> dict[int, dict[str, Any]]:
    """Every live window of ``state`` as dicts, frozen or not."""
    return {start: dict(window) for start, window in state.all_windows().items()}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=150, deadline=None)
@given(STEPS, st.sampled_from([0, 3600, 30 * DAY]), st.sampled_from([0, DAY]), st.booleans())
def test_frozen_windows_change_nothing_a_reader_sees(
    implementation: str, steps: list[tuple[list[DeltaRow], str]], expires: int, max_ahead: int, marks: bool
) -> None:
    """The same steps on a state that freezes every idle window but the newest (``hot_windows=1``), and
    the totals of every name server outside it at every commit, and on one that freezes none: every commit
    writes the same changelog records, every tick publishes the same totals, and the windows, totals and
    late and early deltas end equal; a restore from either changelog gives the same state again."""
    frozen = Worker(expires, max_ahead, marks, implementation, hot_windows=1)
    plain = Worker(expires, max_ahead, marks, implementation)
    for rows, step in steps:
        frozen.feed(rows)
        plain.feed(rows)
        assert sorted(frozen.step(step)) == sorted(plain.step(step))
        assert frozen.published == plain.published
        assert windows_of(frozen.state) == windows_of(plain.state)
    assert sorted(frozen.commit()) == sorted(plain.commit())
    assert frozen.published == plain.published
    assert not plain.state.frozen and plain.state.frozen_totals is None
    for a, b in ((frozen.state, plain.state),):
        assert a.totals == b.totals
        assert windows_of(a) == windows_of(b)
        assert (a.late_deltas, a.early_deltas, a.newest) == (b.late_deltas, b.early_deltas, b.newest)
    frozen.restore()
    assert frozen.state.totals == plain.state.totals
    assert windows_of(frozen.state) == windows_of(plain.state)


def test_an_idle_window_outside_the_newest_freezes_and_a_late_delta_thaws_it() -> None:
    state = NsState(hot_windows=1)
    state.apply(batch(row(NS1, 0, 1, noopt=1), row(NS2, 0, 2), row(NS1, 3600, 1)))
    state.changelog()
    assert state.frozen == {} and set(state.windows) == {0, 3600}  # both changed in this interval
    state.apply(batch(row(NS2, 3600, 1)))
    records = state.changelog()
    assert set(state.frozen) == {0} and set(state.windows) == {3600}
    assert records == [(b"W3600 " + NS2.encode(), encode_value([1, 1, 0, None, None]))]
    assert state.freezes == 1
    assert state.all_windows()[0] == {NS1: [1, 1, 0, {"noopt": 1}, None], NS2: [2, 2, 0, None, None]}
    state.apply(batch(row(NS2, 0, 1)))  # late for window 0: thawed, then counted in it
    assert state.thaws == 1 and not state.frozen
    assert state.windows[0][NS2] == [3, 3, 0, None, None]
    assert state.changelog() == [(b"W0 " + NS2.encode(), encode_value([3, 3, 0, None, None]))]
    assert not state.frozen  # changed in that interval ...
    assert state.changelog() == []
    assert set(state.frozen) == {0}  # ... and idle in the next


def test_freezing_a_window_too_big_for_32_bit_offsets_keeps_it_a_dict() -> None:
    state = NsState(hot_windows=1)
    state.apply(batch(row(NS1, 0, 1), row(NS1, 3600, 1)))
    state.changelog()
    with mock.patch("processors.frozen_window.MAX_BUFFER", 4):
        state.changelog()
    assert set(state.windows) == {0, 3600} and not state.frozen


def test_expiry_frees_frozen_windows_and_writes_their_retired_counts() -> None:
    state = NsState(expires=7200, hot_windows=1)
    state.apply(batch(row(NS1, 0, 1), row(NS2, 0, 1)))
    state.apply(batch(row(NS1, 3600, 2)))
    state.changelog()
    state.apply(batch(row(NS1, 3600, 1)))
    state.changelog()
    assert set(state.frozen) == {0}
    state.apply(batch(row(NS1, 7200, 1)))  # frees window 0 (frozen)
    records = dict(state.changelog())
    assert set(state.all_windows()) == {3600, 7200}
    assert records[b"W0 " + NS1.encode()] is None and records[b"W0 " + NS2.encode()] is None
    assert decode_value(records[b"R" + NS1.encode()]) == [1, 1, 0, None, None]
    assert decode_value(records[b"R" + NS2.encode()]) == [1, 1, 0, None, None]


def test_totals_over_the_budget_freeze_oldest_first_and_a_delta_thaws_one() -> None:
    state = NsState(hot_windows=1, hot_totals=2)
    state.apply(batch(row(NS1, 0, 1, noopt=1), row(NS2, 0, 2), row("192.0.2.3", 0, 1)))
    state.snapshots()
    state.changelog()
    assert state.frozen_totals is None  # over the budget, but all three are in the newest window
    state.apply(batch(row(NS2, 3600, 1), row("192.0.2.4", 3600, 1)))
    state.snapshots()
    state.changelog()  # NS1 and .3 left the newest window: frozen, down to the budget
    assert state.merges == 1 and sorted(state.frozen_totals or {}) == sorted([NS1, "192.0.2.3"])
    assert set(state.hot_totals) == {NS2, "192.0.2.4"}
    assert len(state.totals) == 4 and NS1 in state.totals and "192.0.2.9" not in state.totals
    assert state.totals[NS1] == [1, 1, 0, {"noopt": 1}, None]
    state.apply(batch(row(NS1, 7200, 2, noopt=2)))  # thawed, then added to
    assert state.total_thaws == 1 and state.hot_totals[NS1] == [3, 3, 0, {"noopt": 3}, None]
    assert len(state.totals) == 4 and sorted(state.totals) == sorted([NS1, NS2, "192.0.2.3", "192.0.2.4"])
    assert [snap[3] for snap in state.snapshots() if snap[0] == NS1] == [[3, 3, 0, {"noopt": 3}, None]]
    state.changelog()  # three hot: the oldest outside the newest window (NS2) freezes; NS1's stale entry goes
    assert state.merges == 2 and set(state.hot_totals) == {"192.0.2.4", NS1}
    assert dict(state.totals.items()) == {
        NS1: [3, 3, 0, {"noopt": 3}, None],
        NS2: [3, 3, 0, None, None],
        "192.0.2.3": [1, 1, 0, None, None],
        "192.0.2.4": [1, 1, 0, None, None],
    }
    assert len(state.totals) == 4 and sorted(state.frozen_totals or {}) == sorted([NS2, "192.0.2.3"])


def test_a_merge_that_cannot_freeze_a_quarter_of_the_budget_waits_for_that_many_more() -> None:
    state = NsState(hot_windows=1, hot_totals=8)
    state.apply(batch(*(row(f"198.51.100.{i}", 0, 1) for i in range(10))))
    state.changelog()  # ten hot totals, all in the newest window: none may freeze
    assert state.merges == 0 and state._next_merge == 10 + 2
    state.apply(batch(row("198.51.100.10", 0, 1)))
    state.changelog()  # eleven: not tried
    assert state.merges == 0 and state._next_merge == 12
    state.apply(batch(row(NS1, 3600, 1), row(NS2, 3600, 1)))
    state.snapshots()
    state.changelog()  # thirteen: the seven oldest of window 0 freeze, down to three quarters of the budget
    assert state.merges == 1 and len(state.hot_totals) == 6
    assert sorted(state.frozen_totals or {}) == sorted(f"198.51.100.{i}" for i in range(7))
