"""CommitGuardConsumer's commit guard and read offsets, and the filter agent's Redelivery, without a broker.

The consumer is built the way the app builds it but never started; its seeks are recorded instead of sent,
and deliveries are made by calling its callback the way Faust's drain loop does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from processors.app import create_app
from processors.commit_guard import CommitGuardConsumer, first_undelivered
from processors.filter_agent import Redelivery
from processors.settings import Settings

RAW = TP("raw", 1)
GENERATION = 3


@dataclass
class FakeMessage:
    tp: TP
    offset: int
    generation_id: int | None = GENERATION


@dataclass
class FakeEvent:
    message: FakeMessage


@dataclass
class Harness:
    consumer: CommitGuardConsumer
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    handed: list[int] = field(default_factory=list)


def make_consumer(processing_guarantee: str = "at_least_once") -> Harness:
    app = create_app(
        Settings(app_id="test-consumer", web_enabled=False, processing_guarantee=processing_guarantee)
    )
    app.consumer_generation_id = GENERATION
    handed: list[int] = []

    async def on_message(message: Any) -> None:
        handed.append(message.offset)

    async def nothing(*_: Any) -> None:
        return None

    consumer = CommitGuardConsumer(
        app.transport, callback=on_message, on_partitions_revoked=nothing, on_partitions_assigned=nothing
    )
    harness = Harness(consumer, handed=handed)

    async def seek(tp: TP, offset: int) -> None:
        harness.seeks.append((tp, offset))
        consumer._read_offset[tp] = offset

    consumer.seek = seek  # type: ignore[method-assign]
    return harness


def ack(consumer: CommitGuardConsumer, *offsets: int) -> None:
    for offset in offsets:
        consumer._acked[RAW].append(offset)
        consumer._acked_index[RAW].add(offset)


async def deliver(consumer: CommitGuardConsumer, offset: int) -> None:
    await consumer.callback(FakeMessage(RAW, offset))


def test_contiguous_acks_commit_as_faust_does() -> None:
    async def scenario() -> None:
        h = make_consumer()
        h.consumer._committed_offset[RAW] = 24
        ack(h.consumer, 24, 25, 26)
        assert h.consumer._new_offset(RAW) == 27
        assert h.seeks == []

    asyncio.run(scenario())


def test_a_record_never_delivered_is_not_committed_past_and_is_fetched_again() -> None:
    """Faust alone would commit 27 here (its check lets one missing offset through): the loss."""

    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        c._committed_offset[RAW] = 24
        for offset in (25, 26):
            await deliver(c, offset)
        ack(c, 25, 26)
        assert c._new_offset(RAW) is None
        await asyncio.sleep(0)
        assert h.seeks == [(RAW, 24)]
        # rate-limited: the next commit does not seek again at once
        assert c._new_offset(RAW) is None
        await asyncio.sleep(0)
        assert h.seeks == [(RAW, 24)]
        # the refetch delivers 24; until it is acknowledged nothing is committed, and no new seek is sent
        await deliver(c, 24)
        c.holes[RAW].sent -= 60
        assert c._new_offset(RAW) is None
        await asyncio.sleep(0)
        assert h.seeks == [(RAW, 24)]
        ack(c, 24)
        assert c._new_offset(RAW) == 27
        assert RAW not in c.holes

    asyncio.run(scenario())


def test_a_hole_the_broker_skips_after_the_seek_is_committed_over() -> None:
    """Transaction markers: after seeking back, the first record delivered is beyond the hole."""

    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        c._committed_offset[RAW] = 100
        for offset in (101, 102):
            await deliver(c, offset)
        ack(c, 101, 102)
        assert c._new_offset(RAW) is None
        await asyncio.sleep(0)
        assert h.seeks == [(RAW, 100)]
        await deliver(c, 101)  # offset 100 was a marker: the broker starts at 101
        assert c._new_offset(RAW) == 103

    asyncio.run(scenario())


def test_new_records_from_an_earlier_fetch_prove_nothing() -> None:
    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        c._committed_offset[RAW] = 24
        await deliver(c, 25)
        ack(c, 25)
        assert c._new_offset(RAW) is None
        await deliver(c, 26)  # fetched before the seek: beyond everything delivered so far
        hole = c.holes[RAW]
        assert hole.proven_to is None and not hole.refetched
        assert c._new_offset(RAW) is None

    asyncio.run(scenario())


def test_perform_seek_keeps_the_read_offset_of_records_already_delivered() -> None:
    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        for offset in range(14, 23):
            await deliver(c, offset)

        async def seek_to_committed() -> dict[TP, int]:
            return {RAW: 14}

        c.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
        await c.perform_seek()
        # Faust would set 14: 14..21 refetched would be dropped but 22 delivered twice, and 23 seen as a
        # jump from 14 (a gap 15-22 committed as if processed)
        assert c._read_offset[RAW] == 22
        assert c._committed_offset[RAW] == 14

    asyncio.run(scenario())


def test_deliveries_stamped_with_an_older_generation_do_not_count() -> None:
    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        await c.callback(FakeMessage(RAW, 30, generation_id=GENERATION - 1))
        assert RAW not in c.delivered

    asyncio.run(scenario())


def test_first_undelivered_of_a_batch() -> None:
    batch = [40, 41, 42, 43]
    assert first_undelivered(batch, None, None) == 40  # nothing delivered: the whole batch
    assert first_undelivered(batch, 41, 41) == 42  # the loop stopped after 41
    assert first_undelivered(batch, 43, 43) is None
    # the flow's suspension cut the hand-over of 42 short, but the loop set its read offset to 42
    assert first_undelivered(batch, 41, 42) == 42
    # records under the read offset are dropped by the loop on purpose (delivered before a seek back)
    assert first_undelivered([30, 31], None, 35) is None
    assert first_undelivered([30, 31, 36], None, 35) == 36


@dataclass
class FakeRecord:
    offset: int


def test_records_fetched_but_not_delivered_are_fetched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's getmany stops handing over a batch when the flow stops: what it dropped is sought back to,
    once the loop asks for the next batch; a partition delivered in full or no longer assigned is not."""
    other, gone = TP("raw", 2), TP("raw", 3)
    fetched = {RAW: [FakeRecord(o) for o in (7, 8, 9)], other: [FakeRecord(0)], gone: [FakeRecord(5)]}

    async def wait_next_records(self: Any, timeout: float) -> tuple[dict[TP, list[FakeRecord]], None]:
        return fetched, None

    async def faust_getmany(self: Any, timeout: float) -> Any:
        await self._wait_next_records(timeout)
        for tp, offset in ((other, 0), (RAW, 7)):
            await self.callback(FakeMessage(tp, offset))
            self._read_offset[tp] = offset
            yield tp, offset
        # the flow stopped here: 8 and 9 of RAW, and all of gone, were dropped

    monkeypatch.setattr(FaustConsumer, "_wait_next_records", wait_next_records)
    monkeypatch.setattr(FaustConsumer, "getmany", faust_getmany)

    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        rewinds: list[tuple[TP, int]] = []

        async def rewind(tp: TP, offset: int) -> bool:
            rewinds.append((tp, offset))
            return True

        c._rewind = rewind  # type: ignore[method-assign]
        c.assignment = lambda: {RAW, other}  # type: ignore[method-assign]
        got = []
        async for item in c.getmany(1.0):
            got.append(item)
            assert rewinds == []  # not while the batch is being delivered
        assert got == [(other, 0), (RAW, 7)]
        assert rewinds == [(RAW, 8)]
        assert c.refetches == 1

    asyncio.run(scenario())


