"""The broker's own ceiling on this machine for 300-byte records: what the pipeline is measured against.

Runs Kafka's ProducerPerformance / ConsumerPerformance (from the jars ``dnsqr-pipeline kafka`` resolves)
and the same work through confluent-kafka from Python, the client every stage uses, against one local
node started for the run in a temporary directory (or ``--bootstrap-servers`` to use a running one).

    .venv/bin/python bench/broker_baseline.py --records 2000000

Prints one line per measurement and, with ``--json``, the figures as JSON for issue notes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dnsqr_pipeline import localkafka

JVM_HEAP = "-Xmx512m"


def java_tool(libs: Path, main_class: str, args: list[str]) -> str:
    """Run one of Kafka's tool classes and return its standard output (errors end the benchmark)."""
    cmd = [localkafka.java_command(), JVM_HEAP, "-cp", localkafka.java_classpath(libs), main_class, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{main_class} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def producer_perf(libs: Path, bootstrap: str, topic: str, records: int, size: int, props: list[str]) -> float:
    out = java_tool(
        libs,
        "org.apache.kafka.tools.ProducerPerformance",
        [
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={bootstrap}",
            *props,
        ],
    )
    # the summary line: "N records sent, R records/sec (M MB/sec), ..."
    summary = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", out)
    return float(summary[-1][1])


def consumer_perf(libs: Path, bootstrap: str, topic: str, records: int) -> float:
    out = java_tool(
        libs,
        "org.apache.kafka.tools.ConsumerPerformance",
        [
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--group",
            f"perf-{uuid.uuid4().hex}",
            "--timeout",
            "60000",
        ],
    )
    header, values = (line.split(", ") for line in out.strip().splitlines()[-2:])
    # fetch.nMsg.sec leaves out the group join, which is not the broker's throughput
    return float(dict(zip(header, values, strict=True))["fetch.nMsg.sec"])


def python_produce(bootstrap: str, topic: str, records: int, size: int, conf: dict[str, str]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, **conf})
    value = b"x" * size
    began = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.01)
    producer.flush(120)
    return records / (time.perf_counter() - began)


def python_consume(bootstrap: str, topic: str, records: int) -> float:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"perf-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    began = None
    while seen < records:
        batch = consumer.consume(10000, timeout=5)
        if not batch:
            raise SystemExit(f"confluent-kafka consumer stalled after {seen} records")
        if began is None:
            began = time.perf_counter()  # from the first fetch, like fetch.nMsg.sec
        seen += sum(1 for m in batch if not m.error())
    consumer.close()
    return seen / (time.perf_counter() - (began or 0.0))


def run(args: argparse.Namespace, bootstrap: str, libs: Path) -> dict[str, float]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = {kind: f"perf-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("java", "python")}
    for future in admin.create_topics([NewTopic(n, 1, 1) for n in names.values()]).values():
        future.result(30)
    producer_props = [
        f"acks={args.acks}",
        f"linger.ms={args.linger_ms}",
        f"compression.type={args.compression}",
        "batch.size=262144",
    ]
    python_conf = {
        "acks": args.acks,
        "linger.ms": str(args.linger_ms),
        "compression.type": args.compression,
        "batch.size": "262144",
        "queue.buffering.max.messages": "1000000",
    }
    results: dict[str, float] = {}
    try:
        results["java_produce"] = producer_perf(
            libs, bootstrap, names["java"], args.records, args.record_size, producer_props
        )
        results["java_consume"] = consumer_perf(libs, bootstrap, names["java"], args.records)
        results["python_produce"] = python_produce(
            bootstrap, names["python"], args.records, args.record_size, python_conf
        )
        results["python_consume"] = python_consume(bootstrap, names["python"], args.records)
    finally:
        for future in admin.delete_topics(list(names.values())).values():
            future.result(30)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--record-size", type=int, default=300)
    parser.add_argument("--acks", default="1", help="producer acks (default 1: one node has no replicas)")
    parser.add_argument("--linger-ms", type=int, default=20)
    parser.add_argument("--compression", default="none", help="none, lz4, zstd... (default none)")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")
    parser.add_argument(
        "--port", type=int, default=29092, help="client port of the broker started for the run"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    args = parser.parse_args(argv)

    libs = localkafka.resolve_jars()
    if args.bootstrap_servers:
        results = run(args, args.bootstrap_servers, libs)
    else:
        with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp:
            layout = localkafka.start(Path(tmp), port=args.port)
            try:
                results = run(args, layout.bootstrap(), libs)
            finally:
                localkafka.stop(layout.directory)
    print(
        f"Kafka {localkafka.kafka_version()}, 1 node, {args.records} records of {args.record_size} bytes, "
        f"acks={args.acks}, linger.ms={args.linger_ms}, compression={args.compression}"
    )
    for name, rate in results.items():
        print(f"{name:15s} {rate:12,.0f} records/s  {rate * args.record_size / 1e6:8.1f} MB/s")
    if args.json:
        json.dump(results, sys.stdout)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
