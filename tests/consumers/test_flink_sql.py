"""A Flink SQL consumer of the failures topic, with no code of ours: ``docs/examples/flink_failures.sql``
(shown verbatim in the README) read through Flink's Kafka connector and its ``avro-confluent`` format,
against a real broker and a real Schema Registry (the local Apicurio's Confluent-compatible API).

The input is written here the way the pipeline writes the failures topic: confluent-kafka's
``AvroSerializer`` with ``schemas/edns_failure.avsc`` (subject ``<topic>-value``), keyed by name server.
Flink runs in a local mini cluster (``flink_sql.run_sql``); its jars come from Maven Central once
(``.ci/flink-setup.sh`` in CI). Skipped, with the reason, only where Java or Maven is missing, and never
under CI.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from tests.consumers import flink_sql
from tests.consumers.records import produce_failures
from tests.kafka_fixture import TopicFactory

README = Path(__file__).resolve().parents[2] / "README.md"

#: name server -> failures written; 300 records over five servers (one IPv6), in shuffled order
EXPECTED = {
    "192.0.2.1": 150,
    "198.51.100.7": 90,
    "2001:db8::53": 40,
    "203.0.113.9": 17,
    "192.0.2.254": 3,
}


@pytest.mark.consumer
def test_readme_shows_the_sql_verbatim() -> None:
    assert flink_sql.FAILURES_SQL.read_text().strip() in README.read_text()


@pytest.mark.consumer
@pytest.mark.integration
@pytest.mark.slow
def test_flink_sql_counts_failures_per_name_server(
    flink_jars: None, kafka_bootstrap: str, registry_url: str, new_topic: TopicFactory
) -> None:
    topic = new_topic(partitions=3, prefix="failures")
    produce_failures(kafka_bootstrap, registry_url, topic, EXPECTED)
    # the serializer registered the writer schema under the topic-name strategy's subject
    assert f"{topic}-value" in SchemaRegistryClient({"url": registry_url}).get_subjects()

    result = flink_sql.run_sql(flink_sql.failures_sql(kafka_bootstrap, registry_url, topic))

    assert flink_sql.counts_of(result) == EXPECTED
    # ORDER BY failures DESC
    assert [ns for ns, _ in result.rows] == sorted(EXPECTED, key=lambda ns: -EXPECTED[ns])
    assert result.listening, "the mini cluster was never seen listening: the check saw nothing"
    beyond = sorted(addr for addr in result.listening if not flink_sql.is_loopback(addr[0]))
    assert not beyond, f"the Flink mini cluster listened beyond loopback: {beyond}"


@pytest.mark.consumer
@pytest.mark.integration
@pytest.mark.slow
def test_a_flink_table_may_declare_only_the_columns_it_needs(
    flink_jars: None, kafka_bootstrap: str, registry_url: str, new_topic: TopicFactory
) -> None:
    """The README's claim: the table is the reader schema, resolved against the writer's by field name, so
    a subset of the fields, nullable and in another order, reads the same records."""
    topic = new_topic(partitions=2, prefix="failures")
    records = produce_failures(kafka_bootstrap, registry_url, topic, {"192.0.2.1": 30, "2001:db8::53": 20})
    script = f"""
        SET 'execution.runtime-mode' = 'batch';
        CREATE TABLE failures_by_kind (
          kind STRING,
          query_edns_do BOOLEAN,
          name_server STRING
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{kafka_bootstrap}',
          'scan.startup.mode' = 'earliest-offset',
          'scan.bounded.mode' = 'latest-offset',
          'format' = 'avro-confluent',
          'avro-confluent.url' = '{registry_url}'
        );
        SELECT name_server, kind, query_edns_do, COUNT(*) AS n
        FROM failures_by_kind
        GROUP BY name_server, kind, query_edns_do;
    """
    result = flink_sql.run_sql(script)

    assert result.columns == ("name_server", "kind", "query_edns_do", "n")
    got = {(ns, kind, do == "true"): int(n) for ns, kind, do, n in result.rows}
    assert got == Counter((r["name_server"], r["kind"], r["query_edns_do"]) for r in records)
