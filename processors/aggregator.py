"""The aggregator agent: per-name-server deltas in; Faust tables of totals and tumbling windows out.

The filter agent sends its deltas to the ns-stats topic keyed by name server, and this agent consumes that
topic, so each name server's deltas arrive in one partition and the tables (whose changelog partitions
follow the source partition) are co-partitioned with them. Tables can only be written from an agent
("Cannot modify table outside of agent/stream"), which is why the deltas travel through a topic instead of
being added to the table from the filter agent or a timer.

Two tables, both name server -> counts dict (``edns_answered``, ``failures``, ``timeouts``, ``by_kind``,
``observations``):

- ``ns-totals``: since the tables began; never expires.
- ``ns-windows``: tumbling windows of record time (``window_seconds``, default 1 h). The window of a delta
  is its ``window_start`` field (the filter already bucketed by record time), not the Kafka timestamp, so
  replaying an old capture fills the windows of its own time.

Exactly once: faust-streaming 0.15.3 writes a table's changelog into the transaction of its partition number,
which the raw and ns-stats partitions of that number share. A commit triggered for the raw partition
therefore also commits changelog updates of ns-stats deltas whose own offsets are not committed yet, and a
worker killed then leaves the new owner a table that already holds deltas it will consume again. So each
delta carries the input partition it derives from and its place in that partition's output order (headers
set by the filter agent: the last input offset of its batch and a sequence number, see
``processors.filter_agent.SourceOrder``), and every table value remembers, in ``applied``, the last such
place applied per input partition, with the delta's window start: a delta at or below it is a replay and is
skipped. The window start tells apart the deltas of one batch for one name server (one per window its
records fall in, sent in window order). The sequence number keeps the order when a raw record is processed
after later ones of its partition (the consumer's re-fetch of a record Faust skipped,
``processors/consumer.py``): by offset alone its delta looked like a replay and was skipped, and counts came
out low (3 of 40 crash-test runs). The worker's consumer also waits for Faust's buffered changelog writes
before each commit, so an update is never committed later than its delta's offsets, and this agent drops a
delta Faust delivers a second time (after a rebalance or a seek back).
Not under at_least_once: there a replayed input batch may be cut differently, so a delta can partly
overlap an applied one, and skipping it would lose counts (at-least-once counts may be high, never low).

Snapshots of what changed go to the counts topic (``schemas/ns_counts.avsc``) from a timer every
``snapshot_interval`` seconds: latest value per (name server, window) since the previous tick, so a burst of
deltas for one busy name server costs one snapshot, not one per delta.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastavro import schemaless_reader, schemaless_writer
from faust.serializers import codecs
from faust.types import EventT, StreamT

from dnsqr_schemas import avro_schema

if TYPE_CHECKING:
    from faust.types.tables import TableT, WindowWrapperT

    from processors.app import PipelineApp

CountsDict = dict[str, Any]
#: key of a table value's {input partition (text): [last input offset, sequence, window start] applied};
#: exactly_once only. Values written before the sequence was added hold the offset alone.
APPLIED = "applied"
#: (input partition, last input offset of its batch, sequence, window start) of a delta
Source = tuple[int, int, int, int]
#: (input partition, last input offset of its batch, sequence) from a delta's headers
Origin = tuple[int, int, int]
STATS_CODEC = "dnsqr-ns-stats"


class AvroCodec(codecs.Codec):
    """Faust codec for a schemaless Avro topic value, so the agent's stream yields dicts."""

    def __init__(self, schema_name: str) -> None:
        super().__init__(schema_name=schema_name)
        self.schema_name = schema_name

    def _loads(self, s: bytes) -> Any:
        return schemaless_reader(io.BytesIO(s), avro_schema(self.schema_name), None)

    def _dumps(self, s: Any) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, avro_schema(self.schema_name), s)
        return out.getvalue()


codecs.register(STATS_CODEC, AvroCodec("ns_stats"))


def empty_counts() -> CountsDict:
    """A zero counts dict: the tables' default value."""
    return {"edns_answered": 0, "failures": 0, "timeouts": 0, "by_kind": {}, "observations": {}}


def applied(current: Mapping[str, Any], source: Source | None) -> bool:
    """Whether the table value ``current`` already includes the delta of ``source``."""
    if source is None:
        return False
    done = (current.get(APPLIED) or {}).get(str(source[0]))
    if done is None:
        return False
    if isinstance(done, int):  # an older mark: the whole batch up to that offset
        return source[1] <= done
    return (source[1], source[2], source[3]) <= (done[0], done[1], done[2])


def add_counts(
    current: Mapping[str, Any], delta: Mapping[str, Any], source: Source | None = None
) -> CountsDict:
    """A new counts dict: ``current`` plus ``delta`` (a table value must be replaced, not mutated, for Faust
    to write it to the changelog); with ``source``, it also records that delta as applied."""
    result = empty_counts()
    if source is not None or current.get(APPLIED):
        marks = dict(current.get(APPLIED) or {})
        if source is not None:
            marks[str(source[0])] = [source[1], source[2], source[3]]
        result[APPLIED] = marks
    for name in ("edns_answered", "failures", "timeouts"):
        result[name] = current.get(name, 0) + delta.get(name, 0)
    for name in ("by_kind", "observations"):
        merged = dict(current.get(name) or {})
        for kind, n in (delta.get(name) or {}).items():
            merged[kind] = merged.get(kind, 0) + n
        result[name] = merged
    return result


