"""The raw-topic producer: confluent-kafka, idempotent, acks=all, every record accounted for.

Every container handed to :meth:`RawProducer.send` ends in exactly one of two counters, ``delivered`` or
``failed`` (in records and containers), through its delivery callback; nothing is dropped without being
counted. Idempotence (with acks=all) lets librdkafka retry without duplicating or reordering. A *fatal*
error (e.g. the idempotent producer fenced or out of sequence) cannot be retried by librdkafka; it is
kept in ``fatal`` and the bridge stops, flushes what it still can and exits non-zero.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from dnsqr_schemas.dead_letter import Headers

log = logging.getLogger(__name__)

COMPRESSIONS = ("lz4", "zstd", "none")
#: How long a produce() that found librdkafka's queue full waits for deliveries before trying again.
_QUEUE_FULL_POLL = 0.05
#: How long a missing topic is asked for again before it is reported (a new topic takes a moment).
_TOPIC_PROPAGATION = 5.0
#: Seconds after the producer starts during which a coordinator that is still loading is expected.
STARTUP_GRACE = 30.0
#: librdkafka's line for a failed InitProducerId, and the retried reasons a healthy fresh broker gives.
_PID_RETRY = "Failed to acquire idempotence PID"
_COORDINATOR_STARTING = ("Coordinator load in progress", "Coordinator not available")


class IngestError(RuntimeError):
    """A condition the operator must fix (broker unreachable, topic missing); the message says which."""


class LibrdkafkaLog:
    """The producer's ``logger``: librdkafka's log lines into a Python logger, minus start-up noise.

    The idempotent producer first asks a broker for a producer id. A fresh broker answers "coordinator
    load in progress" (or "not available") until it has loaded its transaction state, a second or so, and
    librdkafka retries, logging each attempt as a WARNING: on a healthy start that reads like a fault.
    During the first ``grace`` seconds those lines go to DEBUG; afterwards, when a coordinator that never
    comes is a real problem, and for every other line, librdkafka's own level stands.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        grace: float = STARTUP_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self._clock = clock
        self._quiet_until = clock() + grace

    def log(self, level: int, msg: str, *args: object) -> None:
        """Called by confluent-kafka as ``log(level, "%s [%s] %s", facility, client, text)``."""
        if logging.DEBUG < level <= logging.WARNING and self._clock() < self._quiet_until:
            text = msg % args if args else msg
            if _PID_RETRY in text and any(reason in text for reason in _COORDINATOR_STARTING):
                level = logging.DEBUG
        self.logger.log(level, msg, *args)


@dataclass
class DeliveryCounts:
    """What happened to the containers handed to one topic."""

    containers_sent: int = 0
    records_sent: int = 0
    containers_delivered: int = 0
    records_delivered: int = 0
    containers_failed: int = 0
    records_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.containers_sent - self.containers_delivered - self.containers_failed


