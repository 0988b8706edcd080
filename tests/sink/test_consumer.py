"""The sink's consumer logic against a scripted in-memory consumer: decoding, commits, rebalances, DLQ.

The real-broker behaviour is in ``test_sink_kafka.py``; here the Kafka client is replaced so each commit
can be checked against the files on disk at the moment it is made.
"""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsqr_schemas import avro_schema, edns_failure
from dnsqr_schemas.dead_letter import SINK_REASONS, SOURCE_OFFSET, SOURCE_PARTITION, DeadLetterHeaders
from dnsqr_schemas.value_format import ValueFormat
from nmsgdns.payload import make_payload
from sink import consumer as sink_consumer
from sink import files as sink_files
from sink.consumer import FailureSink, SinkConfig, UndecodableValue, decode_failure_payload
from sink.files import Discard, final_files, parse_final_name
from tests.mutations import mutated
from tests.sink.helpers import corpus_payloads, failure_value, files_multiset

TOPIC = "failures-test"


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return corpus_payloads("edge_cases")


# ------------------------------------------------------------------------------ decoding


def test_decode_roundtrip(payloads: list[bytes]) -> None:
    for payload in payloads:
        _, value = failure_value(payload)
        assert decode_failure_payload(value) == payload


def _avro(payload: bytes) -> bytes:
    record = {
        "time_sec": 1,
        "time_nsec": 2,
        "name_server": "192.0.2.1",
        "resolver": "192.0.2.2",
        "query_port": 1,
        "response_port": 53,
        "proto": 17,
        "qname": "example.",
        "qtype": 1,
        "qclass": 1,
        "rcode": 0,
        "kind": "noopt",
        "query_edns_udp_size": 1232,
        "query_edns_version": 0,
        "query_edns_do": False,
        "payload": payload,
    }
    out = io.BytesIO()
    schemaless_writer(out, avro_schema("edns_failure"), record)
    return out.getvalue()


@pytest.mark.parametrize(
    ("value", "message", "reason"),
    [
        (None, "null value", "null"),
        (b"", "Avro", "avro"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "Avro", "avro"),
        (_avro(make_payload(1, 9, 1, 2, b"")) + b"x", "trailing", "avro"),
        (_avro(b"\xff\xff"), "not an NmsgPayload", "not_nmsg_payload"),
        (_avro(b"\x08\x01"), "not an NmsgPayload", "not_nmsg_payload"),
        (_avro(make_payload(2, 9, 1, 2, b"")), "not base:dnsqr", "not_dnsqr"),
    ],
)
def test_decode_rejects(value: bytes | None, message: str, reason: str) -> None:
    """The message says why; the reason is its word of the contract's set (dead letter and metric)."""
    with pytest.raises(UndecodableValue, match=message) as raised:
        decode_failure_payload(value)
    assert raised.value.reason == reason and reason in SINK_REASONS


def decode_outcome(value: bytes | None) -> tuple[str, object]:
    """What :func:`decode_failure_payload` did: ("ok", payload) or ("undecodable", reason), the reason
    without object addresses (fastavro's EOFError names its stream, ``<_io.BytesIO object at 0x...>``)."""
    try:
        return ("ok", decode_failure_payload(value))
    except UndecodableValue as exc:
        return ("undecodable", re.sub(r" at 0x[0-9a-f]+", " at 0x", str(exc)))


def fastavro_outcome(value: bytes | None) -> tuple[str, object]:
    """:func:`decode_outcome` with the C Avro reader off: fastavro alone, as the sink decoded before it."""
    with mock.patch.object(edns_failure, "_flat_field", None):
        return decode_outcome(value)


_VALUES = [failure_value(p)[1] for p in corpus_payloads("edge_cases")]
#: a valid value of the corpus, as it is or damaged
DAMAGED = st.sampled_from(_VALUES).flatmap(lambda v: mutated(v, min_edits=0))


