"""The sink's counters of one run: what it read, wrote, skipped and dead-lettered (summary, metrics)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sink.files import Discard


@dataclass
class SinkStats:
    """Counters of one run, printed as its summary."""

    records: int = 0
    undecodable: int = 0
    #: undecodable values by ``UndecodableValue.reason``
    undecodable_by_reason: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    dead_letter_failed: int = 0
    commits: int = 0
    commit_failures: int = 0
    consumer_errors: int = 0
    #: records of partitions not owned (any more) or at offsets already appended: skipped
    stale: int = 0
    files: int = 0
    payloads: int = 0
    already_durable: int = 0
    #: partly filled files thrown away, by why (a rebalance, or the error that ends the run)
    discarded_partials: Counter[Discard] = field(default_factory=Counter)

    def summary(self) -> str:
        """One line for the operator."""
        return (
            f"sink: {self.records} records, {self.payloads} payloads in {self.files} files, "
            f"{self.already_durable} already in existing files, {self.undecodable} undecodable "
            f"({self.dead_lettered} dead-lettered, {self.dead_letter_failed} DLQ failures), "
            f"{self.commits} commits ({self.commit_failures} failed), "
            f"{self._discards()}, "
            f"{self.consumer_errors} consumer errors, {self.stale} stale records skipped"
        )

    def _discards(self) -> str:
        """The discarded partial files, each count with its reason ("2 ... discarded after an error")."""
        said = [
            f"{n} partial files discarded {reason.value}"
            for reason in Discard
            if (n := self.discarded_partials[reason])
        ]
        return ", ".join(said) or "0 partial files discarded"
