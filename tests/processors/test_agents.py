"""The agents under Faust's test_context (no broker): filter, aggregator, views."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from dnsqr_schemas.dead_letter import DeadLetterHeaders
from dnsqr_schemas.edns_failure import decode_failure
from dnsqr_schemas.value_format import ValueFormat, confluent_prefix
from processors.app import Parts, compose
from processors.delta_batch import decode_batch, encode_batch
from processors.filter_agent import Headers, KeyPartitioner, Record
from processors.framed_output import FramedOutput
from processors.settings import Settings
from processors.snapshots import SnapshotEncoder, decode_snapshot
from processors.state import NsState
from processors.views import rows, top
from tests import corpus
from tests.processors import helpers
from tests.processors.helpers import expected_failures, raw_containers

PARTITIONS = 4


class RecordingOutput:
    """Stands in for Kafka (topics of :data:`PARTITIONS` partitions): keeps what the agents send, per
    topic, with the partition each record would go to."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[Record, Headers | None, int]]] = defaultdict(list)
        self.partitioners: dict[str, KeyPartitioner] = {}

    async def partitioner(self, topic: str) -> KeyPartitioner:
        return self.partitioners.setdefault(topic, KeyPartitioner(PARTITIONS))

    async def send(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        source: Any,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        of_key = await self.partitioner(topic)
        for key, value in records:
            p = partition if partition is not None else of_key(key or b"")
            self.sent[topic].append(((key, value), headers, p))

    async def send_for_commit(
        self, tp: Any, topic: str, records: Sequence[Record], *, partition: int | None = None
    ) -> list[Any]:
        await self.send(topic, records, source=tp, partition=partition)
        return []


def make_app() -> tuple[Parts, RecordingOutput]:
    out = RecordingOutput()
    parts = compose(Settings(app_id="test-processors", web_enabled=False, window_seconds=60), output=out)
    parts.app.finalize()
    return parts, out


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", ["live_resolver", "edge_cases"])
def test_filter_agent_sends_failures_and_deltas(case: str) -> None:
    asyncio.run(_filter_agent_sends_failures_and_deltas(case))


async def _filter_agent_sends_failures_and_deltas(case: str) -> None:
    parts, out = make_app()
    settings = parts.settings
    containers = raw_containers(case, 250)
    agent = parts.app.agents["dnsqr-edns-filter"]
    async with agent.test_context() as test_agent:
        for data in containers:
            await test_agent.put(data, key=b"sensor")
        await wait_for(lambda: parts.counters.containers == len(containers))
    failures = out.sent[settings.failures_topic]
    assert Counter(decode_failure(v)["payload"] for (_, v), _, _ in failures) == expected_failures(case)
    assert parts.counters.failures == len(failures)
    assert parts.counters.records == len(helpers.read_payloads(corpus.path(f"{case}.nmsg")))
    assert parts.counters.dead_letters == 0
    stats = out.sent[settings.stats_topic]
    assert stats, "deltas were sent"
    failures_by_ns: Counter[str] = Counter()
    for (key, value), headers, partition in stats:
        assert key is None
        assert not headers
        batch = decode_batch(value)
        # every row's name server belongs to the partition its record went to, as a keyed record would
        assert {KeyPartitioner(PARTITIONS)(ns.encode()) for ns in batch.name_servers} == {partition}
        failures_by_ns.update(dict(zip(batch.name_servers, batch.failures, strict=True)))
    assert {ns: n for ns, n in failures_by_ns.items() if n} == corpus.expected_counts(case)


def test_undecodable_container_goes_to_dead_letters_and_agent_carries_on() -> None:
    asyncio.run(_undecodable_container())


async def _undecodable_container() -> None:
    parts, out = make_app()
    good = raw_containers("edge_cases", 1000)
    agent = parts.app.agents["dnsqr-edns-filter"]
    async with agent.test_context() as test_agent:
        await test_agent.put(b"NMSG\x00\x02garbage", key=b"k1")
        for data in good:
            await test_agent.put(data)
        await wait_for(lambda: parts.counters.containers == len(good))
    dlq = out.sent[parts.settings.dlq_topic]
    assert len(dlq) == 1
    (key, value), headers, _ = dlq[0]
    assert (key, value) == (b"k1", b"NMSG\x00\x02garbage")
    letter = DeadLetterHeaders.decode(headers or [])
    assert (letter.stage, letter.topic, letter.offset) == ("worker", parts.settings.raw_topic, 0)
    assert letter.error_type == "truncated" and letter.error  # the header declares more body than follows
    assert parts.counters.dead_letters == 1
    assert len(out.sent[parts.settings.failures_topic]) == sum(expected_failures("edge_cases").values())


def ready(parts: Parts) -> None:
    """Give the aggregator empty states for every partition, as a restore from an empty changelog would."""
    aggregation = parts.aggregation
    restoring = aggregation.begin_restore(range(PARTITIONS))
    states = {p: NsState() for p in range(PARTITIONS)}
    assert aggregation.restored(restoring, states) == list(range(PARTITIONS))


def row(ns: str, start: int, answered: int, failures: int, timeouts: int = 0, **by_kind: int) -> Any:
    return (ns, start, answered, failures, timeouts, by_kind, {})


def test_aggregator_state_views_and_snapshots() -> None:
    asyncio.run(_aggregator_state())


async def _aggregator_state() -> None:
    parts, _out = make_app()
    ready(parts)
    partition_of = KeyPartitioner(PARTITIONS)
    batches = [
        [row("192.0.2.1", 0, 4, 2, 1, noopt=2), row("192.0.2.1", 60, 6, 1, formerr=1)],
        [row("192.0.2.2", 0, 1, 1, noopt=1)],
        [row("192.0.2.1", 0, 2, 0)],
    ]
    agent = parts.app.agents["dnsqr-ns-aggregator"]
    async with agent.test_context() as test_agent:
        for rows_ in batches:
            p = partition_of(rows_[0][0].encode())
            await test_agent.put(encode_batch(0, rows_), partition=p)
    states = parts.aggregation.states
    totals = {ns: c for state in states.values() for ns, c in state.totals.items()}
    assert totals["192.0.2.1"] == [12, 3, 1, {"noopt": 2, "formerr": 1}, None]
    assert totals["192.0.2.2"][:3] == [1, 1, 0]
    windows = {(r[0], r[1]): r[2] for r in rows(parts.aggregation, "window")}
    assert windows[("192.0.2.1", 0)][:2] == [6, 2]
    assert windows[("192.0.2.1", 60)][:2] == [6, 1]
    # the views
    by_failures = top(rows(parts.aggregation, "total"), by="failures")
    assert [r["name_server"] for r in by_failures] == ["192.0.2.1", "192.0.2.2"]
    assert by_failures[0]["by_kind"] == {"noopt": 2, "formerr": 1}
    assert by_failures[0]["failure_rate"] == pytest.approx(3 / 12)
    by_rate = top(rows(parts.aggregation, "total"), by="rate")
    assert [r["name_server"] for r in by_rate] == ["192.0.2.2", "192.0.2.1"]
    assert top(rows(parts.aggregation, "total"), by="rate", min_answered=2)[0]["name_server"] == "192.0.2.1"
    assert top(rows(parts.aggregation, "window"), n=1)[0] | {"failure_rate": 0} == {
        "name_server": "192.0.2.1",
        "window_start": 0,
        "edns_answered": 6,
        "failures": 2,
        "failure_rate": 0,
        "by_kind": {"noopt": 2},
        "timeouts": 1,
        "observations": {},
    }
    # the snapshots of what changed: one per (name server, window), with the latest totals
    encode = SnapshotEncoder(60)
    snapshots = [
        decode_snapshot(encode(ns, start, window, total))
        for state in states.values()
        for ns, start, window, total in state.snapshots()
    ]
    assert len(snapshots) == 3
    latest = {(s["name_server"], s["window_start"]): s for s in snapshots}
    assert latest[("192.0.2.1", 0)]["total"]["failures"] == 3
    assert latest[("192.0.2.1", 60)]["total"]["failures"] == 3
    assert latest[("192.0.2.1", 0)]["window"]["failure_rate"] == pytest.approx(2 / 6)
    assert all(state.snapshots() == [] for state in states.values())


def test_corpus_counts_reach_the_state() -> None:
    """Filter then aggregate a whole case in one event loop: the totals equal the reference counts."""

    async def scenario() -> dict[str, int]:
        parts, out = make_app()
        ready(parts)
        containers = raw_containers("live_resolver", 300)
        async with parts.app.agents["dnsqr-edns-filter"].test_context() as filt:
            for data in containers:
                await filt.put(data)
            await wait_for(lambda: parts.counters.containers == len(containers))
        async with parts.app.agents["dnsqr-ns-aggregator"].test_context() as agg:
            for (_key, value), headers, partition in out.sent[parts.settings.stats_topic]:
                await agg.put(value, partition=partition, headers=headers)
        return {
            ns: c[1] for state in parts.aggregation.states.values() for ns, c in state.totals.items() if c[1]
        }

    assert asyncio.run(scenario()) == corpus.expected_counts("live_resolver")


@pytest.mark.parametrize("failures_format", ["avro", "json"])
def test_failures_go_out_in_the_configured_format(failures_format: str) -> None:
    asyncio.run(_configured_format(failures_format))


async def _configured_format(failures_format: str) -> None:
    """With a registry the agents' Avro bodies go out framed with the registered id; with JSON failures as
    JSON; the records are the same."""
    out = RecordingOutput()
    registry = "mock://agents" if failures_format == "avro" else ""
    settings = Settings(
        app_id="test-formats",
        web_enabled=False,
        window_seconds=60,
        schema_registry=registry,
        failures_format=failures_format,
    )
    formats = settings.topic_formats(SchemaRegistryClient.new_client({"url": "mock://agents"}))
    parts = compose(settings, output=out, formats=formats)
    parts.app.finalize()
    containers = raw_containers("live_resolver", 250)
    async with parts.app.agents["dnsqr-edns-filter"].test_context() as test_agent:
        for data in containers:
            await test_agent.put(data, key=b"sensor")
        await wait_for(lambda: parts.counters.containers == len(containers))
    values = [v for (_, v), _, _ in out.sent[settings.failures_topic]]
    if failures_format == "avro":
        prefix = confluent_prefix(formats.failures.schema_id)
        assert all(v.startswith(prefix) for v in values)
    assert Counter(formats.failures.decode(v)["payload"] for v in values) == expected_failures(
        "live_resolver"
    )


def test_framed_output_frames_the_commit_path_too() -> None:
    async def send() -> RecordingOutput:
        out = RecordingOutput()
        framed = FramedOutput(out, {"counts": ValueFormat("ns_counts", "confluent", 3)})
        await framed.send_for_commit(None, "counts", [(b"ns", b"body")])
        await framed.send("other", [(b"ns", b"body")], source=None)
        assert (await framed.partitioner("counts")).count == PARTITIONS  # the rest is the output's
        return out

    out = asyncio.run(send())
    assert [r for r, _, _ in out.sent["counts"]] == [(b"ns", b"\x00\x00\x00\x00\x03body")]
    assert [r for r, _, _ in out.sent["other"]] == [(b"ns", b"body")]
