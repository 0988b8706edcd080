"""The worker's Prometheus metrics: what the agents count reaches the exposition, the timers' sums over the
aggregator's state and the bounded per-name-server series (no broker: Faust's test_context, as in
test_agents.py)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter
from typing import Any

import faust
import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dnsqr_schemas.dead_letter import WORKER_REASONS, DeadLetterHeaders
from dnsqr_schemas.edns_failure import decode_failure
from processors.app import Parts, compose
from processors.delta_batch import decode_batch, encode_batch
from processors.metrics import (
    DeadLetterTally,
    Jump,
    MetricsMonitor,
    RatioJumps,
    WorkerState,
    consumer_lag,
    refresh_sizes,
    state_size,
    walk_totals,
)
from processors.settings import Settings
from processors.state import NsState
from tests import corpus
from tests.processors.helpers import expected_failures, raw_containers
from tests.processors.test_agents import RecordingOutput, ready, wait_for


def samples(app: faust.App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the app's registry, as Prometheus would scrape it: (name, labels) -> value."""
    text = generate_latest(app.monitor.registry).decode()  # type: ignore[attr-defined]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_agents_counts_reach_the_exposition_and_the_state_the_timers() -> None:
    case = "live_resolver"
    garbage = b"NMSG\x00\x02garbage"

    async def scenario() -> tuple[Parts, RecordingOutput, int]:
        out = RecordingOutput()
        parts = compose(Settings(app_id="test-metrics", web_enabled=False, window_seconds=60), output=out)
        parts.app.finalize()
        ready(parts)
        assert isinstance(parts.output, DeadLetterTally)
        assert parts.output.inner is out
        containers = raw_containers(case, 300)
        async with parts.app.agents["dnsqr-edns-filter"].test_context() as filt:
            await filt.put(garbage)
            for data in containers:
                await filt.put(data)
            await wait_for(lambda: parts.counters.containers == len(containers))
        async with parts.app.agents["dnsqr-ns-aggregator"].test_context() as agg:
            for (_key, value), headers, partition in out.sent[parts.settings.stats_topic]:
                await agg.put(value, partition=partition, headers=headers)
            await agg.put(b"not an ns-stats batch", partition=0)
        return parts, out, len(containers)

    parts, out, containers = asyncio.run(scenario())
    got = samples(parts.app)
    failures = sum(expected_failures(case).values())
    assert got[("dnsqr_worker_containers_in_total", ())] == containers + 1
    assert got[("dnsqr_worker_records_in_total", ())] == len(
        corpus.read_payloads(corpus.path(f"{case}.nmsg"))
    )
    assert got[("dnsqr_worker_records_out_total", (("output", "failures"),))] == failures
    stats = out.sent[parts.settings.stats_topic]
    rows = sum(len(decode_batch(value).name_servers) for (_, value), _, _ in stats)
    assert got[("dnsqr_worker_records_out_total", (("output", "ns-stats"),))] == rows
    assert got[("dnsqr_worker_drops_total", (("reason", "undecodable_ns_stats"),))] == 1
    # the dead letter under the reason its contract headers name; every reason exported, most at 0
    [(_, headers, _)] = out.sent[parts.settings.dlq_topic]
    reason = DeadLetterHeaders.decode(headers or []).error_type
    assert reason in WORKER_REASONS and reason != "other"
    dead = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "dnsqr_worker_dead_letters_total"
    }
    assert set(dead) == set(WORKER_REASONS)
    assert dead[reason] == 1
    assert sum(dead.values()) == 1
    # the timers' work, done by hand: state sizes per partition, failures by kind as the failure records say
    state = WorkerState()
    refresh_sizes(parts.aggregation, state)
    asyncio.run(walk_totals(parts.aggregation, state, chunk=7))  # several chunks
    name_servers = {ns for (_, value), _, _ in stats for ns in decode_batch(value).name_servers}
    assert sum(n for (_, part), (n, _) in state.sizes.items() if part == "totals") == len(name_servers)
    assert {p for p, _ in state.sizes} == set(parts.aggregation.states)
    assert all(nbytes > 0 for n, nbytes in state.sizes.values() if n)
    assert all(state.sizes[p, "frozen_windows"] == (0, 0) for p in parts.aggregation.states)  # none idle
    kinds = Counter(decode_failure(v)["kind"] for (_, v), _, _ in out.sent[parts.settings.failures_topic])
    assert state.kinds == kinds
    assert state.jumps.top == []  # one walk is only a baseline


