"""The newest ``NsCounts`` of each name server on the counts topic, read as it grows.

The counts topic (``schemas/ns_counts.avsc``) carries one snapshot per changed (name server, window) and
tick, each with that name server's totals at ``snapshot_time_ms`` (and one without a window when only the
totals changed): the newest snapshot of a name server holds its current totals, the newest of a window
that window's counts. A job waits until those totals
count every failure, asking again every few seconds; with ~500k name servers the topic holds ~600k
snapshots per million records, so reading it from the beginning on every ask cost more CPU than the
worker (measured: 18 s of a 1M-record run). :class:`LatestCounts` keeps its consumer and reads each
snapshot once: every :meth:`LatestCounts.read` takes what was added since the previous one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from dnsqr_kafka.value_formats import COUNTS_SCHEMA
from dnsqr_pipeline.completion import READ_POLL_SECONDS, CompletionError, end_offsets, job_consumer
from dnsqr_schemas.value_format import ValueFormat

#: the counts topic's values without a registry
SCHEMALESS = ValueFormat(COUNTS_SCHEMA)


class LatestCounts:
    """Each name server's newest ``NsCounts.total`` on ``topic`` (or, with ``window_start``, the newest
    ``window`` counts of that window; name servers without a snapshot of it are left out). Newest is by
    ``snapshot_time_ms``. ``read_committed``: under exactly_once only committed snapshots count. Values are
    in ``value_format`` (``dnsqr_kafka.value_formats``; by default schemaless Avro)."""

    def __init__(
        self,
        kafka: Mapping[str, str],
        topic: str,
        window_start: int | None = None,
        value_format: ValueFormat = SCHEMALESS,
    ) -> None:
        self.topic = topic
        self.window_start = window_start
        self._decode = value_format.decode
        self._consumer = job_consumer(
            kafka, "counts", **{"enable.partition.eof": True, "isolation.level": "read_committed"}
        )
        #: partition -> offset to read from next
        self._next: dict[int, int] = {}
        #: name server -> its newest counts, and the snapshot time they are from
        self._latest: dict[str, dict[str, Any]] = {}
        self._times: dict[str, int] = {}
        #: the newest ``expired_through`` read: windows starting at or before it were freed by a worker
        self.expired_through: int | None = None

    def read(self, timeout: float = 60.0) -> Mapping[str, dict[str, Any]]:
        """Read on to the end of every partition as it is now; {name server: ``NsCountValues``}, a live
        view that the next read updates (a copy of ~500k entries per read would cost more than the read).
        :class:`CompletionError` once ``timeout`` seconds pass without a record or a partition's end (a
        stall, not a long read: 1.6M snapshots take ~60 s to decode on the 2-core box).

        Each call assigns the partitions again at the offsets it has reached, so that every partition
        reports its end anew (librdkafka reports an end once per arrival there) and a partition with
        nothing new ends the read at once. Ends are end-of-partition events, not end offsets: under
        exactly_once the last offset may be a transaction marker that no record reaches.
        """
        consumer = self._consumer
        for p in end_offsets(consumer, self.topic):
            self._next.setdefault(p, 0)
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._next.items()])
        deadline = time.monotonic() + timeout
        ended: set[int] = set()
        while len(ended) < len(self._next):
            if time.monotonic() > deadline:
                raise CompletionError(
                    f"reading the counts topic {self.topic}: nothing came for {timeout:.0f} s "
                    f"(partitions {sorted(set(self._next) - ended)} did not reach their end)"
                )
            messages = consumer.consume(10_000, READ_POLL_SECONDS)
            if messages:
                deadline = time.monotonic() + timeout
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(msg.partition())
                        continue
                    raise CompletionError(f"reading {self.topic}: {error.str()}")
                self._next[msg.partition()] = msg.offset() + 1
                self._take(self._decode(msg.value()))
        return self._latest

    def window_freed(self) -> bool:
        """Whether the window asked for (``window_start``) was freed by a worker, as far as read: its
        counts are then those of its last snapshot, and its later records counted in the totals only."""
        return (
            self.window_start is not None
            and self.expired_through is not None
            and self.window_start <= self.expired_through
        )

    def _take(self, snapshot: Mapping[str, Any]) -> None:
        expired = snapshot["expired_through"]
        if expired is not None and (self.expired_through is None or expired > self.expired_through):
            self.expired_through = expired
        if self.window_start is not None and snapshot["window_start"] != self.window_start:
            return
        ns, snapshot_time = snapshot["name_server"], snapshot["snapshot_time_ms"]
        if snapshot_time >= self._times.get(ns, snapshot_time):
            self._times[ns] = snapshot_time
            self._latest[ns] = snapshot["total" if self.window_start is None else "window"]

    def close(self) -> None:
        self._consumer.close()


def read_latest_counts(
    kafka: Mapping[str, str],
    topic: str,
    window_start: int | None = None,
    value_format: ValueFormat = SCHEMALESS,
) -> dict[str, dict[str, Any]]:
    """The counts topic read once from the beginning to its end (see :class:`LatestCounts`)."""
    view = LatestCounts(kafka, topic, window_start, value_format)
    try:
        return dict(view.read())
    finally:
        view.close()
