"""The agents under Faust's test_context (memory store, no broker): filter, aggregator, views."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from dnsqr_schemas.dead_letter import DeadLetterHeaders
from processors.aggregator import AvroCodec, decode_snapshot
from processors.app import PipelineApp, Settings, create_app
from processors.failure_record import decode_failure
from processors.filter_agent import Headers, Record
from processors.views import rows, top, worst_page
from tests import corpus
from tests.processors import helpers
from tests.processors.helpers import expected_failures, raw_containers


class RecordingOutput:
    """Stands in for Kafka: keeps what the agents send, per topic."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[Record, Headers | None]]] = defaultdict(list)

    async def send(
        self, topic: str, records: Sequence[Record], *, source: Any, headers: Headers | None = None
    ) -> None:
        self.sent[topic].extend((r, headers) for r in records)


def make_app() -> tuple[PipelineApp, RecordingOutput]:
    app = create_app(Settings(app_id="test-processors", web_enabled=False, window_seconds=60))
    app.finalize()
    out = RecordingOutput()
    app.output = out
    return app, out


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", ["live_resolver", "edge_cases"])
def test_filter_agent_sends_failures_and_deltas(case: str) -> None:
    asyncio.run(_filter_agent_sends_failures_and_deltas(case))


async def _filter_agent_sends_failures_and_deltas(case: str) -> None:
    app, out = make_app()
    settings = app.settings
    containers = raw_containers(case, 250)
    agent = app.agents["dnsqr-edns-filter"]
    async with agent.test_context() as test_agent:
        for data in containers:
            await test_agent.put(data, key=b"sensor")
        await wait_for(lambda: app.counters.containers == len(containers))
    failures = out.sent[settings.failures_topic]
    assert Counter(decode_failure(v)["payload"] for (_, v), _ in failures) == expected_failures(case)
    assert app.counters.failures == len(failures)
    assert app.counters.records == len(helpers.read_payloads(corpus.path(f"{case}.nmsg")))
    assert app.counters.dead_letters == 0
    assert out.sent[settings.stats_topic], "deltas were sent"


def test_undecodable_container_goes_to_dead_letters_and_agent_carries_on() -> None:
    asyncio.run(_undecodable_container())


async def _undecodable_container() -> None:
    app, out = make_app()
    good = raw_containers("edge_cases", 1000)
    agent = app.agents["dnsqr-edns-filter"]
    async with agent.test_context() as test_agent:
        await test_agent.put(b"NMSG\x00\x02garbage", key=b"k1")
        for data in good:
            await test_agent.put(data)
        await wait_for(lambda: app.counters.containers == len(good))
    dlq = out.sent[app.settings.dlq_topic]
    assert len(dlq) == 1
    (key, value), headers = dlq[0]
    assert (key, value) == (b"k1", b"NMSG\x00\x02garbage")
    letter = DeadLetterHeaders.decode(headers or [])
    assert (letter.stage, letter.topic, letter.offset) == ("worker", app.settings.raw_topic, 0)
    assert letter.error_type.endswith("Error") and letter.error
    assert app.counters.dead_letters == 1
    assert len(out.sent[app.settings.failures_topic]) == sum(expected_failures("edge_cases").values())


def test_aggregator_tables_totals_windows_and_snapshots() -> None:
    asyncio.run(_aggregator_tables())


async def _aggregator_tables() -> None:
    app, _out = make_app()
    deltas = [
        {
            "name_server": "192.0.2.1",
            "window_start": 0,
            "edns_answered": 4,
            "failures": 2,
            "by_kind": {"noopt": 2},
            "timeouts": 1,
            "observations": {},
        },
        {
            "name_server": "192.0.2.1",
            "window_start": 60,
            "edns_answered": 6,
            "failures": 1,
            "by_kind": {"formerr": 1},
            "timeouts": 0,
            "observations": {},
        },
        {
            "name_server": "192.0.2.2",
            "window_start": 0,
            "edns_answered": 1,
            "failures": 1,
            "by_kind": {"noopt": 1},
            "timeouts": 0,
            "observations": {},
        },
        {
            "name_server": "192.0.2.1",
            "window_start": 0,
            "edns_answered": 2,
            "failures": 0,
            "by_kind": {},
            "timeouts": 0,
            "observations": {},
        },
    ]
    agent = app.agents["dnsqr-ns-aggregator"]
    tables = app.dnsqr_tables
    async with agent.test_context() as test_agent:
        for d in deltas:
            await test_agent.put(d, key=d["name_server"].encode())
    totals = dict(tables.totals.items())
    assert totals["192.0.2.1"] == {
        "edns_answered": 12,
        "failures": 3,
        "timeouts": 1,
        "by_kind": {"noopt": 2, "formerr": 1},
        "observations": {},
    }
    assert totals["192.0.2.2"]["failures"] == 1
    windows = {(r["name_server"], r["window_start"]): r for r in rows(tables, "window")}
    assert windows[("192.0.2.1", 0)]["edns_answered"] == 6
    assert windows[("192.0.2.1", 0)]["failures"] == 2
    assert windows[("192.0.2.1", 60)]["failures"] == 1
    # the views
    by_failures = top(rows(tables, "total"), by="failures")
    assert [r["name_server"] for r in by_failures] == ["192.0.2.1", "192.0.2.2"]
    assert [r["name_server"] for r in top(rows(tables, "total"), by="rate")] == ["192.0.2.2", "192.0.2.1"]
    assert top(rows(tables, "total"), by="rate", min_answered=2)[0]["name_server"] == "192.0.2.1"
    assert "192.0.2.1" in worst_page(by_failures)
    # the snapshots of what changed: latest value per (ns, window)
    snapshots = [decode_snapshot(v) for k, v in tables.take_snapshots(60)]
    assert len(snapshots) == 3
    latest = {(s["name_server"], s["window_start"]): s for s in snapshots}
    assert latest[("192.0.2.1", 0)]["total"]["failures"] == 3
    assert latest[("192.0.2.1", 0)]["window"]["failure_rate"] == pytest.approx(2 / 6)
    assert tables.take_snapshots(60) == []


def test_corpus_counts_reach_the_table() -> None:
    """Filter then aggregate a whole case in one event loop: the totals equal the reference counts."""

    async def scenario() -> dict[str, int]:
        app, out = make_app()
        containers = raw_containers("live_resolver", 300)
        async with app.agents["dnsqr-edns-filter"].test_context() as filt:
            for data in containers:
                await filt.put(data)
            await wait_for(lambda: app.counters.containers == len(containers))
        async with app.agents["dnsqr-ns-aggregator"].test_context() as agg:
            codec = AvroCodec("ns_stats")
            for (key, value), _ in out.sent[app.settings.stats_topic]:
                await agg.put(codec.loads(value), key=key)
        return {ns: c["failures"] for ns, c in app.dnsqr_tables.totals.items() if c["failures"]}

    assert asyncio.run(scenario()) == corpus.expected_counts("live_resolver")
