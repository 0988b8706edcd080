"""The counts topic's value, ``NsCounts`` (``schemas/ns_counts.avsc``): one name server's totals, with the
window that changed (none when only the totals changed: a late or early delta).

The aggregator publishes one snapshot per changed (name server, window) every snapshot interval: at high
name-server cardinality that is tens of thousands a second, and fastavro's ``schemaless_writer`` (with the
dicts it needs) cost ~15% of a worker's time in the e2e bench. :class:`SnapshotEncoder` writes the same
bytes directly, 3.4 times faster (Avro's binary encoding of this flat schema is a few varints, a double
and two maps); :func:`encode_snapshot_avro` is the fastavro specification it is held to
(tests/processors/test_snapshots.py).
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from dnsqr_schemas import avro_schema
from nmsgdns.native import load_extension
from nmsgdns.payload import encode_varint
from processors.counts import Counts, count_values
from processors.state import Changed, NsState, Record

#: Avro longs (zigzag varints) of 0..8191, the counts almost every snapshot holds
_SMALL = [encode_varint(n << 1) for n in range(8192)]
_DOUBLE = struct.Struct("<d")
_EMPTY_MAP = b"\x00"


def _long(n: int) -> bytes:
    if 0 <= n < 8192:
        return _SMALL[n]
    return encode_varint((n << 1) ^ (n >> 63))  # zigzag


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data


def _map(counts: dict[str, int] | None) -> bytes:
    if not counts:
        return _EMPTY_MAP
    parts = [_long(len(counts))]
    for key, n in counts.items():
        parts.append(_string(key))
        parts.append(_long(n))
    parts.append(_EMPTY_MAP)
    return b"".join(parts)


def _values(counts: Counts) -> bytes:
    answered, failures, timeouts, by_kind, observations = counts
    small = _SMALL
    return b"".join(
        (
            small[answered] if 0 <= answered < 8192 else _long(answered),
            small[failures] if 0 <= failures < 8192 else _long(failures),
            _DOUBLE.pack(failures / answered if answered else 0.0),
            _map(by_kind) if by_kind else _EMPTY_MAP,
            small[timeouts] if 0 <= timeouts < 8192 else _long(timeouts),
            _map(observations) if observations else _EMPTY_MAP,
        )
    )


#: Avro union branches: ``null`` (0) and the other type (1), as zigzag varints
_NULL, _PRESENT = b"\x00", b"\x02"


class SnapshotEncoder:
    """Schemaless Avro ``NsCounts`` of the snapshots of one state taken at one moment (one tick)."""

    def __init__(
        self, window_seconds: int, snapshot_time_ms: int | None = None, expired_through: int | None = None
    ) -> None:
        now_ms = int(time.time() * 1000) if snapshot_time_ms is None else snapshot_time_ms
        #: the encoded fields shared by this tick's snapshots (the C writer copies them too)
        self.time_field = _long(now_ms)
        self.window_seconds_field = _long(window_seconds)
        self.expired_through_field = _NULL if expired_through is None else _PRESENT + _long(expired_through)

    def __call__(
        self, name_server: str, window_start: int | None, window: Counts | None, total: Counts
    ) -> bytes:
        return b"".join(
            (
                _string(name_server),
                self.time_field,
                _NULL if window_start is None else _PRESENT + _long(window_start),
                self.window_seconds_field,
                self.expired_through_field,
                _NULL if window is None else _PRESENT + _values(window),
                _values(total),
            )
        )


def snapshot_records_py(
    changed: dict[int, Changed], totals: dict[str, Counts], encode: SnapshotEncoder
) -> list[Record]:
    """The counts-topic records (name server, ``NsCounts``) of the name servers ``changed`` in each window
    (:meth:`processors.state.NsState.take_snapshot_changes`: their window counts), with their totals."""
    return [
        (ns.encode(), encode(ns, start, window, totals[ns]))
        for start, names in changed.items()
        for ns, window in names.items()
    ]


_ext = load_extension("_state", "processors")
#: :func:`snapshot_records_py`, in C when built (same bytes: tests/processors/test_state_c.py)
snapshot_records: Callable[[dict[int, Changed], dict[str, Counts], SnapshotEncoder], list[Record]] = (
    snapshot_records_py if _ext is None else _ext.snapshot_records
)


def state_snapshots(state: NsState, window_seconds: int, snapshot_time_ms: int | None = None) -> list[Record]:
    """The counts-topic records of what changed in ``state`` since the previous call (what
    :meth:`NsState.snapshots` gives, encoded), then forget that it changed: one per changed (name server,
    window), then one without a window per name server whose totals changed outside the live windows
    only (a few: late and early deltas, written in Python)."""
    encode = SnapshotEncoder(window_seconds, snapshot_time_ms, state.expired_through())
    changed, outside = state.take_snapshot_changes()
    records = snapshot_records(changed, state.hot_totals, encode)  # changed, so hot
    records += [(ns.encode(), encode(ns, None, None, total)) for ns, total in outside.items()]
    return records


def encode_snapshot_avro(
    name_server: str,
    window_start: int | None,
    window_seconds: int,
    window: Counts | None,
    total: Counts,
    snapshot_time_ms: int,
    expired_through: int | None = None,
) -> bytes:
    """``NsCounts`` through fastavro: the specification :class:`SnapshotEncoder` is held to."""
    out = io.BytesIO()
    schemaless_writer(
        out,
        avro_schema("ns_counts"),
        {
            "name_server": name_server,
            "snapshot_time_ms": snapshot_time_ms,
            "window_start": window_start,
            "window_seconds": window_seconds,
            "expired_through": expired_through,
            "window": None if window is None else count_values(window),
            "total": count_values(total),
        },
    )
    return out.getvalue()


def decode_snapshot(data: bytes) -> dict[str, Any]:
    """``NsCounts`` as a dict, for consumers and tests."""
    return schemaless_reader(io.BytesIO(data), avro_schema("ns_counts"), None)
