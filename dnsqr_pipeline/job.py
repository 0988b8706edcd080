"""One pipeline job end to end: broker (embedded or given), topics, Faust workers, sink, ingest, results.

``dnsqr-pipeline run`` uses this for jobs such as replaying historical captures. The stages are the same
processes a long-running deployment uses (``worker`` and ``sink`` subprocesses, ingest in this process),
so a job exercises exactly what production runs. "Done" is decided from Kafka itself, not from timers:

1. ingest returns once every record is delivered to the raw topic;
2. the workers' consumer group has committed the end of the raw topic and then of the ns-stats topic;
3. the sink's group has committed the end of the failures topic (durable files, see ``sink/``);
4. the aggregator's last snapshot is on the counts topic (its totals add up to what the sink wrote).

Steps 2 and 3 are one wait that reads the groups' positions in that order each round, until a round finds
them all caught up with the same end offsets as the round before, so records still in flight from a stage
that committed early cannot be missed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from fastavro import schemaless_reader

from dnsqr_pipeline import localkafka
from dnsqr_pipeline.topics import CONTAINER_TOPIC_CONFIG, TopicSpec, admin_client, create_topics
from dnsqr_schemas import avro_schema
from ingest.bridge import IngestConfig, IngestSummary, run_ingest
from nmsgdns.input import ContainerStreamReader

log = logging.getLogger(__name__)

#: How long end offsets must stay unchanged (with the group caught up) before a stage counts as done. Short:
#: once ingest has delivered everything the raw topic's end is final, committed offsets only grow, and a
#: worker sends a batch's outputs before it commits the batch, so the later topics' ends are final once raw
#: is caught up; the settle only guards against a single stale read. (It was 2 s a stage, 6 s of every
#: job's run time: measured 16 s for 1M records with the pipeline idle for the last 6-7 s.)
SETTLE_SECONDS = 0.5
POLL_SECONDS = 0.25
#: File rotation of the job's sink: a partition's file is finalized once no failure joined it for
#: SINK_ROTATE_IDLE seconds, so a job's results are durable that soon after the last failure arrives,
#: and in any case after SINK_ROTATE_SECONDS.
SINK_ROTATE_SECONDS = 1.0
SINK_ROTATE_IDLE = 0.25


class JobError(RuntimeError):
    """The job could not finish; the message says which stage and why."""


@dataclass(frozen=True)
class Topics:
    raw: str
    failures: str
    stats: str
    counts: str
    raw_dlq: str
    failures_dlq: str

    @classmethod
    def named(cls, suffix: str = "") -> Topics:
        """The contract's topic names, with ``suffix`` appended (a job on a shared broker uses its own)."""
        return cls(
            raw=f"dnsqr.raw{suffix}",
            failures=f"dnsqr.edns.failures{suffix}",
            stats=f"dnsqr.edns.ns-stats{suffix}",
            counts=f"dnsqr.edns.ns-counts{suffix}",
            raw_dlq=f"dnsqr.raw.dlq{suffix}",
            failures_dlq=f"dnsqr.edns.failures{suffix}.dlq",
        )