def failure_rate(counts: Mapping[str, Any]) -> float:
    """Failures per EDNS query answered; 0.0 when none was answered."""
    answered = counts.get("edns_answered", 0)
    return counts.get("failures", 0) / answered if answered else 0.0


def count_values(counts: Mapping[str, Any]) -> CountsDict:
    """``NsCountValues`` for a counts dict (adds the rate)."""
    full = add_counts(empty_counts(), counts)
    full.pop(APPLIED, None)  # bookkeeping, not a count
    full["failure_rate"] = failure_rate(full)
    return full


def encode_snapshot(
    name_server: str, window_start: int, window_seconds: int, window: CountsDict, total: CountsDict
) -> bytes:
    """Schemaless Avro ``NsCounts`` (``schemas/ns_counts.avsc``)."""
    out = io.BytesIO()
    schemaless_writer(
        out,
        avro_schema("ns_counts"),
        {
            "name_server": name_server,
            "snapshot_time_ms": int(time.time() * 1000),
            "window_start": window_start,
            "window_seconds": window_seconds,
            "window": count_values(window),
            "total": count_values(total),
        },
    )
    return out.getvalue()


def decode_snapshot(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_snapshot`, for consumers and tests."""
    return schemaless_reader(io.BytesIO(data), avro_schema("ns_counts"), None)


def delta_origin(event: EventT) -> Origin | None:
    """(input partition, last input offset, sequence) from a delta's headers; None when absent."""
    headers = event.headers
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    found = {k: v for k, v in items}
    try:
        return (
            int(found["dnsqr-source-partition"]),
            int(found["dnsqr-source-offset"]),
            int(found.get("dnsqr-source-seq", b"0")),
        )
    except (KeyError, ValueError):
        return None


def _delta_window(event: EventT | None) -> float:
    """The windowed table's clock: the current delta's ``window_start`` (record time)."""
    if event is None:
        raise RuntimeError("the windowed table is only written while processing a delta")
    return float(event.value["window_start"])


@dataclass
class Tables:
    """The aggregator's tables and the snapshots waiting for the next timer tick."""

    totals: TableT
    windows: WindowWrapperT
    #: (name server, window start) -> (window counts, total counts) changed since the last snapshot
    pending: dict[tuple[str, int], tuple[CountsDict, CountsDict]] = field(default_factory=dict)

    def apply(self, delta: Mapping[str, Any], origin: Origin | None = None) -> None:
        """Add one ``NsStatsDelta`` to both tables (call from the agent only).

        ``origin`` (from :func:`delta_origin`) makes the update idempotent: a table value that has applied
        that delta already is left as it is (see the module doc).
        """
        ns = delta["name_server"]
        source = None if origin is None else (*origin, delta["window_start"])
        current = self.totals[ns]
        total = current if applied(current, source) else add_counts(current, delta, source)
        if total is not current:
            self.totals[ns] = total
        current = self.windows[ns].value()
        window = current if applied(current, source) else add_counts(current, delta, source)
        if window is not current:
            self.windows[ns] = window
        # Re-insert at the end: snapshots go out in insertion order, and the last one of a name server
        # (whichever window it is for) must carry its newest total, since readers keep the latest.
        key = (ns, delta["window_start"])
        self.pending.pop(key, None)
        self.pending[key] = (window, total)

    def take_snapshots(self, window_seconds: int) -> list[tuple[bytes, bytes]]:
        """Encoded snapshots of everything changed since the previous call, keyed by name server."""
        pending, self.pending = self.pending, {}
        return [
            (ns.encode(), encode_snapshot(ns, start, window_seconds, window, total))
            for (ns, start), (window, total) in pending.items()
        ]


def install(app: PipelineApp) -> Tables:
    """Add the ns-stats topic, the tables, the aggregator agent and the snapshot timer to ``app``."""
    settings = app.settings
    stats = app.topic(
        settings.stats_topic,
        key_type=bytes,
        key_serializer="raw",
        value_serializer=STATS_CODEC,
        partitions=settings.partitions,
        # internal: Faust creates it before subscribing, so a fresh cluster needs no topic set-up
        internal=True,
    )
    counts_topic = app.topic(
        settings.counts_topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
    )
    # keys and values are JSON in the changelogs (Faust's default for non-bytes types)
    table_options: dict[str, Any] = {"default": empty_counts, "partitions": settings.partitions}
    totals = app.Table("ns-totals", help="per name server totals", **table_options)
    windows = (
        app.Table("ns-windows", help="per name server tumbling windows", **table_options)
        .tumbling(settings.window_seconds, expires=settings.window_expires_seconds or None)
        .relative_to(_delta_window)
    )
    tables = Tables(totals, windows)
    exactly_once = settings.processing_guarantee == "exactly_once"

    @app.agent(stats, name="dnsqr-ns-aggregator")
    async def aggregate(stream: StreamT[dict[str, Any]]) -> None:
        """Apply each delta to the tables once (see the module doc)."""
        done = app.consumer.done
        async for event in stream.events():
            message = event.message
            if done(message.tp, message.offset):
                app.counters.redelivered_deltas += 1
                continue
            tables.apply(event.value, delta_origin(event) if exactly_once else None)

    @app.task
    async def declare_counts_topic() -> None:
        """Create the counts topic when missing, so consumers can subscribe before the first snapshot."""
        await counts_topic.maybe_declare()

    @app.timer(settings.snapshot_interval)
    async def publish_snapshots() -> None:
        """Publish the snapshots accumulated since the last tick (a timer may read tables, not write)."""
        records = tables.take_snapshots(settings.window_seconds)
        if records:
            await app.output.send(settings.counts_topic, records, source=None)

    return tables