@settings(max_examples=300, deadline=None)
@given(st.one_of(DAMAGED, st.binary(max_size=300)))
def test_decode_is_unchanged_by_the_c_reader(value: bytes) -> None:
    """The same payload, or the same reason word for word, as fastavro alone gives (the sink before)."""
    assert decode_outcome(value) == fastavro_outcome(value)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda v: v, None),
        (lambda v: v + b"\x00", r"^Avro: 1 trailing bytes after the record$"),
        (lambda v: v + b"xyz", r"^Avro: 3 trailing bytes after the record$"),
        (lambda v: v[:-2], r"^Avro: EOFError: Expected \d+ bytes, read \d+$"),  # into the payload
        (lambda v: v[:1], r"^Avro: (IndexError|EOFError): "),
        (lambda v: b"\x80", r"^Avro: IndexError: "),
        (lambda v: b"\xff" * 40, r"^Avro: "),
    ],
)
def test_decode_reasons(payloads: list[bytes], damage: Callable[[bytes], bytes], reason: str | None) -> None:
    """Valid, trailing bytes, truncated, garbage: the categories of the dead letters' reasons."""
    for payload in payloads[:20]:
        value = damage(failure_value(payload)[1])
        outcome = decode_outcome(value)
        assert outcome == fastavro_outcome(value)
        if reason is None:
            assert outcome == ("ok", payload)
        else:
            assert outcome[0] == "undecodable" and re.search(reason, str(outcome[1])), outcome


