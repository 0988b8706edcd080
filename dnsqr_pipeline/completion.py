"""How a job proves from Kafka that its stages are done: receipts, group positions and topic counts.

Three kinds of evidence, each read from the cluster, none from timers:

- **Receipts** (``processors/receipts.py``): the filter agent publishes one per raw container it judged or
  dead-lettered, after (at_least_once) or with (exactly_once) the failures and deltas of that container.
  Every raw offset the job produced must have one; their sums say how many records were judged and how
  many failures the sink must have written. This is what "the stages agree with each other" could never
  show: an output still buffered in a stopped worker leaves its offsets without receipts.
- **Group positions**: the aggregator's group must commit the end of ns-stats and the sink's group the end
  of the failures topic (under exactly_once the ends count commit markers, which no group commits past;
  :func:`data_after` tells them from records).
- **Topic counts**: the committed records of a topic, counted by reading it (:func:`count_records`).

:class:`Waiter` polls all of that each round, prints a status line every :data:`STATUS_SECONDS` (what each
stage still lacks, per partition, never negative), and at its deadline raises :class:`CompletionError`
naming the stage, the partitions and how much is short.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.receipts import Ledger, decode_progress

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
#: A waiting job prints where each stage stands this often.
STATUS_SECONDS = 10.0

#: {partition: offset}
Offsets = dict[int, int]


class CompletionError(RuntimeError):
    """A stage did not finish in time; the message names it, the partitions and what is short."""


class Alive(Protocol):
    """A stage the waits check on each round, to fail at once when it died rather than at the deadline."""

    def check_alive(self) -> None: ...


def end_offsets(consumer: Consumer, topic: str, *, timeout: float = 30.0) -> Offsets:
    """{partition: high watermark} of ``topic``.

    Asks again while the answer only means the client's metadata lags the cluster's (a topic just
    created, a leader that moved).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(meta.partitions)
            }
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not (err.retriable() or err.code() in _METADATA_LAG) or time.monotonic() > deadline:
                raise
            log.debug("end offsets of %s: %s; asking again", topic, err.str())
            time.sleep(0.2)


#: errors that only mean the client's metadata is behind the cluster's
_METADATA_LAG = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
)


#: ``fetch.wait.max.ms`` of the job's consumers (:func:`job_consumer`)
JOB_FETCH_WAIT_MS = 10
#: how long a read to the end waits for more in one call: the partition-end events come within a fetch
#: wait, and a batch call returns only when full or after its timeout
READ_POLL_SECONDS = 0.05


def job_consumer(
    kafka: Mapping[str, str], purpose: str, *, group: str | None = None, **extra: object
) -> Consumer:
    """A consumer for the job's own reads: no auto-commit, a throw-away group unless ``group`` is given,
    librdkafka's log lines in Python logging (a broker that is down for a moment is no news to the user of
    a job that copes with it), and short fetch waits. These consumers read to the end of what is there,
    and librdkafka sends a consumer's other requests (metadata, watermarks) to a broker only once its
    fetch there returns: with the default 500 ms long poll, the end offsets of 4 partitions took 2.0 s
    instead of 0.06 s, and each of a job's reads of the counts topic 3.5 s."""
    return Consumer(
        {
            **kafka,
            "group.id": group or f"dnsqr-run-{purpose}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": JOB_FETCH_WAIT_MS,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            **extra,
        }
    )


def data_after(kafka: Mapping[str, str], topic: str, positions: Sequence[TopicPartition]) -> bool:
    """Whether committed records follow any of ``positions``.

    Under exactly_once the end offset of a partition counts the transactions' commit markers, which no
    consumer ever commits past, so "committed == end" never holds; reading on from the committed offset
    (read_committed) to the partition's end tells markers from records.
    """
    probe = job_consumer(
        kafka, "probe", **{"enable.partition.eof": True, "isolation.level": "read_committed"}
    )
    try:
        probe.assign([TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in positions])
        waiting = {tp.partition for tp in positions}
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            msg = probe.poll(READ_POLL_SECONDS)
            if msg is None:
                continue
            if msg.error() is None:
                return True
            if msg.error().code() == KafkaError._PARTITION_EOF:
                waiting.discard(msg.partition())
        return bool(waiting)
    finally:
        probe.close()


def count_records(kafka: Mapping[str, str], topic: str, start: Offsets | None = None) -> int:
    """Committed records of ``topic`` from ``start`` (default: the beginning) to its current end."""
    consumer = job_consumer(
        kafka, "count", **{"enable.partition.eof": True, "isolation.level": "read_committed"}
    )
    try:
        ends = end_offsets(consumer, topic)
        begin = {p: (start or {}).get(p, 0) for p in ends}
        waiting = {p for p in ends if ends[p] > begin[p]}
        consumer.assign([TopicPartition(topic, p, begin[p]) for p in waiting])
        count = 0
        deadline = time.monotonic() + 120
        while waiting:
            if time.monotonic() > deadline:
                raise CompletionError(f"timed out counting the records of {topic}")
            for msg in consumer.consume(10_000, READ_POLL_SECONDS):
                err = msg.error()
                if err is None:
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    waiting.discard(msg.partition())
                else:
                    raise CompletionError(f"reading {topic}: {err.str()}")
        return count
    finally:
        consumer.close()


@dataclass(frozen=True)
class Progress:
    """A consumer group's way through a topic, as a job waits for it."""

    group: str
    topic: str
    #: who that is, for messages ("the sink")
    what: str


