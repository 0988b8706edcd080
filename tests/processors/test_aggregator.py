"""The aggregator around the per-partition states: records wait while a partition's state is restored,
revoked partitions are dropped, exactly_once replays are skipped, redelivered records are dropped (Faust's
test_context), and a restore reads a real changelog topic (integration)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from faust.types import TP

from processors.aggregator import Aggregation, read_changelog
from processors.app import compose
from processors.delta_batch import decode_batch, encode_batch
from processors.settings import Settings
from processors.state import NsState

NS = "192.0.2.1"


def value(failures: int, start: int = 0, part: int = 0) -> bytes:
    return encode_batch(part, [(NS, start, failures, failures, 0, {"noopt": failures}, {})])


def test_records_wait_while_their_partition_is_restored_then_apply_in_order() -> None:
    aggregation = Aggregation(0, marks=True)
    restoring = aggregation.begin_restore([0, 1])
    aggregation.offer(0, 10, value(2))
    aggregation.offer(0, 11, value(3))
    aggregation.offer(0, 9, value(5))  # applied already: the restored state holds it
    assert aggregation.states == {}
    recovered = NsState()  # what the changelog held: records up to offset 9
    recovered.apply(decode_batch(value(5)), 9)
    recovered.committed(9)
    assert aggregation.restored(restoring, {0: recovered, 1: NsState()}) == [0, 1]
    assert aggregation.states[0].totals[NS][1] == 10
    assert aggregation.replayed == 1


def test_a_partition_is_paused_once_its_waiting_records_reach_the_bound() -> None:
    """Each partition's waiting records are bounded: the record that reaches the bound asks for a pause
    (once), records delivered after it still wait, and the restore says where to fetch on from: the record
    after the last one that waited. A partition revoked while paused is forgotten."""
    size = len(value(1))
    aggregation = Aggregation(0, marks=True, restore_buffer=2 * size)
    restoring = aggregation.begin_restore([0, 1, 2])
    assert aggregation.offer(0, 10, value(1)) is False
    assert aggregation.offer(0, 11, value(1)) is True, "the bound is reached: pause"
    assert aggregation.offer(0, 12, value(1)) is False, "delivered before the pause took effect: waits"
    assert aggregation.offer(1, 4, value(1)) is False, "another partition's records count apart"
    assert aggregation.offer(2, 7, value(1)) is False
    assert aggregation.offer(2, 8, value(1)) is True
    aggregation.drop([2])
    assert aggregation.pauses == 2
    assert aggregation.restored(restoring, {0: NsState(), 1: NsState()}) == [0, 1]
    assert restoring.resume == {0: 13}, "partition 1 was not paused; partition 2 was revoked"
    assert aggregation.states[0].totals[NS][1] == 3, "every record that waited was applied"


def test_no_bound_pauses_nothing() -> None:
    aggregation = Aggregation(0, marks=False)
    restoring = aggregation.begin_restore([0])
    assert not any(aggregation.offer(0, offset, value(1)) for offset in range(1000))
    aggregation.restored(restoring, {0: NsState()})
    assert restoring.resume == {} and aggregation.pauses == 0


def test_a_restore_finishing_after_its_partition_was_revoked_is_discarded() -> None:
    aggregation = Aggregation(0, marks=False)
    first = aggregation.begin_restore([0, 1])
    aggregation.drop([0])
    assert not first.stop.is_set(), "partition 1 still needs the restore"
    aggregation.offer(0, 5, value(1))  # revoked: its next owner applies it
    assert aggregation.restored(first, {0: NsState(), 1: NsState()}) == [1]
    assert set(aggregation.states) == {1}
    # assigned again and restored anew: the old restore's late result for it does not count
    second = aggregation.begin_restore([0])
    assert aggregation.restored(first, {0: NsState()}) == []
    aggregation.drop([0, 1])
    assert second.stop.is_set() and aggregation.states == {}


def test_revoked_states_are_kept_until_the_next_assignment() -> None:
    """A revoked partition's state waits for the next assignment with its last commit's offset; one the
    assignment does not give back is dropped (its late deltas still counted), one never committed is not
    kept (it would need its changelog anyway), and a restoring one stops."""
    aggregation = Aggregation(3600, marks=False)
    aggregation.restored(aggregation.begin_restore([0, 1, 2]), {p: NsState(3600) for p in (0, 1, 2)})
    aggregation.offer(0, 10, value(2))
    aggregation.offer(1, 4, value(1, start=7200))
    aggregation.offer(1, 5, value(1, start=0))  # late: window 0 was freed by window 7200
    aggregation.last_commit.update({0: 11, 1: 6})  # their commits; partition 2 never committed
    restoring = aggregation.begin_restore([3])
    aggregation.keep([0, 1, 2, 3])
    assert aggregation.states == {} and aggregation.restoring == {} and restoring.stop.is_set()
    assert {p: offset for p, (_, offset) in aggregation.kept.items()} == {0: 11, 1: 6}
    assert aggregation.late_deltas == 1
    taken = aggregation.take_kept([0, 2, 3])
    assert list(taken) == [0] and taken[0][0].totals[NS][1] == 2
    assert (
        aggregation.kept == {} and aggregation.late_deltas == 1
    )  # partition 1's state went, its count stays
    # a partition being restored has no last commit until its state commits again
    aggregation.begin_restore([0])
    assert 0 not in aggregation.last_commit


def test_at_least_once_applies_what_comes() -> None:
    aggregation = Aggregation(0, marks=False)
    aggregation.restored(aggregation.begin_restore([0]), {0: NsState()})
    for _ in range(2):
        aggregation.offer(0, 10, value(2))
    assert aggregation.states[0].totals[NS][1] == 4
    assert not aggregation.states[0].applied_offsets


def test_a_record_delivered_again_is_not_applied_again() -> None:
    """Faust delivers records again after a rebalance or a seek back (processors/commit_guard.py); the
    consumer knows which offsets were processed, and the agent skips those."""

    async def scenario() -> tuple[list[Any], int, int]:
        parts = compose(Settings(app_id="test-aggregator", web_enabled=False, window_seconds=60))
        app = parts.app
        app.finalize()
        parts.aggregation.restored(parts.aggregation.begin_restore([0]), {0: NsState()})
        seen: set[int] = set()
        asked: list[tuple[TP, int]] = []

        def done(tp: TP, offset: int) -> bool:
            asked.append((tp, offset))
            return offset in seen

        app.consumer.done = done  # type: ignore[method-assign]
        agent = parts.app.agents["dnsqr-ns-aggregator"]
        async with agent.test_context() as test_agent:
            for failures in (2, 3):
                event = await test_agent.put(value(failures), partition=0)
                seen.add(event.message.offset)
            test_agent.sent_offset = min(seen)  # the same record again, as after a seek back
            again = await test_agent.put(value(2), partition=0)
            assert again.message.offset == min(seen)
            test_agent.sent_offset = max(seen) + 1
            await test_agent.put(b"not an ns-stats record", partition=0)
        counters = parts.counters
        return parts.aggregation.states[0].totals[NS], counters.redelivered_stats, counters.bad_stats

    totals, redelivered, bad = asyncio.run(scenario())
    assert totals[:2] == [5, 5]
    assert totals[3] == {"noopt": 5}
    assert (redelivered, bad) == (1, 1)


@pytest.mark.integration
def test_read_changelog_restores_what_was_written(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """What the state wrote, flush after flush, read back from a compacted topic: the same state, per
    partition; a set stop ends the read, and so does a record this version cannot read (raised)."""
    topic = new_topic(2, {"cleanup.policy": "compact"}, prefix="test-changelog")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    states = {p: NsState() for p in (0, 1)}
    written: dict[int, list[tuple[bytes, bytes | None]]] = {0: [], 1: []}
    for i in range(1, 6):
        for p, state in states.items():
            rows = [(f"192.0.2.{j}", 60 * (i % 2), 1, p, 0, {}, {}) for j in range(i * 10)]
            state.apply(decode_batch(encode_batch(0, rows)), 10 + i)
            for key, v in state.changelog():
                producer.produce(topic, v, key, partition=p)
                written[p].append((key, v))
    assert producer.flush(30) == 0
    config = {"bootstrap.servers": kafka_bootstrap}
    read = read_changelog(config, topic, [0, 1], NsState, threading.Event(), f"{topic}-test")
    assert read is not None
    got, records = read
    assert records == len(written[0]) + len(written[1])
    for p, state in states.items():
        assert got[p].totals == state.totals
        assert got[p].windows == state.windows
        assert (
            (got[p].base, got[p].applied_offsets)
            == (state.base, state.applied_offsets)
            == (0, {11, 12, 13, 14, 15})
        )
    # resumed on a state that has the first records (a checkpoint's), from their end: the same state
    first = NsState()
    for key, v in written[0][:25]:
        first.load(key, v)
    resumed = read_changelog(
        config, topic, [0], NsState, threading.Event(), f"{topic}-test", resume={0: (first, 25)}
    )
    assert resumed is not None
    assert resumed[0][0] is first and resumed[1] == len(written[0]) - 25
    assert (first.totals, first.windows) == (states[0].totals, states[0].windows)
    stopped = threading.Event()
    stopped.set()
    assert read_changelog(config, topic, [0], NsState, stopped, f"{topic}-test") is None
    # each partition has a reader of its own: one's error ends the read, raised
    producer.produce(topic, b"\x01[]", b"Znot a key of this version", partition=1)
    assert producer.flush(30) == 0
    with pytest.raises(ValueError, match="unknown changelog key"):
        read_changelog(config, topic, [0, 1], NsState, threading.Event(), f"{topic}-test")
