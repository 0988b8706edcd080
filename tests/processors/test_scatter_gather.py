"""The pure half of the cluster-wide views: rows to JSON and back onto another axis, and merged rankings
equal to ranking everything in one place."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processors.scatter_gather import rank_worst, top_rows, worst_json, worst_rows
from processors.views import pick, top
from processors.worst_page import WorstRow


def test_worst_rows_move_onto_a_newer_axis() -> None:
    """A worker whose newest window is older than the cluster's: its points keep their windows."""
    row = WorstRow("192.0.2.1", 10, 4, 0, {"noopt": 4}, [(1, 2), None, (3, 8)])
    answer = worst_json([row], [0, 60, 120])
    assert answer[0]["series"] == [[0, 1, 2], [120, 3, 8]]
    (moved,) = worst_rows(answer, [60, 120, 180])
    assert moved.series == [None, (3, 8), None]
    assert (moved.name_server, moved.failures, moved.edns_answered, dict(moved.by_kind)) == (
        "192.0.2.1",
        4,
        10,
        {"noopt": 4},
    )


counts_st = st.tuples(st.integers(0, 50), st.integers(0, 50)).map(
    lambda af: [af[0] + af[1], af[1], 0, {"noopt": af[1]} if af[1] else None, None]
)


@given(st.dictionaries(st.sampled_from([f"192.0.2.{i}" for i in range(30)]), counts_st), st.integers(0, 4))
def test_merging_the_parts_ranks_like_one_worker(everything: dict[str, list], split: int) -> None:
    """Each name server is in one part; the worst N of the parts' worst N are the worst N of all."""
    names = sorted(everything)
    parts = [names[: split * 5], names[split * 5 :]]
    for by in ("failures", "rate"):
        whole = top(((ns, None, everything[ns]) for ns in names), by=by, n=7)
        merged = top(
            (
                r
                for part in parts
                for r in top_rows(top(((ns, None, everything[ns]) for ns in part), by=by, n=7))
            ),
            by=by,
            n=7,
        )
        assert merged == whole
        rows = [
            WorstRow(ns, c[0], c[1], c[2], c[3] or {}, [])
            for ns, _, c in pick(((ns, None, everything[ns]) for ns in names), by=by, n=len(names))
        ]
        assert [r.name_server for r in rank_worst(reversed(rows), by, 7)] == [r.name_server for r in rows[:7]]
