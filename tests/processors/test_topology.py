"""The topic specs (processors/topology.py): every topic a worker needs besides the raw topic, with its
partitions and configuration."""

from __future__ import annotations

from dnsqr_kafka.topics import CONTAINER_TOPIC_CONFIG
from processors.settings import Settings
from processors.topology import internal_topic_specs


def test_internal_topic_specs_name_every_topic_the_worker_needs() -> None:
    settings = Settings(
        app_id="edns-a", partitions=6, replication_factor=3, stats_topic="s", counts_topic="c"
    )
    specs = {spec.name: spec for spec in internal_topic_specs(settings)}
    assert set(specs) == {
        "s",
        "c",
        settings.failures_topic,
        settings.dlq_topic,
        settings.progress_topic,
        "edns-a-ns-state-changelog",
    }
    assert settings.raw_topic not in specs
    # the replication factor is the creator's (the worker resolves min(3, brokers) before it creates them)
    assert {spec.replication_factor for spec in specs.values()} <= {None, 3}
    assert {spec.partitions for name, spec in specs.items() if name != settings.progress_topic} == {6}
    assert specs[settings.progress_topic].partitions == 1, "one partition: receipts in order"
    changelog = specs["edns-a-ns-state-changelog"]
    assert changelog.config["cleanup.policy"] == "compact"
    assert changelog.partitions == specs["s"].partitions, "one changelog partition per ns-stats partition"
    assert specs["c"].config == {"cleanup.policy": "compact"}
    assert specs[settings.dlq_topic].config == CONTAINER_TOPIC_CONFIG
    assert specs["s"].config == {} and specs[settings.failures_topic].config == {}
