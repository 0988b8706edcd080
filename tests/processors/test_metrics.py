"""The worker's Prometheus metrics: what the agents count reaches the exposition, the timers' sums and the
bounded per-name-server series (no broker: Faust's test_context, as in test_agents.py)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processors.aggregator import AvroCodec
from processors.app import PipelineApp, Settings, create_app
from processors.failure_record import decode_failure
from processors.filter_agent import Headers, Record
from processors.metrics import (
    DEAD_LETTER_REASONS,
    DeadLetterTally,
    Jump,
    MetricsMonitor,
    RatioJumps,
    WorkerState,
    approximate_bytes,
    consumer_lag,
    refresh_tables,
    walk_totals,
)
from tests import corpus
from tests.processors.helpers import expected_failures, raw_containers


class RecordingOutput:
    """Stands in for Kafka: keeps what the agents send, per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[Record, Headers | None]]] = defaultdict(list)

    async def send(
        self, topic: str, records: Sequence[Record], *, source: Any, headers: Headers | None = None
    ) -> None:
        self.sent[topic].extend((r, headers) for r in records)


def samples(app: PipelineApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the app's registry, as Prometheus would scrape it: (name, labels) -> value."""
    text = generate_latest(app.monitor.registry).decode()  # type: ignore[attr-defined]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_agents_counts_reach_the_exposition_and_the_tables_the_timers() -> None:
    case = "live_resolver"
    garbage = b"NMSG\x00\x02garbage"

    async def scenario() -> tuple[PipelineApp, RecordingOutput, int]:
        app = create_app(Settings(app_id="test-metrics", web_enabled=False, window_seconds=60))
        app.finalize()
        out = RecordingOutput()
        assert isinstance(app.output, DeadLetterTally)
        app.output.inner = out
        containers = raw_containers(case, 300)
        async with app.agents["dnsqr-edns-filter"].test_context() as filt:
            await filt.put(garbage)
            for data in containers:
                await filt.put(data)
            await wait_for(lambda: app.counters.containers == len(containers))
        async with app.agents["dnsqr-ns-aggregator"].test_context() as agg:
            codec = AvroCodec("ns_stats")
            for (key, value), _ in out.sent[app.settings.stats_topic]:
                await agg.put(codec.loads(value), key=key)
        return app, out, len(containers)

    app, out, containers = asyncio.run(scenario())
    got = samples(app)
    failures = sum(expected_failures(case).values())
    assert got[("dnsqr_worker_containers_in_total", ())] == containers + 1
    assert got[("dnsqr_worker_records_in_total", ())] == len(
        corpus.read_payloads(corpus.path(f"{case}.nmsg"))
    )
    assert got[("dnsqr_worker_records_out_total", (("output", "failures"),))] == failures
    assert got[("dnsqr_worker_records_out_total", (("output", "ns-stats"),))] == len(
        out.sent[app.settings.stats_topic]
    )
    # the dead letter under the exception type its headers name; every reason is exported, most at 0
    [(_, headers)] = out.sent[app.settings.dlq_topic]
    reason = dict(headers or ())["dnsqr-error-type"].decode()
    dead = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "dnsqr_worker_dead_letters_total"
    }
    assert set(dead) == set(DEAD_LETTER_REASONS)
    assert dead[reason] == 1
    assert sum(dead.values()) == 1
    # the timers' work, done by hand: table sizes, failures by kind as the failure records say
    state = WorkerState()
    refresh_tables(app, state)
    walk_totals(app, state)
    name_servers = {key for (key, _), _ in out.sent[app.settings.stats_topic]}
    assert state.tables["ns-totals"][0] == len(name_servers)
    assert state.tables["ns-totals"][1] > 0
    kinds = Counter(decode_failure(v)["kind"] for (_, v), _ in out.sent[app.settings.failures_topic])
    assert state.kinds == kinds
    assert state.jumps.top == []  # one walk is only a baseline


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def totals(failures: int, answered: int, **by_kind: int) -> dict[str, Any]:
    return {"failures": failures, "edns_answered": answered, "by_kind": by_kind}


