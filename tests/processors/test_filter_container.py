"""The filter step without Kafka: corpus containers in, the reference filter's selection out."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from dnsqr_kafka.key_partition import KeyPartitioner
from dnsqr_schemas.edns_failure import decode_failure, encode_failure_py
from nmsgdns import native, wire
from nmsgdns.classify import classify_failure, observe
from nmsgdns.container import decode_container, encode_container
from nmsgdns.edns import judge_py
from nmsgdns.errors import NmsgDnsError
from nmsgdns.payload import make_payload
from processors import filter_agent
from processors.counts import EVENT_ANSWERED, EVENT_FAILURE, EVENT_TIMEOUT
from processors.delta_batch import decode_batch
from processors.deltas import rows
from processors.failure_record import failure_dict
from processors.filter_agent import ContainerResult, PartitionBatch, WindowClock, filter_container
from tests import corpus
from tests.processors.helpers import expected_failures, raw_containers, row_kinds


def run_case(case: str, per_container: int, compress: bool = False) -> PartitionBatch:
    clock = WindowClock(3600)
    batch = PartitionBatch()
    for offset, data in enumerate(raw_containers(case, per_container, compress=compress)):
        batch.add(offset, filter_container(data, clock))
    return batch


@pytest.mark.parametrize("case", corpus.CASES)
def test_selection_and_counts_match_reference(case: str) -> None:
    batch = run_case(case, 100)
    assert Counter(decode_failure(v)["payload"] for _, v in batch.failures) == expected_failures(case)
    per_ns: Counter[str] = Counter()
    for ns, _start, answered, failures, _timeouts, by_kind, _observations in rows(batch.counts):
        per_ns[ns] += failures
        assert failures == sum(by_kind.values())
        assert failures <= answered
    assert {ns: n for ns, n in per_ns.items() if n} == corpus.expected_counts(case)
    # one receipt per container, vouching for what it held
    payloads = len(corpus.read_payloads(corpus.path(f"{case}.nmsg")))
    assert [r.offset for r in batch.receipts] == list(range(len(batch.receipts)))
    assert sum(r.records for r in batch.receipts) == payloads
    assert sum(r.failures for r in batch.receipts) == len(batch.failures)


def test_failure_keys_are_the_name_server() -> None:
    batch = run_case("edge_cases", 1000, compress=True)
    for key, value in batch.failures:
        assert key.decode() == decode_failure(value)["name_server"]


def test_a_container_that_raises_half_way_leaves_no_counts() -> None:
    """Its counted records reach the batch only with the whole container (else: dead-letter topic)."""
    batch = run_case("live_resolver", 500)
    before = {key: [*c[:3], dict(c[3] or {}), dict(c[4] or {})] for key, c in batch.counts.items()}
    calls = 0

    class FailingClock(WindowClock):
        def window_start(self, payload: bytes) -> int:
            nonlocal calls
            calls += 1
            if calls == 50:
                raise ValueError("half way")
            return super().window_start(payload)

    with pytest.raises(ValueError, match="half way"):
        batch.add(99, filter_container(raw_containers("live_resolver", 500)[0], FailingClock(3600)))
    assert {key: [*c[:3], dict(c[3] or {}), dict(c[4] or {})] for key, c in batch.counts.items()} == before


def test_windows_follow_record_time() -> None:
    clock = WindowClock(2)
    batch = PartitionBatch()
    for offset, data in enumerate(raw_containers("live_resolver", 500)):
        batch.add(offset, filter_container(data, clock))
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


def test_deltas_are_ns_stats_batches_by_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """One record per ns-stats partition (in parts of at most MAX_ROWS rows), each with the rows of the
    name servers of that partition; together exactly the batch's counts."""
    monkeypatch.setattr(filter_agent, "MAX_ROWS", 7)
    clock = WindowClock(1)  # live_resolver spans a few seconds: several windows
    batch = PartitionBatch()
    for offset, data in enumerate(raw_containers("live_resolver", 1000)):
        batch.add(offset, filter_container(data, clock))
    partition_of = KeyPartitioner(3)
    records = batch.deltas(partition_of)
    expected = rows(batch.counts)
    assert set(records) == {partition_of(row[0].encode()) for row in expected}
    got: dict[tuple[str, int], tuple[int, int, int, dict[str, int], dict[str, int]]] = {}
    for p, values in records.items():
        decoded = [decode_batch(v) for v in values]
        assert [d.part for d in decoded] == list(range(len(values)))
        assert all(len(d.name_servers) <= 7 for d in decoded)
        for d in decoded:
            kinds = row_kinds(d)
            for i, ns in enumerate(d.name_servers):
                assert partition_of(ns.encode()) == p
                k, o = kinds.get(i, ({}, {}))
                got[(ns, d.window_starts[i])] = (d.edns_answered[i], d.failures[i], d.timeouts[i], k, o)
    assert got == {(ns, start): tuple(values) for ns, start, *values in expected}
    assert sum(v[1] for v in got.values()) == sum(corpus.expected_counts("live_resolver").values())
    assert sum(v[2] for v in got.values()) > 0, "the corpus has unanswered EDNS queries"


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"NMSG\x00\x02\x00\x00\x00\x10short", encode_container([b"\x08\x01"], crcs=False)[:-1]],
)
def test_undecodable_containers_raise_domain_errors(data: bytes) -> None:
    with pytest.raises(NmsgDnsError):
        filter_container(data, WindowClock(3600))