@dataclass
class Lag:
    """Records a group has not committed on a topic, per partition (None: not known yet)."""

    progress: Progress
    behind: dict[int, int] | None
    ends: Offsets = field(default_factory=dict)

    @property
    def total(self) -> int | None:
        return None if self.behind is None else sum(self.behind.values())

    def describe(self) -> str:
        p = self.progress
        if self.behind is None:
            return f"{p.what}: position of group {p.group} on {p.topic} not known yet"
        parts = ", ".join(f"p{n} {b}" for n, b in sorted(self.behind.items()) if b)
        return f"{p.what}: {self.total} records behind on {p.topic}" + (f" ({parts})" if parts else "")


def group_lag(kafka: Mapping[str, str], consumer: Consumer, progress: Progress) -> Lag:
    """How far ``progress.group`` is behind the end of its topic; partitions whose gap holds only
    transaction markers count as caught up."""
    try:
        ends = end_offsets(consumer, progress.topic)
        committed = consumer.committed([TopicPartition(progress.topic, p) for p in ends], timeout=10)
    except KafkaException as exc:
        # e.g. NOT_COORDINATOR while a young broker loads its group metadata: ask again
        log.debug("offsets of %s for %s not available yet: %s", progress.topic, progress.group, exc)
        return Lag(progress, None)
    behind = {c.partition: max(ends[c.partition] - max(c.offset, 0), 0) for c in committed}
    lagging = [c for c in committed if behind[c.partition]]
    if lagging and not data_after(kafka, progress.topic, lagging):
        behind = dict.fromkeys(behind, 0)  # only transaction markers lie between commit and end
    return Lag(progress, behind, ends)


class GroupWatch:
    """Where consumer groups stand on their topics, asked each round (one consumer per group, kept open)."""

    def __init__(self, kafka: Mapping[str, str], progress: Sequence[Progress]) -> None:
        self.kafka = kafka
        self.progress = list(progress)
        self._consumers = {
            g: job_consumer(kafka, "lag", group=g) for g in dict.fromkeys(p.group for p in progress)
        }

    def lag(self, progress: Progress) -> Lag:
        return group_lag(self.kafka, self._consumers[progress.group], progress)

    def lags(self) -> list[Lag]:
        return [self.lag(p) for p in self.progress]

    def describe(self) -> str:
        """Every group's lag per partition, for a status line."""
        return "; ".join(lag.describe() for lag in self.lags())

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()


def wait_caught_up(
    kafka: Mapping[str, str], progress: Sequence[Progress], stages: Sequence[Alive], deadline: float
) -> None:
    """Wait until each group has committed the end of every partition of its topic, in pipeline order
    (a later topic's end is final only once the group before it is caught up), with the same ends in two
    rounds in a row."""
    watch = GroupWatch(kafka, progress)
    try:
        last_ends: list[Offsets] | None = None
        while True:
            for stage in stages:
                stage.check_alive()
            lags = []
            for p in progress:
                lag = watch.lag(p)
                lags.append(lag)
                if lag.total != 0:
                    break
            ends = [lag.ends for lag in lags]
            if all(lag.total == 0 for lag in lags) and len(lags) == len(progress) and ends == last_ends:
                return
            last_ends = ends
            if time.monotonic() > deadline:
                raise CompletionError(f"timed out waiting for {lags[-1].describe()}")
            time.sleep(POLL_SECONDS)
    finally:
        watch.close()


class ReceiptReader:
    """Reads the progress topic into a :class:`Ledger` as receipts arrive (read_committed, so under
    exactly_once only receipts of committed transactions count)."""

    def __init__(self, kafka: Mapping[str, str], progress_topic: str, ledger: Ledger, start: Offsets) -> None:
        self.ledger = ledger
        self._consumer = job_consumer(kafka, "receipts", **{"isolation.level": "read_committed"})
        self._consumer.assign([TopicPartition(progress_topic, p, o) for p, o in start.items()])
        self._topic = progress_topic

    def poll(self) -> None:
        """Take every receipt available now."""
        while True:
            messages = self._consumer.consume(10_000, 0.05)
            if not messages:
                return
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", self._topic, err.str())
                    continue
                try:
                    self.ledger.add(decode_progress(msg.value()))
                except Exception as exc:  # a foreign or damaged record must not stop the job's wait
                    log.warning(
                        "%s offset %d: not a FilterProgress record: %s", self._topic, msg.offset(), exc
                    )

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Waiter:
    """Round-based waiting with a deadline, a stage check and a status line every STATUS_SECONDS.

    The status line is ``describe()`` when given (where every stage stands, whatever the wait is for),
    else what the current wait still lacks.
    """

    stages: Sequence[Alive]
    deadline: float
    describe: Callable[[], str] | None = None
    out: IO[str] = sys.stderr
    started: float = field(default_factory=time.monotonic)
    _last_status: float = field(default_factory=time.monotonic)

    def until(self, done: Callable[[], str | None], timeout_message: Callable[[], str]) -> None:
        """Call ``done`` each round until it returns None; otherwise it returns the status to print.

        At the deadline raise :class:`CompletionError` with ``timeout_message()``.
        """
        while True:
            for stage in self.stages:
                stage.check_alive()
            status = done()
            if status is None:
                return
            now = time.monotonic()
            if now > self.deadline:
                raise CompletionError(timeout_message())
            if now - self._last_status >= STATUS_SECONDS:
                self._last_status = now
                line = self.describe() if self.describe else status
                print(f"still waiting after {now - self.started:.0f} s: {line}", file=self.out, flush=True)
            time.sleep(POLL_SECONDS)
