"""The ns-stats record codec (``NsStatsBatch``): round trips, and damaged records refused."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from dnsqr_schemas import avro_schema
from processors.delta_batch import DeltaRow, decode_batch, encode_batch
from tests.mutations import mutated
from tests.processors.helpers import row_kinds

KINDS = st.dictionaries(st.sampled_from(["noopt", "formerr", "badvers", "servfail"]), st.integers(1, 10**6))
ROWS = st.lists(
    st.tuples(
        st.sampled_from(["192.0.2.1", "198.51.100.7", "2001:db8::53", "fd00::1", ""]),
        st.integers(0, 2**40),
        st.integers(0, 2**31),
        st.integers(0, 2**31),
        st.integers(0, 2**31),
        KINDS,
        KINDS,
    ),
    min_size=1,
    max_size=50,
)


@given(st.integers(0, 1000), ROWS)
def test_round_trip(part: int, rows: list[DeltaRow]) -> None:
    batch = decode_batch(encode_batch(part, rows))
    assert batch.part == part
    decoded = list(
        zip(
            batch.name_servers,
            batch.window_starts,
            batch.edns_answered,
            batch.failures,
            batch.timeouts,
            strict=True,
        )
    )
    assert decoded == [r[:5] for r in rows]
    assert row_kinds(batch) == {i: (r[5], r[6]) for i, r in enumerate(rows) if r[5] or r[6]}


def test_an_empty_batch_is_not_encoded() -> None:
    with pytest.raises(ValueError):
        encode_batch(0, [])


def test_another_version_is_refused() -> None:
    value = schemaless_reader(
        io.BytesIO(encode_batch(0, [("192.0.2.1", 0, 1, 1, 0, {"noopt": 1}, {})])),
        avro_schema("ns_stats"),
        None,
    )
    out = io.BytesIO()
    schemaless_writer(out, avro_schema("ns_stats"), {**value, "version": 2})
    with pytest.raises(ValueError, match="version 2"):
        decode_batch(out.getvalue())


@given(st.data())
def test_a_damaged_record_decodes_to_a_batch_or_raises_value_error(data: st.DataObject) -> None:
    rows = data.draw(ROWS)
    damaged = data.draw(mutated(encode_batch(1, rows)))
    try:
        batch = decode_batch(damaged)
    except ValueError:
        return
    # what decodes is consistent: every column as long as the names, kinds only of its rows and names
    n = len(batch.name_servers)
    assert len(batch.window_starts) == len(batch.edns_answered) == len(batch.failures) == n
    assert set(row_kinds(batch)) <= set(range(n))
