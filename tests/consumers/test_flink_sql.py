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

import os
import random
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from dnsqr_schemas import schema_text
from dnsqr_schemas.edns_failure import SCHEMA_NAME
from tests.consumers import flink_sql
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
KINDS = ("formerr", "servfail", "notimp", "refused", "noopt", "truncated-noopt", "badvers")


@pytest.fixture(scope="session")
def flink_jars() -> None:
    """The Flink jars, resolved once; a skip with the reason where Java or Maven is missing (not in CI).
    Session-scoped and first in the tests' arguments, so it runs before the broker and registry fixtures."""
    try:
        flink_sql.java()
        flink_sql.resolve_jars()
    except flink_sql.FlinkUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Flink consumer test: {exc}")
        pytest.skip(str(exc))


def failure(rng: random.Random, name_server: str, i: int) -> dict:
    return {
        "time_sec": 1_700_000_000 + i,
        "time_nsec": rng.randrange(1_000_000_000),
        "name_server": name_server,
        "resolver": f"10.0.{i % 256}.{rng.randrange(1, 255)}",
        "query_port": rng.randrange(1024, 65536),
        "response_port": 53,
        "proto": rng.choice((17, 6)),
        "qname": f"host{i}.example.",
        "qtype": rng.choice((1, 28, 48)),
        "qclass": 1,
        "rcode": rng.choice((0, 1, 2, 4, 5)),
        "kind": rng.choice(KINDS),
        "query_edns_udp_size": rng.choice((512, 1232, 4096)),
        "query_edns_version": 0,
        "query_edns_do": rng.random() < 0.5,
        "payload": rng.randbytes(rng.randrange(0, 200)),
    }


def produce_failures(bootstrap: str, registry_url: str, topic: str, counts: dict[str, int]) -> list[dict]:
    """Write ``counts[ns]`` failure records of each name server to ``topic`` in the Confluent wire format;
    the records written."""
    rng = random.Random(18)
    servers = [ns for ns, n in counts.items() for _ in range(n)]
    rng.shuffle(servers)
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), schema_text(SCHEMA_NAME))
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    records = [failure(rng, ns, i) for i, ns in enumerate(servers)]
    for record in records:
        producer.produce(topic, key=record["name_server"].encode(), value=serializer(record, context))
    assert producer.flush(30) == 0
    return records


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
