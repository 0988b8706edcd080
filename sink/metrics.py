"""Prometheus metrics of the sink, served on ``--metrics-port`` when given (off by default, as for ingest).

A private registry (not prometheus-client's global one) keeps several sinks in one process (tests, the
``run`` command) from colliding. Nothing is counted per record here: the totals the sink keeps anyway
(:class:`sink.stats.SinkStats`, :class:`sink.files.FileSetStats`) are read when Prometheus scrapes
(:class:`SinkCollector`); the histograms get one observation per finalized file (fsync) and per commit.
The consumer lag comes from librdkafka's statistics, which the consumer emits every
:data:`STATISTICS_INTERVAL_MS` from within the sink's own poll (:meth:`SinkMetrics.on_statistics`).

Scrapes run in the HTTP server's thread and only read: the counters are plain integers, and mappings are
copied in one step (``dict(...)``) before they are walked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dnsqr_kafka.metrics_server import MetricsServer
from dnsqr_schemas.dead_letter import SINK_REASONS
from sink.files import Discard, FileSetStats
from sink.stats import SinkStats

log = logging.getLogger(__name__)

#: How often librdkafka reports the consumer's partitions (and so how fresh the lag is).
STATISTICS_INTERVAL_MS = 5000
#: fsync of a file and its directory: from a page cache flush to a slow disk's seconds.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: a synchronous offset commit: a round trip to the group coordinator.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def partition_lag(statistics: dict[str, Any]) -> dict[tuple[str, int], int]:
    """Records not yet committed per assigned partition, from a librdkafka statistics document.

    ``consumer_lag`` is the high watermark (last stable offset under read_committed) minus the committed
    offset; librdkafka reports -1 while the group has committed nothing, and the sink then reads from the
    log start (``auto.offset.reset=earliest``), so the lag is the high watermark minus that start.
    """
    lag: dict[tuple[str, int], int] = {}
    for topic, info in (statistics.get("topics") or {}).items():
        for key, p in (info.get("partitions") or {}).items():
            partition = int(key)
            if partition < 0 or not p.get("desired"):
                continue  # librdkafka's internal "unassigned" partition, or one not assigned to us
            n = p.get("consumer_lag", -1)
            if n < 0 and p.get("hi_offset", -1) >= 0 and p.get("committed_offset", -1) < 0:
                n = p["hi_offset"] - max(p.get("lo_offset", 0), 0)
            if n >= 0:
                lag[(topic, partition)] = n
    return lag


class SinkMetrics(MetricsServer):
    """The sink's registry: its collector, the fsync and commit histograms, the latest lag."""

    def __init__(self, stats: SinkStats, file_stats: Callable[[], FileSetStats]) -> None:
        super().__init__(CollectorRegistry())
        self.fsync = Histogram(
            "dnsqr_sink_fsync_duration_seconds",
            "making a finalized file durable: fsync of the file, rename, fsync of the directory",
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.commit = Histogram(
            "dnsqr_sink_commit_duration_seconds",
            "synchronous offset commits",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        #: (topic, partition) -> lag, replaced whole by each statistics document
        self.lag: dict[tuple[str, int], int] = {}
        self.registry.register(SinkCollector(stats, file_stats, self))

    def on_statistics(self, document: str) -> None:
        """librdkafka's ``stats_cb``: keep the lag of the assigned partitions."""
        try:
            self.lag = partition_lag(json.loads(document))
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)


class SinkCollector(Collector):
    """Counter families built at scrape time from the sink's and its file set's totals."""

    def __init__(
        self, stats: SinkStats, file_stats: Callable[[], FileSetStats], metrics: SinkMetrics
    ) -> None:
        self.stats = stats
        self.file_stats = file_stats
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        stats, files = self.stats, self.file_stats()
        yield _counter("dnsqr_sink_records_in", "records taken from the failures topic", stats.records)
        skipped = CounterMetricFamily(
            "dnsqr_sink_records_skipped",
            "records not written: of a partition not owned or already appended (stale), or already in a "
            "final file (already_durable)",
            labels=["reason"],
        )
        skipped.add_metric(["stale"], stats.stale)
        skipped.add_metric(["already_durable"], files.already_durable)
        yield skipped
        yield _counter("dnsqr_sink_files_written", "final files written", files.files)
        yield _counter("dnsqr_sink_payloads_written", "payloads in final files", files.payloads)
        yield _counter("dnsqr_sink_written_bytes", "bytes of final files", files.file_bytes)
        discarded = CounterMetricFamily(
            "dnsqr_sink_discarded_files", "partly filled files thrown away (not committed)", labels=["reason"]
        )
        by_discard = dict(files.discarded)
        for reason in Discard:
            discarded.add_metric([reason.name.lower()], by_discard.get(reason, 0))
        yield discarded
        dead = CounterMetricFamily(
            "dnsqr_sink_dead_letters", "undecodable values sent to the dead-letter topic", labels=["reason"]
        )
        by_reason = dict(stats.undecodable_by_reason)
        for reason in SINK_REASONS:  # every reason exported from the start
            dead.add_metric([reason], by_reason.get(reason, 0))
        yield dead
        yield _counter(
            "dnsqr_sink_dead_letter_failures",
            "dead letters the broker did not take",
            stats.dead_letter_failed,
        )
        yield _counter("dnsqr_sink_commit_failures", "offset commits that failed", stats.commit_failures)
        yield _counter("dnsqr_sink_consumer_errors", "errors the consumer reported", stats.consumer_errors)
        lag = GaugeMetricFamily(
            "dnsqr_sink_consumer_lag",
            "records of an assigned partition not committed yet",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(self.metrics.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
