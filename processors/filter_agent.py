"""The filter agent: raw containers in; EDNS0 failures and per-name-server deltas out.

Each Kafka record of the raw topic is one NMSG container (hundreds to a thousand dnsqr records), so a Faust
event carries a container and Faust's per-event cost (~150 us) is spread over all of its records. The cost
that remains is per *output*: ``topic.send()`` costs ~100 us a message. So the agent takes several
containers at a time (``stream.take_events``), filters them into per-partition lists, and hands each list to
the producer as whole record batches (:class:`KafkaBatchOutput`), one per destination partition.

Delivery: the batch's events are acknowledged by Faust only after the loop body returns, and the body
returns only once the broker has acknowledged every output of the batch (acks=all). A crash before that
re-delivers the containers (at-least-once; outputs are keyed and the sink is idempotent).

Under ``exactly_once`` the outputs must be in the *same* transaction as the offsets of the events they
come from. Sending them from the agent body does not achieve that: Faust's commit timer computes the
offsets to commit (from acknowledged events) and then commits the input partition's transaction, so
outputs sent while a batch is still unacknowledged are committed with the *previous* offsets; a crash
before the next commit replays the batch and duplicates them (measured: ~15% of failures duplicated with
a worker SIGKILLed mid-stream, tests/processors/test_worker_crash.py). So the outputs are held, tagged
with the input offset they derive from, and sent from Faust's commit path itself (the hook Faust uses for
its own "attached" messages, called with exactly the offsets about to be committed, before the
transaction commits). Held outputs of an earlier consumer generation are dropped: after a rebalance Faust
seeks back to the committed offsets and the events are processed again.

Per-name-server deltas are summed over the whole batch of containers, per input partition and
(name server, window), before they are sent: the aggregator's cost is per delta event, so it scales with
the number of distinct name servers in a batch rather than with the number of records.

A container that does not decode (or whose processing raises) goes to the dead-letter topic unchanged, with
the error and its reason (:func:`dead_letter_reason`) in its headers, and is counted; the agent carries on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import faust
from faust.types import TP, EventT, StreamT

from dnsqr_kafka.key_partition import KeyPartitioner
from dnsqr_schemas.dead_letter import DeadLetterHeaders
from dnsqr_schemas.edns_failure import encode_failure
from nmsgdns.classify import classify_failure, observe
from nmsgdns.container import decode_container
from nmsgdns.edns import Verdict, judgement_of, triage
from nmsgdns.errors import ContainerError, PayloadError, TruncatedError
from nmsgdns.payload import payload_time
from processors.agent_counters import AgentCounters
from processors.counts import EVENT_ANSWERED, EVENT_FAILURE, EVENT_TIMEOUT, Counts
from processors.delta_batch import MAX_ROWS
from processors.deltas import CountsKey, encode, fold
from processors.failure_record import failure_dict, failure_fast
from processors.receipts import Receipt, encode_progress, progress_key
from processors.settings import Settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
#: (key, value) of one output record
Record = tuple[bytes | None, bytes]

#: At most this many containers (about a million records) per batch...
BATCH_CONTAINERS = 64
#: ...or what arrived within this many seconds.
BATCH_SECONDS = 0.5

#: Offset of the last event of each input partition in the batch being processed (exactly_once needs it
#: to hold outputs until that offset is committed). A context variable rather than a ``send`` argument so
#: that :class:`Output` implementations that do not care (unit tests) keep their signature.
batch_offsets: ContextVar[Mapping[TP, int]] = ContextVar("dnsqr_batch_offsets", default=MappingProxyType({}))
#: Consumer generation the batch being processed was fetched in (exactly_once), for the same reason.
batch_generation: ContextVar[int | None] = ContextVar("dnsqr_batch_generation", default=None)


class Output(Protocol):
    """Where the agents' records go: Kafka in a worker, a list in unit tests."""

    async def send(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        source: TP | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Send ``records`` to ``topic``; return once they are durable. ``source`` is the input partition
        they derive from (it selects the transactional producer under exactly_once); ``partition`` sends
        them all to that partition instead of their keys'."""

    async def partitioner(self, topic: str) -> KeyPartitioner:
        """The partition of ``topic`` a record with a given key goes to."""

    async def send_for_commit(
        self, tp: TP, topic: str, records: Sequence[Record], *, partition: int | None = None
    ) -> list[Awaitable[Any]]:
        """Send ``records`` as part of committing ``tp``; the futures the commit must wait for."""


@dataclass
class ContainerResult:
    """What one container produced: its record count, failures (key, Avro value) and counted records
    (flat quadruples, :mod:`processors.deltas`)."""

    records: int
    failures: list[Record]
    counted: list[object]


class WindowClock:
    """Record time -> window start, fast enough to run on every counted record.

    libnmsg writes ``time_sec`` as the third field, a 5-byte varint at offset 5 for any time between 1978
    and 3058, so the five bytes themselves identify the second: a slice and a dict lookup instead of a
    protobuf walk. Other layouts fall back to :func:`nmsgdns.payload.payload_time`.
    """

    def __init__(self, window_seconds: int) -> None:
        self.window = window_seconds
        self._cache: dict[bytes, int] = {}

    def window_start(self, payload: bytes) -> int:
        if len(payload) > 10 and payload[4] == 0x18 and payload[9] < 0x80 and payload[0] == 0x08:
            stamp = payload[5:10]
            start = self._cache.get(stamp)
            if start is None:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                start = self._cache[stamp] = self._start(payload_time(payload)[0])
            return start
        return self._start(payload_time(payload)[0])

    def _start(self, time_sec: int) -> int:
        return time_sec - time_sec % self.window


def filter_container(data: bytes, clock: WindowClock) -> ContainerResult:
    """Apply the EDNS0 rule to every payload of one container; raises NmsgDnsError if it does not decode.

    Nothing is shared with the caller until the whole container is done, so a container that fails half
    way leaves no partial counts behind (it goes to the dead-letter topic whole).

    Each payload is judged by :func:`nmsgdns.edns.triage` (``judge(detail=True)`` without the protobuf
    record, in C for the common case): only selected records need the record, so only they decode it,
    and in the common case not even they: :data:`processors.failure_record.failure_fast` returns their
    name server, kind and Avro value in one C call. The results are the same as judging every payload
    with ``judge`` and building each failure in Python (tests hold them to it).
    """
    payloads = decode_container(data).payloads
    failures: list[Record] = []
    counted: list[object] = []
    count = counted.extend  # one call per counted record: (response_ip, window start, what, kind)
    selected = Verdict.SELECTED
    fast = failure_fast
    for payload in payloads:
        t = triage(payload)
        verdict, query_opt, response_opt, response, answered, timeout, response_ip, rtype, _sec, _nsec = t
        if verdict is selected:
            # one C call for the whole failure record; None (unusual records) takes the Python path
            f = fast(payload) if fast is not None else None
            if f is not None:
                ns, kind, avro = f
            else:
                j = judgement_of(payload, t)
                ns = j.ns_ip or ""
                detail = classify_failure(j.record, j.query_opt, j.response)
                kind = detail.kind
                avro = encode_failure(failure_dict(payload, j, kind, detail=detail))
            failures.append((ns.encode(), avro))
            # counted against the failure's name server: "" (key b"") when the address is not usable
            ip = response_ip if len(response_ip) in (4, 16) else b""
            count((ip, clock.window_start(payload), EVENT_FAILURE, kind))
        elif answered or timeout:
            if len(response_ip) not in (4, 16):
                continue  # Judgement.ns_ip is None: no usable name server to count against
            if timeout:
                # counted in ``timeouts``; observe() would call it the "timeout" observation
                count((response_ip, clock.window_start(payload), EVENT_TIMEOUT, None))
            else:
                seen = None
                if response_opt is not None:
                    seen = observe(rtype, query_opt, response_opt, response[3] & 0x0F)  # type: ignore[index]
                count((response_ip, clock.window_start(payload), EVENT_ANSWERED, seen))
    return ContainerResult(len(payloads), failures, counted)


class NotBytes(TypeError):
    """A raw-topic value that is not container bytes (a null record)."""


#: The dead-letter reason (:data:`dnsqr_schemas.dead_letter.WORKER_REASONS`) of each exception the filter
#: raises on bad input, most specific class first. :func:`filter_container` raises the domain errors of
#: the container walk (ContainerError, TruncatedError) and of the envelope walk behind a judged payload's
#: time (PayloadError); DnsWireError stays inside the rule (a malformed side is a verdict), and the other
#: domain errors belong to inputs the worker does not read (fragments, pcap, channel aliases).
REASON_OF_ERROR: tuple[tuple[type[Exception], str], ...] = (
    (TruncatedError, "truncated"),
    (ContainerError, "container"),
    (PayloadError, "payload"),
    (NotBytes, "not_bytes"),
)
#: Any other exception: a bug, which still must not stop the stream.
OTHER_REASON = "other"


def dead_letter_reason(exc: BaseException) -> str:
    """The ``dlq.error.type`` of a container the filter rejected with ``exc``: a word of the contract's
    stable set (``schemas/dead_letter.md``), which the metrics count it under too, whatever the class of
    ``exc`` is called (a private subclass of a domain error gets its public ancestor's reason)."""
    for cls, reason in REASON_OF_ERROR:
        if isinstance(exc, cls):
            return reason
    return OTHER_REASON


def dead_letter_headers(exc: BaseException, source: TP, offset: int) -> Headers:
    """The dead-letter contract's headers (``schemas/dead_letter.md``) of a container the filter rejected:
    why, and its raw-topic coordinates, which also identify a copy sent again after an at_least_once
    replay (under exactly_once the dead letter is in the transaction of its offset, so it is sent once)."""
    return DeadLetterHeaders(
        stage="worker",
        error=str(exc),
        error_type=dead_letter_reason(exc),
        topic=source.topic,
        partition=source.partition,
        offset=offset,
    ).encode()


@dataclass
class PartitionBatch:
    """Outputs derived from one input partition within one batch of events."""

    failures: list[Record] = field(default_factory=list)
    #: per (name server address, window) counts (:mod:`processors.deltas`)
    counts: dict[CountsKey, Counts] = field(default_factory=dict)
    #: one per container of the batch, judged or dead-lettered (``processors/receipts.py``)
    receipts: list[Receipt] = field(default_factory=list)

    def add(self, offset: int, result: ContainerResult) -> None:
        """Take a container's outputs (only once it was processed whole)."""
        self.receipts.append(Receipt(offset, result.records, len(result.failures)))
        self.failures.extend(result.failures)
        fold(self.counts, result.counted)

    def deltas(self, partition_of: KeyPartitioner) -> dict[int, list[bytes]]:
        """The counts as ``NsStatsBatch`` records (``schemas/ns_stats.avsc``) by ns-stats partition: one
        record per partition the name servers fall in (``partition_of`` their key), split into parts of
        :data:`processors.delta_batch.MAX_ROWS` rows."""
        return encode(self.counts, partition_of, MAX_ROWS)


@dataclass
class FilterOutputs:
    """Where the filter agent's results go: its settings' topics through ``output``, its counts into
    ``counters``, and ``worker`` (``host:pid``) into its receipts."""

    settings: Settings
    counters: AgentCounters
    output: Output
    worker: str


async def process_events(
    app: faust.App, outputs: FilterOutputs, events: Sequence[EventT], clock: WindowClock
) -> None:
    """Filter a batch of raw events and send every output; returns when they are durable (at_least_once) or
    held for the commit of their offsets (exactly_once)."""
    generation: int | None = None
    if outputs.settings.processing_guarantee == "exactly_once":
        # Events fetched before the last rebalance can still sit in ``take_events``' buffer; Faust has
        # sought back to the committed offsets and delivers them again under the new generation, so their
        # outputs here would be a second copy.
        generation = app.consumer_generation_id
        current = [e for e in events if getattr(e.message, "generation_id", None) in (generation, None)]
        if len(current) < len(events):
            log.info("skipping %d events fetched before the last rebalance", len(events) - len(current))
        events = current
    last: dict[TP, int] = {}
    for event in events:
        tp, offset = event.message.tp, event.message.offset
        if offset > last.get(tp, -1):
            last[tp] = offset
    token = batch_offsets.set(last)
    gen_token = batch_generation.set(generation)
    try:
        await _process_events(outputs, events, clock)
    finally:
        batch_generation.reset(gen_token)
        batch_offsets.reset(token)


async def _process_events(outputs: FilterOutputs, events: Sequence[EventT], clock: WindowClock) -> None:
    settings = outputs.settings
    counters = outputs.counters
    output = outputs.output
    batches: dict[TP, PartitionBatch] = {}
    for event in events:
        message = event.message
        data = message.value
        batch = batches.get(message.tp) or batches.setdefault(message.tp, PartitionBatch())
        try:
            if not isinstance(data, bytes | bytearray):
                raise NotBytes(f"raw topic value is {type(data).__name__}, expected container bytes")
            result = filter_container(bytes(data), clock)
        except Exception as exc:
            # Any exception, not only NmsgDnsError: one poison container must not stop the stream; it is
            # kept whole in the dead-letter topic for a replay once the cause is fixed.
            log.warning(
                "container at %s offset %d to %s: %s", message.tp, message.offset, settings.dlq_topic, exc
            )
            counters.dead_letters += 1
            await output.send(
                settings.dlq_topic,
                [(message.key, bytes(data) if isinstance(data, bytes | bytearray) else b"")],
                source=message.tp,
                headers=dead_letter_headers(exc, message.tp, message.offset),
            )
            batch.receipts.append(Receipt(message.offset, 0, 0, dead_lettered=True))
            continue
        counters.containers += 1
        counters.records += result.records
        counters.failures += len(result.failures)
        batch.add(message.offset, result)
    stats_partition = await output.partitioner(settings.stats_topic)
    for source, batch in batches.items():
        deltas = batch.deltas(stats_partition)
        counters.deltas += len(batch.counts)
        await asyncio.gather(
            output.send(settings.failures_topic, batch.failures, source=source),
            *(
                output.send(
                    settings.stats_topic,
                    [(None, value) for value in values],
                    source=source,
                    partition=p,
                )
                for p, values in deltas.items()
            ),
        )
        # The receipt goes out once the outputs it vouches for are acknowledged (or, under exactly_once,
        # in the same transaction), so a receipt on the progress topic proves they are on theirs.
        receipt = encode_progress(outputs.worker, source.topic, source.partition, batch.receipts)
        await output.send(
            settings.progress_topic, [(progress_key(source.topic, source.partition), receipt)], source=source
        )


class Redelivery:
    """Drops records that were processed already: Faust can deliver an offset twice.

    It does so after a rebalance and after the commit guard (:mod:`processors.commit_guard`) seeks back to
    fetch a record that went missing. An offset below the committed one, or already acknowledged, was
    processed (batches are taken and acknowledged one after another); processing it again would only
    duplicate its outputs, which under exactly_once would be committed twice. ``done`` is the consumer's own
    record of that (:meth:`processors.commit_guard.CommitGuardConsumer.done`); a second copy within one
    batch is dropped too.
    """

    def __init__(self, done: Callable[[TP, int], bool]) -> None:
        self._done = done

    def fresh(self, events: Sequence[EventT]) -> list[EventT]:
        """``events`` without the ones processed already."""
        out: list[EventT] = []
        taken: set[tuple[TP, int]] = set()
        for event in events:
            key = (event.message.tp, event.message.offset)
            if key in taken or self._done(*key):
                continue
            taken.add(key)
            out.append(event)
        return out


@dataclass
class HeldOutput:
    """Records held under exactly_once until the input offset they derive from is committed."""

    offset: int
    generation: int
    topic: str
    records: list[Record]
    headers: Headers | None
    partition: int | None


class KafkaBatchOutput:
    """Sends records through the app's aiokafka producer as one record batch per destination partition.

    This reaches under Faust's producer wrapper (its aiokafka producer, and under exactly_once its
    per-partition transactional producers and their locks), because Faust's own ``Topic.send`` builds a
    message, future and callback per record: ~100 us each, which would be the filter's bottleneck.
    Keys are partitioned like Kafka's default partitioner (murmur2, :class:`KeyPartitioner`).

    Under exactly_once, outputs with a ``source`` are held and sent by :meth:`publish_held` from Faust's
    commit (see the module doc).
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        #: by partition count: a key's partition depends on nothing else, so the failures and ns-stats
        #: topics (both keyed by name server) share one cache when they have as many partitions
        self._partitioners: dict[int, KeyPartitioner] = {}
        self._held: dict[TP, list[HeldOutput]] = {}

    def _producer(self, source: TP) -> tuple[Any, AbstractAsyncContextManager[Any]] | None:
        """The transactional producer of ``source`` and its lock; None when ``source`` is no longer
        assigned to us (its events will be processed again by its new owner)."""
        faust_producer: Any = self.app.producer
        group = self.app.assignor.group_for_topic(source.topic)
        tid = f"{self.app.conf.id}-{group}-{source.partition}"
        producer = faust_producer._transaction_producers.get(tid)
        if producer is None:
            return None
        return producer, faust_producer._trn_locks[tid]

    def _key_partitioner(self, count: int) -> KeyPartitioner:
        partitioner = self._partitioners.get(count)
        if partitioner is None:
            partitioner = self._partitioners[count] = KeyPartitioner(count)
        return partitioner

    async def partitioner(self, topic: str) -> KeyPartitioner:
        producer: Any = self.app.producer
        partitions = await self._partitions(producer._ensure_producer(), topic)
        return self._key_partitioner(len(partitions))

    async def _partitions(self, producer: Any, topic: str) -> list[int]:
        """``topic``'s partitions, once ``producer``'s client tracks the topic.

        aiokafka's client refreshes metadata only for the topics it tracks, and tracks a topic only if it
        was unknown when first used: one learnt from a full metadata response (Faust asks for one at
        start) is not tracked, and the first topic created later (this app's changelog) narrows every
        refresh to the tracked ones. The untracked topics then lose their leaders in the client, and their
        queued batches waited forever (a worker stuck after its first commit, seen with the e2e bench).
        """
        client = producer.client
        if topic not in client._topics:
            client.add_topic(topic)
        return sorted(await producer.partitions_for(topic))

    async def send(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        source: TP | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        if not records:
            return
        if self.app.in_transaction and source is not None:
            offset = batch_offsets.get().get(source)
            if offset is None:
                raise RuntimeError(f"exactly_once output for {source} outside a batch of its events")
            generation = batch_generation.get()
            if generation is None:
                generation = self.app.consumer_generation_id
            self._held.setdefault(source, []).append(
                HeldOutput(offset, generation, topic, list(records), headers, partition)
            )
            return
        producer: Any = self.app.producer
        await asyncio.gather(
            *await self._send_batches(producer._ensure_producer(), topic, records, headers, partition)
        )

    async def send_for_commit(
        self, tp: TP, topic: str, records: Sequence[Record], *, partition: int | None = None
    ) -> list[Awaitable[Any]]:
        """Send ``records`` while Faust commits ``tp`` (from its commit path, as :meth:`publish_held`): into
        ``tp``'s transaction under exactly_once, else at once. Returns the futures of their delivery, which
        the commit waits for; none when ``tp`` is no longer assigned here."""
        if not records:
            return []
        if not self.app.in_transaction:
            producer: Any = self.app.producer
            return await self._send_batches(producer._ensure_producer(), topic, records, None, partition)
        target = self._producer(tp)
        if target is None:
            return []
        transactional, lock = target
        async with lock:
            return await self._send_batches(transactional, topic, records, None, partition)

    async def _send_batches(
        self,
        producer: Any,
        topic: str,
        records: Sequence[Record],
        headers: Headers | None,
        partition: int | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Append ``records`` to the producer as one batch per partition (their keys', or ``partition``);
        the futures of their delivery."""
        pending: list[asyncio.Future[Any]] = []
        partitions = await self._partitions(producer, topic)
        key_partition = self._key_partitioner(len(partitions))
        builders: dict[int, Any] = {}
        for key, value in records:
            if partition is not None:
                p = partition
            elif key is None:
                p = random.choice(partitions)
            else:
                p = partitions[key_partition(key)]
            builder = builders.get(p)
            if builder is None:
                builder = builders[p] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                pending.append(await producer.send_batch(builder, topic, partition=p))
                builder = builders[p] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                    raise ValueError(f"a {len(value)}-byte record does not fit in one producer batch")
        for p, builder in builders.items():
            pending.append(await producer.send_batch(builder, topic, partition=p))
        return pending

    async def publish_held(self, tp: TP, commit_offset: int) -> list[Awaitable[Any]]:
        """Send the held outputs of events of ``tp`` below ``commit_offset`` into ``tp``'s transaction.

        Called by Faust's commit just before it sends ``commit_offset`` to that transaction and commits
        it, so outputs and offsets become visible together or not at all.
        """
        held = self._held.pop(tp, None)
        if not held:
            return []
        generation = self.app.consumer_generation_id
        ready = [h for h in held if h.offset < commit_offset and h.generation == generation]
        keep = [h for h in held if h.offset >= commit_offset and h.generation == generation]
        if keep:
            self._held[tp] = keep
        if len(ready) + len(keep) < len(held):
            log.info(
                "%s: dropping outputs of %d batches of an earlier generation",
                tp,
                len(held) - len(ready) - len(keep),
            )
        if not ready:
            return []
        target = self._producer(tp)
        if target is None:
            log.info("%s no longer assigned: not sending the outputs of %d batches", tp, len(ready))
            self._held.pop(tp, None)
            return []
        producer, lock = target
        pending: list[Awaitable[Any]] = []
        async with lock:
            for h in ready:
                pending += await self._send_batches(producer, h.topic, h.records, h.headers, h.partition)
        return pending

    def discard(self, tps: Sequence[TP] | set[TP]) -> None:
        """Forget the held outputs of ``tps`` (revoked: their events will be processed again)."""
        for tp in tps:
            self._held.pop(tp, None)


def hook_commit(app: faust.App, output: KafkaBatchOutput) -> None:
    """Make Faust's commit send ``output``'s held records (exactly_once; see the module doc).

    Faust calls ``app._attachments.publish_for_tp_offset(tp, offset)`` for each partition it is about to
    commit, after computing the offsets and before committing the transaction, and waits for the returned
    futures: the one point where outputs can join the transaction of exactly the offsets they belong to.
    """
    attachments: Any = app._attachments
    original = attachments.publish_for_tp_offset

    async def publish_for_tp_offset(tp: TP, offset: int) -> list[Awaitable[Any]]:
        return [*await original(tp, offset), *await output.publish_held(tp, offset)]

    attachments.publish_for_tp_offset = publish_for_tp_offset

    @app.on_partitions_revoked.connect
    async def discard_held(sender: Any, revoked: set[TP], **_: Any) -> None:
        """Held outputs of revoked partitions never go out; Faust replays their events from the commit."""
        output.discard(revoked)


def install(app: faust.App, settings: Settings, counters: AgentCounters, output: Output, worker: str) -> None:
    """Add the raw topic and the filter agent to ``app``: it sends through ``output``, counts in ``counters``
    and signs its receipts with ``worker`` (``host:pid``)."""
    raw = app.topic(
        settings.raw_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    topics = [
        app.topic(name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
        for name in (settings.failures_topic, settings.dlq_topic)
    ]
    topics.append(
        app.topic(settings.progress_topic, key_serializer="raw", value_serializer="raw", partitions=1)
    )
    outputs = FilterOutputs(settings, counters, output, worker)

    @app.task
    async def declare_outputs() -> None:
        """Create the failures, dead-letter and progress topics when missing, so consumers can subscribe
        early (``dnsqr-pipeline worker`` has created them already; ``faust -A processors.app`` may not)."""
        for topic in topics:
            await topic.maybe_declare()

    @app.agent(raw, name="dnsqr-edns-filter")
    async def edns_filter(stream: StreamT[bytes]) -> None:
        """Filter raw containers, a batch of events at a time (see module doc)."""
        clock = WindowClock(settings.window_seconds)
        redelivery = Redelivery(app.consumer.done)
        async for events in stream.take_events(BATCH_CONTAINERS, within=BATCH_SECONDS):
            fresh = redelivery.fresh(events)
            if len(fresh) < len(events):
                counters.redelivered += len(events) - len(fresh)
                log.info("dropped %d records delivered again after processing", len(events) - len(fresh))
            await process_events(app, outputs, fresh, clock)
