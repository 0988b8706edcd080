"""What this worker's agents have seen: plain counts, kept by the agents and read by the views and metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentCounters:
    """What this worker's agents have seen; served by the ``/dnsqr/stats`` view and ``/metrics``."""

    containers: int = 0
    records: int = 0
    failures: int = 0
    dead_letters: int = 0
    #: (name server, window) deltas sent to the ns-stats topic
    deltas: int = 0
    #: raw records Faust delivered again after they were processed (committed or acknowledged), dropped
    redelivered: int = 0
    #: the same for ns-stats records, dropped by the aggregator agent
    redelivered_stats: int = 0
    #: ns-stats records that did not decode, skipped by the aggregator agent
    bad_stats: int = 0
