"""``topics create`` on a 3-node cluster: three replicas and min.insync.replicas 2 unless told otherwise.

The cluster is the session's 3-node one (``kafka_cluster``), so the test runs the same with or without
``$KAFKA_BOOTSTRAP``; the single-node defaults are checked in test_topics.py.
"""

from __future__ import annotations

import argparse

import pytest
from confluent_kafka.admin import ConfigSource

from dnsqr_kafka import topics
from dnsqr_pipeline import localkafka, topics_command
from processors.settings import Settings
from tests.dnsqr_pipeline.test_topics import topic_replication

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def cluster(kafka_cluster: localkafka.ClusterLayout) -> localkafka.ClusterLayout:
    return kafka_cluster


def _create(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    topics_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topics", "create", *argv])
    return args.func(args)


def test_create_defaults_to_three_replicas_with_two_in_sync(cluster: localkafka.ClusterLayout) -> None:
    bootstrap = cluster.bootstrap()
    admin = topics.admin_client({"bootstrap.servers": bootstrap})
    conn = ["--bootstrap-servers", bootstrap, "--timeout", "30"]
    assert topics.cluster_replication_factor(admin, timeout=30) == 3

    assert _create(*conn) == 0
    for spec in topics_command.pipeline_topics(Settings()):
        replicas, min_insync = topic_replication(admin, spec.name)
        assert replicas == {3}, spec.name
        assert (min_insync.value, min_insync.source) == ("2", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    # an explicit config wins over the default; an explicit factor below 3 sets no min.insync.replicas
    assert _create("explicit-config", "--config", "min.insync.replicas=3", *conn) == 0
    replicas, min_insync = topic_replication(admin, "explicit-config")
    assert replicas == {3} and min_insync.value == "3"
    assert _create("explicit-rf", "--replication-factor", "2", *conn) == 0
    replicas, min_insync = topic_replication(admin, "explicit-rf")
    assert replicas == {2} and min_insync.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
