"""The filter step without Kafka: corpus containers in, the reference filter's selection out."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from fastavro import schemaless_reader

from dnsqr_schemas import avro_schema
from nmsgdns.container import encode_container
from nmsgdns.errors import NmsgDnsError
from nmsgdns.payload import make_payload
from processors.failure_record import decode_failure
from processors.filter_agent import Counts, PartitionBatch, WindowClock, encode_delta, filter_container
from tests import corpus
from tests.processors.helpers import expected_failures, raw_containers


def run_case(case: str, per_container: int, compress: bool = False) -> PartitionBatch:
    clock = WindowClock(3600)
    batch = PartitionBatch()
    for data in raw_containers(case, per_container, compress=compress):
        batch.add(filter_container(data, clock))
    return batch


@pytest.mark.parametrize("case", corpus.CASES)
def test_selection_and_counts_match_reference(case: str) -> None:
    batch = run_case(case, 100)
    assert Counter(decode_failure(v)["payload"] for _, v in batch.failures) == expected_failures(case)
    per_ns: Counter[str] = Counter()
    for (ns, _start), c in batch.counts.items():
        per_ns[ns] += c.failures
        assert c.failures == sum(c.by_kind.values())
        assert c.failures <= c.edns_answered
    assert {ns: n for ns, n in per_ns.items() if n} == corpus.expected_counts(case)


def test_failure_keys_are_the_name_server() -> None:
    batch = run_case("edge_cases", 1000, compress=True)
    for key, value in batch.failures:
        assert key.decode() == decode_failure(value)["name_server"]


def test_windows_follow_record_time() -> None:
    clock = WindowClock(2)
    batch = PartitionBatch()
    for data in raw_containers("live_resolver", 500):
        batch.add(filter_container(data, clock))
    starts = {start for _, start in batch.counts}
    assert all(start % 2 == 0 for start in starts)
    assert len(starts) > 1, "live_resolver spans more than two seconds"


@pytest.mark.parametrize("time_sec", [0, 59, 60, 1_795_772_099, 1_795_772_100, 2**40])
def test_window_clock_fast_path_agrees_with_full_parse(time_sec: int) -> None:
    clock = WindowClock(60)
    usual = make_payload(1, 9, time_sec, 5, b"x")
    # the same envelope with an unknown field first: only the full walk can read it
    unusual = b"\x50\x01" + usual
    assert clock.window_start(usual) == clock.window_start(usual) == time_sec - time_sec % 60
    assert clock.window_start(unusual) == time_sec - time_sec % 60


def test_deltas_are_avro_ns_stats() -> None:
    batch = run_case("live_resolver", 1000)
    deltas = batch.deltas()
    assert len(deltas) == len(batch.counts)
    decoded = [schemaless_reader(io.BytesIO(v), avro_schema("ns_stats"), None) for _, v in deltas]
    assert sum(d["failures"] for d in decoded) == sum(corpus.expected_counts("live_resolver").values())
    assert all(k.decode() == d["name_server"] for (k, _), d in zip(deltas, decoded, strict=True))
    assert sum(d["timeouts"] for d in decoded) > 0, "the corpus has unanswered EDNS queries"


def test_encode_delta_round_trip() -> None:
    c = Counts(edns_answered=5, failures=2, timeouts=1, by_kind=Counter(noopt=2))
    value = schemaless_reader(io.BytesIO(encode_delta("192.0.2.1", 3600, c)), avro_schema("ns_stats"), None)
    assert value == {
        "name_server": "192.0.2.1",
        "window_start": 3600,
        "edns_answered": 5,
        "failures": 2,
        "by_kind": {"noopt": 2},
        "timeouts": 1,
        "observations": {},
    }


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"NMSG\x00\x02\x00\x00\x00\x10short", encode_container([b"\x08\x01"], crcs=False)[:-1]],
)
def test_undecodable_containers_raise_domain_errors(data: bytes) -> None:
    with pytest.raises(NmsgDnsError):
        filter_container(data, WindowClock(3600))