class RawProducer:
    """Produces containers to the raw topic and dead letters to the DLQ topic, counting every outcome."""

    def __init__(
        self,
        client_conf: Mapping[str, str],
        *,
        topic: str,
        dlq_topic: str | None,
        compression: str = "lz4",
        linger_ms: int = 100,
        key: bytes | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.key = key
        self.bootstrap = client_conf.get("bootstrap.servers", "?")
        self.raw = DeliveryCounts()
        self.dlq = DeliveryCounts()
        self.fatal: KafkaError | None = None
        self._last_error_log = 0.0
        conf: dict[str, object] = {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": linger_ms,
            # Containers are already batches of hundreds of records: let a Kafka batch hold several.
            "batch.size": 4 * 1024 * 1024,
            "batch.num.messages": 10000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "error_cb": self._on_error,
            "logger": LibrdkafkaLog(logging.getLogger("ingest.rdkafka")),
        }
        conf.update(client_conf)
        self._producer = Producer(conf)

    # ------------------------------------------------------------------------------------ connection

    def check_connection(self, timeout: float) -> None:
        """Fail fast, before any input is consumed, when the broker or the topics are not there.

        Consuming a UDP stream or a group's offsets while no broker is reachable would only move the loss
        from the socket to librdkafka's queue; checking first loses nothing.
        """
        deadline = time.monotonic() + timeout
        topic_deadline = time.monotonic() + min(timeout, _TOPIC_PROPAGATION)
        while True:
            try:
                meta = self._producer.list_topics(timeout=max(0.5, deadline - time.monotonic()))
            except KafkaException as exc:
                raise IngestError(
                    f"cannot reach Kafka at {self.bootstrap} within {timeout:g} s ({exc.args[0].str()}); "
                    "is the broker running? (dnsqr-pipeline kafka start)"
                ) from None
            # A topic created a moment ago may not be in every broker's metadata yet: ask again briefly.
            if self.topic in meta.topics or time.monotonic() >= topic_deadline:
                break
            time.sleep(0.2)
        if self.topic not in meta.topics:
            raise IngestError(
                f"topic {self.topic!r} does not exist on {self.bootstrap}; create it first "
                "(dnsqr-pipeline topics create) or pass --raw-topic"
            )
        if self.dlq_topic and self.dlq_topic not in meta.topics:
            log.warning(
                "dead-letter topic %r does not exist: undecodable input will only be counted", self.dlq_topic
            )
            self.dlq_topic = None

    # ------------------------------------------------------------------------------------ producing

    def send(self, container: bytes, records: int) -> None:
        """Queue one container of ``records`` payloads; blocks (serving callbacks) while the queue is full."""
        self.raw.containers_sent += 1
        self.raw.records_sent += records
        self._produce(self.topic, container, self.key, None, functools.partial(self._on_raw, records))

    def send_dead_letter(self, data: bytes, headers: Headers) -> bool:
        """Queue input bytes for the DLQ with the dead-letter contract's ``headers``
        (``schemas/dead_letter.md``); False when there is no DLQ topic."""
        if not self.dlq_topic:
            return False
        self.dlq.containers_sent += 1
        self.dlq.records_sent += 1
        self._produce(self.dlq_topic, data, None, headers, self._on_dlq)
        return True

    def _produce(
        self, topic: str, value: bytes, key: bytes | None, headers: object, callback: object
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=callback)
                return
            except BufferError:
                self._producer.poll(_QUEUE_FULL_POLL)
            except KafkaException as exc:
                # produce() itself refused (e.g. message too large for the client limit): a failed delivery.
                err = exc.args[0]
                callback(err, None)  # type: ignore[operator]
                return

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(timeout)

    def queue_depth(self) -> int:
        """Messages librdkafka holds (queued or in flight)."""
        return len(self._producer)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued message's outcome; True when none is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            if left == 0:
                return True
            if time.monotonic() >= deadline:
                return False

    # ------------------------------------------------------------------------------------ callbacks

    def _count_error(self, counts: DeliveryCounts, err: KafkaError) -> None:
        name = err.name()
        counts.errors[name] = counts.errors.get(name, 0) + 1
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.error("delivery failed: %s", err.str())

    def _on_raw(self, records: int, err: KafkaError | None, msg: Message | None) -> None:
        if err is None:
            self.raw.containers_delivered += 1
            self.raw.records_delivered += records
        else:
            self.raw.containers_failed += 1
            self.raw.records_failed += records
            self._count_error(self.raw, err)

    def _on_dlq(self, err: KafkaError | None, msg: Message | None) -> None:
        if err is None:
            self.dlq.containers_delivered += 1
            self.dlq.records_delivered += 1
        else:
            self.dlq.containers_failed += 1
            self.dlq.records_failed += 1
            self._count_error(self.dlq, err)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            if self.fatal is None:
                log.error("fatal Kafka error: %s", err.str())
            self.fatal = err
            return
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.warning("Kafka: %s", err.str())
