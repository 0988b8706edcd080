"""One pipeline job end to end: broker (embedded or given), topics, Faust workers, sink, ingest, results.

``dnsqr-pipeline run`` uses this for jobs such as replaying historical captures. The stages are the same
processes a long-running deployment uses (``worker`` and ``sink`` subprocesses, ingest in this process),
so a job exercises exactly what production runs. "Done" means complete against the input, proven from
Kafka (``completion.py``), never from timers:

1. ingest returns once every record is delivered to the raw topic; the raw topic's offsets before and
   after it are the job's input;
2. every one of those offsets has a filter receipt on the progress topic (judged or dead-lettered), and the
   receipts' records add up to what ingest delivered;
3. the aggregator's group has committed the end of ns-stats, and the sink's group the end of the failures
   topic, which holds at least the failures the receipts vouch for (exactly that many under exactly_once);
4. the sink's durable files hold every record of the failures topic, and the aggregator's latest totals
   account for every failure.

Anything short of that within ``done_timeout`` is a :class:`JobError` that names the stage, the partitions
and what is missing, and keeps the embedded broker's data for inspection. While it waits the job prints
where each stage stands every 10 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
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
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException, TopicPartition

from dnsqr_kafka.names import DEFAULT_APP_ID, TopicNames
from dnsqr_kafka.topics import (
    CONTAINER_TOPIC_CONFIG,
    TopicAdminError,
    TopicSpec,
    admin_client,
    create_topics,
    delete_topics,
    wait_for_leaders,
)
from dnsqr_kafka.value_formats import RegistryOptions, stage_flags, topic_formats
from dnsqr_pipeline import localkafka, localregistry
from dnsqr_pipeline.completion import (
    Alive,
    GroupWatch,
    Lag,
    Progress,
    ReceiptReader,
    Waiter,
    count_records,
    end_offsets,
    job_consumer,
)
from dnsqr_pipeline.counts_reader import LatestCounts
from dnsqr_schemas.value_format import ValueFormat
from ingest.bridge import IngestConfig, IngestSummary, run_ingest
from nmsgdns.edns import ranked_counts
from nmsgdns.input import ContainerStreamReader
from processors.receipts import Ledger, Totals
from processors.settings import Settings
from processors.topology import internal_topic_specs

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
#: how often a job starts a worker or its sink again after it exited on its own
STAGE_RESTARTS = 2


class JobError(RuntimeError):
    """The job could not finish; the message says which stage and why."""


def worker_settings(topics: TopicNames, app_id: str, bootstrap: str, **fields: Any) -> Settings:
    """Settings of a worker of app ``app_id`` on ``topics`` (``fields``: the other settings)."""
    return Settings(
        app_id=app_id,
        bootstrap_servers=bootstrap,
        raw_topic=topics.raw,
        failures_topic=topics.failures,
        stats_topic=topics.stats,
        counts_topic=topics.counts,
        dlq_topic=topics.raw_dlq,
        progress_topic=topics.progress,
        **fields,
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
    #: seconds for the whole job
    timeout: float = 3600.0
    #: seconds from the end of ingest until the job must be proven complete; None scales with the input
    done_timeout: float | None = None
    #: replication factor of the topics the job creates; None: min(3, brokers)
    replication_factor: int | None = None
    #: on a given broker, the job's per-run topics are deleted at the end unless this is set
    keep_topics: bool = False
    #: on a given broker, raw and DLQ topic names to use instead of per-run ones (None: per-run)
    raw_topic: str | None = None
    dlq_topic: str | None = None
    #: the Schema Registry of the failures and counts topics (``dnsqr_kafka.value_formats``); None:
    #: schemaless Avro, unless ``embedded_registry``
    schema_registry: RegistryOptions | None = None
    #: start a local registry for the job (``dnsqr_pipeline.localregistry``) and stop it at the end
    embedded_registry: bool = False
    #: values of the failures topic: "avro" or "json"
    failures_format: str = "avro"
    #: start ingest only once the workers and the sink own their partitions, so the processing time
    #: measures throughput with every stage running rather than the stages' start-up (benchmarks); a job
    #: otherwise ingests while the workers start, which finishes sooner
    wait_for_stages: bool = False
    #: the workers' ``--hot-windows``: windows kept as Python objects, older idle ones frozen
    hot_windows: int = Settings.hot_windows
    #: the workers' ``--hot-totals``: name servers per partition whose totals stay Python objects
    hot_totals: int = Settings.hot_totals
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
    #: failures written twice by at-least-once replays (always 0 under exactly_once)
    duplicates: int = 0

    @property
    def failures_by_ns(self) -> dict[str, int]:
        """``{name_server_ip: failures}``, the form of ``dnsqr-edns-filter --counts-json``."""
        return ranked_counts({ns: t["failures"] for ns, t in self.totals.items() if t["failures"]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def embedded_registry() -> Iterator[RegistryOptions]:
    """A local Schema Registry for the job's duration, on a free port, in a temp dir removed after it
    (its schemas live in memory: they go with it, as the embedded broker's topics do)."""
    directory = Path(tempfile.mkdtemp(prefix="dnsqr-registry-"))
    port = free_port()
    print(f"starting a local Schema Registry on 127.0.0.1:{port} ...", file=sys.stderr)
    try:
        registry = localregistry.start(directory, port)
        yield RegistryOptions(registry.url)
    finally:
        localregistry.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def embedded_kafka(directory: Path | None) -> Iterator[str]:
    """A single-node broker for the job's duration, on a free port, in ``directory`` or a temp dir.

    A temp dir is removed after a job that succeeded; after a failure it stays for inspection (the
    topics, the groups' offsets, the receipts) and the job says where.
    """
    temporary = directory is None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="dnsqr-kafka-"))
    port = free_port()
    print(f"starting a local Kafka broker on 127.0.0.1:{port} (data in {directory}) ...", file=sys.stderr)
    try:
        layout = localkafka.start(directory, nodes=1, port=port, controller_port=free_port())
        yield layout.bootstrap()
    except BaseException:
        localkafka.stop(directory)
        print(f"the broker's data is kept in {directory}", file=sys.stderr)
        raise
    localkafka.stop(directory)
    if temporary:
        shutil.rmtree(directory, ignore_errors=True)


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
    """A worker or sink subprocess whose output goes to a log file in the job's log directory.

    A stage that exits on its own while the job still needs it is started again, at most
    :data:`STAGE_RESTARTS` times, each one reported: a worker that starts while a broker of the cluster is
    down can fail in Faust's start-up (``NodeNotReadyError``), and the job's guarantees hold across a
    restart (the stages resume from their committed offsets). Beyond that the job fails with the exit
    status and the log to read, rather than looping.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        restarts: int | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **env} if env else None
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.restarts_left = STAGE_RESTARTS if restarts is None else restarts
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
        )

    def check_alive(self) -> None:
        status = self.proc.poll()
        if status is None:
            return
        if self.restarts_left <= 0:
            raise JobError(f"{self.name} exited with status {status}; see {self.log_path}")
        self.restarts_left -= 1
        print(
            f"{self.name} exited with status {status} (see {self.log_path}); starting it again",
            file=sys.stderr,
        )
        self._log.write(
            f"\n--- {self.name} exited with status {status}; started again by the job ---\n".encode()
        )
        self._log.flush()
        self.proc = self._spawn()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_for_assignment(
    kafka: Mapping[str, str], group: str, topic: str, members: int, stages: Sequence[Alive], deadline: float
) -> None:
    """Wait until ``group`` is stable with ``members`` members that between them own every partition of
    ``topic``, none more than its share (:func:`balanced`): what the group coordinator reports, so it holds
    for Faust and librdkafka groups alike. A Faust worker that joined holds nothing at first while it warms
    up as the standby of the partitions meant for it (``processors/warmup.py``); the group is ready once
    they moved."""
    admin = admin_client(kafka)
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    seen = "not described yet"
    while True:
        for stage in stages:
            stage.check_alive()
        try:
            group_info = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException as exc:  # e.g. the coordinator is still loading: ask again
            log.debug("group %s not described yet: %s", group, exc)
        else:
            owned = [
                {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
                for m in group_info.members
                if m.assignment is not None
            ]
            counts = sorted((len(ps) for ps in owned), reverse=True)
            if (
                group_info.state == ConsumerGroupState.STABLE
                and len(group_info.members) == members
                and len(set().union(*owned)) == partitions
                and balanced(counts, partitions)
            ):
                return
            seen = f"{group_info.state.name}, {len(group_info.members)} members owning {counts} of them"
        if time.monotonic() > deadline:
            raise JobError(
                f"timed out: group {group} does not own the {partitions} partitions of {topic} with "
                f"{members} members, none more than its share ({seen})"
            )
        time.sleep(POLL_SECONDS)


def balanced(owned: Sequence[int], partitions: int) -> bool:
    """Whether no member owns more than ``ceil(partitions / members)`` partitions (``owned``: each member's
    count): Faust's and librdkafka's assignors balance to that, and a Faust worker warming up is the member
    short of it while another holds more."""
    return not owned or max(owned) <= math.ceil(partitions / len(owned))


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
    """Run the whole pipeline once over finite sources and return what it found (see the module doc)."""
    started = time.monotonic()
    deadline = started + cfg.timeout
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    if job_files(cfg.output_dir):
        raise JobError(f"{cfg.output_dir} already holds NMSG files of an earlier job; use an empty directory")
    log_dir = cfg.output_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        kafka = dict(cfg.kafka)
        external = bool(kafka.get("bootstrap.servers"))
        if not external:
            kafka["bootstrap.servers"] = stack.enter_context(embedded_kafka(cfg.kafka_dir))
            kafka.pop("security.protocol", None)
            topics, app_id = TopicNames(), DEFAULT_APP_ID
        else:
            # A shared broker may hold other jobs' topics and committed offsets: this job uses its own,
            # except for the raw and DLQ topics when it is given their names.
            topics, app_id = TopicNames.named(f".run-{cfg.run_id}"), f"{DEFAULT_APP_ID}-run-{cfg.run_id}"
        topics = replace(topics, raw=cfg.raw_topic or topics.raw, raw_dlq=cfg.dlq_topic or topics.raw_dlq)
        sink_group = f"{app_id}-sink"
        registry = cfg.schema_registry
        if cfg.embedded_registry:
            registry = stack.enter_context(embedded_registry())
        # the job reads the counts topic as its workers write it; the registry is asked once here
        counts_format = topic_formats(
            registry,
            failures_topic=topics.failures,
            counts_topic=topics.counts,
            failures_format=cfg.failures_format,
        ).counts
        format_flags, format_env = stage_flags(registry, cfg.failures_format)
        settings = worker_settings(
            topics,
            app_id,
            kafka["bootstrap.servers"],
            partitions=cfg.partitions,
            replication_factor=cfg.replication_factor or 0,
            processing_guarantee=cfg.processing_guarantee,
            hot_windows=cfg.hot_windows,
            hot_totals=cfg.hot_totals,
        )
        created = _create_job_topics(kafka, topics, settings, cfg.replication_factor)
        if external and not cfg.keep_topics:
            given = {cfg.raw_topic, cfg.dlq_topic}
            per_run = [
                name for name, outcome in created.items() if outcome == "created" and name not in given
            ]
            stack.callback(_delete_topics, kafka, per_run, app_id)
        # The job's input is what ingest adds to the raw topic: on a given topic that already holds
        # records, the workers start at its end instead of processing what others put there.
        raw_start = _end_offsets(kafka, topics.raw)
        if any(raw_start.values()):
            _commit_start(kafka, app_id, topics.raw, raw_start)
        receipts = ReceiptReader(
            kafka, topics.progress, Ledger(topics.raw), _end_offsets(kafka, topics.progress)
        )
        stack.callback(receipts.close)
        failures_start = _end_offsets(kafka, topics.failures)

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
        env = {**flags.env, **format_env}
        for i in range(1, cfg.workers + 1):
            stages.append(Stage(f"worker-{i}", worker_command(settings, flags, format_flags), log_dir, env))
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
                *format_flags,
            ),
            log_dir,
            env,
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
        raw_end = _end_offsets(kafka, topics.raw)
        produced = {p: (raw_start.get(p, 0), end) for p, end in raw_end.items()}

        print("waiting for the workers and the sink ...", file=sys.stderr)
        done_deadline = min(deadline, time.monotonic() + (cfg.done_timeout or default_done_timeout(summary)))
        watch = GroupWatch(
            kafka,
            [
                Progress(app_id, topics.stats, "the aggregator"),
                Progress(sink_group, topics.failures, "the sink"),
            ],
        )
        stack.callback(watch.close)

        def describe() -> str:
            return "; ".join(filter(None, [receipt_status(receipts.ledger, produced), watch.describe()]))

        waiter = Waiter(stages, done_deadline, describe)
        expected = _wait_for_receipts(waiter, receipts, produced, summary)
        lags = _wait_for_groups(waiter, watch)
        processing = time.monotonic() - ingest_started
        stages.remove(sink)
        # -SIGTERM: the signal came before the sink had set its handler, i.e. before it consumed anything
        # (a job with no failures can get there that fast); the count of its files below still decides.
        if (status := sink.stop()) not in (0, -signal.SIGTERM):
            raise JobError(f"the sink exited with status {status}; see {sink.log_path}")

        files = job_files(cfg.output_dir)
        sink_records = count_sink_records(files)
        on_topic = count_records(kafka, topics.failures, failures_start)
        duplicates = _check_failures(cfg, expected, on_topic, sink_records, receipts.ledger, lags)
        exact = cfg.processing_guarantee == "exactly_once"
        totals = _wait_for_totals(waiter, kafka, topics.counts, counts_format, expected.failures, exact=exact)
    return JobResult(
        summary, totals, files, sink_records, time.monotonic() - started, processing, startup, duplicates
    )


def default_done_timeout(summary: IngestSummary) -> float:
    """Seconds a job may take after ingest to prove it is complete: a minute, plus a second for every
    5,000 records (1M records: about 4 minutes, 20x what the workers need on a 2-core machine)."""
    return 60.0 + summary.records_out / 5000


def _end_offsets(kafka: Mapping[str, str], topic: str) -> dict[int, int]:
    consumer = job_consumer(kafka, "ends")
    try:
        return end_offsets(consumer, topic)
    finally:
        consumer.close()


def _commit_start(kafka: Mapping[str, str], group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """Make ``group`` start reading ``topic`` at ``offsets`` (a new group would read from the beginning)."""
    consumer = job_consumer(kafka, "start", group=group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def receipt_status(ledger: Ledger, produced: Mapping[int, tuple[int, int]]) -> str | None:
    """What the filter agent still lacks, per partition; None once every produced offset has a receipt."""
    short = ledger.shortfall(produced)
    if not short:
        return None
    wanted = sum(end - start for start, end in produced.values())
    missing = sum(s.missing for s in short)
    parts = ", ".join(f"p{s.partition} {s.expected - s.missing}/{s.expected}" for s in short)
    return f"the filter agent: {wanted - missing}/{wanted} raw containers judged ({parts})"


def _wait_for_receipts(
    waiter: Waiter, receipts: ReceiptReader, produced: Mapping[int, tuple[int, int]], summary: IngestSummary
) -> Totals:
    """Wait until every raw offset the job produced has a filter receipt; return what they add up to."""
    ledger = receipts.ledger

    def status() -> str | None:
        receipts.poll()
        return receipt_status(ledger, produced)

    def timeout() -> str:
        short = ledger.shortfall(produced)
        parts = "; ".join(
            f"partition {s.partition}: {s.missing} of {s.expected} (first missing offset {s.first})"
            for s in short
        )
        return (
            f"the filter agent did not finish: raw containers without a receipt on {ledger.topic}: {parts}; "
            "see the worker logs"
        )

    waiter.until(status, timeout)
    totals = ledger.totals(produced)
    if totals.records != summary.records_out:
        raise JobError(
            f"the filter agent judged {totals.records} records of the {totals.containers} raw containers, "
            f"but ingest delivered {summary.records_out}"
        )
    if totals.dead_lettered:
        where = ", ".join(f"p{p}@{o}" for p, o in totals.dead_lettered[:10])
        raise JobError(
            f"the filter agent dead-lettered {len(totals.dead_lettered)} raw containers ({where}); "
            "their records were not judged"
        )
    return totals


def _wait_for_groups(waiter: Waiter, watch: GroupWatch) -> list[Lag]:
    """Wait until each group has committed the end of its topic (whose end is final once every receipt
    is in); return their last lag."""
    lags: list[Lag] = []

    def status() -> str | None:
        lags[:] = watch.lags()
        behind = [lag for lag in lags if lag.total != 0]
        return "; ".join(lag.describe() for lag in behind) if behind else None

    waiter.until(status, lambda: "did not finish: " + "; ".join(lag.describe() for lag in lags if lag.total))
    return lags


def _check_failures(
    cfg: JobConfig, expected: Totals, on_topic: int, in_files: int, ledger: Ledger, lags: list[Lag]
) -> int:
    """Check the failures topic and the sink's files against the receipts; return how many failures are
    duplicates of at-least-once replays (0 under exactly_once, where any is an error)."""
    if on_topic < expected.failures:
        raise JobError(
            f"the failures topic holds {on_topic} failures, but the filter agent's receipts vouch for "
            f"{expected.failures}: {expected.failures - on_topic} lost between the workers and Kafka"
        )
    if in_files != on_topic:
        how = f"short by {on_topic - in_files}" if in_files < on_topic else f"over by {in_files - on_topic}"
        raise JobError(
            f"the sink's files hold {in_files} failures, the failures topic {on_topic}: the sink is {how}"
        )
    duplicates = on_topic - expected.failures
    if duplicates and cfg.processing_guarantee == "exactly_once":
        raise JobError(
            f"{duplicates} failures were written twice under exactly_once "
            f"({on_topic} on the topic, {expected.failures} selected)"
        )
    if duplicates:
        print(
            f"note: {duplicates} failures were written twice (at-least-once replay of "
            f"{ledger.replayed} containers after a worker restart or rebalance)",
            file=sys.stderr,
        )
    return duplicates


def worker_command(settings: Settings, flags: StageKafka, format_flags: Sequence[str] = ()) -> list[str]:
    """Command line of a ``dnsqr-pipeline worker`` stage with ``settings`` (web views on a free port) and
    the topics' value formats (``format_flags``: ``dnsqr_kafka.value_formats.stage_flags``)."""
    return _stage_command(
        "worker",
        *flags.common,
        *("--app-id", settings.app_id),
        *("--raw-topic", settings.raw_topic),
        *("--failures-topic", settings.failures_topic),
        *("--stats-topic", settings.stats_topic),
        *("--counts-topic", settings.counts_topic),
        *("--dlq-topic", settings.dlq_topic),
        *("--progress-topic", settings.progress_topic),
        *("--partitions", str(settings.partitions)),
        *("--processing-guarantee", settings.processing_guarantee),
        *(("--replication-factor", str(settings.replication_factor)) if settings.replication_factor else ()),
        *(("--state-dir", str(settings.state_dir)) if settings.state_dir else ()),
        *(("--standby-replicas", str(settings.standby_replicas)) if settings.standby_replicas else ()),
        *(() if settings.warm_up else ("--no-warm-up",)),
        *("--acceptable-recovery-lag", str(settings.acceptable_recovery_lag)),
        *("--hot-windows", str(settings.hot_windows)),
        *("--hot-totals", str(settings.hot_totals)),
        *("--web-port", str(free_port())),
        *format_flags,
    )


