"""Topic administration with the confluent-kafka AdminClient: the pipeline's topics, created idempotently.

Faust does not create an agent's source topic (it logs "Ignoring missing topic" and waits), and
auto-created topics get the broker's defaults (one partition), so the pipeline's topics are created here,
before any stage runs, with the partition count that bounds how many workers can share the load.

Every call first asks the cluster for metadata within ``timeout`` so an unreachable broker is reported
as :class:`BrokerUnreachableError` naming the address, instead of librdkafka retrying forever.

Replication: a topic created without an explicit replication factor gets the cluster's default,
:func:`cluster_replication_factor` (three copies where there are three brokers, fewer on a smaller
cluster), and :func:`replication_config` sets ``min.insync.replicas`` to match, so a cluster keeps
accepting acks=all writes with one broker down and every acknowledged write is on two brokers or more.
The job and the worker use the same two functions for the topics they create.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewPartitions, NewTopic

from dnsqr_kafka.names import DEFAULT_NAMES

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
#: Most replicas a topic gets by default: survives one broker down with two in-sync copies left.
DEFAULT_MAX_REPLICATION = 3

#: NMSG containers can reach ~1.3 MB (libnmsg's largest buffer), above Kafka's 1 MB default record limit
CONTAINER_TOPIC_CONFIG = {"max.message.bytes": "2097152"}


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """A topic to create; ``partitions``/``replication_factor`` None take the command's defaults."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = dataclasses.field(default_factory=dict)


#: the raw topic; the topics downstream of it are the worker's (``processors.topology.internal_topic_specs``)
RAW_TOPIC = TopicSpec(DEFAULT_NAMES.raw, config=CONTAINER_TOPIC_CONFIG)


class TopicAdminError(RuntimeError):
    """A topic operation failed; the message names the topic and Kafka's reason."""


class BrokerUnreachableError(TopicAdminError):
    """No broker answered within the timeout."""


def admin_client(config: Mapping[str, str]) -> AdminClient:
    """An AdminClient whose librdkafka log lines go to Python logging rather than stderr."""
    conf = dict(config)
    conf.setdefault("logger", logging.getLogger("dnsqr_kafka.topics.librdkafka"))
    return AdminClient(conf)


