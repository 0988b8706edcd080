"""The aggregator's exactly_once bookkeeping (``applied`` marks), as pure logic: no Faust app, no broker."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from processors.aggregator import APPLIED, AvroCodec, Tables, applied, empty_counts
from processors.filter_agent import Counts, PartitionBatch


class FakeWindow:
    def __init__(self, windows: FakeWindows, ns: str) -> None:
        self.windows, self.ns = windows, ns

    def value(self) -> dict[str, Any]:
        return self.windows.values[(self.ns, self.windows.current)]


class FakeWindows:
    """``table[ns].value()`` / ``table[ns] = v`` of Faust's windowed table, for the window being applied."""

    def __init__(self) -> None:
        self.values: defaultdict[tuple[str, int], dict[str, Any]] = defaultdict(empty_counts)
        self.current = 0

    def __getitem__(self, ns: str) -> FakeWindow:
        return FakeWindow(self, ns)

    def __setitem__(self, ns: str, value: dict[str, Any]) -> None:
        self.values[(ns, self.current)] = value


def make_tables() -> tuple[Tables, FakeWindows]:
    windows = FakeWindows()
    return Tables(defaultdict(empty_counts), windows), windows  # type: ignore[arg-type]


def delta(window_start: int, failures: int) -> dict[str, Any]:
    return {
        "name_server": "192.0.2.1",
        "window_start": window_start,
        "edns_answered": failures,
        "failures": failures,
        "timeouts": 0,
        "by_kind": {"noopt": failures},
        "observations": {},
    }


def apply(tables: Tables, windows: FakeWindows, d: dict[str, Any], origin: tuple[int, int]) -> None:
    windows.current = d["window_start"]
    tables.apply(d, origin)


def test_a_batch_spanning_two_windows_counts_both_in_the_totals_and_a_replay_neither() -> None:
    tables, windows = make_tables()
    batch = [(delta(0, 2), (1, 99)), (delta(3600, 5), (1, 99))]  # one batch: its last offset, two windows
    for d, origin in batch:
        apply(tables, windows, d, origin)
    assert tables.totals["192.0.2.1"]["failures"] == 7
    # the new owner consumes the same deltas again (their offsets were not committed): nothing changes
    for d, origin in batch:
        apply(tables, windows, d, origin)
    assert tables.totals["192.0.2.1"]["failures"] == 7
    assert windows.values[("192.0.2.1", 0)]["failures"] == 2
    assert windows.values[("192.0.2.1", 3600)]["failures"] == 5
    # the next batch of the same input partition, back in the first window, counts
    apply(tables, windows, delta(0, 1), (1, 150))
    assert tables.totals["192.0.2.1"]["failures"] == 8
    assert windows.values[("192.0.2.1", 0)]["failures"] == 3
    assert tables.totals["192.0.2.1"][APPLIED] == {"1": [150, 0]}


def test_marks_of_other_input_partitions_are_separate() -> None:
    tables, windows = make_tables()
    apply(tables, windows, delta(0, 2), (1, 99))
    apply(tables, windows, delta(0, 3), (2, 10))
    assert tables.totals["192.0.2.1"]["failures"] == 5


def test_an_offset_only_mark_of_an_older_worker_covers_its_whole_batch() -> None:
    value = {**empty_counts(), APPLIED: {"1": 99}}
    assert applied(value, (1, 99, 3600))
    assert applied(value, (1, 50, 0))
    assert not applied(value, (1, 100, 0))
    assert not applied(value, (2, 1, 0))


def test_deltas_leave_in_window_order() -> None:
    """The marks above rely on it: a name server's deltas of one batch arrive in window order."""
    batch = PartitionBatch()
    for key in (("192.0.2.2", 7200), ("192.0.2.1", 3600), ("192.0.2.2", 0), ("192.0.2.1", 0)):
        batch.counts[key] = Counts(failures=1, edns_answered=1)
    sent = [AvroCodec("ns_stats").loads(value) for _key, value in batch.deltas()]
    for ns in ("192.0.2.1", "192.0.2.2"):
        starts = [d["window_start"] for d in sent if d["name_server"] == ns]
        assert starts == sorted(starts) and len(starts) == 2
