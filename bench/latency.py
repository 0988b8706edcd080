"""Latency from a record's arrival to its failure on the failures topic, at a fixed rate (issue #11).

Method:

1. **A paced capture.** ``--rate R`` records/s for ``--seconds T``: the payloads of CAPTURE (cycled if it is
   shorter) get new envelope times ``t0 + i / R`` (t0 = now), nothing else changes. The standalone filter's
   rule runs over them to know how many failures to expect.
2. **The stages.** Per-run topics on the broker (``--bootstrap-servers``, else a throw-away local one),
   the failures topic with ``message.timestamp.type=LogAppendTime`` so each failure's Kafka timestamp is
   when the broker appended it; ``--workers`` worker subprocesses (``dnsqr-pipeline worker``, as users run
   them; logs in bench/out/latency-logs/; no sink, it is downstream of what is measured). Ingest starts
   once the workers own every raw partition.
3. **Arrival at --speed 1.** Ingest runs in this process (the same code as ``dnsqr-pipeline ingest -r
   FILE --speed 1``), which sends each record when it is due: record time t arrives at wall time
   ``start + (t - t_first)``, with ``start`` read just before ingest begins. The real schedule starts when
   the first record is read, a few milliseconds later, so latencies err by that much on the high side.
4. **Latency** of a failure = its Kafka timestamp - its record's arrival (the failure carries the record's
   time). Read after the workers have committed the whole raw topic, ``read_committed``. Under
   exactly_once a failure is appended before its transaction commits, so consumers see it up to one commit
   interval later than measured here.

Prints p50/p90/p99/max over all failures, the achieved ingest rate, and how many failures arrived (all that
the filter selects, or it says how many are missing).

    .venv/bin/python bench/latency.py bench/out/big.nmsg --rate 40000 --seconds 20 \\
        --bootstrap-servers 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, TopicPartition

from dnsqr_kafka.names import TopicNames
from dnsqr_kafka.topics import CONTAINER_TOPIC_CONFIG, TopicSpec, admin_client, create_topics
from dnsqr_pipeline.completion import Progress, wait_caught_up
from dnsqr_pipeline.job import (
    Stage,
    embedded_kafka,
    stage_kafka,
    wait_for_assignment,
    worker_command,
    worker_settings,
)
from dnsqr_schemas.edns_failure import decode_failure
from ingest.bridge import Bridge, IngestConfig
from nmsgdns.edns import EdnsFilter
from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter
from nmsgdns.proto.nmsg_pb2 import NmsgPayload

NS = 1_000_000_000
#: the workers' logs (bench/out is git-ignored); each run overwrites the previous run's
LOG_DIR = Path(__file__).resolve().parent / "out" / "latency-logs"


@dataclass(frozen=True)
class PacedCapture:
    """The paced file, its first record time (ns) and the number of failures the filter selects in it."""

    path: Path
    records: int
    first_ns: int
    selected: int


def write_paced(source: Path, out: Path, rate: float, records: int) -> PacedCapture:
    """``records`` payloads of ``source`` (cycled) with envelope times evenly spaced at ``rate``/s."""
    with source.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(source)))
    if not payloads:
        raise SystemExit(f"{source}: no payloads")
    first_ns = time.time_ns()
    rule = EdnsFilter()
    msg = NmsgPayload()
    with NmsgFileWriter(out) as writer:
        for i in range(records):
            msg.ParseFromString(payloads[i % len(payloads)])
            msg.time_sec, msg.time_nsec = divmod(first_ns + round(i * NS / rate), NS)
            paced = msg.SerializeToString()
            rule.select(paced)
            writer.write(paced)
    return PacedCapture(out, records, first_ns, rule.selected)


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a throw-away local one."""
    if bootstrap:
        yield bootstrap
    else:
        with embedded_kafka(None) as started:
            yield started