def test_state_size_estimates_the_memory_a_state_takes() -> None:
    """The sampled estimate against what tracemalloc sees the state allocate (within 25%)."""
    windows, per_window = 6, 4000
    rows = [
        (
            f"198.51.{i // 250}.{i % 250}",
            start * 3600,
            5 + i % 300,
            i % 7,
            0,
            {"noopt": i % 7} if i % 7 else {},
            {},
        )
        for start in range(windows)
        for i in range(per_window)
    ]
    values = [encode_batch(0, rows[i : i + 4096]) for i in range(0, len(rows), 4096)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = NsState()
        for value in values:
            state.apply(decode_batch(value))
        state.changelog()  # the record cache's sets: empty once written
        state.snapshots()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = state_size(state)
    assert size["totals"][0] == per_window
    assert size["windows"][0] == windows * per_window
    estimate = size["totals"][1] + size["windows"][1]
    assert estimate == pytest.approx(used, rel=0.25)


def totals(failures: int, answered: int) -> list[Any]:
    """Counts of a name server's totals (``processors.state.Counts``)."""
    return [answered, failures, 0, {"noopt": failures} if failures else None, None]


def walk(jumps: RatioJumps, totals: dict[str, list[Any]]) -> list[Jump]:
    """One walk over ``totals``, in two parts as the worker's walk takes them in chunks."""
    names = list(totals)
    jumps.add(totals, names[: len(names) // 2])
    jumps.add(totals, names[len(names) // 2 :])
    return jumps.finish()


def test_ratio_jumps_compare_each_period_with_before_it() -> None:
    jumps = RatioJumps(k=20, min_answered=20)
    first = {
        "jumps": totals(10, 100),
        "steady": totals(50, 100),
        "thin": totals(0, 5),
        "quiet": totals(10, 100),
    }
    assert walk(jumps, first) == []
    second = {
        "jumps": totals(10 + 45, 100 + 50),  # 45 of 50 in the period, 10 of 100 before
        "steady": totals(50 + 10, 100 + 20),  # the same ratio as before
        "thin": totals(0 + 20, 5 + 20),  # too few answers before the period
        "quiet": totals(10 + 19, 100 + 19),  # too few answers in the period
        "new": totals(20, 100),  # no baseline yet
    }
    assert walk(jumps, second) == [Jump("jumps", 45 / 50, 10 / 100, 50)]
    # the next period: "jumps" keeps failing, "new" has a baseline now and rose more; the rest is idle
    third = {**second, "jumps": totals(55 + 30, 150 + 30), "new": totals(20 + 40, 100 + 40)}
    assert walk(jumps, third) == [
        Jump("new", 40 / 40, 20 / 100, 40),
        Jump("jumps", 30 / 30, 55 / 150, 30),
    ]


def test_ratio_jumps_export_only_the_k_largest_rises() -> None:
    jumps = RatioJumps(k=20, min_answered=20)
    names = [f"192.0.2.{i}" for i in range(50)]
    walk(jumps, {ns: totals(0, 100) for ns in names})
    top = walk(jumps, {ns: totals(i, 100 + 50) for i, ns in enumerate(names)})
    assert len(top) == 20
    assert [j.name_server for j in top] == names[::-1][:20]
    assert [j.recent for j in top] == [i / 50 for i in range(49, 29, -1)]


def test_consumer_lag_from_the_committed_offset_or_the_log_start() -> None:
    a, b, c = TP("raw", 0), TP("raw", 1), TP("ns-stats", 0)
    lag = consumer_lag({a: 100, b: 40, c: 7}, {a: 90, b: None, c: 9}, {b: 15})
    assert lag == {a: 10, b: 25, c: 0}


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


def letter(error_type: str) -> list[tuple[str, bytes]]:
    return DeadLetterHeaders(stage="worker", error="bad", error_type=error_type, topic="raw").encode()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (letter("truncated"), "truncated"),
        (letter("TruncatedError"), "other"),  # a class name is never a label
        (letter("_Bad"), "other"),
        ([("dnsqr-error-type", b"truncated")], "other"),  # not the contract's headers
    ],
)
def test_dead_letter_tally_counts_records_by_known_reason(
    headers: list[tuple[str, bytes]], reason: str
) -> None:
    out = RecordingOutput()
    tally = DeadLetterTally(out, "raw.dlq")
    asyncio.run(tally.send("raw.dlq", [(b"k", b"v"), (b"k", b"w")], source=None, headers=headers))
    asyncio.run(tally.send("failures", [(b"k", b"v")], source=None, partition=2))
    assert tally.by_reason == {reason: 2}
    assert len(out.sent["raw.dlq"]) == 2
    assert [p for _, _, p in out.sent["failures"]] == [2]
