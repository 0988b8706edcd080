"""processors/_deltas.c gives what its specification, processors/deltas.py, gives: the same counts
after folding, the same partitions and the same NsStatsBatch bytes (delta_batch.encode_batch's)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import processors.deltas
from dnsqr_kafka.key_partition import KeyPartitioner
from processors.counts import EVENT_ANSWERED, EVENT_FAILURE, EVENT_TIMEOUT, Counts
from processors.delta_batch import MAX_ROWS, VERSION, decode_batch
from processors.deltas import CountsKey, encode_py, fold_py, rows
from processors.filter_agent import WindowClock, filter_container
from tests import corpus
from tests.processors.helpers import raw_containers, row_kinds

ext = processors.deltas._ext
needs_c = pytest.mark.skipif(ext is None, reason="processors._deltas is not built or disabled")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ("formerr", "servfail", "noopt", "badvers", "do-not-echoed", "option-echoed", "ünïcode")


def fold_c(counts: dict[CountsKey, Counts], counted: list[object]) -> None:
    assert ext is not None
    ext.fold(counts, counted)


def encode_c(counts: dict[CountsKey, Counts], partitions: int, max_rows: int) -> dict[int, list[bytes]]:
    assert ext is not None
    return ext.encode(counts, partitions, max_rows, VERSION)  # type: ignore[no-any-return]


def assert_same_encoding(counts: dict[CountsKey, Counts], partitions: int, max_rows: int) -> None:
    """C and Python encode ``counts`` to the same records, partitions in the same order."""
    py = encode_py(counts, KeyPartitioner(partitions), max_rows)
    c = encode_c(counts, partitions, max_rows)
    assert list(c) == list(py)
    assert c == py


def corpus_counted(case: str, window: int) -> list[list[object]]:
    """The counted records of each container of ``case`` (100 records a container)."""
    clock = WindowClock(window)
    return [filter_container(data, clock).counted for data in raw_containers(case, 100)]


@needs_c
@pytest.mark.parametrize("case", corpus.CASES)
def test_c_folds_and_encodes_the_corpus_as_python(case: str) -> None:
    py: dict[CountsKey, Counts] = {}
    c: dict[CountsKey, Counts] = {}
    for counted in corpus_counted(case, 1):
        fold_py(py, counted)
        fold_c(c, counted)
    assert list(c.items()) == list(py.items())  # same keys in the same order, same counts
    for partitions in (1, 3, 12):
        for max_rows in (1, 7, MAX_ROWS):
            assert_same_encoding(py, partitions, max_rows)


@pytest.mark.parametrize("case", corpus.CASES)
def test_encoded_records_hold_the_counts(case: str) -> None:
    """Whichever implementation runs: every row once, in the partition of its name server."""
    counts: dict[CountsKey, Counts] = {}
    for counted in corpus_counted(case, 60):
        processors.deltas.fold(counts, counted)
    partition_of = KeyPartitioner(5)
    got = []
    for p, records in processors.deltas.encode(counts, partition_of, 5).items():
        for part, value in enumerate(records):
            batch = decode_batch(value)
            assert batch.part == part and len(batch.name_servers) <= 5
            kinds = row_kinds(batch)
            for i, ns in enumerate(batch.name_servers):
                assert partition_of(ns.encode()) == p
                k, o = kinds.get(i, ({}, {}))
                got.append((ns, batch.window_starts[i], batch.edns_answered[i], batch.failures[i]))
                got[-1] += (batch.timeouts[i], k, o)
    assert sorted(got) == sorted(rows(counts))


# --- hypothesis-generated counts and counted records ------------------------------------------------

V4 = st.binary(min_size=4, max_size=4)
#: 16-bit groups that make zero runs and the other shapes of IPv6 text likely
GROUPS = [b"\x00\x00", b"\x00\x01", b"\xfe\x80", b"\xff\xff"]
#: every IPv6 text form: random, runs of zeros (::), IPv4-mapped and -compatible (dotted tail)
V6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.lists(st.sampled_from(GROUPS), min_size=8, max_size=8).map(b"".join),
    V4.map(lambda v4: b"\x00" * 10 + b"\xff\xff" + v4),
    V4.map(lambda v4: b"\x00" * 12 + v4),
)
ADDRESSES = st.one_of(st.just(b""), V4, V6)
INT64 = st.integers(-(2**63), 2**63 - 1)
COUNT = st.integers(0, 2**62)
KIND_MAPS = st.one_of(
    st.none(), st.dictionaries(st.one_of(st.sampled_from(KINDS), st.text(max_size=8)), COUNT, max_size=4)
)
COUNTS = st.dictionaries(
    st.tuples(ADDRESSES, INT64),
    st.tuples(COUNT, COUNT, COUNT, KIND_MAPS, KIND_MAPS).map(list),
    max_size=40,
)


@needs_c
@FUZZ
@given(COUNTS, st.integers(1, 40), st.integers(1, 12))
def test_c_encodes_as_python(counts: dict[CountsKey, Counts], partitions: int, max_rows: int) -> None:
    assert_same_encoding(counts, partitions, max_rows)


def counted_records() -> st.SearchStrategy[tuple[object, ...]]:
    """One counted record; few addresses and windows, so that keys repeat."""
    ip = st.sampled_from([b"", b"\xc0\x00\x02\x01", b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"])
    start = st.sampled_from([0, 60, 2**40])
    kind = st.sampled_from(KINDS)
    return st.one_of(
        st.tuples(ip, start, st.just(EVENT_ANSWERED), st.one_of(st.none(), kind)),
        st.tuples(ip, start, st.just(EVENT_FAILURE), kind),
        st.tuples(ip, start, st.just(EVENT_TIMEOUT), st.none()),
    )


@needs_c
@FUZZ
@given(st.lists(st.lists(counted_records(), max_size=30), max_size=4))
def test_c_folds_as_python(containers: list[list[tuple[object, ...]]]) -> None:
    py: dict[CountsKey, Counts] = {}
    c: dict[CountsKey, Counts] = {}
    for records in containers:
        counted = [item for record in records for item in record]
        fold_py(py, counted)
        fold_c(c, counted)
        assert list(c.items()) == list(py.items())
    assert_same_encoding(py, 3, 4)


@pytest.mark.parametrize("fold", [fold_py, pytest.param(fold_c, marks=needs_c)])
def test_fold_rejects_what_it_cannot_count(fold: object) -> None:
    with pytest.raises(ValueError):
        fold({}, [b"", 0, EVENT_ANSWERED])  # type: ignore[operator]
    with pytest.raises(ValueError):
        fold({}, [b"", 0, 7, None])  # type: ignore[operator]


def test_an_empty_batch_has_no_records() -> None:
    assert processors.deltas.encode({}, KeyPartitioner(3), MAX_ROWS) == {}
