"""The topics a worker needs besides the raw topic, with their partitions and configuration.

No Faust tables: the aggregator keeps its per-name-server state itself (``processors/aggregator.py`` says
why), with its own compacted changelog topic (:func:`changelog_spec`). :func:`internal_topic_specs` names
every topic a worker needs besides the raw topic, so they can all be created before the agents start.
"""

from __future__ import annotations

from dnsqr_kafka.topics import CONTAINER_TOPIC_CONFIG, TopicSpec
from processors.settings import Settings

#: the changelog's segments roll at this size, so compaction (which skips the active segment) keeps up and a
#: restore reads about one record per key
CHANGELOG_SEGMENT_BYTES = 16 * 1024 * 1024


def changelog_spec(settings: Settings) -> TopicSpec:
    """The aggregator's state changelog: compacted, one partition per ns-stats partition."""
    return TopicSpec(
        settings.changelog_topic,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor or None,
        config={"cleanup.policy": "compact", "segment.bytes": str(CHANGELOG_SEGMENT_BYTES)},
    )


def internal_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic a worker writes or keeps state in besides the raw topic, with the partitions and
    configuration it expects. ``dnsqr-pipeline worker``, ``topics create`` and ``run`` create them all
    before any agent starts, so no agent meets a topic that is not in the cluster's metadata yet.

    The ns-stats topic and the state changelog share the partition count (:func:`copartitioned_topics`);
    the progress topic has one partition, so a reader sees every receipt in order.
    """
    n = settings.partitions
    return [
        TopicSpec(settings.failures_topic, partitions=n),
        TopicSpec(settings.stats_topic, partitions=n),
        # a snapshot per name server and window: only the newest per key matters to a reader
        TopicSpec(settings.counts_topic, partitions=n, config={"cleanup.policy": "compact"}),
        TopicSpec(settings.dlq_topic, partitions=n, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(settings.progress_topic, partitions=1),
        changelog_spec(settings),
    ]


def copartitioned_topics(settings: Settings) -> list[str]:
    """The ns-stats topic and the state changelog: their partition counts must be equal, since the
    changelog partition of a name server's state is the ns-stats partition its deltas arrive in."""
    return [settings.stats_topic, settings.changelog_topic]
