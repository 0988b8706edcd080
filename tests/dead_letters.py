"""Test helpers for dead letters on a real broker: read a DLQ with its contract headers, rewind a group.

Shared by the ingest, worker and sink tests of the dead-letter contract (``schemas/dead_letter.md``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dnsqr_schemas.dead_letter import DeadLetterHeaders


@dataclass(frozen=True)
class Letter:
    """One record of a dead-letter topic: its key and value, and its headers read by the contract."""

    key: bytes | None
    value: bytes | None
    headers: DeadLetterHeaders
    raw_headers: list[tuple[str, bytes | None]]


def _consumer(bootstrap: str, **conf: object) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            **conf,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    return sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)


def read_letters(
    bootstrap: str, topic: str, *, committed: bool = True, timeout: float = 30.0
) -> list[Letter]:
    """Every record of ``topic`` from the start to its current end (``committed``: as a read_committed
    consumer sees it), each decoded by the contract (a record without its headers fails the test)."""
    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = _consumer(bootstrap, **{"enable.partition.eof": True, "isolation.level": isolation})
    try:
        parts = _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        at_eof: set[int] = set()
        out: list[Letter] = []
        deadline = time.monotonic() + timeout
        while len(at_eof) < len(parts):
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout} s"
            for msg in consumer.consume(500, timeout=0.5):
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    at_eof.add(msg.partition())
                    continue
                headers = msg.headers() or []
                out.append(Letter(msg.key(), msg.value(), DeadLetterHeaders.decode(headers), headers))
        return out
    finally:
        consumer.close()


def log_end_offsets(bootstrap: str, topic: str) -> int:
    """The sum of ``topic``'s high watermarks: its records plus the transaction markers among them."""
    consumer = _consumer(bootstrap)
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in _partitions(consumer, topic)
        )
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> offset ``group`` has committed on ``topic`` (negative: none)."""
    consumer = _consumer(bootstrap, **{"group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def rewind_group(bootstrap: str, group: str, topic: str, timeout: float = 30.0) -> None:
    """Commit offset 0 on every partition of ``topic`` for ``group`` (whose members must have left), as
    ``kafka-consumer-groups --reset-offsets --to-earliest`` does: what a crash before any commit leaves."""
    consumer = _consumer(bootstrap, **{"group.id": group})
    deadline = time.monotonic() + timeout
    try:
        offsets = [TopicPartition(topic, p, 0) for p in _partitions(consumer, topic)]
        while True:
            try:
                result = consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException:
                result = None  # the group still has a member (its session has not expired yet)
            if result is not None and all(tp.error is None for tp in result):
                return
            assert time.monotonic() < deadline, f"could not rewind group {group} within {timeout} s"
            time.sleep(0.5)
    finally:
        consumer.close()
