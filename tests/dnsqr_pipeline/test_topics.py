"""Topic administration: idempotent creation, listing, deletion, a quick clear error without a broker, and
the replication defaults on a single node (the 3-node check is in test_topics_cluster.py)."""

from __future__ import annotations

import argparse
import socket
import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource, ConfigSource

from dnsqr_kafka import topics
from dnsqr_pipeline import topics_command
from processors.settings import Settings
from tests.kafka_fixture import wait_for_leaders


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released, so it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    topics_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_unreachable_broker_is_a_clear_and_quick_error() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    admin = topics.admin_client({"bootstrap.servers": address})
    began = time.monotonic()
    with pytest.raises(
        topics.BrokerUnreachableError, match=f"no Kafka broker answered at {address} within 2s"
    ):
        topics.create_topics(admin, [topics.TopicSpec("x")], bootstrap=address, timeout=2)
    assert time.monotonic() - began < 5


def test_cli_reports_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    assert _run_cli(["topics", "create", "--bootstrap-servers", address, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert f"no Kafka broker answered at {address}" in err
    assert "kafka start" in err


@pytest.mark.parametrize(("rf", "config"), [(1, {}), (2, {}), (3, {"min.insync.replicas": "2"})])
def test_replication_config_keeps_one_replica_to_spare_from_three_on(rf: int, config: dict[str, str]) -> None:
    assert topics.replication_config(rf) == config


def test_replication_config_of_five_replicas() -> None:
    assert topics.replication_config(5) == {"min.insync.replicas": "4"}


def test_pipeline_topics_are_the_architecture_table_and_the_workers_own() -> None:
    specs = {spec.name: spec for spec in topics_command.pipeline_topics(Settings(partitions=6))}
    assert list(specs) == [
        "dnsqr.raw",
        "dnsqr.edns.failures",
        "dnsqr.edns.ns-stats",
        "dnsqr.edns.ns-counts",
        "dnsqr.raw.dlq",
        "dnsqr.edns.progress",
        "dnsqr-edns-ns-state-changelog",
    ]
    assert specs["dnsqr.edns.progress"].partitions == 1
    # co-partitioned with ns-stats, compacted
    for name in ("dnsqr.edns.ns-stats", "dnsqr-edns-ns-state-changelog"):
        assert specs[name].partitions == 6
    assert specs["dnsqr-edns-ns-state-changelog"].config["cleanup.policy"] == "compact"


@pytest.mark.integration
def test_create_is_idempotent_and_applies_partitions_and_config(
    kafka_admin: AdminClient, kafka_bootstrap: str
) -> None:
    name = f"test-admin-{uuid.uuid4().hex[:12]}"
    spec = topics.TopicSpec(name, config={"cleanup.policy": "compact"})
    common = {"bootstrap": kafka_bootstrap, "partitions": 3, "config": {"retention.ms": "3600000"}}
    try:
        assert topics.create_topics(kafka_admin, [spec], **common) == {name: "created"}
        assert topics.create_topics(kafka_admin, [spec], **common) == {name: "exists"}
        assert topics.list_topics(kafka_admin, bootstrap=kafka_bootstrap)[name] == 3
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        config = kafka_admin.describe_configs([resource])[resource].result(timeout=10)
        assert config["cleanup.policy"].value == "compact"
        assert config["retention.ms"].value == "3600000"
        grown = topics.create_topics(
            kafka_admin, [spec], bootstrap=kafka_bootstrap, partitions=5, grow_partitions=True
        )
        assert grown == {name: "grown to 5"}
    finally:
        assert topics.delete_topics(kafka_admin, [name], bootstrap=kafka_bootstrap) == {name: "deleted"}
    assert topics.delete_topics(kafka_admin, [name], bootstrap=kafka_bootstrap) == {name: "missing"}


@pytest.mark.integration
def test_cli_create_list_delete(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"test-cli-{uuid.uuid4().hex[:12]}"
    conn = ["--bootstrap-servers", kafka_bootstrap]
    assert _run_cli(["topics", "create", name, "--partitions", "2", *conn]) == 0
    assert _run_cli(["topics", "create", name, "--partitions", "2", *conn]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}\tcreated", f"{name}\texists"]
    assert _run_cli(["topics", "list", *conn]) == 0
    assert f"{name}\t2" in capsys.readouterr().out.splitlines()
    assert _run_cli(["topics", "delete", name, *conn]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}\tdeleted"]


def topic_replication(admin: AdminClient, name: str, timeout: float = 30.0) -> tuple[set[int], ConfigEntry]:
    """The replica counts of a topic's partitions, and its min.insync.replicas entry.

    A topic just created may not be known to every broker yet: ask again until one answers for it.
    """
    wait_for_leaders(admin, name, timeout)
    deadline = time.monotonic() + timeout
    # the broker asked next may be one that has not heard of the topic yet: its answer has no partitions
    meta = admin.list_topics(name, timeout=10).topics[name]
    while not meta.partitions and time.monotonic() < deadline:
        time.sleep(0.2)
        meta = admin.list_topics(name, timeout=10).topics[name]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    while True:
        try:
            config = admin.describe_configs([resource])[resource].result(timeout=10)
            break
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return {len(p.replicas) for p in meta.partitions.values()}, config["min.insync.replicas"]


@pytest.mark.integration
def test_cli_create_defaults_on_a_single_node(kafka_admin: AdminClient, kafka_bootstrap: str) -> None:
    if len(kafka_admin.list_topics(timeout=10).brokers) != 1:
        pytest.skip("the session's cluster has more than one broker")
    name = f"test-rf-{uuid.uuid4().hex[:12]}"
    assert topics.cluster_replication_factor(kafka_admin, timeout=10) == 1
    try:
        assert _run_cli(["topics", "create", name, "--bootstrap-servers", kafka_bootstrap]) == 0
        replicas, min_insync = topic_replication(kafka_admin, name)
        assert replicas == {1}
        assert min_insync.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value and min_insync.value == "1"
    finally:
        topics.delete_topics(kafka_admin, [name], bootstrap=kafka_bootstrap)
