"""The aggregator applies each ns-stats delta once: its exactly_once marks (pure logic) and its drop of
redelivered deltas (Faust's test_context); and the filter's :class:`SourceOrder` the marks rely on."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.types import TP

from processors.aggregator import APPLIED, AvroCodec, Tables, applied, empty_counts
from processors.app import Settings, create_app
from processors.filter_agent import Counts, PartitionBatch, SourceOrder

RAW = TP("raw", 1)


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


def apply(tables: Tables, windows: FakeWindows, d: dict[str, Any], origin: tuple[int, int, int]) -> None:
    windows.current = d["window_start"]
    tables.apply(d, origin)


def test_a_batch_spanning_two_windows_counts_both_in_the_totals_and_a_replay_neither() -> None:
    tables, windows = make_tables()
    batch = [
        (delta(0, 2), (1, 99, 0)),
        (delta(3600, 5), (1, 99, 0)),
    ]  # one batch: its last offset, two windows
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
    apply(tables, windows, delta(0, 1), (1, 150, 0))
    assert tables.totals["192.0.2.1"]["failures"] == 8
    assert windows.values[("192.0.2.1", 0)]["failures"] == 3
    assert tables.totals["192.0.2.1"][APPLIED] == {"1": [150, 0, 0]}


def test_a_record_refetched_after_later_ones_still_counts() -> None:
    """The consumer re-fetches a raw record Faust skipped (processors/consumer.py) after later offsets of its
    partition were processed; its batch comes next in :class:`SourceOrder`, not before."""
    order = SourceOrder()
    tables, windows = make_tables()
    later = order.place(RAW, 31)  # offsets 28-31
    refetched = order.place(RAW, 27)  # offset 27, fetched again
    assert later < refetched
    apply(tables, windows, delta(0, 4), (1, *later))
    apply(tables, windows, delta(0, 3), (1, *refetched))
    assert tables.totals["192.0.2.1"]["failures"] == 7
    # consumed again (its offset was not committed when the worker died): a replay, skipped
    apply(tables, windows, delta(0, 3), (1, *refetched))
    assert tables.totals["192.0.2.1"]["failures"] == 7
    # the next batch of the partition comes after both
    assert order.place(RAW, 32) == (32, 0)


def test_source_order_headers() -> None:
    order = SourceOrder()
    order.place(RAW, 20)
    assert dict(order.headers(RAW, 12)) == {
        "dnsqr-source-partition": b"1",
        "dnsqr-source-offset": b"20",
        "dnsqr-source-seq": b"1",
    }


def test_marks_of_other_input_partitions_are_separate() -> None:
    tables, windows = make_tables()
    apply(tables, windows, delta(0, 2), (1, 99, 0))
    apply(tables, windows, delta(0, 3), (2, 10, 0))
    assert tables.totals["192.0.2.1"]["failures"] == 5


def test_an_offset_only_mark_of_an_older_worker_covers_its_whole_batch() -> None:
    value = {**empty_counts(), APPLIED: {"1": 99}}
    assert applied(value, (1, 99, 0, 3600))
    assert applied(value, (1, 50, 0, 0))
    assert not applied(value, (1, 100, 0, 0))
    assert not applied(value, (2, 1, 0, 0))


def test_deltas_leave_in_window_order() -> None:
    """The marks above rely on it: a name server's deltas of one batch arrive in window order."""
    batch = PartitionBatch()
    for key in (("192.0.2.2", 7200), ("192.0.2.1", 3600), ("192.0.2.2", 0), ("192.0.2.1", 0)):
        batch.counts[key] = Counts(failures=1, edns_answered=1)
    sent = [AvroCodec("ns_stats").loads(value) for _key, value in batch.deltas()]
    for ns in ("192.0.2.1", "192.0.2.2"):
        starts = [d["window_start"] for d in sent if d["name_server"] == ns]
        assert starts == sorted(starts) and len(starts) == 2


def stats_delta(failures: int) -> dict[str, Any]:
    return {
        "name_server": "192.0.2.1",
        "window_start": 0,
        "edns_answered": failures,
        "failures": failures,
        "timeouts": 0,
        "by_kind": {"noopt": failures},
        "observations": {},
    }


def test_a_delta_delivered_again_is_not_applied_again() -> None:
    """Faust delivers records again after a rebalance or a seek back (processors/consumer.py); the
    consumer knows which offsets were processed, and the agent skips those."""

    async def scenario() -> tuple[dict[str, Any], int, list[tuple[TP, int]]]:
        app = create_app(Settings(app_id="test-aggregator", web_enabled=False, window_seconds=60))
        app.finalize()
        asked: list[tuple[TP, int]] = []
        seen: set[int] = set()

        def done(tp: TP, offset: int) -> bool:
            asked.append((tp, offset))
            return offset in seen

        app.consumer.done = done  # type: ignore[method-assign]
        agent = app.agents["dnsqr-ns-aggregator"]
        async with agent.test_context() as test_agent:
            for failures in (2, 3):
                event = await test_agent.put(stats_delta(failures), key=b"192.0.2.1")
                seen.add(event.message.offset)
            # the same record again (same partition and offset), as after a seek back
            test_agent.sent_offset = min(seen)
            again = await test_agent.put(stats_delta(2), key=b"192.0.2.1")
            assert again.message.offset == min(seen)
        return dict(app.dnsqr_tables.totals["192.0.2.1"]), app.counters.redelivered_deltas, asked

    totals, redelivered, asked = asyncio.run(scenario())
    assert totals["failures"] == 5
    assert totals["by_kind"] == {"noopt": 5}
    assert redelivered == 1
    assert len(asked) == 3