def test_sink_imports_no_faust_and_no_processors() -> None:
    """The sink reads the failures topic with the contract's module (dnsqr_schemas.edns_failure), not with
    the stage that writes it: neither the Faust app nor anything of processors is imported."""
    code = (
        "import sys, sink.consumer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'processors')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ scripted Kafka


class FakeMessage:
    def __init__(
        self,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._partition, self._offset, self._value, self._key = partition, offset, value, key
        self._headers = headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


class FakePartition:
    def __init__(self, partition: int) -> None:
        self.topic, self.partition = TOPIC, partition


#: a script step: a batch of messages, or ("assign"|"revoke", partitions)
Step = list[FakeMessage] | tuple[str, list[int]]


class FakeConsumer:
    """Plays a script of batches and rebalances; every commit is checked against the files on disk."""

    script: list[Step] = []
    output_dir: Path = Path()
    commits: list[dict[int, int]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        assert conf["enable.auto.commit"] is False
        self.callbacks: dict[str, Callable[..., None]] = {}

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        assert topics == [TOPIC]
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self.script:
            return []
        step = self.script.pop(0)
        if isinstance(step, tuple):
            what, partitions = step
            self.callbacks["on_" + what](self, [FakePartition(p) for p in partitions])
            return []
        return step

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        for tp in offsets:
            durable = self._durable_end(tp.partition)
            assert tp.offset <= durable, f"commit {tp.offset} of p{tp.partition} beyond files ({durable})"
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        return offsets

    def _durable_end(self, partition: int) -> int:
        """The first offset of ``partition`` not yet in a final file nor acknowledged by the DLQ."""
        done = set(FakeProducer.acknowledged.get(partition, ()))
        for path in final_files(self.output_dir, "failures", partition):
            parsed = parse_final_name(path.name)
            assert parsed is not None
            done.update(range(parsed.first, parsed.last + 1))
        end = 0
        while end in done:
            end += 1
        return end

    def close(self) -> None:
        pass


class FakeProducer:
    """Acknowledges dead letters only when flushed, so a commit that does not wait for them fails."""

    produced: list[tuple[str, bytes | None, list[tuple[str, bytes | None]]]] = []
    #: partition -> offsets whose dead letter was acknowledged
    acknowledged: dict[int, list[int]] = {}

    def __init__(self, conf: dict[str, Any]) -> None:
        self._waiting: list[tuple[dict[str, bytes], Callable[[Any, Any], None]]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, headers: Any, on_delivery: Any
    ) -> None:
        self.produced.append((topic, value, headers))
        self._waiting.append((dict(headers), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for headers, callback in self._waiting:
            partition, offset = int(headers[SOURCE_PARTITION]), int(headers[SOURCE_OFFSET])
            self.acknowledged.setdefault(partition, []).append(offset)
            callback(None, None)
        self._waiting.clear()
        return 0


@pytest.fixture
def fake_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    monkeypatch.setattr(sink_consumer, "Consumer", FakeConsumer)
    monkeypatch.setattr(sink_consumer, "Producer", FakeProducer)
    FakeConsumer.script = []
    FakeConsumer.commits = []
    FakeConsumer.output_dir = tmp_path
    FakeProducer.produced = []
    FakeProducer.acknowledged = {}
    return FakeConsumer


def config(tmp_path: Path, **kwargs: Any) -> SinkConfig:
    kwargs.setdefault("rotate_seconds", None)
    kwargs.setdefault("idle_exit", 0.05)
    return SinkConfig(output_dir=tmp_path, kafka={}, topic=TOPIC, **kwargs)


def committed(fake: type[FakeConsumer]) -> dict[int, int]:
    """The last offset committed per partition."""
    return {p: o for commit in fake.commits for p, o in commit.items()}


def messages(partition: int, payloads: list[bytes], start: int = 0) -> list[FakeMessage]:
    return [FakeMessage(partition, start + i, failure_value(p)[1]) for i, p in enumerate(payloads)]


def test_commits_follow_files(tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]) -> None:
    fake_kafka.script = [
        ("assign", [0, 1]),
        messages(0, payloads[:20]),
        messages(1, payloads[20:]),
        messages(0, payloads[:10], start=20),
    ]
    stats = FailureSink(config(tmp_path, rotate_bytes=2048)).run()
    assert stats.records == len(payloads) + 10 and stats.undecodable == 0
    assert files_multiset(tmp_path) == Counter(payloads + payloads[:10])
    assert committed(fake_kafka) == {0: 30, 1: len(payloads) - 20}
    assert stats.files == len(final_files(tmp_path, "failures")) > 2
    assert not [n for n in (p.name for p in tmp_path.iterdir()) if n.endswith(".tmp")]


def test_revoke_discards_partial_file(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]
) -> None:
    fake_kafka.script = [
        ("assign", [0, 1]),
        messages(0, payloads[:10]) + messages(1, payloads[10:20]),
        ("revoke", [0, 1]),
        ("assign", [1]),
        messages(1, payloads[10:20]),  # the range was not committed: it comes again
    ]
    stats = FailureSink(config(tmp_path)).run()
    assert stats.discarded_partials == Counter({Discard.REBALANCE: 2})
    assert "2 partial files discarded on a rebalance" in stats.summary()
    assert files_multiset(tmp_path) == Counter(payloads[10:20])
    assert [p.name for p in final_files(tmp_path, "failures")] == [
        "failures-p0001-o000000000000-000000000009.nmsg"
    ]
    assert committed(fake_kafka) == {1: 10}


def test_disk_full_discards_are_reported_as_such(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while finalizing: the open files go because of the error, and the summary says so."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sink_files.os, "fsync", disk_full)
    fake_kafka.script = [("assign", [0, 1]), messages(0, payloads[:10]) + messages(1, payloads[10:20])]
    sink = FailureSink(config(tmp_path))
    with pytest.raises(OSError, match="No space left"):
        sink.run()
    assert sink.stats.discarded_partials == Counter({Discard.ERROR: 2})
    summary = sink.stats.summary()
    assert "2 partial files discarded after an error" in summary and "rebalance" not in summary
    assert [p.name for p in tmp_path.iterdir()] == [] and committed(fake_kafka) == {}


def test_undecodable_values_go_to_dlq(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]
) -> None:
    batch = messages(0, payloads[:6])
    # the input's own headers follow the contract's, except any in the contract's namespace
    batch[0] = FakeMessage(0, 0, b"garbage", b"k", [("trace", b"t1"), ("dlq.stage", b"forged")])
    batch[3] = FakeMessage(0, 3, None)
    fake_kafka.script = [("assign", [0]), batch]
    stats = FailureSink(config(tmp_path)).run()
    assert (stats.records, stats.undecodable, stats.dead_lettered, stats.payloads) == (6, 2, 2, 4)
    assert files_multiset(tmp_path) == Counter([payloads[1], payloads[2], payloads[4], payloads[5]])
    # offset 0 was durable at once (no file open), 3 joined the file 1-5
    assert [p.name for p in final_files(tmp_path, "failures")] == [
        "failures-p0000-o000000000001-000000000005.nmsg"
    ]
    assert committed(fake_kafka) == {0: 6}
    topics = {topic for topic, _, _ in FakeProducer.produced}
    assert topics == {TOPIC + ".dlq"}
    (_, value, headers), (_, null_value, null_headers) = FakeProducer.produced
    assert value == b"garbage" and null_value is None
    letter, null_letter = DeadLetterHeaders.decode(headers), DeadLetterHeaders.decode(null_headers)
    assert letter.origin() == ("sink", TOPIC, 0, 0) and null_letter.origin() == ("sink", TOPIC, 0, 3)
    # the reason the metrics count each under, not a class name
    assert (letter.error_type, null_letter.error_type) == ("avro", "null")
    assert "Avro" in letter.error and null_letter.error == "null value"
    assert [h for h in headers if not h[0].startswith("dlq.")] == [("trace", b"t1")]
    assert [v for k, v in headers if k == "dlq.stage"] == [b"sink"]


def test_max_records_leaves_the_rest_uncommitted(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]
) -> None:
    fake_kafka.script = [("assign", [0]), messages(0, payloads)]
    stats = FailureSink(config(tmp_path, idle_exit=None, max_records=7)).run()
    assert stats.records == 7
    assert files_multiset(tmp_path) == Counter(payloads[:7])
    assert committed(fake_kafka) == {0: 7}


def test_stop_finalizes_and_commits(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]
) -> None:
    sink = FailureSink(config(tmp_path, idle_exit=None))
    batch = messages(0, payloads[:5])

    class StopAfter(FakeMessage):
        def value(self) -> bytes | None:
            sink.stop()  # as the SIGTERM handler does, mid-batch
            return super().value()

    last = batch[-1]
    batch[-1] = StopAfter(0, last.offset(), last.value())
    fake_kafka.script = [("assign", [0]), batch, messages(0, payloads[5:], start=5)]
    stats = sink.run()
    assert stats.records == 5
    assert files_multiset(tmp_path) == Counter(payloads[:5])
    assert committed(fake_kafka) == {0: 5}


def test_stale_records_are_skipped(
    tmp_path: Path, fake_kafka: type[FakeConsumer], payloads: list[bytes]
) -> None:
    """Records of a partition not owned, or at an offset already appended, would duplicate: skipped."""
    batch = messages(0, payloads[:5]) + messages(2, payloads[5:6]) + messages(0, payloads[3:5], start=3)
    fake_kafka.script = [("assign", [0]), batch]
    stats = FailureSink(config(tmp_path)).run()
    assert (stats.records, stats.stale) == (5, 3)
    assert files_multiset(tmp_path) == Counter(payloads[:5])
    assert committed(fake_kafka) == {0: 5}


def test_decode_in_each_value_format() -> None:
    """The sink reads the payload out of every configured format; a value not laid out as configured is
    a dead letter with reason ``format`` (never guessed: a schemaless value is not read as framed)."""
    payload = corpus_payloads("live_resolver")[0]
    body = failure_value(payload)[1]
    framed = ValueFormat("edns_failure", "confluent", 5)
    reader = ValueFormat("edns_failure", "confluent", lookup=lambda i: avro_schema("edns_failure"))
    assert decode_failure_payload(framed.encode(body), reader) == payload
    json_format = ValueFormat("edns_failure", "json")
    assert decode_failure_payload(json_format.encode(body), json_format) == payload
    for value, fmt in ((body, reader), (body, json_format), (framed.encode(body), json_format)):
        with pytest.raises(UndecodableValue) as err:
            decode_failure_payload(value, fmt)
        assert err.value.reason == "format"
