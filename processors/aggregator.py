"""The aggregator agent: ns-stats batches in; per-name-server counts in memory, a changelog, snapshots out.

The filter agent sends, per batch of raw records and input partition, one ``NsStatsBatch`` record
(``processors/delta_batch.py``) to each ns-stats partition its name servers fall in (Kafka's default
partitioner on the name server). This agent consumes the ns-stats topic and adds each record's rows, in one
loop, to the :class:`processors.state.NsState` of its partition.

Why not Faust Tables: with 1M records naming ~480k distinct name servers, a pipeline on Faust Tables runs
at 3k records/s instead of 108k. Every delta is then one Kafka record and one Faust event (~150 us), and
every table write one changelog message through Faust's per-message producer path (~50-100 us): the cost
follows distinct keys, not records. Here an ns-stats record carries thousands of deltas,
applying one costs a few microseconds, and state changes reach the changelog once per changed key per
commit (a record cache, as Kafka Streams does), appended to the producer as whole batches. On the same
records: 17-28k records/s with one worker on a loaded 2-core box, ~300 ns-stats records instead of one
per delta (docs/design.md has the figures).

Durability: the changelog topic (``{app id}-ns-state-changelog``, compacted, one partition per ns-stats
partition) receives, for ns-stats partition P, :meth:`NsState.changelog` records from Faust's commit path
(``app._attachments.publish_for_tp_offset(P, offset)``, called right before Faust commits P's offsets):

- at_least_once: sent and acknowledged before the offsets are committed (Faust waits for the returned
  futures). A crash after the changelog write and before the commit re-applies some records: counts may be
  high, never low.
- exactly_once: sent into P's transaction (the one that commits P's offsets), so changelog and offsets
  become visible together. The state can hold records applied after the offsets being committed (applied
  but not acknowledged yet), and the raw and ns-stats partitions of one number share a transaction, so a
  new owner may restore a state that includes records it will consume again. So the state keeps a mark
  of the ns-stats offsets it applied (:class:`processors.state.NsState`: every offset below the last
  commit's, and the set of those above), written to the changelog with the counts in the same
  transaction; a record the mark holds is skipped. Exact offsets, not a "last applied" high-water mark,
  because Faust may deliver a record after later ones of its partition (``processors/commit_guard.py`` fetches
  it again): a high-water mark skipped it, losing its counts. Not under at_least_once: there a commit may
  fail after the changelog is written, and the replayed records must count again (high, never low).

Recovery: when ns-stats partitions are assigned, their states are rebuilt from the changelog (read to its
end, ``read_committed``) by a thread with its own consumer, while the worker keeps running. Until a
partition's state is back, its ns-stats records are kept (not applied) and its offsets are not committed
(:attr:`processors.commit_guard.CommitGuardConsumer.held`); then the kept records are applied in order.
A revoked partition's state is kept until the next assignment (the commits of the revocation wrote what
it had): when the assignment gives the partition back and the group's committed offset for it is still
this worker's last commit, the state is taken back at once instead of read (:class:`Aggregation`). Faust's
table recovery is not used: its stalls needed a watchdog.

Checkpoints (``--state-dir``, ``processors/checkpoint.py``): a state leaving this worker after the commit
that ends its ownership (revocation, shutdown) is written to a local file (after a revocation, once the
next assignment shows that it left), an image of its changelog
partition through the changelog's end X; a later restore of that partition loads it and reads the changelog
from X only (not at all when nothing was written or committed since). A file that is missing, damaged or
may be stale is logged with the reason, and the changelog read from its beginning.

Standbys (``--standby-replicas``, ``processors/standby.py``): the partitions Faust's assignor makes this
worker standby for are tailed from the changelog by one thread into states being loaded; when the
assignment makes one of them active here, the restore takes its state and reads the changelog from the
standby's offset on (its tail), as after a checkpoint. Preference: a current kept state, a standby's, a
checkpoint, the whole changelog. Warm-ups (``processors/warmup.py``) are standbys too: a partition meant
for this worker that its owner keeps until this worker has caught up with it; then :func:`install`'s
``probe_warmups`` asks for the rebalance that moves it.

Snapshots of what changed go to the counts topic (``schemas/ns_counts.avsc``, ``processors/snapshots.py``)
from a timer every ``snapshot_interval`` seconds: one per changed (name server, window) since the previous
tick, with the name server's totals at that moment, and one without a window per name server whose totals
changed outside the live windows only (late or early deltas: ``processors/state.py``). Faust's commit
of an ns-stats partition also publishes what changed since the last tick, before the changelog (in the
same transaction under exactly_once). So whatever a committed changelog holds was published: a state
restored after a crash never holds totals the counts topic lacks, and once the pipeline is idle each
name server's newest snapshot holds its totals. (Records applied but not committed when a worker dies are
consumed again by the next owner, which publishes their name servers anew.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from faust.types import TP, EventT, StreamT

from dnsqr_kafka.topics import admin_client, create_topics
from processors import checkpoint
from processors.agent_counters import AgentCounters
from processors.delta_batch import decode_batch
from processors.filter_agent import Output
from processors.settings import Settings
from processors.snapshots import state_snapshots
from processors.standby import Standbys, standby_partitions
from processors.state import NsState, collector_paused
from processors.topology import changelog_spec
from processors.warmup import PROBE_SECONDS, should_probe

log = logging.getLogger(__name__)

#: a recovery thread waits this long for a batch of changelog records (librdkafka waits the whole time
#: unless the batch fills: at a partition's end, that is time added to the restore) and looks as often for
#: a request to stop
POLL_SECONDS = 0.05
#: a restore's fetch at the changelog's end returns after this many milliseconds (librdkafka's 500 ms
#: default was half the time of a restore reading a short tail: a standby's, or a checkpoint's)
END_FETCH_WAIT_MS = 50
#: changelog partitions a restore reads at once, each with its own consumer (:func:`read_changelog`);
#: measured: two consumers read two partitions' 224k records in 0.78 s, one consumer in 1.71 s
READERS = 8
#: how long a changelog topic just created may take to show its partitions in the metadata
TOPIC_METADATA_SECONDS = 30.0
#: how long a changelog partition may take to have a leader when its watermarks are asked
WATERMARK_SECONDS = 5.0


@dataclass
class Restoring:
    """Partitions being rebuilt from the changelog, and the ns-stats records that arrived meanwhile."""

    partitions: set[int]
    stop: threading.Event = field(default_factory=threading.Event)
    #: partition -> (encoded NsStatsBatch, its offset) in arrival order, applied once the state is back
    waiting: dict[int, list[tuple[bytes, int]]] = field(default_factory=dict)
    #: partition -> bytes of its waiting records
    waiting_bytes: dict[int, int] = field(default_factory=dict)
    #: partitions whose fetching was paused (their waiting records reached the bound)
    paused: set[int] = field(default_factory=set)
    #: set by :meth:`Aggregation.restored`: paused partition made ready -> the offset to fetch on from (the
    #: one after its last waiting record; what was fetched after the pause was not delivered)
    resume: dict[int, int] = field(default_factory=dict)


#: a checkpoint being read in a thread (``install``'s preloads)
CheckpointRead = concurrent.futures.Future[tuple[checkpoint.Header, checkpoint.Image]]

#: where a restore's states come from (the ``source`` label of the restore metrics): :class:`Restored`
RESTORE_SOURCES = ("kept", "standby", "checkpoint", "changelog")


@dataclass
class Restored:
    """The states a restore rebuilt, by where they came from, and the changelog records it read."""

    #: kept states still current (:class:`Aggregation`)
    kept: dict[int, NsState]
    #: this worker's standby states (``processors/standby.py``), then the changelog's tail read
    standby: dict[int, NsState] = field(default_factory=dict)
    #: loaded from a checkpoint, then the changelog read from the checkpoint's offset (when it had more)
    checkpoint: dict[int, NsState] = field(default_factory=dict)
    #: read from the changelog's beginning
    changelog: dict[int, NsState] = field(default_factory=dict)
    records: int = 0

    def sources(self) -> dict[str, dict[int, NsState]]:
        """Source name (:data:`RESTORE_SOURCES`) -> its states."""
        return {source: getattr(self, source) for source in RESTORE_SOURCES}


class Aggregation:
    """The states of the ns-stats partitions assigned to this worker (no Kafka here: see :func:`install`).

    A partition is either ready (``states``) or restoring (its records wait); records of a partition in
    neither (revoked while the record was on its way) are ignored: its next owner applies them. The records
    waiting for one partition are bounded: once they hold ``restore_buffer`` bytes, :meth:`offer` asks for
    the partition to be paused (no more fetched: the records already delivered still wait), and once its
    state is back it is fetched again from the record after the last one that waited
    (:attr:`Restoring.resume`). None: no bound.

    What stays, stays: a revoked partition's state is kept (``kept``, with the offset of its last commit)
    until the next assignment. Faust's eager rebalance revokes every partition, and most come back to the
    same worker; one that does is taken back without reading the changelog when the group's committed
    offset for it is still the one this worker committed last (nobody processed it since, and the
    revocation's commit wrote everything the state had applied). Otherwise, and for every kept state the
    assignment does not give back, the state is dropped.
    """

    def __init__(
        self,
        expires: int,
        max_ahead: int | None = None,
        *,
        marks: bool,
        restore_buffer: int | None = None,
        hot_windows: int = 0,
        hot_totals: int = 0,
    ) -> None:
        self.expires = expires
        self.max_ahead = max_ahead
        self.hot_windows = hot_windows
        self.hot_totals = hot_totals
        self.restore_buffer = restore_buffer
        #: partitions paused because their waiting records reached ``restore_buffer``, since start
        self.pauses = 0
        #: exactly_once: apply each record once (marks); at_least_once: apply what comes
        self.marks = marks
        self.states: dict[int, NsState] = {}
        self.restoring: dict[int, Restoring] = {}
        #: ns-stats records skipped because their state had applied them (exactly_once)
        self.replayed = 0
        #: late and early deltas (:class:`NsState`) of the states dropped since this worker started
        self._dropped_outside = [0, 0]
        #: partition -> the offset its last commit committed (its state had applied every record below it)
        self.last_commit: dict[int, int] = {}
        #: revoked partitions' states and their last commit offsets, until the next assignment
        self.kept: dict[int, tuple[NsState, int]] = {}
        #: partitions taken back from ``kept``, taken over from a standby, loaded from a checkpoint, and
        #: read from the changelog's beginning, since this worker started
        self.taken_back = 0
        self.from_standby = 0
        self.from_checkpoint = 0
        self.read_back = 0
        #: restores that made partitions ready, and their seconds in all
        self.restores = 0
        self.restore_seconds = 0.0
        #: name servers of the partitions made ready, by source (:meth:`Restored.sources`)
        self.restored_name_servers: Counter[str] = Counter()
        #: changelog records read by restores
        self.changelog_records = 0
        #: the standby states (``--standby-replicas``, and warm-ups: ``processors/warmup.py``), kept current
        #: by :func:`install`'s thread
        self.standbys: Standbys | None = None
        #: rebalances this worker asked for once its warm-ups had caught up (``processors/warmup.py``)
        self.probes = 0

    def new_state(self) -> NsState:
        """An empty state with this worker's expiry, clock bound, hot windows and hot totals budget."""
        return NsState(self.expires, self.max_ahead, hot_windows=self.hot_windows, hot_totals=self.hot_totals)

    @property
    def late_deltas(self) -> int:
        """Deltas for freed windows applied by this worker (to the totals only), since it started."""
        return self._dropped_outside[0] + sum(s.late_deltas for s in self._held_states())

    @property
    def early_deltas(self) -> int:
        """Deltas dated too far ahead of the clock applied by this worker (to the totals only)."""
        return self._dropped_outside[1] + sum(s.early_deltas for s in self._held_states())

    def _held_states(self) -> list[NsState]:
        return [*self.states.values(), *(state for state, _ in self.kept.values())]

    def begin_restore(self, partitions: Iterable[int]) -> Restoring:
        """Mark ``partitions`` as restoring (their records wait from now on)."""
        restoring = Restoring(set(partitions))
        for p in restoring.partitions:
            self.states.pop(p, None)
            self.last_commit.pop(p, None)
            self.restoring[p] = restoring
            restoring.waiting[p] = []
        return restoring

    def restored(self, restoring: Restoring, states: Mapping[int, NsState]) -> list[int]:
        """Install the rebuilt ``states`` of a restore still current, after applying the records that
        waited; the partitions that became ready."""
        ready = []
        for p, state in states.items():
            if self.restoring.get(p) is not restoring:
                continue  # revoked, or restored again since
            del self.restoring[p]
            waiting = restoring.waiting.pop(p)
            if p in restoring.paused:
                restoring.resume[p] = waiting[-1][1] + 1
            for value, offset in waiting:
                self._apply(state, value, offset)
            self.states[p] = state
            ready.append(p)
        return ready

    def keep(self, partitions: Iterable[int]) -> None:
        """Revoked ``partitions``: keep the states that have a commit until the next assignment
        (:meth:`take_kept`), drop the others and stop restoring them."""
        for p in partitions:
            state = self.states.get(p)
            if state is not None and p in self.last_commit:
                del self.states[p]
                self.kept[p] = (state, self.last_commit[p])
        self.drop(partitions)

    def take_kept(self, partitions: Iterable[int]) -> dict[int, tuple[NsState, int]]:
        """The kept states of ``partitions`` (assigned again), with their last commit offsets; every other
        kept state is dropped."""
        wanted = set(partitions)
        taken = {p: kept for p, kept in self.kept.items() if p in wanted}
        for p, (state, _) in self.kept.items():
            if p not in wanted:
                self._count_dropped(state)
        self.kept = {}
        return taken

    def _count_dropped(self, state: NsState) -> None:
        self._dropped_outside[0] += state.late_deltas
        self._dropped_outside[1] += state.early_deltas

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the states of revoked partitions, and stop restoring them."""
        for p in partitions:
            state = self.states.pop(p, None)
            if state is not None:
                self._count_dropped(state)
            restoring = self.restoring.pop(p, None)
            if restoring is not None:
                restoring.waiting.pop(p, None)
                restoring.waiting_bytes.pop(p, None)
                restoring.paused.discard(p)  # Faust forgets a revoked partition's pause itself
                if not any(self.restoring.get(q) is restoring for q in restoring.partitions):
                    restoring.stop.set()

    def offer(self, partition: int, offset: int, value: bytes) -> bool:
        """Apply one ns-stats record now, or keep it until its partition's state is restored; ValueError
        when it does not decode. True when the partition must be paused now: its waiting records reached
        the bound (once per restore; see the class doc)."""
        state = self.states.get(partition)
        restoring = self.restoring.get(partition)
        if state is None and restoring is None:
            log.info("ns-stats partition %d is not assigned here: record ignored", partition)
            return False
        if state is not None:
            self._apply(state, value, offset)
            return False
        assert restoring is not None
        decode_batch(value)  # kept only if it decodes: its ValueError is for now, not for later
        restoring.waiting[partition].append((value, offset))
        size = restoring.waiting_bytes[partition] = restoring.waiting_bytes.get(partition, 0) + len(value)
        if self.restore_buffer is None or size < self.restore_buffer or partition in restoring.paused:
            return False
        restoring.paused.add(partition)
        self.pauses += 1
        return True

    def _apply(self, state: NsState, value: bytes, offset: int) -> None:
        if not state.apply_record(value, offset if self.marks else None):
            self.replayed += 1

    def count_restore(self, restored: Restored, ready: Iterable[int], seconds: float) -> None:
        """Count a restore that took ``seconds`` and made ``ready`` ready (the /metrics and /dnsqr/stats/
        figures)."""
        ready = set(ready)
        if not ready:
            return  # revoked meanwhile: not a restore that ended
        self.restores += 1
        self.restore_seconds += seconds
        self.changelog_records += restored.records
        for source, states in restored.sources().items():
            self.restored_name_servers[source] += sum(len(self.states[p].totals) for p in ready & set(states))
        self.taken_back += len(ready & set(restored.kept))
        self.from_standby += len(ready & set(restored.standby))
        self.from_checkpoint += len(ready & set(restored.checkpoint))
        self.read_back += len(ready & set(restored.changelog))


@contextlib.contextmanager
def offsets_consumer(config: Mapping[str, str], group: str) -> Iterator[Consumer]:
    """A consumer to ask for committed offsets and watermarks. It asks the group coordinator and joins
    nothing, so the worker's own group id serves."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        yield consumer
    finally:
        consumer.close()


def committed_offsets(consumer: Consumer, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The offsets ``consumer``'s group has committed for ``partitions`` of ``topic`` (negative: none).
    Blocking."""
    asked = [TopicPartition(topic, p) for p in partitions]
    return {tp.partition: tp.offset for tp in consumer.committed(asked, timeout=10)}


def watermarks(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int],
    patience: float = WATERMARK_SECONDS,
    timeout: float = 10.0,
) -> dict[int, tuple[int, int]]:
    """The low and high watermarks of ``partitions`` of ``topic``, asked again for ``patience`` seconds
    while the broker has no leader for one (a topic just created), each ask waiting ``timeout`` seconds at
    most. Blocking."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in partitions
            }
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def changelog_records(settings: Settings) -> Callable[[Iterable[int]], dict[int, int]]:
    """The records in changelog partitions (high less low watermark), asked of the broker: how much a new
    owner of each would read (``processors/warmup.py``'s ``WarmupAssignor``). Blocking, a few seconds at
    most: it runs in the consumer's thread while the group waits for its assignment."""
    config = settings.credentials.librdkafka(settings.bootstrap_servers)

    def records(partitions: Iterable[int]) -> dict[int, int]:
        with offsets_consumer(config, settings.app_id) as consumer:
            ends = watermarks(consumer, settings.changelog_topic, partitions, patience=0, timeout=2)
        return {p: high - low for p, (low, high) in ends.items()}

    return records


def changelog_consumer(config: Mapping[str, str], group: str, *, eof: bool = False) -> Consumer:
    """A consumer of the changelog, for a restore (``eof``: it tells when a partition's end is reached) or
    the standbys (``processors/standby.py``): ``read_committed`` (under exactly_once only committed
    transactions count), prefetch bounded (librdkafka's default is 64 MB per partition: this runs inside a
    worker). ``group`` is the worker's own group id: the consumer is assigned its partitions and commits
    nothing, so it never joins that group, and a secured cluster needs no other group ACL for it."""
    return Consumer(
        {
            **config,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": eof,
            **({"fetch.wait.max.ms": END_FETCH_WAIT_MS} if eof else {}),
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": 16 * 1024,
            "fetch.max.bytes": 16 * 1024 * 1024,
        }
    )


def read_partition(
    config: Mapping[str, str],
    topic: str,
    partition: int,
    state: NsState,
    offset: int,
    halt: Callable[[], bool],
    group: str,
) -> int | None:
    """Load ``partition`` of the changelog ``topic`` from ``offset`` to its end into ``state``, with a
    consumer of its own; the records read, None if ``halt()`` said so first. Blocking."""
    records = 0
    consumer = changelog_consumer(config, group, eof=True)
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        while True:
            if halt():
                return None
            end = False
            for msg in consumer.consume(10_000, POLL_SECONDS):
                error = msg.error()
                if error is None:
                    state.load(msg.key(), msg.value())
                    records += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    end = True
                else:
                    raise KafkaException(error)
            if end:
                return records
    finally:
        consumer.close()


def read_changelog(
    config: Mapping[str, str],
    topic: str,
    partitions: Iterable[int],
    new_state: Callable[[], NsState],
    stop: threading.Event,
    group: str,
    resume: Mapping[int, tuple[NsState, int]] | None = None,
) -> tuple[dict[int, NsState], int] | None:
    """States rebuilt from ``partitions`` of the changelog ``topic``, each read to its end
    (``read_committed``: under exactly_once only committed transactions count), and the number of records
    read; None if ``stop`` was set first. Blocking: run it in a thread.

    A partition in ``resume`` is read from the offset given there, on top of the state given there (loaded
    from a checkpoint, ``processors/checkpoint.py``, or a standby's, ``processors/standby.py``); the others
    from their beginning, on a ``new_state()``. ``group``: see :func:`changelog_consumer`.

    Up to :data:`READERS` partitions are read at once, each by its own consumer (:func:`read_partition`):
    librdkafka keeps one fetch in flight per broker and consumer, so one consumer of several partitions
    waits for each fetch in turn. A reader's error stops the others and is raised.
    """
    resume = resume or {}
    starts = {p: resume.get(p, (new_state(), OFFSET_BEGINNING)) for p in partitions}
    failed = threading.Event()

    def halt() -> bool:
        return stop.is_set() or failed.is_set()

    def read(p: int) -> int | None:
        state, offset = starts[p]
        try:
            return read_partition(config, topic, p, state, offset, halt, group)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(len(starts), READERS)), thread_name_prefix="restore"
    ) as readers:
        futures = [readers.submit(read, p) for p in starts]
        read_counts = [future.result() for future in futures]
    if None in read_counts:
        return None
    states = {p: state for p, (state, _) in starts.items()}
    with collector_paused():
        for state in states.values():
            state.loaded()
    return states, sum(n for n in read_counts if n is not None)