def test_a_batch_of_an_older_generation_counts_as_undelivered() -> None:
    """Records delivered before a rebalance do not count for the new generation: the rewind decides by
    aiokafka's position (a rebalance's seek to the committed offset leaves nothing to rewind)."""

    async def scenario() -> None:
        h = make_consumer()
        c = h.consumer
        await deliver(c, 7)
        c.app.consumer_generation_id = GENERATION + 1
        rewinds: list[tuple[TP, int]] = []

        async def rewind(tp: TP, offset: int) -> bool:
            rewinds.append((tp, offset))
            return False

        c._rewind = rewind  # type: ignore[method-assign]
        c.assignment = lambda: {RAW}  # type: ignore[method-assign]
        await c._refetch_undelivered({RAW: [FakeRecord(7), FakeRecord(8)]})
        assert rewinds == [(RAW, 7)]
        assert c.refetches == 0

    asyncio.run(scenario())


def test_redelivery_drops_committed_acknowledged_and_repeated_offsets() -> None:
    h = make_consumer()
    c = h.consumer
    c._committed_offset[RAW] = 10
    ack(c, 10, 11)
    other = TP("raw", 2)
    events = [FakeEvent(FakeMessage(RAW, o)) for o in (9, 10, 11, 12, 12, 13)] + [
        FakeEvent(FakeMessage(other, 9))
    ]
    fresh = Redelivery(c.done).fresh(events)  # type: ignore[arg-type]
    assert [(e.message.tp.partition, e.message.offset) for e in fresh] == [(1, 12), (1, 13), (2, 9)]


def test_held_partitions_are_not_committed_until_released() -> None:
    """The aggregator holds an ns-stats partition's offsets while its state is restored."""

    async def scenario() -> None:
        c = make_consumer().consumer
        c._committed_offset[RAW] = 24
        ack(c, 24, 25, 26)
        c.held.add(RAW)
        assert c._new_offset(RAW) is None
        c.held.discard(RAW)
        assert c._new_offset(RAW) == 27

    asyncio.run(scenario())


@pytest.mark.parametrize("transactions_open", [True, False])
def test_no_transactional_commit_once_the_transactions_ended(
    monkeypatch: pytest.MonkeyPatch, transactions_open: bool
) -> None:
    """Faust's stop path commits again after ending the transactions; that commit must not be sent."""
    calls: list[dict[TP, int]] = []

    async def commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        calls.append(dict(offsets))
        return True

    async def scenario() -> None:
        c = make_consumer("exactly_once").consumer
        c.in_transaction = True  # what a worker process of the app has
        c.transactions_open = transactions_open
        monkeypatch.setattr(FaustConsumer, "_commit_offsets", commit)
        assert await c._commit_offsets({RAW: 5}) is transactions_open
        assert calls == ([{RAW: 5}] if transactions_open else [])

    asyncio.run(scenario())
