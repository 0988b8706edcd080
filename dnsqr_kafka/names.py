"""The default names of the pipeline's topics and consumer groups: the topic contracts' names, in one place.

Every stage's flags default to these, the job derives its per-run names from them (:meth:`TopicNames.named`),
and the secured cluster's ACLs are granted on them. Topics an app id owns (the aggregator's state changelog,
Faust's own topics) are named after the app id, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the Faust app id of the workers, which is also their consumer group
DEFAULT_APP_ID = "dnsqr-edns"
#: the sink's consumer group
DEFAULT_SINK_GROUP = "dnsqr-sink"
#: the sink's dead-letter topic is its input topic's name with this suffix
SINK_DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicNames:
    """The name of each topic of the pipeline (``docs/design.md`` has their contracts)."""

    #: NMSG containers of base:dnsqr payloads, ingest -> workers
    raw: str = "dnsqr.raw"
    #: EdnsFailure records (Avro), workers -> sink and downstream consumers
    failures: str = "dnsqr.edns.failures"
    #: NsStatsBatch records, the filter agent -> the aggregator agent
    stats: str = "dnsqr.edns.ns-stats"
    #: NsCounts snapshots, the aggregator -> readers (compacted)
    counts: str = "dnsqr.edns.ns-counts"
    #: the filter agent's receipts, one partition
    progress: str = "dnsqr.edns.progress"
    #: raw input that could not be used (ingest and workers)
    raw_dlq: str = "dnsqr.raw.dlq"

    @property
    def failures_dlq(self) -> str:
        """The sink's dead-letter topic."""
        return self.failures + SINK_DLQ_SUFFIX

    @classmethod
    def named(cls, suffix: str = "") -> TopicNames:
        """The default names with ``suffix`` appended (a job on a shared broker uses its own topics)."""
        default = cls()
        return cls(
            raw=default.raw + suffix,
            failures=default.failures + suffix,
            stats=default.stats + suffix,
            counts=default.counts + suffix,
            progress=default.progress + suffix,
            raw_dlq=default.raw_dlq + suffix,
        )


#: the contracts' names
DEFAULT_NAMES = TopicNames()
