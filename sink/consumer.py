"""The sink's Kafka side: failures topic into a :class:`~sink.files.PartitionFileSet`, committing only what is
durable.

Offsets are committed by hand (``enable.auto.commit`` off) and only up to the ``next_offset`` of a
:class:`~sink.files.Durable` the file set returned, i.e. after the file holding those records was renamed
into place. A crash at any point therefore loses nothing (the uncommitted range is redelivered) and the
file set's naming and skipping of covered offsets keeps the redelivery from duplicating anything.

On a rebalance the partly filled files of revoked partitions are discarded, not finalized: their range
is uncommitted, so the next owner rewrites it from the committed offset, and no file can appear for a
range another consumer is already writing.

A value that is not an ``EdnsFailure`` (Avro does not decode, trailing bytes, payload not a base:dnsqr
``NmsgPayload``) never stops the sink: it is counted, logged, and copied to a dead-letter topic with the
dead-letter contract's headers (``schemas/dead_letter.md``: the reason and the record's coordinates); its
offset is committed with the records around it once the dead letter is acknowledged. A crash between that
acknowledgement and the commit sends the dead letter again on redelivery, with the same coordinates, by
which a DLQ consumer tells the copy.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf.message import DecodeError

from dnsqr_kafka.access import is_refusal
from dnsqr_kafka.names import DEFAULT_NAMES, DEFAULT_SINK_GROUP, SINK_DLQ_SUFFIX
from dnsqr_kafka.value_formats import FAILURES_SCHEMA
from dnsqr_schemas.dead_letter import DeadLetterHeaders, with_input_headers
from dnsqr_schemas.edns_failure import FailureRecordError, failure_payload
from dnsqr_schemas.value_format import ValueFormat, ValueFormatError
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE
from nmsgdns.proto.nmsg_pb2 import NmsgPayload
from sink.files import DEFAULT_PREFIX, Discard, Durable, PartitionFileSet
from sink.metrics import STATISTICS_INTERVAL_MS, SinkMetrics
from sink.stats import SinkStats

log = logging.getLogger(__name__)

#: log the first undecodable or stale records one by one, then only every this many (the summary has
#: the totals)
_LOG_EVERY = 1000
_LOG_FIRST = 20


class UndecodableValue(ValueError):
    """A failures-topic value that is not a valid ``EdnsFailure``; the message says why, ``reason`` in a
    word (one of :data:`dnsqr_schemas.dead_letter.SINK_REASONS`: the dead letter's ``dlq.error.type`` and
    its metric label)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: the failures topic's values as written before formats were configurable: schemaless Avro
SCHEMALESS = ValueFormat(FAILURES_SCHEMA)


def decode_failure_payload(value: bytes | None, value_format: ValueFormat = SCHEMALESS) -> bytes:
    """The ``payload`` (serialized NmsgPayload) of an ``EdnsFailure`` value in ``value_format``.

    Checks what the files need: the whole value is one record of the published schema, and its payload is
    a complete base:dnsqr ``NmsgPayload`` (anything else would make a file nmsgtool cannot read back). A
    value written with the sink's own schema (schemaless, or framed with its id) is read by
    ``failure_payload``'s fast path; another schema version's, or JSON, is decoded whole.
    """
    if value is None:
        raise UndecodableValue("null value", "null")
    try:
        body = value_format.own_body(value)
        payload = failure_payload(body) if body is not None else value_format.decode(value)["payload"]
    except ValueFormatError as exc:
        raise UndecodableValue(f"{value_format.describe()}: {exc}", "format") from exc
    except FailureRecordError as exc:  # fastavro's error or the trailing bytes, e.g. "Avro: EOFError: ..."
        raise UndecodableValue(f"Avro: {exc}", "avro") from exc
    except OSError:  # the registry did not answer (RegistryUnavailable): the sink stops, nothing is lost
        raise
    except Exception as exc:  # fastavro raises many types on a bad body of another writer's schema
        raise UndecodableValue(f"Avro: {type(exc).__name__}: {exc}", "avro") from exc
    if not isinstance(payload, bytes):  # JSON values are not type-checked by a schema
        raise UndecodableValue("payload is not bytes", "format")
    # a upb parse (about 1 us) is cheaper here than the hand walk of nmsgdns.payload, and checks as much
    envelope = NmsgPayload()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise UndecodableValue(f"payload is not an NmsgPayload: {exc}", "not_nmsg_payload") from exc
    if not envelope.IsInitialized():
        raise UndecodableValue("payload is not an NmsgPayload: required fields missing", "not_nmsg_payload")
    if (envelope.vid, envelope.msgtype) != (VID_BASE, MSGTYPE_DNSQR):
        raise UndecodableValue(
            f"payload is vid {envelope.vid} msgtype {envelope.msgtype}, not base:dnsqr", "not_dnsqr"
        )
    return payload


