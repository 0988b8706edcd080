"""Warm standbys (``--standby-replicas N``): states of ns-stats partitions this worker does not own, kept
current by tailing their changelog partitions, so that taking one over reads only the changelog's tail.

Who is standby for what: Faust's partition assignor (``faust.assignor.PartitionAssignor``, the group's
assignor whenever ``table_standby_replicas`` > 0) computes standbys for every co-partitioned group of
subscribed topics, tables or not: with ``table_standby_replicas = N`` each partition number gets N
standby members besides its active one (fewer when the group is smaller), carried in the assignment's
metadata only (not in the Kafka assignment: no table changelog is involved). Its sticky assignment gives a
partition whose owner left to a member that was its standby (``_find_promotable_standby``), capacity
permitting: exactly the failover this module is for. So the assignor is used as it is (with warm-ups
added, and its standbys dropped under ``--standby-replicas 0``: ``processors/warmup.py``), and
:func:`standby_partitions` reads this worker's ns-stats standbys from it after each assignment; the
changelog partition of ns-stats partition P is P. A warm-up is tailed like any standby;
:meth:`Standbys.caught_up` tells when it may move.

A standby's state is a :class:`processors.state.NsState` being loaded (``load()`` of each changelog
record, ``loaded()`` not yet called), like a state restored from a checkpoint
(``processors/checkpoint.py``) before its changelog tail is read: when its partition becomes active here,
the aggregator's restore takes it (:meth:`Standbys.take`) and reads the changelog from the next offset on
(``processors.aggregator.read_changelog``'s ``resume``), then ``loaded()`` computes the totals. The mark
(``M``, exactly_once) is a changelog record like the counts, so it comes with them; the consumer reads
``read_committed``: only committed transactions reach a standby, as they reach a restore.

A partition this worker just gave away (a rebalance moved it elsewhere and made this worker its
standby) starts from the state it had (:meth:`Standbys.update`'s ``seeds``) instead of the changelog's
beginning: that state is what the changelog held at the revocation, so the tail is read from the
changelog's end at that moment. It is turned into a state being loaded (its image, as a checkpoint takes
it: ``processors/checkpoint.py``) by the tailing thread, or by :meth:`Standbys.take` if that comes first.

One thread tails every standby partition with its own consumer (the restore's settings:
:func:`processors.aggregator.changelog_consumer`). Memory: a standby holds a full copy of its partition's
windows and retired counts (a little less than an active state, which also holds the totals), so N
standby replicas cost each worker about N times its active states' memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from faust.types import TP

from processors import checkpoint
from processors.state import NsState

log = logging.getLogger(__name__)

#: the tailing thread looks for new standby partitions and for a request to stop this often
POLL_SECONDS = 0.5
#: changelog records applied per lock hold at most (a take waits for one batch)
BATCH = 5_000


def standby_partitions(standbys: Iterable[TP], topic: str) -> set[int]:
    """The partitions of ns-stats ``topic`` among the assignor's ``standbys`` of this worker (Faust's
    ``PartitionAssignor.assigned_standbys()``): those whose changelog partitions this worker tails."""
    return {tp.partition for tp in standbys if tp.topic == topic}


@dataclass
class Tail:
    """One standby partition: its state being loaded, and where its changelog is read on from."""

    state: NsState
    #: the changelog offset after the last record applied (``OFFSET_BEGINNING`` before the first)
    offset: int = OFFSET_BEGINNING
    #: whether the thread's consumer has been assigned the partition for this tail (records fetched for
    #: an earlier tail of the same partition must not reach this one)
    live: bool = False
    #: changelog records the consumer's position is behind the partition's end (last stable offset), once
    #: ``measured``
    lag: int = 0
    measured: bool = False
    #: the state this worker held when it gave the partition away, the changelog through ``offset``, until
    #: it becomes ``state`` (:func:`seeded`)
    seed: NsState | None = None


def seeded(seed: NsState, state: NsState) -> NsState:
    """The new ``state`` given the image of the changelog ``seed`` holds (a state given away, see the
    module doc): a state being loaded, with windows dicts of its own, so that loading on top changes
    nothing a checkpoint writer may still be reading of ``seed``."""
    image = checkpoint.image_of(seed)
    image.windows = {start: dict(window) for start, window in image.windows.items()}
    checkpoint.install(state, image)
    return state


class Standbys:
    """The standby states of this worker, kept current by one thread (module doc).

    ``new_consumer`` makes the thread's consumer of the changelog ``topic`` (``read_committed``);
    ``new_state`` an empty state with the worker's expiry and clock bound.
    """

    def __init__(
        self, new_consumer: Callable[[], Consumer], topic: str, new_state: Callable[[], NsState]
    ) -> None:
        self.new_consumer = new_consumer
        self.topic = topic
        self.new_state = new_state
        self._tails: dict[int, Tail] = {}
        #: set when the tails changed since the consumer was last assigned
        self._reassign = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        #: changelog records applied to standby states since this worker started
        self.records = 0

    @property
    def partitions(self) -> list[int]:
        """The partitions tailed now."""
        with self._lock:
            return sorted(self._tails)

    def lags(self) -> dict[int, int]:
        """Partition -> changelog records its standby is behind, as of the thread's last fetch."""
        with self._lock:
            return {p: tail.lag for p, tail in self._tails.items()}

    def caught_up(self, partitions: Iterable[int], acceptable_lag: int = 0) -> bool:
        """Whether every one of ``partitions`` is tailed here and its last measured lag was at most
        ``acceptable_lag`` records (a warm-up is ready to move: ``processors/warmup.py``)."""
        with self._lock:
            tails = [self._tails.get(p) for p in partitions]
            return all(
                t is not None and t.live and t.measured and t.lag <= acceptable_lag and t.seed is None
                for t in tails
            )

    def update(
        self, partitions: Iterable[int], seeds: Mapping[int, tuple[NsState, int]] | None = None
    ) -> None:
        """Tail exactly ``partitions`` from now on: a new one from its changelog's beginning, on an empty
        state, or, when in ``seeds`` (partition -> the state this worker gave away, with no change its
        changelog lacks, and the changelog's end when it was revoked), from that state and offset; a state
        no longer wanted is dropped."""
        wanted = set(partitions)
        seeds = seeds or {}
        with self._lock:
            if wanted == set(self._tails):
                return
            for p in set(self._tails) - wanted:
                del self._tails[p]
            new = wanted - set(self._tails)
            for p in new:
                seed, offset = seeds.get(p, (None, OFFSET_BEGINNING))
                self._tails[p] = Tail(self.new_state(), offset, seed=seed)
            self._reassign = True
        log.info(
            "standby for ns-stats partitions %s (tailing %s; %s from the states this worker gave away)",
            sorted(wanted) or "none",
            self.topic,
            sorted(new & set(seeds)) or "none",
        )
        if wanted and (self._thread is None or not self._thread.is_alive()):  # first, or after a failure
            self._thread = threading.Thread(target=self._run, name="standby", daemon=True)
            self._thread.start()

    def take(self, partitions: Iterable[int]) -> dict[int, tuple[NsState, int]]:
        """Stop tailing those of ``partitions`` held here and hand over their states, each with the
        changelog offset to read on from (``read_changelog``'s ``resume``)."""
        with self._lock:
            taken = {p: self._tails.pop(p) for p in set(partitions) & set(self._tails)}
            if taken:
                self._reassign = True
        return {
            p: (tail.state if tail.seed is None else seeded(tail.seed, self.new_state()), tail.offset)
            for p, tail in taken.items()
        }

    def close(self) -> None:
        """Stop the thread and drop every standby state (the worker stops). Blocking."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._tails.clear()

    def _run(self) -> None:
        consumer = self.new_consumer()
        try:
            while not self._closed.is_set():
                self._seed()
                with self._lock:
                    assignment = self._assignment() if self._reassign else None
                if assignment is not None:
                    consumer.assign(assignment)  # librdkafka drops what it fetched for the former one
                if not self._tails:
                    self._closed.wait(POLL_SECONDS)
                    continue
                messages = consumer.consume(BATCH, POLL_SECONDS)
                with self._lock:
                    self._apply(messages)
                    self._measure(consumer)
        except Exception:
            log.exception("standby states of %s are no longer kept current: dropped", self.topic)
            with self._lock:
                self._tails.clear()
        finally:
            consumer.close()

    def _seed(self) -> None:
        """Turn the seeds of new tails into their states (the work outside the lock: a take may come
        meanwhile, and then does it itself)."""
        with self._lock:
            pending = [(p, tail) for p, tail in self._tails.items() if tail.seed is not None]
        for p, tail in pending:
            assert tail.seed is not None
            state = seeded(tail.seed, self.new_state())
            with self._lock:
                if self._tails.get(p) is tail:
                    tail.seed = None
                    tail.state = state

    def _assignment(self) -> list[TopicPartition]:
        """Every tail's partition from its offset (under the lock); the tails are live from now on."""
        self._reassign = False
        for tail in self._tails.values():
            tail.live = True
        return [TopicPartition(self.topic, p, tail.offset) for p, tail in sorted(self._tails.items())]

    def _apply(self, messages: list[Message]) -> None:
        """Load ``messages`` into their partitions' states (under the lock); a record of a partition no
        longer tailed, or fetched for an earlier tail of it, is left out."""
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("standby read of %s: %s", self.topic, error.str())
                continue
            tail = self._tails.get(msg.partition())
            if tail is None or not tail.live:
                continue
            if tail.seed is not None:  # assigned before its seed became its state: fetch again from there
                self._reassign = True
                continue
            try:
                tail.state.load(msg.key(), msg.value())
            except ValueError:
                log.exception("standby of ns-stats partition %d dropped", msg.partition())
                del self._tails[msg.partition()]
                continue
            tail.offset = msg.offset() + 1
            self.records += 1

    def _measure(self, consumer: Consumer) -> None:
        """Each live tail's lag: the partition's end as last fetched less the consumer's position."""
        live = [TopicPartition(self.topic, p) for p, tail in self._tails.items() if tail.live]
        for tp in consumer.position(live):
            end = consumer.get_watermark_offsets(tp, cached=True)
            if end is None or end[1] < 0:
                continue
            position = end[0] if tp.offset == OFFSET_INVALID else tp.offset  # nothing fetched yet: the start
            tail = self._tails[tp.partition]
            tail.lag = max(end[1] - position, 0)
            tail.measured = True
