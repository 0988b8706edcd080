"""Prometheus metrics of a worker, served as ``GET /metrics`` on its Faust web server (``--web-port``).

Served there rather than on a ``--metrics-port`` of its own (as ingest and the sink do, which have no web
server): the worker already listens on one port for its views, so there is one port per worker to open
and scrape, ``faust -A processors.app worker`` serves it too, and ``/metrics`` is where people look on a
worker's web port. ``--no-web`` turns the metrics off with the views.

The agents' hot path gains no metric call. What is exported comes from:

- :class:`processors.app.FilterCounters` (``app.counters``), which the agents keep anyway, read when
  Prometheus scrapes (:class:`WorkerCollector`);
- the sends to the dead-letter topic, one call per send (:class:`DeadLetterTally` wraps ``app.output``),
  for the reason: the exception type that the dead letter's ``dnsqr-error-type`` header carries;
- Faust's commits: :class:`MetricsMonitor` takes the place of the app's Monitor sensor (which Faust
  calls per message anyway) and adds each commit that committed offsets to a histogram;
- two timers: every :data:`REFRESH_SECONDS` the consumer lag of each source partition (the broker's end
  offset minus the committed offset) and the size of each table; every :data:`NS_PERIOD_SECONDS` a walk of
  this worker's ``ns-totals`` partitions for the failures by kind and the name servers whose failure ratio
  jumped.

Name servers are unbounded, so no series per name server is exported except for at most :data:`TOP_K`:
those whose failure ratio over the last period rose the most above their ratio before it
(:class:`RatioJumps`). The alert rule (``deploy/prometheus/rules.yml``) decides how large a rise is a jump.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from faust.sensors.monitor import Monitor
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nmsgdns.errors import NmsgDnsError

if TYPE_CHECKING:
    from processors.app import PipelineApp
    from processors.filter_agent import Headers, Output, Record

log = logging.getLogger(__name__)

#: Seconds between refreshes of the consumer lag and the table sizes.
REFRESH_SECONDS = 5.0
#: Seconds between walks of the ``ns-totals`` table: the "recent" period of the failure-ratio jumps.
NS_PERIOD_SECONDS = 300.0
#: Most name servers exported with a ``name_server`` label.
TOP_K = 20
#: EDNS answers a name server needs, before and within a period, for its ratios to be compared.
MIN_ANSWERED = 20
#: Table entries serialized to estimate the bytes of a table.
SIZE_SAMPLE = 64
#: The table walked for failures by kind and ratio jumps (``processors.app.TABLES``).
TOTALS_TABLE = "ns-totals"
#: Commit durations: a commit waits for the broker (and under exactly_once for a transaction).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MetricsMonitor(Monitor):
    """Faust's Monitor sensor, carrying the worker's registry and timing each commit that committed offsets.

    Faust runs a commit every second whether or not there is anything to commit; those that had nothing
    (no ``on_tp_commit`` in between) are left out, or they would drown the real ones.
    """

    def __init__(self, registry: CollectorRegistry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: every metric of the worker (a private registry: several apps in one process, as in tests, would
        #: collide in prometheus-client's global one)
        self.registry = registry
        self.commit_histogram = Histogram(
            "dnsqr_worker_commit_duration_seconds",
            "time of each Faust commit that committed offsets",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self._committed = False

    def on_tp_commit(self, tp_offsets: Any) -> None:
        super().on_tp_commit(tp_offsets)
        self._committed = True

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        super().on_commit_completed(consumer, state)
        if self._committed:
            self._committed = False
            self.commit_histogram.observe(self.commit_latency[-1])


def _error_names(cls: type[BaseException]) -> list[str]:
    return [cls.__name__, *(name for sub in cls.__subclasses__() for name in _error_names(sub))]


#: Reasons a raw container is dead-lettered for: the exception types the filter agent meets (the domain
#: errors, TypeError for a value that is not bytes), and ``other`` for any other; all exported from the
#: start at 0, so that a rate over them sees the first dead letter.
DEAD_LETTER_REASONS = (*sorted(_error_names(NmsgDnsError)), "TypeError", "other")


class DeadLetterTally:
    """``app.output`` with a count of the records sent to the dead-letter topic, by reason.

    One check per send (a send carries a whole batch's records for one topic), none per record; every
    other attribute is the wrapped output's.
    """

    def __init__(self, output: Output, dlq_topic: str) -> None:
        #: where the records go
        self.inner = output
        self._dlq_topic = dlq_topic
        self.by_reason: Counter[str] = Counter()

    async def send(
        self, topic: str, records: Sequence[Record], *, source: TP | None, headers: Headers | None = None
    ) -> None:
        if topic == self._dlq_topic:
            reason = dict(headers or ()).get("dnsqr-error-type", b"").decode("utf-8", "replace")
            self.by_reason[reason if reason in DEAD_LETTER_REASONS else "other"] += len(records)
        await self.inner.send(topic, records, source=source, headers=headers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class Jump:
    """A name server's failure ratio (failures per EDNS answer) in the last period and before it."""

    name_server: str
    recent: float
    before: float
    answered: int


class RatioJumps:
    """The name servers whose failure ratio rose most in the last period, from successive table walks.

    Each :meth:`update` gets every (name server, totals) of the table and compares them with the previous
    walk's: the difference is the period. A name server new since then (a first appearance, or a partition
    this worker just took over) has no baseline and waits for the next walk. Keeps two integers per name
    server between walks.
    """

    def __init__(self, k: int = TOP_K, min_answered: int = MIN_ANSWERED) -> None:
        self.k = k
        self.min_answered = min_answered
        self._previous: dict[str, tuple[int, int]] = {}
        self.top: list[Jump] = []

    def update(self, totals: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Jump]:
        """Take a walk's totals; returns (and keeps in :attr:`top`) the at most ``k`` largest rises."""
        previous = self._previous
        current: dict[str, tuple[int, int]] = {}
        rises: list[Jump] = []
        for ns, counts in totals:
            failures, answered = counts.get("failures", 0), counts.get("edns_answered", 0)
            current[ns] = (failures, answered)
            base = previous.get(ns)
            if base is None or base[1] < self.min_answered or answered - base[1] < self.min_answered:
                continue
            recent = (failures - base[0]) / (answered - base[1])
            before = base[0] / base[1]
            if recent > before:
                rises.append(Jump(ns, recent, before, answered - base[1]))
        self._previous = current
        self.top = heapq.nlargest(self.k, rises, key=lambda j: (j.recent - j.before, j.answered))
        return self.top


def failures_by_kind(totals: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """The sum of the ``by_kind`` counts of table values."""
    kinds: Counter[str] = Counter()
    for counts in totals:
        kinds.update(counts.get("by_kind") or {})
    return kinds


def approximate_bytes(store: Mapping[Any, Any], sample: int = SIZE_SAMPLE) -> int:
    """The table's size as JSON (its changelog encoding), estimated from its first ``sample`` entries."""
    n = len(store)
    if not n:
        return 0
    taken = list(islice(store.items(), sample))
    size = sum(len(json.dumps([key, value], default=str)) for key, value in taken)
    return round(size * n / len(taken))


def consumer_lag(
    ends: Mapping[TP, int], committed: Mapping[TP, int | None], earliest: Mapping[TP, int]
) -> dict[TP, int]:
    """Records not yet committed per partition: end offset minus committed offset (or the log start when
    nothing is committed yet)."""
    lag = {}
    for tp, end in ends.items():
        position = committed.get(tp)
        if position is None:
            position = earliest.get(tp, 0)
        lag[tp] = max(end - position, 0)
    return lag


class WorkerState:
    """What the timers found last: lag per partition, table sizes, failures by kind, ratio jumps."""

    def __init__(self) -> None:
        self.lag: dict[TP, int] = {}
        #: table name -> (keys, approximate bytes)
        self.tables: dict[str, tuple[int, int]] = {}
        self.kinds: Counter[str] = Counter()
        self.jumps = RatioJumps()


class WorkerCollector(Collector):
    """Builds the worker's metric families at scrape time from the counters and :class:`WorkerState`."""

    def __init__(self, app: PipelineApp, state: WorkerState, dead_letters: DeadLetterTally) -> None:
        self.app = app
        self.state = state
        self.dead_letters = dead_letters

    def collect(self) -> Iterable[Any]:
        c = self.app.counters
        yield _counter(
            "dnsqr_worker_containers_in",
            "raw containers taken: judged or dead-lettered",
            [((), c.containers + c.dead_letters)],
        )
        yield _counter("dnsqr_worker_records_in", "dnsqr records in the judged containers", [((), c.records)])
        yield _counter(
            "dnsqr_worker_records_out",
            "records sent, by output topic",
            [(("failures",), c.failures), (("ns-stats",), c.deltas)],
            ["output"],
        )
        yield _counter(
            "dnsqr_worker_drops",
            "records delivered again after they were processed, dropped",
            [(("redelivered_container",), c.redelivered), (("redelivered_delta",), c.redelivered_deltas)],
            ["reason"],
        )
        reasons = self.dead_letters.by_reason.copy()
        untold = c.dead_letters - sum(reasons.values())
        if untold > 0:  # sent by a path that bypassed app.output
            reasons["other"] += untold
        yield _counter(
            "dnsqr_worker_dead_letters",
            "raw containers sent to the dead-letter topic, by exception type",
            [((reason,), reasons[reason]) for reason in DEAD_LETTER_REASONS],
            ["reason"],
        )
        lag = GaugeMetricFamily(
            "dnsqr_worker_consumer_lag",
            "records of a source partition not committed yet",
            labels=["topic", "partition"],
        )
        for tp, n in sorted(self.state.lag.items()):
            lag.add_metric([tp.topic, str(tp.partition)], n)
        yield lag
        keys = GaugeMetricFamily("dnsqr_worker_state_keys", "keys in this worker's table", labels=["table"])
        size = GaugeMetricFamily(
            "dnsqr_worker_state_bytes", "approximate size of this worker's table as JSON", labels=["table"]
        )
        for table, (n, nbytes) in sorted(self.state.tables.items()):
            keys.add_metric([table], n)
            size.add_metric([table], nbytes)
        yield keys
        yield size
        kinds = GaugeMetricFamily(
            "dnsqr_worker_table_failures",
            "failures by kind in this worker's partitions of ns-totals (they move on a rebalance)",
            labels=["kind"],
        )
        for kind, n in sorted(self.state.kinds.items()):
            kinds.add_metric([kind], n)
        yield kinds
        ratio = GaugeMetricFamily(
            "dnsqr_worker_ns_failure_ratio",
            f"failures per EDNS answer of the (at most {TOP_K}) name servers whose ratio rose most in the "
            f"last {NS_PERIOD_SECONDS:.0f} s: within it (recent) and before it (before)",
            labels=["name_server", "period"],
        )
        for jump in self.state.jumps.top:
            ratio.add_metric([jump.name_server, "recent"], jump.recent)
            ratio.add_metric([jump.name_server, "before"], jump.before)
        yield ratio


def _counter(
    name: str, documentation: str, samples: Iterable[tuple[Sequence[str], float]], labels: Sequence[str] = ()
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, n in samples:
        family.add_metric(list(values), n)
    return family


async def refresh_lag(app: PipelineApp, state: WorkerState) -> None:
    """Ask the broker for the end offsets of the assigned partitions of the agents' source topics."""
    consumer: Any = app.consumer
    sources = {app.settings.raw_topic, app.settings.stats_topic}
    tps = [tp for tp in consumer.assignment() if tp.topic in sources]
    if not tps:
        state.lag = {}
        return
    committed: Mapping[TP, int | None] = consumer._committed_offset  # Faust's record of its commits
    unknown = [tp for tp in tps if committed.get(tp) is None]
    earliest = await consumer.earliest_offsets(*unknown) if unknown else {}
    state.lag = consumer_lag(await consumer.highwaters(*tps), committed, earliest)


def refresh_tables(app: PipelineApp, state: WorkerState) -> None:
    """Keys and approximate bytes of each of the app's tables (this worker's partitions)."""
    state.tables = {
        name: (len(table.data), approximate_bytes(table.data)) for name, table in app.tables.items()
    }


def walk_totals(app: PipelineApp, state: WorkerState) -> None:
    """Failures by kind and failure-ratio jumps from this worker's partitions of ``ns-totals``."""
    store = app.tables[TOTALS_TABLE].data
    state.kinds = failures_by_kind(store.values())
    state.jumps.update(store.items())


def install(app: PipelineApp) -> None:
    """Add ``/metrics``, the commit histogram, the dead-letter tally and the refresh timers to ``app``.

    Call it once the agents are installed (it wraps ``app.output``) and before the app starts (it replaces
    the Monitor sensor, ``app.monitor``, whose ``registry`` holds the metrics).
    """
    registry = CollectorRegistry()
    app.monitor = MetricsMonitor(registry)
    tally = DeadLetterTally(app.output, app.settings.dlq_topic)
    app.output = tally  # type: ignore[assignment]
    state = WorkerState()
    registry.register(WorkerCollector(app, state, tally))

    @app.page("/metrics")
    class MetricsView(View):
        """This worker's metrics in Prometheus' text format."""

        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.timer(REFRESH_SECONDS)
    async def refresh_metrics() -> None:
        """Consumer lag and table sizes."""
        refresh_tables(app, state)
        try:
            await refresh_lag(app, state)
        except Exception as exc:  # a broker that does not answer now is asked again next time
            log.debug("consumer lag not refreshed: %s", exc)

    @app.timer(NS_PERIOD_SECONDS)
    async def walk_ns_totals() -> None:
        """Failures by kind and the failure-ratio jumps of the last period."""
        walk_totals(app, state)
