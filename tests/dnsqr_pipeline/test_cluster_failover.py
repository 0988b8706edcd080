"""A 3-node KRaft cluster loses a broker mid-stream: acks=all + idempotence lose and duplicate nothing.

The cluster is the session's 3-node one (separate directory and ports from the single node), so the
test runs the same with or without ``$KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dnsqr_pipeline import localkafka
from tests.kafka_fixture import wait_for_leaders

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

MESSAGES = 2000
PARTITIONS = 3


@pytest.fixture
def cluster(kafka_cluster: localkafka.ClusterLayout) -> localkafka.ClusterLayout:
    return kafka_cluster


class LogReader(threading.Thread):
    """Reads every partition from the start with assign() (no group, no rebalance, no commits).

    Without a group, each record in the log is delivered exactly once, so a duplicate seen here is a
    duplicate in the log, which is what idempotence must prevent.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.values: Counter[int] = Counter()
        self.done = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"failover-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])

    def run(self) -> None:
        try:
            while not self.done.is_set():
                msg = self.consumer.poll(0.2)
                if msg is not None and not msg.error():
                    self.values[int(msg.value()[:8])] += 1
        finally:
            self.consumer.close()

    def count(self) -> int:
        return sum(self.values.values())


def test_sigkill_one_broker_mid_stream_loses_and_duplicates_nothing(
    cluster: localkafka.ClusterLayout,
) -> None:
    began = time.monotonic()
    bootstrap = cluster.bootstrap()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"failover-{uuid.uuid4().hex[:12]}"
    new = NewTopic(topic, PARTITIONS, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([new])[topic].result(timeout=30)
    wait_for_leaders(admin, topic)
    # kill the leader of partition 0, so at least one partition must elect a new leader
    victim = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader

    reader = LogReader(bootstrap, topic)
    reader.start()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    failed: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    payload = b"x" * 292
    consumed_before_kill = 0
    for i in range(MESSAGES):
        producer.produce(topic, b"%08d" % i + payload, key=str(i).encode(), on_delivery=delivered)
        producer.poll(0)
        if i == MESSAGES // 2:
            producer.flush(30)
            consumed_before_kill = reader.count()
            assert localkafka.stop(cluster.directory, only=[victim], kill=True) == [victim]
        elif i % 100 == 0:
            time.sleep(0.05)  # a stream, not one burst: records keep arriving while leaders move
    assert producer.flush(60) == 0
    assert failed == []

    deadline = time.monotonic() + 45
    while reader.count() < MESSAGES and time.monotonic() < deadline:
        time.sleep(0.2)
    reader.done.set()
    reader.join(10)

    assert consumed_before_kill > 0
    assert sorted(reader.values) == list(range(MESSAGES)), "records lost"
    assert max(reader.values.values()) == 1, "records duplicated"
    assert localkafka.status(cluster.directory)[victim] is None
    assert time.monotonic() - began < 90

    # the crashed node comes back (start-node) and rejoins the in-sync replicas
    localkafka.start(cluster.directory, only=[victim])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
        if all(len(p.isrs) == 3 for p in partitions):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"node {victim} did not rejoin the ISR of {topic}")
