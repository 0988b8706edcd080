"""The commit guard: Faust's aiokafka consumer, made never to commit past a record it did not deliver, and
to hold the commits of partitions whose state is being restored.

Faust 0.15 decides what to commit from the offsets its streams acknowledged, plus "gaps" (offsets it infers
hold transaction markers). Traced in tests/processors/test_worker_crash.py (a worker SIGKILLed and
restarted, two rebalances), three of its habits lose or duplicate records:

1. After a rebalance it resumes the flow while its recovery service runs (it would recover tables; this
   app has none), so records are delivered from the positions aiokafka reset to the committed offsets;
   when recovery ends it seeks to the committed offsets again (``perform_seek``) and moves its "last read
   offset" back, although records beyond it were delivered. The record *at* the read offset is then
   delivered a second time (``offset >= read``), and the next new record looks like a jump, so the span
   before it is recorded as a gap: offsets committed as if processed.
2. A record fetched in one generation but reaching the stream in the next is skipped by the stream, while
   the fetch position has moved past it; a record the drain loop could not hand over before the flow
   stopped still advances its read offset.
3. Its commit treats the committed offset as the last processed one: with offset 24 committed and 25
   onwards acknowledged, it commits past 24 although 24 was never processed (``min(acked) - committed >
   1``). Together with 2 this is the loss the crash test measured: one container (20-35 failures) missing.

:class:`CommitGuardConsumer` fixes 1 by not letting ``perform_seek`` move the read offset back below the last
record delivered in the current generation, and closes 2 and 3 with a guard: when the first offset that
would be committed lies beyond the committed one (a hole at the head), it does not commit that partition
and seeks it back to the committed offset, once every :data:`RESEEK_SECONDS`. What the broker delivers
after that seek settles the hole: the missing record itself (processed, the hole closes), or a later
record first, which proves the hole holds no deliverable record (transaction markers, aborted data) and
lets the commit through. Records delivered again by the seek are dropped by the filter agent
(:class:`processors.filter_agent.Redelivery`), which asks :meth:`CommitGuardConsumer.done` whether an offset
was processed already.

The guard needs a later record to notice a hole. A fourth habit loses records with nothing after them:

4. Faust's fetch loop drops the rest of a batch aiokafka handed out when the flow stops or the generation
   changes while it delivers (``getmany``), and a record whose hand-over the flow's suspension cut short;
   aiokafka's position has moved past them. Seen in tests/dnsqr_pipeline/test_record_time.py: a worker
   alone at first wrote the job's only ns-stats records in its revocation's commit, fetched them after
   the next assignment's seek and before the flow resumed, and dropped them; with nothing after them and
   no committed offset, no hole showed, and the job never finished (6 records uncommitted).

:meth:`CommitGuardConsumer.getmany` closes 4: after each batch, a partition still assigned whose fetched
records were not all delivered (:func:`first_undelivered`) is sought back to the first one, when aiokafka's
position is past it, before the next fetch.

It also commits nothing of the partitions in :attr:`CommitGuardConsumer.held` (the aggregator's, while their
state is being restored), and stops the transactional producers of partitions given away, which Faust kept
(:meth:`CommitGuardConsumer._stop_stale_transactions`), and runs seeks in the consumer's thread
(:meth:`CommitGuardConsumer._seek`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from faust.transport.drivers.aiokafka import Consumer
from faust.types import TP, Message

log = logging.getLogger(__name__)

#: At most one seek back per partition and hole this often, while the hole persists.
RESEEK_SECONDS = 2.0


def first_undelivered(offsets: Sequence[int], delivered: int | None, read: int | None) -> int | None:
    """The first of a fetched batch's ``offsets`` (ascending) that Faust's fetch loop did not hand over, or
    None when it handed over all of them. ``delivered``: the last offset of the partition delivered in this
    generation (None: none); ``read``: Faust's read offset of it, below which the loop drops records on
    purpose (delivered before)."""
    handled = max(-1 if delivered is None else delivered, -1 if read is None else read - 1)
    for offset in offsets:
        if offset > handled:
            return offset
    return None


@dataclass
class Hole:
    """A partition whose committed offset was not delivered, and the seek sent to fetch it again."""

    committed: int
    #: last offset delivered when the seek was sent: deliveries above it are new records, not the refetch
    delivered_before: int
    sent: float
    #: set once the broker has shown that no deliverable record lies in [committed, proven_to)
    proven_to: int | None = None
    #: set once the missing record itself was delivered: its acknowledgement closes the hole
    refetched: bool = False


class CommitGuardConsumer(Consumer):
    """aiokafka consumer that commits only offsets it delivered or proved empty (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (generation, offset) of the last record delivered to the streams, per partition
        self.delivered: dict[TP, tuple[int, int]] = {}
        self.holes: dict[TP, Hole] = {}
        #: seeks back to a hole, since start (``/dnsqr/stats``)
        self.reseeks = 0
        #: seeks back to records fetched but not delivered (module doc, 4), since start (``/dnsqr/stats``)
        self.refetches = 0
        #: the records aiokafka handed out for the batch being delivered (see :meth:`getmany`)
        self._fetched: Mapping[TP, Sequence[Any]] = {}
        #: exactly_once: whether Faust's transactions are open (see :meth:`commit_and_end_transactions`)
        self.transactions_open = False
        self._seeks: set[asyncio.Future[None]] = set()
        #: partitions whose offsets must not be committed for now: the aggregator's ns-stats partitions while
        #: their state is restored (``processors/aggregator.py``)
        self.held: set[TP] = set()
        deliver = self.callback

        async def callback(message: Message) -> None:
            await deliver(message)
            # recorded once handed over, and only when the stream will take it (same generation)
            generation = self.app.consumer_generation_id
            if message.generation_id == generation:
                self.delivered[message.tp] = (generation, message.offset)
                hole = self.holes.get(message.tp)
                if hole is not None and hole.proven_to is None and not hole.refetched:
                    self._settle(message.tp, hole, message.offset)

        self.callback = callback

    def done(self, tp: TP, offset: int) -> bool:
        """Whether the record at ``offset`` of ``tp`` was processed already (committed or acknowledged)."""
        committed = self._committed_offset.get(tp)
        if committed is not None and offset < committed:
            return True
        acked = self._acked_index.get(tp)
        return acked is not None and offset in acked

    def _settle(self, tp: TP, hole: Hole, offset: int) -> None:
        """A delivery after the seek back to ``hole``: the missing record, or proof that there is none."""
        if offset > hole.delivered_before:
            return  # a new record from a fetch that preceded the seek, not the refetch
        if offset <= hole.committed:
            log.info("%s: offset %d delivered after seeking back", tp, hole.committed)
            hole.refetched = True
        else:
            log.info("%s: offsets %d-%d hold no records (markers)", tp, hole.committed, offset - 1)
            hole.proven_to = offset

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        self._fetched = records or {}
        return records, active

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's batch, then the records of it that were not delivered fetched again (module doc, 4).

        The seek is awaited before the fetch loop asks for the next batch: once a later record of the
        partition is delivered, the read offset would make the loop drop the refetched ones."""
        try:
            async for item in super().getmany(timeout):
                yield item
        finally:
            fetched, self._fetched = self._fetched, {}
            if fetched:
                await self._refetch_undelivered(fetched)

    async def _refetch_undelivered(self, fetched: Mapping[TP, Sequence[Any]]) -> None:
        generation = self.app.consumer_generation_id
        assignment = self.assignment()
        for tp, records in fetched.items():
            if not records or tp not in assignment:
                continue  # a revoked partition's new owner fetches from the committed offset
            delivered_in, last = self.delivered.get(tp, (None, None))
            offset = first_undelivered(
                [record.offset for record in records],
                last if delivered_in == generation else None,
                self._read_offset.get(tp),
            )
            if offset is not None and await self._rewind(tp, offset):
                self.refetches += 1
                log.info(
                    "%s: offsets %d-%d were fetched but not delivered (the flow stopped or the generation "
                    "changed); fetching them again",
                    tp,
                    offset,
                    records[-1].offset,
                )

    async def _rewind(self, tp: TP, offset: int) -> bool:
        """Seek ``tp`` back to ``offset`` in the consumer's thread if it is still assigned and aiokafka's
        position is past it (a rebalance's seek to the committed offset may have rewound it already)."""
        thread: Any = self._thread

        async def rewind() -> bool:
            consumer = thread._ensure_consumer()
            if tp not in consumer.assignment() or await consumer.position(tp) <= offset:
                return False
            consumer.seek(tp, offset)
            return True

        return bool(await thread.call_thread(rewind))

    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        """Commit what was processed of ``revoked`` first: Faust drops those acknowledgements uncommitted.

        Its revocation clears the acknowledged offsets of every revoked partition (all of them: the
        rebalance is eager) before it waits for the batches in flight and commits, so up to a commit
        interval of finished work was replayed by the next owner at every rebalance: 22,132 duplicate
        failures in one two-worker ``pipeline_e2e`` run of 1M records, from the second worker's join.
        """
        for tp in revoked:
            self.delivered.pop(tp, None)
            self.holes.pop(tp, None)
        if self.assignment():
            try:
                await self.commit(revoked)
            except Exception:  # the rebalance must go on; the offsets are then replayed, not lost
                log.exception("commit of revoked partitions %s failed", sorted(revoked))
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Set[TP], generation_id: int = 0) -> None:
        # Nothing of a new assignment is delivered yet. The drain loop can record a read offset for a
        # revoked partition after the revocation cleared it (a record it could not hand over before the
        # flow stopped); that stale value must not make the new owner drop records.
        self.delivered.clear()
        self.holes.clear()
        for tp in assigned:
            self._read_offset.pop(tp, None)
        if self.in_transaction:
            await self._stop_stale_transactions(assigned)
        await super().on_partitions_assigned(assigned, generation_id)
        # the app's handler, called by the line above, has begun a transaction per assigned partition
        self.transactions_open = True

    async def _stop_stale_transactions(self, assigned: Set[TP]) -> None:
        """Stop the transactional producers of input partitions this worker no longer owns, before Faust
        begins the transactions of the new assignment.

        Faust stops the producers of revoked partitions only when they are not standby ones, and its
        assignor makes a worker the standby of the raw and ns-stats partitions it gave away: their
        producers were kept. The partition's new owner then starts a producer with the same transactional
        id, which fences the kept one; when a later rebalance gave the partition back, Faust found the
        fenced producer, "began" its transaction (a warning: it believed one open), and the first commit
        crashed the worker ("Can't send messages while not in transaction", seen in
        tests/processors/test_elastic.py: a worker leaving while another restores). A producer stopped
        here is started anew (and fences the previous owner's) if its partition comes back.
        """
        producer: Any = self.app.producer
        assignor = self.app.assignor
        owned = {
            f"{self.app.conf.id}-{assignor.group_for_topic(tp.topic)}-{tp.partition}"
            for tp in assigned
            if not assignor.is_standby(tp)
        }
        stale = sorted(set(producer._transaction_producers) - owned)
        if stale:
            log.info("stopping the transactional producers of partitions no longer owned: %s", stale)
            for transactional_id in stale:
                await producer.stop_transaction(transactional_id)

    async def commit_and_end_transactions(self) -> None:
        await super().commit_and_end_transactions()
        self.transactions_open = False

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Skip a transactional commit once the transactions are ended.

        Faust ends them (commits without beginning new ones) when partitions are revoked and when it stops,
        but streams keep acknowledging events until they are stopped, and its stop path commits a second
        time: ``send_offsets_to_transaction`` then raised "Not in the middle of a transaction" and the
        worker hung on SIGTERM instead of exiting (seen in tests/processors/test_worker_crash.py). Offsets
        not committed here are processed again by the next owner, whose transaction has the outputs too.
        """
        if self.in_transaction and not self.transactions_open:
            log.info("transactions ended: not committing %s (replayed by the next owner)", dict(offsets))
            return False
        return await super()._commit_offsets(offsets, start_new_transaction)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        generation = self.app.consumer_generation_id
        for tp, (delivered_in, last) in self.delivered.items():
            sought = self._read_offset.get(tp)
            if delivered_in == generation and (sought is None or last > sought):
                self._read_offset[tp] = last

    def _new_offset(self, tp: TP) -> int | None:
        if tp in self.held:
            return None
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is not None and acked:
            first = min(acked)
            gap = self._gap.get(tp)
            if gap:
                first = min(first, min(interval.begin for interval in gap))
            if first > committed:
                hole = self.holes.get(tp)
                if hole is None or hole.committed != committed or hole.proven_to is None:
                    if hole is None or hole.committed != committed or not hole.refetched:
                        self._seek_back(tp, committed)
                    return None
                # proven empty: a gap, so Faust's commit walks over it like over transaction markers
                self._gap[tp].addi(committed, hole.proven_to)
        self.holes.pop(tp, None)
        return super()._new_offset(tp)

    async def _seek(self, partition: TP, offset: int) -> None:
        """aiokafka's seek, run in the consumer's own thread. Faust's calls it in the event loop's thread,
        where it deletes the fetcher's buffered records of the partition while the consumer thread may be
        reading them: the fetch loop then died of a KeyError in ``fetched_records`` (seen in
        tests/processors/test_elastic.py, a paused partition sought as it resumed)."""
        thread: Any = self._thread
        await thread.call_thread(thread.seek, partition, offset)

    async def request_rejoin(self) -> None:
        """Have the group rebalance: aiokafka's coordinator rejoins at its next poll (a probing rebalance of
        ``processors/warmup.py``). Run in the consumer's thread, where the coordinator lives."""
        thread: Any = self._thread
        await thread.call_thread(lambda: thread._ensure_consumer()._coordinator.request_rejoin())

    def _seek_back(self, tp: TP, committed: int) -> None:
        """Fetch ``tp`` again from ``committed`` (rate-limited); see the module doc."""
        hole = self.holes.get(tp)
        now = time.monotonic()
        if hole is not None and hole.committed == committed and now - hole.sent < RESEEK_SECONDS:
            return
        last = self.delivered.get(tp, (0, committed))[1]
        self.holes[tp] = Hole(committed, last, now)
        self.reseeks += 1
        log.warning(
            "%s: offset %d was not delivered but later ones were; not committing past it, fetching again",
            tp,
            committed,
        )
        seek = asyncio.ensure_future(self.seek(tp, committed))
        self._seeks.add(seek)
        seek.add_done_callback(self._seeks.discard)


def install(app: Any) -> None:
    """Make ``app`` create :class:`CommitGuardConsumer` (before its consumer exists, i.e. at app creation)."""
    app.transport.Consumer = CommitGuardConsumer
