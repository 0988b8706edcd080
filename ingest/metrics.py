"""Prometheus metrics of the ingest bridge, served on ``--metrics-port`` when given.

A private registry (not prometheus-client's global one) keeps several bridges in one process (tests, the
``run`` command) from colliding. The bridge calls :meth:`IngestMetrics.update` from its periodic tick with
absolute totals, so the hot path pays nothing per record.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from dnsqr_kafka.metrics_server import MetricsServer


class IngestMetrics(MetricsServer):
    """Counters mirrored from the bridge's own totals (which stay the source of truth)."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.records_in = Counter(
            "dnsqr_ingest_records_in", "payloads read, per source", ["source"], registry=self.registry
        )
        self.records_out = Counter(
            "dnsqr_ingest_records_out", "records delivered to the raw topic", registry=self.registry
        )
        self.containers_out = Counter(
            "dnsqr_ingest_containers_out", "containers delivered to the raw topic", registry=self.registry
        )
        self.drops = Counter(
            "dnsqr_ingest_drops", "input dropped, by reason", ["reason"], registry=self.registry
        )
        self.delivery_errors = Counter(
            "dnsqr_ingest_delivery_errors", "records whose delivery failed", registry=self.registry
        )
        self.dead_letters = Counter(
            "dnsqr_ingest_dead_letters", "inputs sent to the dead-letter topic", registry=self.registry
        )
        self.dead_letters_unsampled = Counter(
            "dnsqr_ingest_dead_letters_unsampled",
            "undecodable datagrams not dead-lettered under --dlq-rate (counted in drops), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dnsqr_ingest_producer_queue_depth", "messages held by the producer", registry=self.registry
        )
        self._seen: dict[tuple[str, str], float] = {}

    def _advance(self, counter: Counter, key: tuple[str, str], total: float, *labels: str) -> None:
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._seen[key] = total

    def update(
        self,
        *,
        records_in: Mapping[str, int],
        records_out: int,
        containers_out: int,
        drops: Mapping[str, int],
        delivery_errors: int,
        dead_letters: int,
        dead_letters_unsampled: Mapping[str, int],
        queue_depth: int,
    ) -> None:
        """Bring the exported counters up to the given totals."""
        for source, n in records_in.items():
            self._advance(self.records_in, ("in", source), n, source)
        for reason, n in drops.items():
            self._advance(self.drops, ("drop", reason), n, reason)
        for reason, n in dead_letters_unsampled.items():
            self._advance(self.dead_letters_unsampled, ("unsampled", reason), n, reason)
        self._advance(self.records_out, ("out", ""), records_out)
        self._advance(self.containers_out, ("containers", ""), containers_out)
        self._advance(self.delivery_errors, ("errors", ""), delivery_errors)
        self._advance(self.dead_letters, ("dlq", ""), dead_letters)
        self.queue_depth.set(queue_depth)
