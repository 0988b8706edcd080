"""The counts snapshot encoder writes exactly what fastavro writes for ``NsCounts``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processors.snapshots import SnapshotEncoder, decode_snapshot, encode_snapshot_avro

LONGS = st.one_of(st.integers(0, 10), st.integers(0, 2**20), st.integers(-(2**63), 2**63 - 1))
KINDS = st.one_of(st.none(), st.dictionaries(st.text(max_size=12), LONGS, max_size=4))
COUNTS = st.tuples(LONGS, LONGS, LONGS, KINDS, KINDS).map(list)


@given(
    st.text(max_size=40),
    st.one_of(st.none(), LONGS),
    st.integers(1, 2**31),
    st.one_of(st.none(), COUNTS),
    COUNTS,
    st.integers(0, 2**45),
    st.one_of(st.none(), LONGS),
)
def test_same_bytes_as_fastavro(
    name_server: str,
    start: int | None,
    window_seconds: int,
    window: list | None,
    total: list,
    time_ms: int,
    expired_through: int | None,
) -> None:
    """Any snapshot, with a window or of the totals alone (window start and counts None)."""
    fast = SnapshotEncoder(window_seconds, time_ms, expired_through)(name_server, start, window, total)
    slow = encode_snapshot_avro(name_server, start, window_seconds, window, total, time_ms, expired_through)
    assert fast == slow


def test_decodes_to_the_contract() -> None:
    snap = decode_snapshot(
        SnapshotEncoder(3600, 1_700_000_000_000)(
            "192.0.2.1", 7200, [4, 1, 0, {"noopt": 1}, None], [9, 3, 2, None, None]
        )
    )
    assert snap == {
        "name_server": "192.0.2.1",
        "snapshot_time_ms": 1_700_000_000_000,
        "window_start": 7200,
        "window_seconds": 3600,
        "expired_through": None,
        "window": {
            "edns_answered": 4,
            "failures": 1,
            "failure_rate": 0.25,
            "by_kind": {"noopt": 1},
            "timeouts": 0,
            "observations": {},
        },
        "total": {
            "edns_answered": 9,
            "failures": 3,
            "failure_rate": 3 / 9,
            "by_kind": {},
            "timeouts": 2,
            "observations": {},
        },
    }


def test_a_snapshot_of_the_totals_alone_says_what_was_freed() -> None:
    snap = decode_snapshot(
        SnapshotEncoder(3600, 1_700_000_000_000, expired_through=-3600)(
            "192.0.2.1", None, None, [1, 1, 0, None, None]
        )
    )
    assert (snap["window_start"], snap["window"], snap["expired_through"]) == (None, None, -3600)
    assert snap["total"]["failures"] == 1