def _create_job_topics(
    kafka: Mapping[str, str], topics: TopicNames, worker: Settings, replication_factor: int | None
) -> dict[str, str]:
    specs = [
        TopicSpec(topics.raw, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(topics.failures_dlq, partitions=1),
        *internal_topic_specs(worker),
    ]
    admin = admin_client(kafka)
    created = create_topics(
        admin,
        specs,
        bootstrap=kafka["bootstrap.servers"],
        partitions=worker.partitions,
        replication_factor=replication_factor,
    )
    wait_for_leaders(admin, [s.name for s in specs], timeout=30)
    return created


def _delete_topics(kafka: Mapping[str, str], names: list[str], app_id: str) -> None:
    """Delete the job's per-run topics from a shared broker (``--keep-topics`` keeps them): ``names``, and
    those its workers' Faust app made under the per-run app id (the assignor's leader topic)."""
    admin = admin_client(kafka)
    try:
        names = names + [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]
        delete_topics(admin, sorted(set(names)), bootstrap=kafka["bootstrap.servers"])
    except (KafkaException, TopicAdminError) as exc:
        print(f"could not delete the job's topics ({', '.join(names)}): {exc}", file=sys.stderr)


def _wait_for_totals(
    waiter: Waiter,
    kafka: Mapping[str, str],
    topic: str,
    value_format: ValueFormat,
    failures: int,
    *,
    exact: bool,
) -> dict[str, dict[str, Any]]:
    """The aggregator publishes snapshots on a timer: wait until its totals account for every failure:
    exactly under exactly_once; under at_least_once at least (replays after a restart may count some
    twice), and unchanged in two reads in a row."""
    totals: Mapping[str, dict[str, Any]] = {}
    previous: int | None = None
    view = LatestCounts(kafka, topic, value_format=value_format)

    def status() -> str | None:
        nonlocal totals, previous
        totals = view.read()
        got = sum(t["failures"] for t in totals.values())
        settled = got == failures if exact else got >= failures and got == previous
        previous = got
        return None if settled else f"the aggregator: its totals count {got} failures of {failures}"

    def timeout() -> str:
        got = sum(t["failures"] for t in totals.values())
        return f"the aggregator's totals count {got} failures, the filter agent selected {failures}"

    try:
        waiter.until(status, timeout)
    finally:
        view.close()
    return dict(totals)


def write_counts_json(path: Path, counts: Mapping[str, int]) -> None:
    path.write_text(json.dumps(dict(counts), indent=1) + "\n", encoding="utf-8")


def format_table(totals: Mapping[str, Mapping[str, Any]], top: int = 20) -> str:
    """Name servers by failures, with their EDNS queries answered and failure rate."""
    rows = sorted(totals.items(), key=lambda kv: (-kv[1]["failures"], -kv[1]["failure_rate"], kv[0]))
    return format_rows(rows[:top], more=max(0, len(rows) - top))


def format_rows(rows: Sequence[tuple[str, Mapping[str, Any]]], more: int = 0) -> str:
    """Ranked (name server, ``NsCountValues``) rows as a table, and a last line counting the ``more``
    name servers left out."""
    if not rows:
        return "no name servers seen"
    width = max(len("name server"), *(len(ns) for ns, _ in rows))
    lines = [f"{'name server':<{width}}  {'failures':>8}  {'answered':>8}  {'rate':>6}  kinds"]
    for ns, t in rows:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(t.get("by_kind", {}).items()) if n)
        lines.append(
            f"{ns:<{width}}  {t['failures']:>8}  {t['edns_answered']:>8}  {t['failure_rate']:>6.1%}  {kinds}"
        )
    if more:
        lines.append(f"... and {more} more name servers")
    return "\n".join(lines)