def create_run_topics(kafka: Mapping[str, str], topics: TopicNames, partitions: int) -> None:
    """The topics a worker uses, the failures topic stamped by the broker on append."""
    specs = [
        TopicSpec(topics.raw, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(topics.failures, config={"message.timestamp.type": "LogAppendTime"}),
        TopicSpec(topics.stats),
        TopicSpec(topics.counts, config={"cleanup.policy": "compact"}),
        TopicSpec(topics.raw_dlq, partitions=1, config=CONTAINER_TOPIC_CONFIG),
    ]
    create_topics(admin_client(kafka), specs, bootstrap=kafka["bootstrap.servers"], partitions=partitions)


def delete_run_topics(kafka: Mapping[str, str], run_id: str) -> None:
    """Delete the run's topics and the changelogs its workers created (their names carry ``run_id``)."""
    admin = admin_client(kafka)
    names = [t for t in admin.list_topics(timeout=10).topics if run_id in t]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort: a leftover topic is no wrong result
                future.result()


def worker_stage(
    number: int, args: argparse.Namespace, bootstrap: str, topics: TopicNames, app_id: str
) -> Stage:
    """One ``dnsqr-pipeline worker`` subprocess on the run's topics, its log in ``LOG_DIR``."""
    settings = worker_settings(
        topics, app_id, bootstrap, partitions=args.partitions, processing_guarantee=args.processing_guarantee
    )
    argv = worker_command(settings, stage_kafka({"bootstrap.servers": bootstrap}))
    return Stage(f"worker-{number}", argv, LOG_DIR)


def failure_latencies(
    kafka: Mapping[str, str],
    topic: str,
    start: float,
    first_ns: int,
    from_offsets: Mapping[int, int] | None = None,
) -> list[float]:
    """Seconds from each failure's record arrival (``start`` + record time - ``first_ns``) to its Kafka
    timestamp, for every committed failure on ``topic`` from ``from_offsets`` (default: the beginning)
    up to its current end."""
    consumer = Consumer(
        {
            **kafka,
            "group.id": f"latency-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    latencies: list[float] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        starts = from_offsets or {}
        consumer.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in partitions])
        waiting = set(partitions)
        while waiting:
            msg = consumer.poll(5.0)
            if msg is None:
                raise SystemExit(f"no progress reading {topic}")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    waiting.discard(msg.partition())
                    continue
                raise SystemExit(f"reading {topic}: {msg.error().str()}")
            kind, stamp_ms = msg.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME:
                raise SystemExit(f"{topic} does not carry broker append times (timestamp type {kind})")
            value = decode_failure(msg.value())
            record_ns = value["time_sec"] * NS + value["time_nsec"]
            latencies.append(stamp_ms / 1000 - (start + (record_ns - first_ns) / NS))
    finally:
        consumer.close()
    return latencies


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, int(q / 100 * len(ordered) + 0.5) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capture", type=Path, help="NMSG file whose payloads are replayed (cycled if short)")
    p.add_argument("--rate", type=float, default=40_000, help="records per second (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20, help="length of the replay (default %(default)s)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--add-worker-at",
        type=float,
        metavar="S",
        help="start one more worker S seconds into the replay (a scale-out while the state is built)",
    )
    p.add_argument("--bootstrap-servers", help="default: start a throw-away local broker")
    p.add_argument(
        "--processing-guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    args = p.parse_args(argv)
    records = int(args.rate * args.seconds)
    run_id = uuid.uuid4().hex[:8]
    topics, app_id = TopicNames.named(f".latency-{run_id}"), f"dnsqr-edns-latency-{run_id}"
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp, broker(args.bootstrap_servers) as bootstrap:
        paced = write_paced(args.capture, Path(tmp) / "paced.nmsg", args.rate, records)
        print(f"{records} records at {args.rate:,.0f}/s, {paced.selected} failures expected", file=sys.stderr)
        kafka = {"bootstrap.servers": bootstrap}
        create_run_topics(kafka, topics, args.partitions)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        stages = [worker_stage(i, args, bootstrap, topics, app_id) for i in range(1, args.workers + 1)]
        added: threading.Timer | None = None
        try:
            deadline = time.monotonic() + 120
            wait_for_assignment(kafka, app_id, topics.raw, args.workers, stages, deadline)
            config = IngestConfig(
                kafka=kafka,
                files=[str(paced.path)],
                raw_topic=topics.raw,
                dlq_topic=topics.raw_dlq,
                speed=1.0,
                progress_bar=False,
            )
            bridge = Bridge(config)
            if args.add_worker_at is not None:
                added = threading.Timer(
                    args.add_worker_at,
                    lambda: stages.append(worker_stage(args.workers + 1, args, bootstrap, topics, app_id)),
                )
                added.start()
            start = time.time()
            summary = bridge.run()
            if not summary.ok:
                print(summary.format(), file=sys.stderr)
                return 1
            deadline = time.monotonic() + 120 + args.seconds
            wait_caught_up(kafka, [Progress(app_id, topics.raw, "the filter agent")], stages, deadline)
            latencies = sorted(failure_latencies(kafka, topics.failures, start, paced.first_ns))
        finally:
            if added is not None:
                added.cancel()
            for stage in stages:
                stage.stop()
            delete_run_topics(kafka, run_id)
    sent = sum(summary.records_in.values())
    added_text = "" if args.add_worker_at is None else f", one more added at {args.add_worker_at:g} s"
    print(
        f"{sent} records in {summary.elapsed:.1f} s = {sent / summary.elapsed:,.0f} records/s achieved "
        f"(asked {args.rate:,.0f}/s); {args.workers} worker(s){added_text}, {args.partitions} partitions, "
        f"{args.processing_guarantee}"
    )
    if not latencies:
        print("no failures on the failures topic", file=sys.stderr)
        return 1
    print(
        f"{len(latencies)} failures (filter selects {paced.selected}): record arrival -> failures topic "
        + ", ".join(f"p{q} {percentile(latencies, q):.3f} s" for q in (50, 90, 99))
        + f", max {latencies[-1]:.3f} s, min {latencies[0]:.3f} s"
    )
    if len(latencies) < paced.selected:
        print(f"{paced.selected - len(latencies)} failures MISSING from the failures topic", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
