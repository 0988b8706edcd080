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

Exactly once: faust-streaming 0.15.3 sends a table's changelog records into the transaction of their
partition, the one that also commits the ns-stats offsets they derive from, so the committed changelog and
the committed offsets always agree and a new owner re-applies exactly the deltas after the commit. Two
things keep it so: the worker's consumer waits for Faust's buffered changelog writes before each commit
(``processors/consumer.py``), and this agent drops a delta Faust delivers a second time (after a rebalance
or a seek back), as the filter agent does with raw records.

An earlier version also skipped deltas by "last input offset applied" marks stored in the table values. A
refetched raw record (``processors/consumer.py``) is processed after later offsets of its partition, so its
delta was skipped as a replay: counts low under exactly_once (3 of 40 crash-test runs).

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


def add_counts(current: Mapping[str, Any], delta: Mapping[str, Any]) -> CountsDict:
    """A new counts dict: ``current`` plus ``delta`` (a table value must be replaced, not mutated, for Faust
    to write it to the changelog)."""
    result = empty_counts()
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

    def apply(self, delta: Mapping[str, Any]) -> None:
        """Add one ``NsStatsDelta`` to both tables (call from the agent only)."""
        ns = delta["name_server"]
        total = self.totals[ns] = add_counts(self.totals[ns], delta)
        window = add_counts(self.windows[ns].value(), delta)
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

    @app.agent(stats, name="dnsqr-ns-aggregator")
    async def aggregate(stream: StreamT[dict[str, Any]]) -> None:
        """Apply each delta to the tables once (see the module doc)."""
        done = app.consumer.done
        async for event in stream.events():
            message = event.message
            if done(message.tp, message.offset):
                app.counters.redelivered_deltas += 1
                continue
            tables.apply(event.value)

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