@dataclass
class SinkConfig:
    """Everything a sink run needs; ``kafka`` holds the connection properties (``dnsqr_kafka.config``)."""

    output_dir: Path
    kafka: dict[str, str]
    topic: str = DEFAULT_NAMES.failures
    group: str = DEFAULT_SINK_GROUP
    dlq_topic: str | None = None
    prefix: str = DEFAULT_PREFIX
    rotate_bytes: int = 64 * 1024 * 1024
    rotate_seconds: float | None = 300.0
    #: also finalize a file no record joined for this long (None: only size and age rotate)
    rotate_idle: float | None = None
    compress: bool = False
    #: stop after this many seconds without a record (batch jobs); None runs until signalled
    idle_exit: float | None = None
    #: stop after this many records (the rest stays uncommitted for the next run)
    max_records: int | None = None
    batch_size: int = 1000
    poll_timeout: float = 0.25
    #: extra consumer properties (tests lower session.timeout.ms, for instance)
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    #: serve Prometheus metrics on this port (0: any free port) of ``metrics_host``; None: no metrics
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: the failures topic's values (``dnsqr_kafka.value_formats.topic_formats``)
    value_format: ValueFormat = SCHEMALESS

    @property
    def dead_letter_topic(self) -> str:
        """The DLQ topic: given, or the failures topic plus ``.dlq``."""
        return self.dlq_topic or self.topic + SINK_DLQ_SUFFIX