def reference_filter_container(data: bytes, clock: WindowClock) -> ContainerResult:
    """filter_container as it was before the C fast paths: ``judge_py`` and the record for every payload,
    the envelope parsed again and fastavro for every failure. The new one must give the same bytes."""
    payloads = decode_container(data).payloads
    failures: list[tuple[bytes | None, bytes]] = []
    counted: list[object] = []
    for payload in payloads:
        j = judge_py(payload, detail=True)
        if j.selected:
            ns = j.ns_ip or ""
            detail = classify_failure(j.record, j.query_opt, j.response)
            failures.append(
                (ns.encode(), encode_failure_py(failure_dict(payload, j, detail.kind, detail=detail)))
            )
            ip = j.record.response_ip if j.ns_ip is not None else b""
            counted += (ip, clock.window_start(payload), EVENT_FAILURE, detail.kind)
        elif j.edns_answered or j.edns_timeout:
            if j.ns_ip is None:
                continue
            start = clock.window_start(payload)
            if j.edns_timeout:
                counted += (j.record.response_ip, start, EVENT_TIMEOUT, None)
            else:
                seen = None
                if j.response_opt is not None:
                    assert j.response is not None
                    seen = observe(j.record.type, j.query_opt, j.response_opt, j.response[3] & 0x0F)
                counted += (j.record.response_ip, start, EVENT_ANSWERED, seen)
    return ContainerResult(len(payloads), failures, counted)


def container_outputs(case: str, filter_fn: Any = filter_container) -> list[Any]:
    """Every output of filtering ``case`` (several container sizes, plain and zlib), comparably."""
    out = []
    for per_container, compress in ((100, False), (1000, True)):
        clock = WindowClock(60)
        for data in raw_containers(case, per_container, compress=compress):
            r = filter_fn(data, clock)
            out.append((r.records, r.failures, r.counted))
    return out


@pytest.mark.parametrize("case", corpus.CASES)
def test_same_outputs_as_before_the_fast_paths(case: str) -> None:
    assert container_outputs(case) == container_outputs(case, reference_filter_container)


_PURE_CHILD = """
import pickle, sys
from tests.processors.test_filter_container import container_outputs
from nmsgdns import wire
assert wire.IMPLEMENTATION == "python"
sys.stdout.buffer.write(pickle.dumps([container_outputs(c) for c in sys.argv[1:]]))
"""


@pytest.mark.skipif(wire.IMPLEMENTATION != "c", reason="nmsgdns._wirescan is not built or disabled")
def test_same_outputs_with_and_without_the_extension() -> None:
    """filter_container with NMSGDNS_PURE_PYTHON=1 (a fresh interpreter: the choice is made at import)."""
    env = {**os.environ, native.PURE_PYTHON_ENV: "1"}
    child = subprocess.run(
        [sys.executable, "-c", _PURE_CHILD, *corpus.CASES],
        env=env,
        cwd=corpus.REPO_ROOT,
        capture_output=True,
        check=True,
    )
    pure = pickle.loads(child.stdout)
    assert pure == [container_outputs(case) for case in corpus.CASES]
