"""Filter receipts: the durable record of which raw containers a worker finished, and what they held.

The filter agent publishes one ``FilterProgress`` record (``schemas/filter_progress.avsc``) per batch and
raw partition on the progress topic, after that batch's failures and deltas are acknowledged
(at_least_once) or in the same transaction (exactly_once). Each entry is a receipt for one raw offset:
records judged, failures selected, or dead-lettered. A job reads them back with a :class:`Ledger` to prove
that every raw record it produced was processed and how many failures must have reached the sink; stable
end offsets or committed positions alone cannot show that (they only show that stages agree with each
other).
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fastavro import schemaless_reader, schemaless_writer

from dnsqr_schemas import avro_schema

VERSION = 1


class Receipt(NamedTuple):
    """What the filter agent did with the container at one raw offset."""

    offset: int
    records: int
    failures: int
    dead_lettered: bool = False


def worker_name() -> str:
    """``host:pid``, so a receipt says which process made it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def progress_key(topic: str, partition: int) -> bytes:
    return f"{topic}:{partition}".encode()


def encode_progress(worker: str, topic: str, partition: int, receipts: Sequence[Receipt]) -> bytes:
    """Schemaless Avro ``FilterProgress``."""
    out = io.BytesIO()
    schemaless_writer(
        out,
        avro_schema("filter_progress"),
        {
            "version": VERSION,
            "worker": worker,
            "topic": topic,
            "partition": partition,
            "entries": [r._asdict() for r in receipts],
        },
    )
    return out.getvalue()


def decode_progress(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_progress`; ``entries`` become :class:`Receipt` tuples."""
    value = schemaless_reader(io.BytesIO(data), avro_schema("filter_progress"), None)
    value["entries"] = [Receipt(**e) for e in value["entries"]]
    return value


@dataclass
class PartitionShortfall:
    """Raw offsets of one partition that no receipt covers yet."""

    partition: int
    missing: int
    expected: int
    #: the lowest offset still missing, to look at
    first: int


@dataclass
class Ledger:
    """Receipts of one raw topic gathered from the progress topic (pure bookkeeping, no Kafka).

    The first receipt of an offset counts; a later one for the same offset is a replay (at_least_once
    reprocessing after a crash or rebalance), counted in :attr:`replayed` with the failures it sent again.
    """

    topic: str
    receipts: dict[int, dict[int, Receipt]] = field(default_factory=dict)
    #: receipts seen again, and the failures their batches sent again
    replayed: int = 0
    replayed_failures: int = 0

    def add(self, progress: Mapping[str, Any]) -> None:
        """Take one decoded ``FilterProgress``; other topics' records are ignored."""
        if progress["topic"] != self.topic:
            return
        mine = self.receipts.setdefault(progress["partition"], {})
        for receipt in progress["entries"]:
            if receipt.offset in mine:
                self.replayed += 1
                self.replayed_failures += receipt.failures
            else:
                mine[receipt.offset] = receipt

    def shortfall(self, produced: Mapping[int, tuple[int, int]]) -> list[PartitionShortfall]:
        """Partitions where offsets in ``produced`` ({partition: (start, end)}) lack a receipt."""
        short = []
        for partition, (start, end) in sorted(produced.items()):
            have = self.receipts.get(partition, {})
            covered = sum(1 for offset in have if start <= offset < end)
            if covered < end - start:
                first = next(o for o in range(start, end) if o not in have)
                short.append(PartitionShortfall(partition, end - start - covered, end - start, first))
        return short

    def covered(self, produced: Mapping[int, tuple[int, int]]) -> Iterable[tuple[int, Receipt]]:
        """(partition, first receipt) of every offset in ``produced`` that has one."""
        for partition, (start, end) in produced.items():
            for offset, receipt in self.receipts.get(partition, {}).items():
                if start <= offset < end:
                    yield partition, receipt

    def totals(self, produced: Mapping[int, tuple[int, int]]) -> Totals:
        """Records, failures and dead letters over the distinct offsets in ``produced``."""
        totals = Totals()
        for partition, receipt in self.covered(produced):
            totals.containers += 1
            totals.records += receipt.records
            totals.failures += receipt.failures
            if receipt.dead_lettered:
                totals.dead_lettered.append((partition, receipt.offset))
        return totals


@dataclass
class Totals:
    """What the receipts of a job add up to."""

    containers: int = 0
    records: int = 0
    failures: int = 0
    #: (partition, raw offset) of each container that went to the dead-letter topic
    dead_lettered: list[tuple[int, int]] = field(default_factory=list)