class FailureSink:
    """One sink process: consume, append to files, commit what is durable; :meth:`stop` ends it cleanly."""

    def __init__(
        self,
        config: SinkConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.stats = SinkStats()
        self.metrics = (
            SinkMetrics(self.stats, lambda: self.files.stats) if config.metrics_port is not None else None
        )
        self.files = PartitionFileSet(
            config.output_dir,
            prefix=config.prefix,
            rotate_bytes=config.rotate_bytes,
            rotate_seconds=config.rotate_seconds,
            rotate_idle=config.rotate_idle,
            compress=config.compress,
            clock=clock,
            on_fsync=self.metrics.fsync.observe if self.metrics is not None else None,
        )
        self._stopping = False
        #: partition -> offset to commit (all records below it are durable)
        self._pending: dict[int, int] = {}
        #: dead letters produced since the last flush: a commit must wait for their acknowledgement
        self._unflushed_dead_letters = 0
        #: when the last record (or the assignment) came; None until partitions are assigned, so the group
        #: join (seconds) does not count as idle time
        self._last_activity: float | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def stop(self) -> None:
        """Ask the loop to finish: safe from a signal handler (only sets a flag)."""
        self._stopping = True

    # -------------------------------------------------------------------------------- main loop

    def run(self) -> SinkStats:
        """Consume until stopped, idle or at ``max_records``; finalize and commit; return the counters.

        On an exception (disk full, a broken broker connection) open files are discarded and nothing
        beyond what is already durable is committed, so a restart resumes without loss.
        """
        config = self.config
        config.output_dir.mkdir(parents=True, exist_ok=True)
        consumer = self._consumer = Consumer(self._consumer_config())
        clean = False
        if self.metrics is not None:
            port = self.metrics.serve(config.metrics_port or 0, config.metrics_host)
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, port)
        try:
            consumer.subscribe(
                [config.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            while not self._stopping:
                messages = consumer.consume(config.batch_size, config.poll_timeout)
                for message in messages:
                    self._handle(message)
                    if config.max_records is not None and self.stats.records >= config.max_records:
                        log.info("reached --max-records %d", config.max_records)
                        self._stopping = True
                        break
                self._note(self.files.expire())
                self._commit()
                if config.idle_exit is not None and self._idle_for() >= config.idle_exit:
                    log.info("no record for %.1f s: finishing", config.idle_exit)
                    break
            self._note(self.files.finalize_all())
            self._commit()
            clean = True
        finally:
            if not clean:
                self.files.close()
            self._flush_dead_letters()
            consumer.close()
            self._collect_file_stats()
            if self.metrics is not None:
                self.metrics.stop()
        return self.stats

    def _idle_for(self) -> float:
        return 0.0 if self._last_activity is None else self.clock() - self._last_activity

    def _consumer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            # a new sink group writes the whole topic, not only what arrives after it starts
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            **self.config.kafka,
            **self.config.consumer_overrides,
        }
        # not overridable: offsets are committed by hand, and only once the files are durable
        conf["group.id"] = self.config.group
        conf["enable.auto.commit"] = False
        conf["enable.auto.offset.store"] = False
        if self.metrics is not None:
            # the consumer lag per partition; the callback runs inside consume(), in the sink's thread
            conf["statistics.interval.ms"] = STATISTICS_INTERVAL_MS
            conf["stats_cb"] = self.metrics.on_statistics
        return conf

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            self.stats.consumer_errors += 1
            if error.fatal() or is_refusal(error):  # refused credentials or ACLs: retrying cannot help
                raise KafkaException(error)
            log.warning("consumer error: %s", error)
            return
        self._last_activity = self.clock()
        partition, offset = message.partition(), message.offset()
        if not self.files.accepts(partition, offset):
            # a record of a partition given up in a rebalance, or one delivered twice: whoever owns the
            # partition has it (or this process already appended it), so writing it would duplicate it
            self.stats.stale += 1
            if self.stats.stale <= _LOG_FIRST or self.stats.stale % _LOG_EVERY == 0:
                log.warning("skipping stale record %s[%d]@%d", message.topic(), partition, offset)
            return
        self.stats.records += 1
        try:
            payload: bytes | None = decode_failure_payload(message.value(), self.config.value_format)
        except UndecodableValue as exc:
            payload = None
            self.stats.undecodable += 1
            self.stats.undecodable_by_reason[exc.reason] += 1
            if self.stats.undecodable <= _LOG_FIRST or self.stats.undecodable % _LOG_EVERY == 0:
                log.warning(
                    "undecodable value at %s[%d]@%d (%d so far): %s",
                    message.topic(),
                    partition,
                    offset,
                    self.stats.undecodable,
                    exc,
                )
            self._dead_letter(message, exc)
        self._note(self.files.append(partition, offset, payload))

    def _note(self, progress: list[Durable]) -> None:
        for item in progress:
            if item.next_offset > self._pending.get(item.partition, -1):
                self._pending[item.partition] = item.next_offset
            if item.path is not None:
                log.info("wrote %s (%d payloads)", item.path.name, item.payloads)

    # -------------------------------------------------------------------------------- commits

    def _commit(self, partitions: set[int] | None = None) -> None:
        """Commit the durable offsets (of ``partitions`` only, if given), synchronously.

        Synchronous because the next step after a commit may be a revoke or an exit; a failed commit
        keeps the offsets pending for the next attempt (redelivery after a crash is harmless anyway).
        """
        pending = {p: o for p, o in self._pending.items() if partitions is None or p in partitions}
        if not pending or self._consumer is None:
            return
        if not self._flush_dead_letters():
            log.warning("dead letters not yet acknowledged: commit postponed")
            return
        offsets = [TopicPartition(self.config.topic, p, o) for p, o in sorted(pending.items())]
        started = time.perf_counter()
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit failed (will retry): %s", exc)
            return
        self.stats.commits += 1
        if self.metrics is not None:
            self.metrics.commit.observe(time.perf_counter() - started)
        for tp in result or offsets:
            if tp.error is not None:
                self.stats.commit_failures += 1
                log.warning("offset commit of partition %d failed: %s", tp.partition, tp.error)
            elif self._pending.get(tp.partition) == tp.offset:
                del self._pending[tp.partition]

    # -------------------------------------------------------------------------------- rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.files.adopt(tp.partition)
        self._last_activity = self.clock()
        log.info("assigned partitions %s", [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        self._commit(revoked)
        self._release(revoked, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # the group has moved on: committing would fail, and another member may already own these
        self._release({tp.partition for tp in partitions}, "lost")

    def _release(self, partitions: set[int], why: str) -> None:
        self.files.discard(partitions, Discard.REBALANCE)
        for partition in partitions:
            self._pending.pop(partition, None)
        log.info("%s partitions %s", why, sorted(partitions))

    # -------------------------------------------------------------------------------- dead letters

    def _dead_letter(self, message: Message, error: UndecodableValue) -> None:
        producer = self._producer
        if producer is None:
            producer = self._producer = Producer(
                {**self.config.kafka, "enable.idempotence": True, "acks": "all", "linger.ms": 50}
            )
        contract = DeadLetterHeaders(
            stage="sink",
            error=str(error),
            error_type=error.reason,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        headers = with_input_headers(contract.encode(), message.headers())
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        while True:
            try:
                producer.produce(
                    self.config.dead_letter_topic,
                    value=message.value(),
                    key=message.key(),
                    headers=headers,
                    on_delivery=lambda err, _msg: self._dead_letter_done(err, where),
                )
                break
            except BufferError:
                producer.poll(0.5)
        self._unflushed_dead_letters += 1
        producer.poll(0)

    def _dead_letter_done(self, error: KafkaError | None, where: str) -> None:
        if error is None:
            self.stats.dead_lettered += 1
        else:
            self.stats.dead_letter_failed += 1
            log.error(
                "dead letter for %s not delivered to %s: %s", where, self.config.dead_letter_topic, error
            )

    def _flush_dead_letters(self, timeout: float = 30.0) -> bool:
        """Wait until every dead letter so far is acknowledged (or failed, which is logged); True if done."""
        if self._producer is None or not self._unflushed_dead_letters:
            return True
        remaining = self._producer.flush(timeout)
        if remaining:
            return False
        self._unflushed_dead_letters = 0
        return True

    def _collect_file_stats(self) -> None:
        file_stats = self.files.stats
        self.stats.files = file_stats.files
        self.stats.payloads = file_stats.payloads
        self.stats.already_durable = file_stats.already_durable
        self.stats.discarded_partials = Counter(file_stats.discarded)
