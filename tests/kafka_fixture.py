"""Kafka broker fixtures for integration tests (a pytest plugin, loaded by tests/conftest.py).

The broker is started lazily: only when a test asks for ``kafka_bootstrap`` (directly or through
``kafka_admin`` / ``kafka_topic_factory``), so unit tests never need Java. With ``$KAFKA_BOOTSTRAP`` set
the tests use that cluster instead and start nothing.

Fixtures:
- ``kafka_bootstrap`` (session): ``"host:port"`` of the cluster.
- ``kafka_cluster`` (session): a 3-node cluster (:class:`~dnsqr_pipeline.localkafka.ClusterLayout`) for
  fault tests, started on first use.
- ``local_kafka`` (session): the :class:`~dnsqr_pipeline.localkafka.ClusterLayout` of the broker these
  fixtures started, or None when ``$KAFKA_BOOTSTRAP`` names another one.
- ``kafka_admin`` (session): a confluent-kafka ``AdminClient`` on that cluster.
- ``kafka_topic_factory`` / ``new_topic`` (function): ``new_topic(partitions=1, config=None, *,
  replication_factor=1, prefix="test") -> str`` creates a uniquely named topic, waits until every
  partition has a leader, and deletes it after the test.

Helper: :func:`read_topic`, every (key, value) of a topic from its beginning to its current end.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dnsqr_kafka import topics
from dnsqr_pipeline import localkafka

TopicFactory = Callable[..., str]


def free_port_block(count: int, *, start: int = 20000, stop: int = 32000) -> int:
    """First port of ``count`` consecutive loopback ports that are free now.

    Test brokers must not collide with a developer's broker on 9092 or with another test session, and a
    cluster needs consecutive ports, so ask the kernel rather than hard-coding them. They stay below
    Linux's ephemeral range (32768 and up): a node stopped in a fault test must get its port back when it
    restarts, and a client's outgoing connection could otherwise take it in between.
    """
    rng = uuid.uuid4().int
    span = stop - start - count
    for attempt in range(200):
        base = start + (rng + attempt * 7919) % span
        with ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((localkafka.HOST, port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {localkafka.HOST}")


def start_test_cluster(directory: os.PathLike[str] | str, nodes: int) -> localkafka.ClusterLayout:
    """Start a cluster of ``nodes`` in ``directory`` on free ports (clients and controllers)."""
    base = free_port_block(2 * nodes)
    return localkafka.start(
        Path(directory), nodes=nodes, port=base, controller_port=base + nodes, timeout=120
    )


@pytest.fixture(scope="session")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.ClusterLayout | None]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield None
        return
    layout = start_test_cluster(tmp_path_factory.mktemp("kafka"), nodes=1)
    try:
        yield layout
    finally:
        localkafka.stop(layout.directory)


@pytest.fixture(scope="session")
def _kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localkafka.ClusterLayout]:
    layout = start_test_cluster(tmp_path_factory.mktemp("kafka-cluster"), nodes=3)
    try:
        yield layout
    finally:
        localkafka.stop(layout.directory)


@pytest.fixture
def kafka_cluster(_kafka_cluster: localkafka.ClusterLayout) -> localkafka.ClusterLayout:
    """The session's 3-node cluster for fault tests (always started here, whatever ``$KAFKA_BOOTSTRAP``
    says), with every node running and registered when the test starts, whatever an earlier test did."""
    layout = _kafka_cluster
    stopped = [node for node, pid in localkafka.status(layout.directory).items() if pid is None]
    if stopped:
        localkafka.start(layout.directory, only=stopped, timeout=120)
    admin = AdminClient({"bootstrap.servers": layout.bootstrap()})
    deadline = time.monotonic() + 60
    while len(admin.list_topics(timeout=10).brokers) < layout.nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster in {layout.directory} does not show {layout.nodes} brokers")
        time.sleep(0.5)
    return layout


@pytest.fixture(scope="session")
def kafka_bootstrap(local_kafka: localkafka.ClusterLayout | None) -> str:
    return local_kafka.bootstrap() if local_kafka else os.environ["KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def wait_for_leaders(admin: AdminClient, topic: str, timeout: float = 30.0) -> None:
    """Block until every partition of ``topic`` has a leader, so the first produce does not race it."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        if (
            meta
            and meta.error is None
            and meta.partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} has no leader for every partition after {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def kafka_topic_factory(kafka_admin: AdminClient) -> Iterator[TopicFactory]:
    created: list[str] = []

    def new_topic(
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        *,
        replication_factor: int = 1,
        prefix: str = "test",
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, partitions, replication_factor, config=dict(config or {}))]
        )
        futures[name].result(timeout=30)
        created.append(name)
        wait_for_leaders(kafka_admin, name)
        return name

    yield new_topic
    # a test may have deleted its topic itself: a missing topic is fine here
    topics.delete_topics(kafka_admin, created, timeout=30)


@pytest.fixture
def new_topic(kafka_topic_factory: TopicFactory) -> TopicFactory:
    """The same factory under the shorter name."""
    return kafka_topic_factory


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of ``topic`` from the beginning to its current end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time_ns()}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out, deadline = [], time.monotonic() + timeout
        pending = {p for p, end in ends.items() if end > 0}
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append((msg.key(), msg.value()))
            # the position, not the last record: a transactional topic ends with a commit marker
            positions = consumer.position([TopicPartition(topic, p) for p in pending])
            pending -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
        assert not pending, f"could not read {topic} to its end: partitions {sorted(pending)}"
        return out
    finally:
        consumer.close()