def cluster_metadata(
    admin: AdminClient, bootstrap: str = "", timeout: float = DEFAULT_TIMEOUT
) -> ClusterMetadata:
    """The cluster's metadata; :class:`BrokerUnreachableError` unless a broker answers within ``timeout``."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        where = f" at {bootstrap}" if bootstrap else ""
        raise BrokerUnreachableError(
            f"no Kafka broker answered{where} within {timeout:g}s ({exc.args[0].str()}); "
            "start one with `dnsqr-pipeline kafka start` or pass --bootstrap-servers"
        ) from exc


def cluster_replication_factor(
    admin: AdminClient, timeout: float = DEFAULT_TIMEOUT, *, bootstrap: str = ""
) -> int:
    """The default replication factor of a new topic on this cluster: min(3, brokers in the cluster).

    Counts the brokers the cluster reports now (live ones). Raises :class:`BrokerUnreachableError`.
    """
    return _default_replication(cluster_metadata(admin, bootstrap, timeout))


def _default_replication(metadata: ClusterMetadata) -> int:
    return min(DEFAULT_MAX_REPLICATION, len(metadata.brokers))


def replication_config(rf: int) -> dict[str, str]:
    """Topic config that goes with ``rf`` replicas: ``min.insync.replicas`` = rf - 1 from 3 replicas on.

    An acks=all write then needs all replicas but one: one broker may be down (a restart, a failure)
    without stopping producers, and no acknowledged write lives on a single broker. With fewer than 3
    replicas the broker's default (1) stays, since requiring both copies of 2 would stop writes whenever
    either broker is down.
    """
    return {"min.insync.replicas": str(rf - 1)} if rf >= 3 else {}


def _resolve(
    spec: TopicSpec, partitions: int, replication_factor: int, config: Mapping[str, str]
) -> NewTopic:
    rf = spec.replication_factor or replication_factor
    return NewTopic(
        spec.name,
        num_partitions=spec.partitions or partitions,
        replication_factor=rf,
        config={**replication_config(rf), **config, **spec.config},
    )


def create_topics(
    admin: AdminClient,
    specs: Iterable[TopicSpec],
    *,
    bootstrap: str = "",
    partitions: int = 1,
    replication_factor: int | None = None,
    config: Mapping[str, str] | None = None,
    grow_partitions: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, str]:
    """Create the topics that do not exist; return ``{name: "created" | "exists" | "grown to N"}``.

    A topic's replication factor is its spec's, else ``replication_factor``, else the cluster's default
    (:func:`cluster_replication_factor`); its config is :func:`replication_config` of that factor,
    overridden by ``config``, overridden by the spec's own. An existing topic is left as it is
    (idempotent), except that ``grow_partitions`` adds partitions up to the asked count; Kafka cannot
    shrink a topic. A topic with fewer partitions than asked is logged, since it limits how many workers
    share the load.
    """
    metadata = cluster_metadata(admin, bootstrap, timeout)
    if replication_factor is None:
        replication_factor = _default_replication(metadata)
        log.info(
            "replication factor %d for new topics (%d broker(s) in the cluster)",
            replication_factor,
            len(metadata.brokers),
        )
    new = [_resolve(s, partitions, replication_factor, config or {}) for s in specs]
    if not new:
        return {}
    result: dict[str, str] = {}
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    for topic in new:
        try:
            futures[topic.topic].result(timeout=timeout + 5)
            result[topic.topic] = "created"
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicAdminError(f"creating topic {topic.topic!r} failed: {err.str()}") from exc
            result[topic.topic] = "exists"
    existing = [t for t in new if result[t.topic] == "exists"]
    if existing:
        metadata = admin.list_topics(timeout=timeout).topics
        for topic in existing:
            have = len(metadata[topic.topic].partitions) if topic.topic in metadata else topic.num_partitions
            if have >= topic.num_partitions:
                continue
            if not grow_partitions:
                log.warning(
                    "topic %s has %d partitions, fewer than the %d asked",
                    topic.topic,
                    have,
                    topic.num_partitions,
                )
                continue
            grow = admin.create_partitions(
                [NewPartitions(topic.topic, topic.num_partitions)], request_timeout=timeout
            )
            try:
                grow[topic.topic].result(timeout=timeout + 5)
            except KafkaException as exc:
                raise TopicAdminError(f"growing topic {topic.topic!r} failed: {exc.args[0].str()}") from exc
            result[topic.topic] = f"grown to {topic.num_partitions}"
    return result


def list_topics(
    admin: AdminClient, *, bootstrap: str = "", timeout: float = DEFAULT_TIMEOUT, internal: bool = False
) -> dict[str, int]:
    """``{name: partition count}``, without Kafka's internal ``__``-prefixed topics unless ``internal``."""
    metadata = cluster_metadata(admin, bootstrap, timeout)
    return {
        name: len(t.partitions)
        for name, t in sorted(metadata.topics.items())
        if internal or not name.startswith("__")
    }


def delete_topics(
    admin: AdminClient, names: Iterable[str], *, bootstrap: str = "", timeout: float = DEFAULT_TIMEOUT
) -> dict[str, str]:
    """Delete topics; return ``{name: "deleted" | "missing"}`` (deleting a missing topic is no error)."""
    cluster_metadata(admin, bootstrap, timeout)
    names = list(names)
    if not names:
        return {}
    result: dict[str, str] = {}
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name in names:
        try:
            futures[name].result(timeout=timeout + 5)
            result[name] = "deleted"
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise TopicAdminError(f"deleting topic {name!r} failed: {err.str()}") from exc
            result[name] = "missing"
    return result


def wait_for_leaders(admin: AdminClient, names: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Return once every partition of every topic in ``names`` has a leader in the cluster's metadata.

    A topic just created is not at once in every broker's metadata; a client that starts in that moment
    sees it missing or with 0 partitions (Faust then crashes the table's agent), so stages wait here.
    """
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting:
        metadata = admin.list_topics(timeout=timeout).topics
        for name in list(waiting):
            topic = metadata.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                waiting.discard(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TopicAdminError(f"topics without a leader after {timeout:g}s: {', '.join(sorted(waiting))}")
        time.sleep(0.1)
