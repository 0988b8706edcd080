"""Prometheus metrics of a worker, served as ``GET /metrics`` on its Faust web server (``--web-port``).

Served there rather than on a ``--metrics-port`` of its own (as ingest and the sink do, which have no web
server): the worker already listens on one port for its views, so there is one port per worker to open
and scrape, ``faust -A processors.app worker`` serves it too, and ``/metrics`` is where people look on a
worker's web port. ``--no-web`` turns the metrics off with the views.

The agents' hot path gains no metric call. What is exported comes from:

- :class:`processors.agent_counters.AgentCounters`, which the agents keep anyway, read when Prometheus
  scrapes (:class:`WorkerCollector`);
- the sends to the dead-letter topic, one call per send (:class:`DeadLetterTally` wraps the agents'
  output), for the reason: the dead letter's ``dlq.error.type`` header, one of the contract's stable
  reasons (``schemas/dead_letter.md``), every one exported from the start at 0 so that a rate over them
  sees the first dead letter;
- Faust's commits: :class:`MetricsMonitor` takes the place of the app's Monitor sensor (which Faust
  calls per message anyway) and adds each commit that committed offsets to a histogram;
- two timers: every :data:`REFRESH_SECONDS` the consumer lag of each source partition (the broker's end
  offset minus the committed offset) and the size of the aggregator's state, per ns-stats partition
  (:class:`processors.state.NsState`: keys counted, bytes estimated from a sample); every
  :data:`NS_PERIOD_SECONDS` a walk of the states' totals for the failures by kind and the name servers
  whose failure ratio jumped.

Name servers are unbounded, so no series per name server is exported except for at most :data:`TOP_K`:
those whose failure ratio over the last period rose the most above their ratio before it
(:class:`RatioJumps`). The alert rule (``deploy/prometheus/rules.yml``) decides how large a rise is a jump.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from dnsqr_schemas.dead_letter import WORKER_REASONS, DeadLetterHeaders
from processors.agent_counters import AgentCounters
from processors.aggregator import RESTORE_SOURCES, Aggregation
from processors.counts import ANSWERED, BY_KIND, FAILURES, Counts
from processors.filter_agent import Headers, Output, Record
from processors.settings import Settings
from processors.state import NsState

log = logging.getLogger(__name__)

#: Seconds between refreshes of the consumer lag and the state sizes.
REFRESH_SECONDS = 5.0
#: Seconds between walks of the states' totals: the "recent" period of the failure-ratio jumps.
NS_PERIOD_SECONDS = 300.0
#: Name servers a walk of the totals takes between two turns of the event loop (~30 ms).
WALK_CHUNK = 20_000
#: Most name servers exported with a ``name_server`` label.
TOP_K = 20
#: EDNS answers a name server needs, before and within a period, for its ratios to be compared.
MIN_ANSWERED = 20
#: Entries of each state map measured to estimate the bytes of the whole map.
SIZE_SAMPLE = 64
#: Commit durations: a commit waits for the broker (and under exactly_once for a transaction).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: CPython shares the int objects from -5 to this one: a count up to it costs no memory of its own.
SHARED_INT_MAX = 256


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


def tallied_reason(headers: Iterable[tuple[str, bytes | None]] | None) -> str:
    """The reason a dead letter is counted under: its ``dlq.error.type`` (the filter agent's
    :func:`~processors.filter_agent.dead_letter_reason`) when that is one of the contract's
    :data:`~dnsqr_schemas.dead_letter.WORKER_REASONS`, else ``other`` (also for headers that are not the
    contract's), so that the label set stays the documented one."""
    try:
        error_type = DeadLetterHeaders.decode(headers or ()).error_type
    except ValueError:
        return "other"
    return error_type if error_type in WORKER_REASONS else "other"


class DeadLetterTally:
    """The agents' output with a count of the records sent to the dead-letter topic, by reason.

    One check per send (a send carries a whole batch's records for one topic), none per record; every
    other attribute (the partitioner, the commit path's sends) is the wrapped output's.
    """

    def __init__(self, output: Output, dlq_topic: str) -> None:
        #: where the records go
        self.inner = output
        self._dlq_topic = dlq_topic
        self.by_reason: Counter[str] = Counter()

    async def send(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        source: TP | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        if topic == self._dlq_topic:
            self.by_reason[tallied_reason(headers)] += len(records)
        await self.inner.send(topic, records, source=source, headers=headers, partition=partition)

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
    """The name servers whose failure ratio rose most in the last period, from successive walks of the
    states' totals.

    A walk :meth:`add` s the totals of every name server, in as many calls as it likes, then calls
    :meth:`finish`:
    each name server's counts are compared with the previous walk's, the difference being the period. One
    without a baseline (new since then, too few answers then, or of a partition this worker just took over)
    waits for the next walk. Between walks it keeps two integers for each name server with at least
    ``min_answered`` answers, not for the many seen a few times.
    """

    def __init__(self, k: int = TOP_K, min_answered: int = MIN_ANSWERED) -> None:
        self.k = k
        self.min_answered = min_answered
        self._previous: dict[str, tuple[int, int]] = {}
        self._current: dict[str, tuple[int, int]] = {}
        self._rises: list[Jump] = []
        #: the at most ``k`` largest rises of the last finished walk
        self.top: list[Jump] = []

    def add(self, totals: Mapping[str, Counts], names: Iterable[str]) -> None:
        """Take the totals of some name servers of a walk."""
        previous, current, rises, least = self._previous, self._current, self._rises, self.min_answered
        for ns in names:
            counts = totals[ns]
            answered = counts[ANSWERED]
            if answered < least:
                continue
            failures = counts[FAILURES]
            current[ns] = (failures, answered)
            base = previous.get(ns)
            if base is None or answered - base[1] < least:
                continue
            recent = (failures - base[0]) / (answered - base[1])
            before = base[0] / base[1]
            if recent > before:
                rises.append(Jump(ns, recent, before, answered - base[1]))

    def finish(self) -> list[Jump]:
        """End the walk: its counts become the next one's baseline; returns (and keeps in :attr:`top`) the
        at most ``k`` largest rises."""
        self.top = heapq.nlargest(self.k, self._rises, key=lambda j: (j.recent - j.before, j.answered))
        self._previous, self._current, self._rises = self._current, {}, []
        return self.top


def add_failures_by_kind(kinds: dict[str, int], totals: Mapping[str, Counts], names: Iterable[str]) -> None:
    """Add the by-kind failure counts of ``names`` in ``totals`` to ``kinds`` (a plain dict:
    ``Counter.update`` costs several times more a name server)."""
    for ns in names:
        by_kind = totals[ns][BY_KIND]
        if by_kind:
            for kind, n in by_kind.items():
                kinds[kind] = kinds.get(kind, 0) + n


def entry_bytes(key: str, counts: Counts) -> int:
    """Memory of one state entry: its key, its counts list, the counts too large to be shared ints, and
    its by-kind and observation maps. The dict slot that holds it is counted with the map."""
    size = sys.getsizeof(key) + sys.getsizeof(counts)
    size += sum(sys.getsizeof(n) for n in counts[:BY_KIND] if n > SHARED_INT_MAX)
    for kinds in counts[BY_KIND:]:
        if kinds:
            size += sys.getsizeof(kinds)
            size += sum(sys.getsizeof(n) for n in kinds.values() if n > SHARED_INT_MAX)
    return size


def map_bytes(entries: Mapping[str, Counts], sample: int = SIZE_SAMPLE) -> int:
    """Memory of a map of name server -> counts: the map itself, and its entries estimated from the first
    ``sample`` of them."""
    n = len(entries)
    size = sys.getsizeof(entries)
    if n:
        taken = list(islice(entries.items(), sample))
        size += round(sum(entry_bytes(k, c) for k, c in taken) * n / len(taken))
    return size


def state_size(state: NsState, sample: int = SIZE_SAMPLE) -> dict[str, tuple[int, int]]:
    """(keys, approximate bytes of memory) of a state's hot totals, of its frozen totals (``hot_totals`` and
    ``frozen_totals``: a name server thawed is in both), of its ``windows`` together and of its frozen
    windows together.

    Windows dominate: a name server seen in several windows has one entry in each.
    """
    windows = list(state.windows.values())
    frozen = list(state.frozen.values())
    return {
        "totals": (len(state.hot_totals), map_bytes(state.hot_totals, sample)),
        "frozen_totals": (
            (0, 0) if state.frozen_totals is None else (len(state.frozen_totals), state.frozen_totals.nbytes)
        ),
        "windows": (
            sum(len(w) for w in windows),
            sys.getsizeof(state.windows) + sum(map_bytes(w, sample) for w in windows),
        ),
        "frozen_windows": (sum(len(w) for w in frozen), sum(w.nbytes for w in frozen)),
    }


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
    """What the timers found last: lag per partition, state sizes, failures by kind, ratio jumps."""

    def __init__(self) -> None:
        self.lag: dict[TP, int] = {}
        #: (ns-stats partition, map: totals or windows) -> (keys, approximate bytes)
        self.sizes: dict[tuple[int, str], tuple[int, int]] = {}
        self.kinds: Counter[str] = Counter()
        self.jumps = RatioJumps()


class WorkerCollector(Collector):
    """Builds the worker's metric families at scrape time from the counters and :class:`WorkerState`."""

    def __init__(
        self,
        counters: AgentCounters,
        state: WorkerState,
        dead_letters: DeadLetterTally,
        aggregation: Aggregation,
    ) -> None:
        self.counters = counters
        self.state = state
        self.dead_letters = dead_letters
        self.aggregation = aggregation

    def collect(self) -> Iterable[Any]:
        c = self.counters
        yield _counter(
            "dnsqr_worker_containers_in",
            "raw containers taken: judged or dead-lettered",
            [((), c.containers + c.dead_letters)],
        )
        yield _counter("dnsqr_worker_records_in", "dnsqr records in the judged containers", [((), c.records)])
        yield _counter(
            "dnsqr_worker_records_out",
            "records sent, by output topic (ns-stats: per-name-server and window deltas)",
            [(("failures",), c.failures), (("ns-stats",), c.deltas)],
            ["output"],
        )
        yield _counter(
            "dnsqr_worker_drops",
            "input records not used: raw containers and ns-stats records delivered again after they were "
            "processed, ns-stats records the state had applied already (exactly_once), undecodable ns-stats "
            "records",
            [
                (("redelivered_container",), c.redelivered),
                (("redelivered_ns_stats",), c.redelivered_stats),
                (("applied_ns_stats",), self.aggregation.replayed),
                (("undecodable_ns_stats",), c.bad_stats),
            ],
            ["reason"],
        )
        yield _counter(
            "dnsqr_worker_late_deltas",
            "per-name-server deltas for windows already freed (record time older than stream time less the "
            "expiry): counted in the totals only",
            [((), self.aggregation.late_deltas)],
        )
        yield _counter(
            "dnsqr_worker_early_deltas",
            "per-name-server deltas whose window starts further ahead of the worker's clock than "
            "--window-max-ahead-seconds (a bad clock): counted in the totals only, stream time unmoved",
            [((), self.aggregation.early_deltas)],
        )
        a = self.aggregation
        yield SummaryMetricFamily(
            "dnsqr_worker_state_restore_seconds",
            "time from an assignment of ns-stats partitions to their states being ready (kept, loaded from "
            "a checkpoint, read from the changelog)",
            count_value=a.restores,
            sum_value=a.restore_seconds,
        )
        yield _counter(
            "dnsqr_worker_state_restored_entries",
            "name servers of the ns-stats partitions made ready, by where their state came from: kept "
            "(taken back after a rebalance), standby (this worker's standby state and the changelog's "
            "tail), checkpoint (--state-dir), changelog (read from its beginning)",
            [((source,), a.restored_name_servers[source]) for source in RESTORE_SOURCES],
            ["source"],
        )
        yield _counter(
            "dnsqr_worker_restore_pauses",
            "ns-stats partitions paused while their state was restored, their waiting records having "
            "reached --restore-buffer-mb (fetched again once the state was ready)",
            [((), a.pauses)],
        )
        yield _counter(
            "dnsqr_worker_state_changelog_records_read",
            "changelog records read by restores (after a standby's or a checkpoint's offset, or from the "
            "beginning)",
            [((), a.changelog_records)],
        )
        standbys = a.standbys
        yield GaugeMetricFamily(
            "dnsqr_worker_standby_partitions",
            "ns-stats partitions whose state this worker keeps as a warm standby (--standby-replicas)",
            value=0 if standbys is None else len(standbys.partitions),
        )
        yield _counter(
            "dnsqr_worker_standby_changelog_records",
            "changelog records applied to this worker's standby states",
            [((), 0 if standbys is None else standbys.records)],
        )
        standby_lag = GaugeMetricFamily(
            "dnsqr_worker_standby_lag_records",
            "changelog records each standby state is behind its partition's end (last fetch)",
            labels=["partition"],
        )
        for partition, behind in sorted(({} if standbys is None else standbys.lags()).items()):
            standby_lag.add_metric([str(partition)], behind)
        yield standby_lag
        stream_time = GaugeMetricFamily(
            "dnsqr_worker_stream_time_seconds",
            "stream time of each ns-stats partition held here: start of its newest window (record time)",
            labels=["partition"],
        )
        for partition, ns_state in sorted(self.aggregation.states.items()):
            if ns_state.newest is not None:
                stream_time.add_metric([str(partition)], ns_state.newest)
        yield stream_time
        reasons = self.dead_letters.by_reason.copy()
        untold = c.dead_letters - sum(reasons.values())
        if untold > 0:  # sent by a path that bypassed the tally
            reasons["other"] += untold
        yield _counter(
            "dnsqr_worker_dead_letters",
            "raw containers sent to the dead-letter topic, by reason (dlq.error.type)",
            [((reason,), reasons[reason]) for reason in WORKER_REASONS],
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
        keys = GaugeMetricFamily(
            "dnsqr_worker_state_keys",
            "entries of the aggregator's state, per ns-stats partition held here: name servers (totals: "
            "Python objects; frozen_totals: compact, read-only) and (window, name server) pairs (windows, "
            "frozen_windows)",
            labels=["partition", "map"],
        )
        size = GaugeMetricFamily(
            "dnsqr_worker_state_bytes",
            "approximate memory of the aggregator's state per ns-stats partition, estimated from a sample",
            labels=["partition", "map"],
        )
        for (partition, part), (n, nbytes) in sorted(self.state.sizes.items()):
            keys.add_metric([str(partition), part], n)
            size.add_metric([str(partition), part], nbytes)
        yield keys
        yield size
        kinds = GaugeMetricFamily(
            "dnsqr_worker_state_failures",
            "failures by kind in the totals of the ns-stats partitions held here (they move on a rebalance)",
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


async def refresh_lag(app: faust.App, sources: set[str], state: WorkerState) -> None:
    """Ask the broker for the end offsets of the assigned partitions of the agents' source topics,
    ``sources``."""
    consumer: Any = app.consumer
    tps = [tp for tp in consumer.assignment() if tp.topic in sources]
    if not tps:
        state.lag = {}
        return
    committed: Mapping[TP, int | None] = consumer._committed_offset  # Faust's record of its commits
    unknown = [tp for tp in tps if committed.get(tp) is None]
    earliest = await consumer.earliest_offsets(*unknown) if unknown else {}
    state.lag = consumer_lag(await consumer.highwaters(*tps), committed, earliest)


def refresh_sizes(aggregation: Aggregation, state: WorkerState) -> None:
    """Keys and approximate bytes of the state of each ns-stats partition held here."""
    state.sizes = {
        (partition, part): size
        for partition, ns_state in list(aggregation.states.items())
        for part, size in state_size(ns_state).items()
    }


async def walk_totals(aggregation: Aggregation, state: WorkerState, chunk: int = WALK_CHUNK) -> None:
    """Failures by kind and failure-ratio jumps from the totals of the states held here.

    A pass over every name server costs 1-2 s of CPU a million (measured on the 2-core dev box), so it
    runs every :data:`NS_PERIOD_SECONDS` and lets the agents run between chunks of ``chunk`` name servers.
    The keys are listed first, as the aggregator adds name servers meanwhile (it never removes one from a
    state's totals; a state revoked meanwhile is walked as it was).
    """
    kinds: dict[str, int] = {}
    for ns_state in list(aggregation.states.values()):
        totals = ns_state.totals
        names = list(totals)
        for i in range(0, len(names), chunk):
            part = names[i : i + chunk]
            add_failures_by_kind(kinds, totals, part)
            state.jumps.add(totals, part)
            await asyncio.sleep(0)
    state.kinds = Counter(kinds)
    state.jumps.finish()


def install(
    app: faust.App,
    settings: Settings,
    counters: AgentCounters,
    tally: DeadLetterTally,
    aggregation: Aggregation,
) -> None:
    """Add ``/metrics``, the commit histogram and the refresh timers to ``app``: exported are the agents'
    ``counters``, the dead letters of ``tally`` (the output the agents send through) and ``aggregation``'s
    states.

    Call it before the app starts: it replaces the Monitor sensor (``app.monitor``, whose ``registry``
    holds the metrics).
    """
    registry = CollectorRegistry()
    app.monitor = MetricsMonitor(registry)
    state = WorkerState()
    sources = {settings.raw_topic, settings.stats_topic}
    registry.register(WorkerCollector(counters, state, tally, aggregation))

    @app.page("/metrics")
    class MetricsView(View):
        """This worker's metrics in Prometheus' text format."""

        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.timer(REFRESH_SECONDS)
    async def refresh_metrics() -> None:
        """Consumer lag and state sizes."""
        refresh_sizes(aggregation, state)
        try:
            await refresh_lag(app, sources, state)
        except Exception as exc:  # a broker that does not answer now is asked again next time
            log.debug("consumer lag not refreshed: %s", exc)

    @app.timer(NS_PERIOD_SECONDS)
    async def walk_ns_totals() -> None:
        """Failures by kind and the failure-ratio jumps of the last period."""
        await walk_totals(aggregation, state)
