"""Failures per name server from the pipeline's topics, with nothing but confluent-kafka.

    pip install 'confluent-kafka[avro,schemaregistry]'
    python read_topics.py BOOTSTRAP REGISTRY_URL FAILURES_TOPIC COUNTS_TOPIC

Reads both topics from the beginning to their current end and prints one JSON object:
``failures`` counts the failure records per name server, ``totals`` is each name server's newest
snapshot on the counts topic (its all-time failures). Once the pipeline is idle the two agree.
"""

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def read_to_end(bootstrap, topic, deserialize):
    """Every value of ``topic``, decoded, from the beginning to the end it has now."""
    config = {"bootstrap.servers": bootstrap, "group.id": "read-topics", "enable.auto.commit": False}
    consumer = Consumer(config)
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending = {p for p, end in ends.items() if end > 0}
    quiet_since = time.monotonic()
    while pending:
        msg = consumer.poll(1)
        if msg is not None:
            if msg.error():
                raise RuntimeError(msg.error())
            quiet_since = time.monotonic()
            yield deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
        elif time.monotonic() - quiet_since > 10:
            raise TimeoutError(f"{topic}: nothing for 10 s, partitions {sorted(pending)} not at their end")
        # the position, not the last record's offset: a transactional topic ends with a commit marker
        positions = consumer.position([TopicPartition(topic, p) for p in pending])
        pending -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
    consumer.close()


def main(bootstrap, registry_url, failures_topic, counts_topic):
    # the writer's schema comes from the registry by the id each value carries
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    failures = {}
    for failure in read_to_end(bootstrap, failures_topic, deserialize):
        failures[failure["name_server"]] = failures.get(failure["name_server"], 0) + 1
    newest = {}
    for snapshot in read_to_end(bootstrap, counts_topic, deserialize):
        seen = newest.get(snapshot["name_server"])
        if seen is None or snapshot["snapshot_time_ms"] >= seen["snapshot_time_ms"]:
            newest[snapshot["name_server"]] = snapshot
    totals = {ns: s["total"]["failures"] for ns, s in newest.items() if s["total"]["failures"]}
    print(json.dumps({"failures": failures, "totals": totals}, sort_keys=True))


if __name__ == "__main__":
    main(*sys.argv[1:5])