@dataclass
class JobConfig:
    """What one job needs. ``kafka`` holds the client properties; no bootstrap means an embedded broker."""

    ingest: IngestConfig
    output_dir: Path
    kafka: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    partitions: int = 4
    processing_guarantee: str = "at_least_once"
    kafka_dir: Path | None = None
    timeout: float = 600.0
    #: start ingest only once the workers and the sink own their partitions, so the processing time
    #: measures throughput with every stage running rather than the stages' start-up (benchmarks); a job
    #: otherwise ingests while the workers start, which finishes sooner
    wait_for_stages: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class JobResult:
    ingest: IngestSummary
    #: name server -> table totals (failures, edns_answered, failure_rate, by_kind, timeouts, ...)
    totals: dict[str, dict[str, Any]]
    sink_files: list[Path]
    sink_records: int
    #: seconds for the whole job, and from the start of ingest until every failure was written
    elapsed: float
    processing: float
    #: seconds from starting the stages until they owned their partitions (``wait_for_stages`` only)
    startup: float | None = None

    @property
    def failures_by_ns(self) -> dict[str, int]:
        """``{name_server_ip: failures}``, the form of ``dnsqr-edns-filter --counts-json``."""
        ranked = sorted(self.totals.items(), key=lambda kv: (-kv[1]["failures"], kv[0]))
        return {ns: t["failures"] for ns, t in ranked if t["failures"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def embedded_kafka(directory: Path | None) -> Iterator[str]:
    """A single-node broker for the job's duration, on a free port, in ``directory`` or a temp dir."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dnsqr-kafka-")))
        port = free_port()
        print(f"starting a local Kafka broker on 127.0.0.1:{port} (data in {directory}) ...", file=sys.stderr)
        layout = localkafka.start(directory, nodes=1, port=port, controller_port=free_port())
        try:
            yield layout.bootstrap()
        finally:
            localkafka.stop(directory)


def _stage_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "dnsqr_pipeline.cli", *argv]


#: client properties every stage takes as a flag of its own (``add_kafka_arguments``)
_CREDENTIAL_FLAGS = {
    "security.protocol": "--security-protocol",
    "sasl.mechanism": "--sasl-mechanism",
    "sasl.username": "--sasl-username",
    "ssl.ca.location": "--ssl-ca-location",
}
#: the password reaches the stages through their environment, which ``ps`` does not show
_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"


@dataclass(frozen=True)
class StageKafka:
    """How the job's client properties reach its worker and sink subprocesses."""

    #: flags both stages take: bootstrap servers and credentials
    common: list[str]
    #: ``--kafka-config`` flags for the librdkafka sink; the Faust workers (aiokafka) refuse them
    librdkafka: list[str]
    env: dict[str, str]


def stage_kafka(kafka: Mapping[str, str]) -> StageKafka:
    """Split the job's client properties into stage flags, extra librdkafka properties and environment."""
    common = ["--bootstrap-servers", kafka["bootstrap.servers"]]
    librdkafka: list[str] = []
    env: dict[str, str] = {}
    for key, value in kafka.items():
        if key == "bootstrap.servers":
            continue
        if key in _CREDENTIAL_FLAGS:
            common += [_CREDENTIAL_FLAGS[key], value]
        elif key == "sasl.password":
            env[_PASSWORD_ENV] = value
        else:
            librdkafka += ["--kafka-config", f"{key}={value}"]
    return StageKafka(common, librdkafka, env)


class Stage:
    """A worker or sink subprocess whose output goes to a log file in the job's log directory."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise JobError(f"{self.name} exited with status {self.proc.returncode}; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _end_offsets(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = []
    for p in sorted(meta.partitions):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends.append(TopicPartition(topic, p, high))
    return ends


@dataclass(frozen=True)
class Progress:
    """A consumer group's way through a topic, as a job waits for it."""

    group: str
    topic: str
    #: who that is, for messages ("the filter agent")
    what: str


class Alive(Protocol):
    """A stage the waits check on each round, to fail at once when it died rather than at the deadline."""

    def check_alive(self) -> None: ...


def wait_caught_up(
    kafka: Mapping[str, str],
    progress: Sequence[Progress],
    stages: Sequence[Alive],
    deadline: float,
    *,
    settle: float = SETTLE_SECONDS,
) -> None:
    """Wait until each group has committed the end of every partition of its topic.

    ``progress`` is in pipeline order: a later topic's end is final only once the group before it is
    caught up (a worker sends a batch's outputs before committing the batch). Each round reads them in
    that order and stops at the first one behind; the wait ends when a round finds all caught up, the ends
    equal to the previous round's, and the first topic's end unchanged for ``settle`` seconds.
    """
    consumers = {
        group: Consumer({**kafka, "group.id": group, "enable.auto.commit": False})
        for group in dict.fromkeys(p.group for p in progress)
    }
    try:
        first_stable_since: float | None = None
        last_ends: list[list[int]] | None = None
        while True:
            for stage in stages:
                stage.check_alive()
            ends: list[list[int]] = []
            lag: tuple[Progress, int] | None = None
            for p in progress:
                behind, topic_ends = _behind(kafka, consumers[p.group], p)
                ends.append(topic_ends)
                if behind:
                    lag = (p, behind)
                    break
            now = time.monotonic()
            first_caught_up = lag is None or lag[0] is not progress[0]
            if first_caught_up and last_ends and ends[0] == last_ends[0]:
                first_stable_since = first_stable_since or now
            else:
                first_stable_since = None
            settled = first_stable_since is not None and now - first_stable_since >= settle
            if lag is None and ends == last_ends and settled:
                return
            last_ends = ends
            if now > deadline:
                p, behind = lag or (progress[-1], 0)
                raise JobError(
                    f"timed out waiting for {p.what}: group {p.group} is {behind} records behind on {p.topic}"
                )
            time.sleep(POLL_SECONDS)
    finally:
        for consumer in consumers.values():
            consumer.close()


def _behind(kafka: Mapping[str, str], consumer: Consumer, progress: Progress) -> tuple[int, list[int]]:
    """How many records the group has not committed on the topic (-1: unknown yet), and the topic's ends."""
    try:
        ends = _end_offsets(consumer, progress.topic)
        wanted = [TopicPartition(t.topic, t.partition) for t in ends]
        committed = consumer.committed(wanted, timeout=10)
    except KafkaException as exc:
        # e.g. NOT_COORDINATOR while a young broker loads its group metadata: ask again
        log.debug("offsets of %s for %s not available yet: %s", progress.topic, progress.group, exc)
        return -1, []
    lagging = [(e, c) for e, c in zip(ends, committed, strict=True) if max(c.offset, 0) < e.offset]
    behind = sum(e.offset - max(c.offset, 0) for e, c in lagging)
    if lagging and not _data_after(kafka, progress.topic, [c for _, c in lagging]):
        behind = 0  # only transaction markers (exactly_once) lie between commit and end
    return behind, [t.offset for t in ends]


def wait_for_assignment(
    kafka: Mapping[str, str], group: str, topic: str, members: int, stages: Sequence[Alive], deadline: float
) -> None:
    """Wait until ``group`` is stable with ``members`` members that between them own every partition of
    ``topic`` (what the group coordinator reports, so it holds for Faust and librdkafka groups alike)."""
    admin = admin_client(kafka)
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    while True:
        for stage in stages:
            stage.check_alive()
        try:
            group_info = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException as exc:  # e.g. the coordinator is still loading: ask again
            log.debug("group %s not described yet: %s", group, exc)
        else:
            owned = {
                tp.partition
                for m in group_info.members
                if m.assignment is not None
                for tp in m.assignment.topic_partitions
                if tp.topic == topic
            }
            if (
                group_info.state == ConsumerGroupState.STABLE
                and len(group_info.members) == members
                and len(owned) == partitions
            ):
                return
        if time.monotonic() > deadline:
            raise JobError(f"timed out: group {group} does not own the {partitions} partitions of {topic}")
        time.sleep(POLL_SECONDS)


def _data_after(kafka: Mapping[str, str], topic: str, positions: list[TopicPartition]) -> bool:
    """Whether committed records follow any of ``positions``.

    Under exactly_once the end offset of a partition counts the transactions' commit markers, which no
    consumer ever commits past, so "committed == end" never holds; reading on from the committed offset
    (read_committed) to the partition's end tells markers from records.
    """
    probe = Consumer(
        {
            **kafka,
            "group.id": f"dnsqr-run-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        probe.assign([TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in positions])
        waiting = {tp.partition for tp in positions}
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            msg = probe.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                return True
            if msg.error().code() == KafkaError._PARTITION_EOF:
                waiting.discard(msg.partition())
        return bool(waiting)
    finally:
        probe.close()


def read_latest_counts(kafka: Mapping[str, str], topic: str) -> dict[str, dict[str, Any]]:
    """Newest ``NsCounts.total`` per name server on the counts topic (read from the beginning to the end)."""
    consumer = Consumer(
        {**kafka, "group.id": f"dnsqr-run-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    schema = avro_schema("ns_counts")
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    try:
        ends = {(t.partition): t.offset for t in _end_offsets(consumer, topic)}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise JobError(f"timed out reading the counts topic {topic}")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise JobError(f"reading {topic}: {msg.error().str()}")
            value = schemaless_reader(io.BytesIO(msg.value()), schema, None)
            snapshot_time = value["snapshot_time_ms"]
            ns = value["name_server"]
            if ns not in latest or snapshot_time >= latest[ns][0]:
                latest[ns] = (snapshot_time, value["total"])
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    finally:
        consumer.close()
    return {ns: total for ns, (_t, total) in latest.items()}


def job_files(output_dir: Path) -> list[Path]:
    """The sink's finished files in ``output_dir`` (temporary files start with a dot)."""
    return sorted(p for p in output_dir.glob("*.nmsg") if not p.name.startswith("."))


def count_sink_records(files: list[Path]) -> int:
    total = 0
    for path in files:
        with path.open("rb") as fh:
            total += sum(len(b) for b in ContainerStreamReader(fh, name=str(path)).batches())
    return total


def run_job(cfg: JobConfig) -> JobResult:
    """Run the whole pipeline once over finite sources and return what it found."""
    started = time.monotonic()
    deadline = started + cfg.timeout
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    if job_files(cfg.output_dir):
        raise JobError(f"{cfg.output_dir} already holds NMSG files of an earlier job; use an empty directory")
    log_dir = cfg.output_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        kafka = dict(cfg.kafka)
        if not kafka.get("bootstrap.servers"):
            kafka["bootstrap.servers"] = stack.enter_context(embedded_kafka(cfg.kafka_dir))
            kafka.pop("security.protocol", None)
            topics, app_id = Topics.named(), "dnsqr-edns"
        else:
            # A shared broker may hold other jobs' topics and committed offsets: this job uses its own.
            topics, app_id = Topics.named(f".run-{cfg.run_id}"), f"dnsqr-edns-run-{cfg.run_id}"
        sink_group = f"{app_id}-sink"
        _create_job_topics(kafka, topics, cfg.partitions)

        stages: list[Stage] = []

        def stop_stages() -> None:
            for stage in reversed(stages):
                stage.stop()

        stack.callback(stop_stages)
        stages_started = time.monotonic()
        flags = stage_kafka(kafka)
        if flags.librdkafka:
            log.warning(
                "%s apply to ingest and the sink; the Faust workers do not take librdkafka properties",
                " ".join(flags.librdkafka),
            )
        for i in range(1, cfg.workers + 1):
            stages.append(
                Stage(
                    f"worker-{i}",
                    _stage_command(
                        "worker",
                        *flags.common,
                        "--app-id",
                        app_id,
                        "--raw-topic",
                        topics.raw,
                        "--failures-topic",
                        topics.failures,
                        "--stats-topic",
                        topics.stats,
                        "--counts-topic",
                        topics.counts,
                        "--dlq-topic",
                        topics.raw_dlq,
                        "--partitions",
                        str(cfg.partitions),
                        "--processing-guarantee",
                        cfg.processing_guarantee,
                        "--web-port",
                        str(free_port()),
                    ),
                    log_dir,
                    flags.env,
                )
            )
        # The sink runs alongside, as in production, in its own group. Its files rotate when idle for
        # SINK_ROTATE_IDLE, so what it has consumed becomes durable and committed soon after it stops
        # receiving; once its commits reach the end of the failures topic, SIGTERM ends it cleanly.
        sink = Stage(
            "sink",
            _stage_command(
                "sink",
                *flags.common,
                *flags.librdkafka,
                "--output-dir",
                str(cfg.output_dir),
                "--failures-topic",
                topics.failures,
                "--dlq-topic",
                topics.failures_dlq,
                "--group",
                sink_group,
                "--rotate-seconds",
                str(SINK_ROTATE_SECONDS),
                "--rotate-idle",
                str(SINK_ROTATE_IDLE),
            ),
            log_dir,
            flags.env,
        )
        stages.append(sink)
        print(f"started {cfg.workers} worker(s) and the sink; logs in {log_dir}", file=sys.stderr)

        startup = None
        if cfg.wait_for_stages:
            wait_for_assignment(kafka, app_id, topics.raw, cfg.workers, stages, deadline)
            wait_for_assignment(kafka, sink_group, topics.failures, 1, stages, deadline)
            startup = time.monotonic() - stages_started
        ingest_cfg = replace(cfg.ingest, kafka=kafka, raw_topic=topics.raw, dlq_topic=topics.raw_dlq)
        ingest_started = time.monotonic()
        summary = run_ingest(ingest_cfg)
        print(summary.format(), file=sys.stderr)
        if not summary.ok:
            raise JobError("ingest did not deliver every record (see its summary above)")

        print("waiting for the workers and the sink ...", file=sys.stderr)
        wait_caught_up(
            kafka,
            [
                Progress(app_id, topics.raw, "the filter agent"),
                Progress(app_id, topics.stats, "the aggregator"),
                Progress(sink_group, topics.failures, "the sink"),
            ],
            stages,
            deadline,
        )
        processing = time.monotonic() - ingest_started
        stages.remove(sink)
        if (status := sink.stop()) != 0:
            raise JobError(f"the sink exited with status {status}; see {sink.log_path}")

        files = job_files(cfg.output_dir)
        sink_records = count_sink_records(files)
        totals = _wait_for_totals(kafka, topics.counts, sink_records, stages, deadline)
    return JobResult(summary, totals, files, sink_records, time.monotonic() - started, processing, startup)


def _create_job_topics(kafka: Mapping[str, str], topics: Topics, partitions: int) -> None:
    specs = [
        TopicSpec(topics.raw, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(topics.failures),
        TopicSpec(topics.stats),
        TopicSpec(topics.counts, config={"cleanup.policy": "compact"}),
        TopicSpec(topics.raw_dlq, partitions=1, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(topics.failures_dlq, partitions=1),
    ]
    create_topics(admin_client(kafka), specs, bootstrap=kafka["bootstrap.servers"], partitions=partitions)


def _wait_for_totals(
    kafka: Mapping[str, str], topic: str, expected_failures: int, stages: list[Stage], deadline: float
) -> dict[str, dict[str, Any]]:
    """The aggregator publishes snapshots on a timer; wait until its totals account for every failure."""
    while True:
        totals = read_latest_counts(kafka, topic)
        if sum(t["failures"] for t in totals.values()) == expected_failures:
            return totals
        for stage in stages:
            stage.check_alive()
        if time.monotonic() > deadline:
            got = sum(t["failures"] for t in totals.values())
            raise JobError(
                f"the table totals ({got} failures) never matched the sink's files ({expected_failures})"
            )
        time.sleep(POLL_SECONDS * 2)


def write_counts_json(path: Path, counts: Mapping[str, int]) -> None:
    path.write_text(json.dumps(dict(counts), indent=1) + "\n", encoding="utf-8")


def format_table(totals: Mapping[str, Mapping[str, Any]], top: int = 20) -> str:
    """Name servers by failures, with their EDNS queries answered and failure rate."""
    rows = sorted(totals.items(), key=lambda kv: (-kv[1]["failures"], -kv[1]["failure_rate"], kv[0]))[:top]
    if not rows:
        return "no name servers seen"
    width = max(len("name server"), *(len(ns) for ns, _ in rows))
    lines = [f"{'name server':<{width}}  {'failures':>8}  {'answered':>8}  {'rate':>6}  kinds"]
    for ns, t in rows:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(t.get("by_kind", {}).items()) if n)
        lines.append(
            f"{ns:<{width}}  {t['failures']:>8}  {t['edns_answered']:>8}  {t['failure_rate']:>6.1%}  {kinds}"
        )
    if len(totals) > top:
        lines.append(f"... and {len(totals) - top} more name servers")
    return "\n".join(lines)
