"""What the views gather from the aggregator's states (no Faust web server: the browser test and
test_integration.py ask a running worker) and how they check their parameters."""

from __future__ import annotations

from typing import Any

import pytest

from processors.aggregator import Aggregation
from processors.delta_batch import decode_batch, encode_batch
from processors.state import NsState
from processors.views import BadRequest, held_range, worst, worst_filters
from processors.worst_page import Filters

WINDOW = 60


def delta(ns: str, start: int, answered: int, failures: int, timeouts: int = 0, **kinds: int) -> Any:
    return (ns, start, answered, failures, timeouts, kinds, {})


def aggregation() -> Aggregation:
    """Two partitions' states: name servers failing in some windows of 60 s, at 0, 60 and 120."""
    agg = Aggregation(0, marks=False)
    deltas = {
        0: [
            delta("192.0.2.1", 0, 10, 1, noopt=1),
            delta("192.0.2.1", 60, 10, 5, noopt=5),
            delta("192.0.2.1", 120, 10, 9, noopt=8, formerr=1),
            delta("192.0.2.2", 120, 1, 1, formerr=1),  # failed once out of once
        ],
        1: [
            delta("198.51.100.9", 0, 100, 20, 4, servfail=20),
            delta("198.51.100.9", 120, 0, 0, 3),  # only timeouts in that window
            delta("198.51.100.10", 60, 50, 0),  # never failed
        ],
    }
    for partition, rows in deltas.items():
        state = agg.states[partition] = NsState()
        state.apply(decode_batch(encode_batch(0, rows)))
    return agg


def names(rows: list[Any]) -> list[str]:
    return [r.name_server for r in rows]


def test_worst_rows_picked_ranked_and_filtered() -> None:
    agg = aggregation()
    rows, _ = worst(agg, Filters(), window_seconds=WINDOW)
    # by failures: 20, 15, 1 (the one that never failed is no row)
    assert names(rows) == ["198.51.100.9", "192.0.2.1", "192.0.2.2"]
    first = rows[0]
    assert (first.failures, first.edns_answered, first.timeouts, dict(first.by_kind)) == (
        20,
        100,
        7,
        {"servfail": 20},
    )
    by_rate, _ = worst(agg, Filters(by="rate"), window_seconds=WINDOW)
    assert names(by_rate) == ["192.0.2.2", "192.0.2.1", "198.51.100.9"]
    by_rate, _ = worst(agg, Filters(by="rate", min_answered=2), window_seconds=WINDOW)
    assert names(by_rate) == ["192.0.2.1", "198.51.100.9"]
    formerr, _ = worst(agg, Filters(kind="formerr"), window_seconds=WINDOW)
    assert names(formerr) == ["192.0.2.1", "192.0.2.2"]
    assert names(worst(agg, Filters(n=1), window_seconds=WINDOW)[0]) == ["198.51.100.9"]
    assert worst(agg, Filters(kind="badvers"), window_seconds=WINDOW)[0] == []


def test_series_of_the_rows_along_the_newest_windows() -> None:
    rows, axis = worst(aggregation(), Filters(windows=4), window_seconds=WINDOW)
    assert axis == [-60, 0, 60, 120]
    series = {r.name_server: list(r.series) for r in rows}
    assert series["192.0.2.1"] == [None, (1, 10), (5, 10), (9, 10)]
    assert series["198.51.100.9"] == [None, (20, 100), None, (0, 0)]
    assert series["192.0.2.2"] == [None, None, None, (1, 1)]
    rows, axis = worst(aggregation(), Filters(windows=1), window_seconds=WINDOW)
    assert axis == [120] and [list(r.series) for r in rows][1] == [(9, 10)]


def test_nothing_held_nothing_shown() -> None:
    empty = Aggregation(0, marks=False)
    assert worst(empty, Filters(), window_seconds=WINDOW) == ([], [])
    assert held_range(empty, WINDOW) is None
    assert held_range(aggregation(), WINDOW) == (0, 180)


def test_worst_filters_defaults_and_values() -> None:
    assert worst_filters({}) == Filters()
    assert worst_filters({"kind": "", "by": ""}) == Filters()
    query = {"by": "rate", "kind": "noopt", "min_answered": "0", "n": "5", "windows": "3", "refresh": "0"}
    assert worst_filters(query) == Filters(by="rate", kind="noopt", min_answered=0, n=5, windows=3, refresh=0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"n": "abc"}, "n must be an integer, not 'abc'"),
        ({"n": "1.5"}, "n must be an integer"),
        ({"n": "0"}, "n must be at least 1"),
        ({"n": "1001"}, "n must be at most 1000"),
        ({"min_answered": "-1"}, "min_answered must not be negative"),
        ({"windows": "0"}, "windows must be at least 1"),
        ({"refresh": "1"}, "refresh must be 0 (off) or at least 2 seconds"),
        ({"refresh": "-5"}, "refresh must not be negative"),
        ({"by": "size"}, "by must be one of failures, rate, not 'size'"),
        ({"kind": "nxdomain"}, "kind must be one of "),
        ({"min_answerd": "3"}, "unknown parameter 'min_answerd'"),
    ],
)
def test_worst_filters_refuse_bad_values_saying_why(query: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        worst_filters(query)
    assert str(refused.value).startswith(message)