def test_ratio_jumps_compare_each_period_with_before_it() -> None:
    jumps = RatioJumps(k=20, min_answered=20)
    first = {
        "jumps": totals(10, 100),
        "steady": totals(50, 100),
        "thin": totals(0, 5),
        "quiet": totals(10, 100),
    }
    assert jumps.update(first.items()) == []
    second = {
        "jumps": totals(10 + 45, 100 + 50),  # 45 of 50 in the period, 10 of 100 before
        "steady": totals(50 + 10, 100 + 20),  # the same ratio as before
        "thin": totals(0 + 20, 5 + 20),  # too few answers before the period
        "quiet": totals(10 + 19, 100 + 19),  # too few answers in the period
        "new": totals(20, 100),  # no baseline yet
    }
    assert jumps.update(second.items()) == [Jump("jumps", 45 / 50, 10 / 100, 50)]
    # the next period: "jumps" keeps failing, "new" has a baseline now and rose more; the rest is idle
    third = {**second, "jumps": totals(55 + 30, 150 + 30), "new": totals(20 + 40, 100 + 40)}
    assert jumps.update(third.items()) == [
        Jump("new", 40 / 40, 20 / 100, 40),
        Jump("jumps", 30 / 30, 55 / 150, 30),
    ]


def test_ratio_jumps_export_only_the_k_largest_rises() -> None:
    jumps = RatioJumps(k=20, min_answered=20)
    names = [f"192.0.2.{i}" for i in range(50)]
    jumps.update((ns, totals(0, 100)) for ns in names)
    top = jumps.update((ns, totals(i, 100 + 50)) for i, ns in enumerate(names))
    assert len(top) == 20
    assert [j.name_server for j in top] == names[::-1][:20]
    assert [j.recent for j in top] == [i / 50 for i in range(49, 29, -1)]


def test_consumer_lag_from_the_committed_offset_or_the_log_start() -> None:
    a, b, c = TP("raw", 0), TP("raw", 1), TP("ns-stats", 0)
    lag = consumer_lag({a: 100, b: 40, c: 7}, {a: 90, b: None, c: 9}, {b: 15})
    assert lag == {a: 10, b: 25, c: 0}


def test_approximate_bytes_scales_a_sample_to_the_table() -> None:
    store = {f"ns{i:03d}": {"failures": i % 10} for i in range(1000)}
    one = len(json.dumps(["ns000", {"failures": 0}]))
    assert approximate_bytes(store, sample=64) == one * 1000
    assert approximate_bytes({}) == 0


def test_monitor_times_only_commits_that_committed() -> None:
    async def scenario() -> MetricsMonitor:
        monitor = MetricsMonitor(CollectorRegistry())
        for committed in (True, False, True):
            state = monitor.on_commit_initiated(None)  # type: ignore[arg-type]
            if committed:
                monitor.on_tp_commit({TP("raw", 0): 5})
            monitor.on_commit_completed(None, state)  # type: ignore[arg-type]
        return monitor

    monitor = asyncio.run(scenario())
    assert monitor.registry.get_sample_value("dnsqr_worker_commit_duration_seconds_count") == 2
    assert monitor.registry.get_sample_value("dnsqr_worker_commit_duration_seconds_sum") == pytest.approx(
        sum(list(monitor.commit_latency)[i] for i in (0, 2))
    )


@pytest.mark.parametrize(
    ("error_type", "reason"), [(b"TruncatedError", "TruncatedError"), (b"KeyError", "other")]
)
def test_dead_letter_tally_counts_records_by_known_reason(error_type: bytes, reason: str) -> None:
    out = RecordingOutput()
    tally = DeadLetterTally(out, "raw.dlq")
    asyncio.run(
        tally.send(
            "raw.dlq", [(b"k", b"v"), (b"k", b"w")], source=None, headers=[("dnsqr-error-type", error_type)]
        )
    )
    asyncio.run(tally.send("failures", [(b"k", b"v")], source=None))
    assert tally.by_reason == {reason: 2}
    assert len(out.sent["raw.dlq"]) == 2 and len(out.sent["failures"]) == 1