def install(app: faust.App, settings: Settings, counters: AgentCounters, output: Output) -> Aggregation:
    """Add the ns-stats topic, the aggregator agent, its recovery, changelog and snapshot timer to ``app``:
    snapshots and changelog records go through ``output``, its drops are counted in ``counters``. Returns
    the states it keeps (the views and metrics read them)."""
    exactly_once = settings.processing_guarantee == "exactly_once"
    aggregation = Aggregation(
        settings.window_expires_seconds,
        settings.window_max_ahead_seconds,
        marks=exactly_once,
        restore_buffer=settings.restore_buffer_bytes,
        hot_windows=settings.hot_windows,
        hot_totals=settings.hot_totals,
    )
    stats = app.topic(
        settings.stats_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        # internal: Faust creates it before subscribing, so a fresh cluster needs no topic set-up
        internal=True,
    )
    counts_topic = app.topic(
        settings.counts_topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
    )
    changelog = changelog_spec(settings)
    config = settings.credentials.librdkafka(settings.bootstrap_servers)

    def ensure_changelog(partitions: set[int]) -> None:
        """Create the changelog topic when missing; it must have a partition per ns-stats partition."""
        admin = admin_client(config)
        create_topics(
            admin,
            [changelog],
            bootstrap=settings.bootstrap_servers,
            partitions=settings.partitions,
            replication_factor=settings.replication_factor or None,  # 0: the cluster default
        )
        deadline = time.monotonic() + TOPIC_METADATA_SECONDS
        have = 0
        while True:  # a topic just created can take a moment to show its partitions
            topic = admin.list_topics(changelog.name, timeout=10).topics.get(changelog.name)
            have = len(topic.partitions) if topic is not None and topic.error is None else 0
            if have or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if max(partitions) >= have:
            raise RuntimeError(
                f"changelog topic {changelog.name} has {have} partitions, but ns-stats partition "
                f"{max(partitions)} needs one: give it as many partitions as {settings.stats_topic}"
            )

    #: the states of the partitions this worker is standby for: --standby-replicas, and warm-ups
    standbys = aggregation.standbys = Standbys(
        lambda: changelog_consumer(config, settings.app_id), changelog.name, aggregation.new_state
    )
    state_dir = settings.state_dir
    #: writes checkpoints one at a time, off the event loop; partition -> its latest write
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
    writes: dict[int, concurrent.futures.Future[None]] = {}

    def read_checkpoint(p: int) -> tuple[checkpoint.Header, checkpoint.Image]:
        """The checkpoint of partition ``p`` in the state dir, decoded; FileNotFoundError, OSError or
        CheckpointError when there is none usable. Blocking."""
        assert state_dir is not None
        return checkpoint.decode(
            checkpoint.path(state_dir, changelog.name, p).read_bytes(), changelog.name, p
        )

    #: the checkpoints in the state dir as the worker started, read and decoded while Faust starts and joins
    #: the group (2 s and more on the 2-core box) instead of after the first assignment, whose restore takes
    #: them (:func:`restore_states`); later restores read the files. A file replaced meanwhile (a worker
    #: sharing the directory) leaves an older image, still true through its offset (or refused)
    preloads: dict[int, CheckpointRead] = {}
    if state_dir is not None:
        preloader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-preload")
        preloads.update((p, preloader.submit(read_checkpoint, p)) for p in range(settings.partitions))
        preloader.shutdown(wait=False)

    def refused(partition: int, reason: str) -> None:
        assert state_dir is not None
        file = checkpoint.path(state_dir, changelog.name, partition)
        log.warning(
            "ns-stats partition %d: checkpoint %s not used, %s: reading the whole changelog",
            partition,
            file,
            reason,
        )

    def from_checkpoints(
        consumer: Consumer,
        partitions: Iterable[int],
        committed: Mapping[int, int],
        preloaded: Mapping[int, CheckpointRead],
    ) -> tuple[dict[int, tuple[NsState, int]], set[int]]:
        """States loaded from the usable checkpoints of ``partitions`` in the state dir (read already when
        in ``preloaded``), with the changelog offset to read on from (``read_changelog``'s ``resume``), and
        those of them with nothing to read (nobody committed since, the changelog ends at the checkpoint). A
        missing, stale or damaged file is logged with the reason and left out: its partition is read from
        the changelog's beginning."""
        assert state_dir is not None
        found: dict[int, tuple[checkpoint.Header, checkpoint.Image]] = {}
        for p in partitions:
            try:
                found[p] = preloaded[p].result() if p in preloaded else read_checkpoint(p)
            except FileNotFoundError:
                log.info(
                    "ns-stats partition %d: no checkpoint in %s, reading the whole changelog", p, state_dir
                )
            except (OSError, checkpoint.CheckpointError) as exc:
                refused(p, str(exc))
        if not found:
            return {}, set()
        try:
            bounds = watermarks(consumer, changelog.name, found)
        except KafkaException as exc:
            for p in found:
                refused(p, f"the changelog's offsets are unknown ({exc})")
            return {}, set()
        resume: dict[int, tuple[NsState, int]] = {}
        complete: set[int] = set()
        for p, (header, image) in found.items():
            reason = checkpoint.rejection(header, *bounds[p], committed.get(p, -1))
            if reason is not None:
                refused(p, reason)
                continue
            state = aggregation.new_state()
            checkpoint.install(state, image)
            resume[p] = (state, header.changelog_offset)
            if header.changelog_offset == bounds[p][1] and committed.get(p) == header.committed_offset:
                complete.add(p)
        return resume, complete

    def restore_blocking(
        restoring: Restoring,
        kept: Mapping[int, tuple[NsState, int]],
        standby: Mapping[int, tuple[NsState, int]],
        preloaded: Mapping[int, CheckpointRead],
    ) -> Restored | None:
        """The kept states still current (the group's committed offset of their partition is still the one
        this worker's last commit of it committed), and the other partitions' states from ``standby``
        (this worker's standby states, with their changelog offsets), their checkpoints (``preloaded``: read
        already) and the changelog (None when the restore was stopped)."""
        # a kept state being written to a checkpoint must not change until it is written
        concurrent.futures.wait([writes[p] for p in restoring.partitions if p in writes])
        with offsets_consumer(config, settings.app_id) as consumer:
            committed = committed_offsets(consumer, settings.stats_topic, restoring.partitions)
            restored = Restored(
                {p: state for p, (state, offset) in kept.items() if committed.get(p) == offset}
            )
            rest = restoring.partitions - set(restored.kept)
            if not rest:
                return restored
            warm = {p: standby[p] for p in rest & set(standby)}
            if rest - set(warm):  # a standby read the changelog: it exists
                ensure_changelog(rest - set(warm))
            resume, complete = (
                ({}, set())
                if state_dir is None
                else from_checkpoints(consumer, rest - set(warm), committed, preloaded)
            )
        with collector_paused():
            for p in complete:
                resume[p][0].loaded()
        if to_read := rest - complete:
            log.info(
                "ns-stats partitions restoring: %s read from %s (%s from standbys: their tail only)",
                sorted(to_read),
                changelog.name,
                sorted(warm) or "none",
            )
        read = read_changelog(
            config,
            changelog.name,
            rest - complete,
            aggregation.new_state,
            restoring.stop,
            settings.app_id,
            {**resume, **warm},
        )
        if read is None:
            return None
        states, restored.records = read
        restored.standby = {p: state for p, (state, _) in warm.items()}
        restored.checkpoint = {p: state for p, (state, _) in resume.items()}
        restored.changelog = {p: state for p, state in states.items() if p not in resume and p not in warm}
        return restored

    restores: set[asyncio.Future[None]] = set()

    async def restore(
        restoring: Restoring,
        kept: Mapping[int, tuple[NsState, int]],
        standby: Mapping[int, tuple[NsState, int]],
        preloaded: Mapping[int, CheckpointRead],
    ) -> None:
        started = time.monotonic()
        try:
            restored = await asyncio.to_thread(restore_blocking, restoring, kept, standby, preloaded)
        except Exception as exc:
            await app.crash(exc)
            return
        if restored is None:
            log.info(
                "ns-stats partitions restore stopped after %.1f s (revoked meanwhile): %s",
                time.monotonic() - started,
                sorted(restoring.partitions),
            )
            return
        ready = aggregation.restored(
            restoring, {p: state for states in restored.sources().values() for p, state in states.items()}
        )
        app.consumer.held.difference_update(TP(settings.stats_topic, p) for p in ready)
        await resume_paused(restoring)
        seconds = time.monotonic() - started
        aggregation.count_restore(restored, ready, seconds)
        if ready:
            log.info(
                "ns-stats partitions ready in %.1f s (%d name servers): %s kept (their state was current), "
                "%s from standbys, %s from checkpoints, %s read from %s (%d changelog records read)",
                seconds,
                sum(len(aggregation.states[p].totals) for p in ready),
                sorted(set(restored.kept) & set(ready)) or "none",
                sorted(set(restored.standby) & set(ready)) or "none",
                sorted(set(restored.checkpoint) & set(ready)) or "none",
                sorted(set(restored.changelog) & set(ready)) or "none",
                changelog.name,
                restored.records,
            )
            # commit now rather than at the next interval: the counts of a partition taken over (a failover,
            # a restart) have not moved since its last owner's last commit. All partitions, as Faust's timer
            # commits: under exactly_once one transaction holds the raw and ns-stats partitions of a number.
            try:
                await app.consumer.commit()
            except Exception:
                log.exception("commit after the restore failed (the next interval's commit tries again)")

    async def resume_paused(restoring: Restoring) -> None:
        """Fetch the partitions paused while they restored again, from the record after the last one that
        waited: what was fetched after the pause was dropped by Faust (its fetch loop delivers only active
        partitions), so the seek is what makes those records come again."""
        for p, offset in sorted(restoring.resume.items()):
            tp = TP(settings.stats_topic, p)
            await app.consumer.seek(tp, offset)
            app.consumer.resume_partitions([tp])
            log.info("ns-stats partition %d resumed from offset %d (its state is ready)", p, offset)
        restoring.resume.clear()

    def leaving_offsets(
        leaving: Mapping[int, tuple[NsState, int]],
    ) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
        """The group's committed ns-stats offsets and the changelog's watermarks of the partitions
        ``leaving`` this worker. Blocking."""
        with offsets_consumer(config, settings.app_id) as consumer:
            return (
                committed_offsets(consumer, settings.stats_topic, leaving),
                watermarks(consumer, changelog.name, leaving),
            )

    def checkpoint_headers(
        leaving: Mapping[int, tuple[NsState, int]],
        committed: Mapping[int, int],
        ends: Mapping[int, tuple[int, int]],
    ) -> list[tuple[NsState, checkpoint.Header]]:
        """The states of ``leaving`` (partition -> state, its last commit offset) that may be written to a
        checkpoint, with their headers: those with no change after the last commit, which the group has
        committed (``committed``: so its changelog records went through too). X is the changelog's end
        (``ends``: its watermarks, asked as the state left)."""
        headers = []
        for p, (state, last_commit) in sorted(leaving.items()):
            if state.unwritten():
                log.info("no checkpoint of ns-stats partition %d: it changed after its last commit", p)
            elif committed.get(p) != last_commit:
                log.info(
                    "no checkpoint of ns-stats partition %d: the group's committed offset %s is not its last "
                    "commit %d",
                    p,
                    committed.get(p),
                    last_commit,
                )
            else:
                headers.append(
                    (state, checkpoint.Header(changelog.name, p, ends[p][1], last_commit, time.time()))
                )
        return headers

    def write_checkpoint(directory: Path, state: NsState, header: checkpoint.Header) -> None:
        """Write ``state``'s checkpoint (in the writer thread); a failure is logged, not raised."""
        started = time.monotonic()
        try:
            image = checkpoint.image_of(state)
            data = checkpoint.encode(header, image)
            checkpoint.write(checkpoint.path(directory, header.changelog_topic, header.partition), data)
        except Exception:
            log.exception("checkpoint of ns-stats partition %d not written", header.partition)
            return
        log.info(
            "checkpoint of ns-stats partition %d written in %.1f s: %d entries, %d name servers, changelog "
            "through offset %d (%.1f MB)",
            header.partition,
            time.monotonic() - started,
            image.entries,
            len(state.totals),
            header.changelog_offset,
            len(data) / 1e6,
        )

    #: revoked partitions' states and checkpoint headers, written once the next assignment shows that they
    #: left (one given back is taken back at once: writing it first would hold it up, see ``writes``)
    unwritten: dict[int, tuple[NsState, checkpoint.Header]] = {}

    #: with standbys: the changelog's end of each kept state's partition at its revocation, the offset a
    #: standby seeded with that state reads on from (``processors/standby.py``)
    revoked_ends: dict[int, int] = {}

    async def note_leaving(leaving: Mapping[int, tuple[NsState, int]], *, revoked: bool) -> None:
        """For the states ``leaving`` this worker (partition -> state, its last commit offset): note their
        checkpoints in ``unwritten`` (with ``--state-dir``: :func:`checkpoint_headers`) and, after a
        revocation with standbys, the changelog's ends of those whose last commit went through (the
        group's committed offset is that commit's) in ``revoked_ends``, a standby of one of them starts
        there. The offsets are asked before this returns: a revocation's new owner writes only after."""
        seeds = revoked and settings.standby_replicas > 0
        if not leaving or (state_dir is None and not seeds):
            return
        try:
            committed, ends = await asyncio.to_thread(leaving_offsets, leaving)
        except Exception:
            log.exception(
                "offsets of ns-stats partitions %s unknown: no checkpoints of them, their standbys read from "
                "the beginning",
                sorted(leaving),
            )
            return
        if state_dir is not None:
            headers = checkpoint_headers(leaving, committed, ends)
            unwritten.update((header.partition, (state, header)) for state, header in headers)
        if seeds:
            for p, (_, last_commit) in sorted(leaving.items()):
                if committed.get(p) == last_commit:
                    revoked_ends[p] = ends[p][1]
                else:
                    log.info(
                        "ns-stats partition %d left without a standby seed: the group's committed offset %s "
                        "is not its last commit %d",
                        p,
                        committed.get(p),
                        last_commit,
                    )

    def write_checkpoints(partitions: Iterable[int]) -> None:
        """Start writing the noted checkpoints of ``partitions`` (in the writer thread)."""
        assert state_dir is not None or not unwritten
        for p in sorted(set(partitions) & set(unwritten)):
            state, header = unwritten.pop(p)
            writes[p] = writer.submit(write_checkpoint, state_dir, state, header)

    @app.on_partitions_revoked.connect
    async def keep_states(sender: Any, revoked: set[TP], **_: Any) -> None:
        """Revoked partitions' states are kept until the next assignment, which may give them back (see
        :class:`Aggregation`; what they applied is committed and in the changelog), and with ``--state-dir``
        their checkpoints planned, written if they left (Faust sends this signal after the revocation's
        commit); with standbys, their changelog ends noted (a standby of one that left starts from it)."""
        mine = {tp.partition for tp in revoked if tp.topic == settings.stats_topic}
        aggregation.keep(mine)
        app.consumer.held.difference_update(TP(settings.stats_topic, p) for p in mine)
        await note_leaving({p: aggregation.kept[p] for p in mine if p in aggregation.kept}, revoked=True)

    shutdown = app.on_shutdown

    async def on_shutdown() -> None:
        """With ``--state-dir``, write the checkpoints of the partitions still held, once the consumer has
        stopped (its final commit done: mode stops the app's children, then calls this) and wait for every
        checkpoint being written."""
        if state_dir is not None:
            for p in sorted(set(aggregation.states) - set(aggregation.last_commit)):
                log.info("no checkpoint of ns-stats partition %d: no commit since it was restored", p)
        await note_leaving(
            {
                p: (state, aggregation.last_commit[p])
                for p, state in aggregation.states.items()
                if p in aggregation.last_commit
            },
            revoked=False,
        )
        write_checkpoints(list(unwritten))
        await asyncio.to_thread(writer.shutdown)
        await asyncio.to_thread(standbys.close)
        await shutdown()

    app.on_shutdown = on_shutdown  # type: ignore[method-assign]

    @app.on_partitions_assigned.connect
    async def restore_states(sender: Any, assigned: set[TP], **_: Any) -> None:
        """Take back the current kept states of newly assigned partitions, and rebuild the others from a
        standby state or the changelog, in the background (see the module doc); then tail the partitions
        this worker is now standby for (the assignor's metadata of this assignment)."""
        mine = {
            tp.partition
            for tp in assigned
            if tp.topic == settings.stats_topic
            and tp.partition not in aggregation.states
            and tp.partition not in aggregation.restoring
        }
        # the revoked states that left are written now; one given back is taken back (when current) or
        # read again, not written
        write_checkpoints(set(unwritten) - mine)
        for p in mine:
            unwritten.pop(p, None)
        leaving = {p: state for p, (state, _) in aggregation.kept.items() if p not in mine}
        kept = aggregation.take_kept(mine)
        standby = standbys.take(mine)
        seeds = {
            p: (state, revoked_ends[p])
            for p, state in leaving.items()
            if p in revoked_ends and not state.unwritten()
        }
        standbys.update(standby_partitions(app.assignor.assigned_standbys(), settings.stats_topic), seeds)
        revoked_ends.clear()
        preloaded = dict(preloads)  # the first assignment's (see preloads); the others are dropped
        preloads.clear()
        if mine:
            app.consumer.held.update(TP(settings.stats_topic, p) for p in mine)
            task = asyncio.ensure_future(restore(aggregation.begin_restore(mine), kept, standby, preloaded))
            restores.add(task)
            task.add_done_callback(restores.discard)

    async def counts_partition(p: int) -> int | None:
        """The counts partition of ns-stats partition ``p``'s snapshots: ``p`` itself when the two topics
        have as many partitions (a name server's counts partition is then its ns-stats partition), else
        None (by key)."""
        same = (await output.partitioner(settings.counts_topic)).count == (
            await output.partitioner(settings.stats_topic)
        ).count
        return p if same else None

    attachments: Any = app._attachments
    publish = attachments.publish_for_tp_offset

    async def publish_for_tp_offset(tp: TP, offset: int) -> list[Awaitable[Any]]:
        """Faust's commit of ``tp`` also publishes what changed in its state since the last snapshot, then
        writes it to the changelog (module doc)."""
        pending = await publish(tp, offset)
        state = aggregation.states.get(tp.partition) if tp.topic == settings.stats_topic else None
        if state is not None:
            state.committed(offset)  # every record below it was processed: the mark moves up
            aggregation.last_commit[tp.partition] = offset
            pending += await output.send_for_commit(
                tp,
                settings.counts_topic,
                state_snapshots(state, settings.window_seconds),
                partition=await counts_partition(tp.partition),
            )
            pending += await output.send_for_commit(
                tp, changelog.name, state.changelog(), partition=tp.partition
            )
        return pending

    attachments.publish_for_tp_offset = publish_for_tp_offset

    @app.agent(stats, name="dnsqr-ns-aggregator")
    async def aggregate(stream: StreamT[bytes]) -> None:
        """Apply each ns-stats record to its partition's state (see the module doc)."""
        done = app.consumer.done
        event: EventT
        async for event in stream.events():
            message = event.message
            if done(message.tp, message.offset):
                counters.redelivered_stats += 1
                continue
            try:
                pause = aggregation.offer(message.tp.partition, message.offset, message.value)
            except ValueError as exc:
                log.warning("ns-stats record at %s offset %d skipped: %s", message.tp, message.offset, exc)
                counters.bad_stats += 1
                continue
            if pause:
                app.consumer.pause_partitions([message.tp])
                log.info(
                    "ns-stats partition %d paused at offset %d while its state is restored: its waiting "
                    "records reached --restore-buffer-mb %s",
                    message.tp.partition,
                    message.offset,
                    settings.restore_buffer_mb,
                )

    @app.task
    async def declare_counts_topic() -> None:
        """Create the counts topic when missing, so consumers can subscribe before the first snapshot."""
        await counts_topic.maybe_declare()

    #: the assignment (actives, standbys) this worker last asked to leave (at most one probe per assignment)
    probed: list[tuple[frozenset[TP], frozenset[TP]]] = []

    @app.timer(PROBE_SECONDS)
    async def probe_warmups() -> None:
        """Ask for a rebalance once the standbys this worker holds have caught up and one of them belongs
        to a member holding more than its share (``processors/warmup.py``): the partition then moves here
        warm. Not while a restore runs, and once per assignment."""
        assignor = app.assignor
        assignment = (frozenset(assignor.assigned_actives()), frozenset(assignor.assigned_standbys()))
        if aggregation.restoring or (probed and probed[-1] == assignment):
            return
        owned = {
            url: list(topics.get(settings.stats_topic, ()))
            for url, topics in assignor.external_topic_distribution.items()
        }
        partitions = standby_partitions(assignment[1], settings.stats_topic)
        caught_up = standbys.caught_up(partitions, settings.acceptable_recovery_lag)
        if should_probe(owned, str(app.conf.canonical_url), partitions, caught_up):
            probed[:] = [assignment]
            aggregation.probes += 1
            log.info(
                "warm-up: standbys of ns-stats partitions %s caught up, asking for a rebalance",
                sorted(partitions),
            )
            await app.consumer.request_rejoin()

    @app.timer(settings.snapshot_interval)
    async def publish_snapshots() -> None:
        """Publish a snapshot of every (name server, window) changed since the last tick, and the totals of
        the name servers changed outside the live windows."""
        for p, state in list(aggregation.states.items()):
            records = state_snapshots(state, settings.window_seconds)
            await output.send(
                settings.counts_topic, records, source=None, partition=await counts_partition(p)
            )

    return aggregation
