"""Failure records written the way the pipeline writes the failures topic, for the consumer tests' own
inputs: confluent-kafka's ``AvroSerializer`` with ``schemas/edns_failure.avsc`` (subject ``<topic>-value``,
the Confluent wire format), keyed by name server."""

from __future__ import annotations

import random

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from dnsqr_schemas import schema_text
from dnsqr_schemas.edns_failure import SCHEMA_NAME

KINDS = ("formerr", "servfail", "notimp", "refused", "noopt", "truncated-noopt", "badvers")


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
