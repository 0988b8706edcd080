"""KafkaBatchOutput against a real broker: records to explicit partitions, and a producer that keeps
every topic it sends to after a new topic appears (integration)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition

from processors.filter_agent import KafkaBatchOutput

pytestmark = pytest.mark.integration


def output_for(producer: AIOKafkaProducer) -> KafkaBatchOutput:
    """A KafkaBatchOutput over ``producer`` outside a worker (at_least_once: no transactions)."""
    app: Any = SimpleNamespace(
        producer=SimpleNamespace(_ensure_producer=lambda: producer), in_transaction=False
    )
    return KafkaBatchOutput(app)


def read(bootstrap: str, topic: str, partition: int, count: int) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-output-reader"})
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        return [(m.key(), m.value()) for m in consumer.consume(count, 10)]
    finally:
        consumer.close()


def test_records_to_an_explicit_partition_and_topics_created_later(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """aiokafka refreshes metadata only for the topics its client tracks; a topic known from a full
    metadata response is not tracked, so the first topic created later made it forget the others and
    batches queued for them waited forever (the worker hung once the changelog topic appeared)."""
    first = new_topic(3, prefix="test-out-first")

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
        await producer.start()
        try:
            await producer.client.force_metadata_update()  # nothing tracked yet: every topic, as Faust does
            output = output_for(producer)
            await output.send(first, [(b"k", b"v1"), (None, b"v2")], source=None, partition=2)
            later = new_topic(2, prefix="test-out-later")
            await output.send(later, [(b"k", b"w")], source=None)
            await producer.client.force_metadata_update()
            assert producer.client.cluster.partitions_for_topic(first) == {0, 1, 2}
            await asyncio.wait_for(output.send(first, [(None, b"v3")], source=None, partition=2), 15)
            assert (await output.partitioner(first)).count == 3
        finally:
            await producer.stop()

    asyncio.run(scenario())
    assert [v for _, v in read(kafka_bootstrap, first, 2, 3)] == [b"v1", b"v2", b"v3"]
