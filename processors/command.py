"""``dnsqr-pipeline worker``: run one Faust worker of the processors app.

Equivalent to ``faust -A processors.app worker`` with ``DNSQR_*`` variables (see ``app.py``), but with
flags, the shared Kafka connection options and the project's logging. Start as many workers as the raw
topic has partitions to scale out; they share the work through the consumer group ``--app-id``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AclOperation
from faust.worker import Worker

from dnsqr_kafka.access import (
    KafkaAccessError,
    Need,
    access_error,
    check_access,
    report,
    topic_needs,
)
from dnsqr_kafka.config import Credentials, add_kafka_arguments, client_config
from dnsqr_kafka.topics import (
    TopicAdminError,
    admin_client,
    cluster_replication_factor,
    create_topics,
    list_topics,
    wait_for_leaders,
)
from dnsqr_kafka.value_formats import EXIT_REGISTRY, FormatChoiceError, RegistryError, add_format_arguments
from processors.app import create_app
from processors.settings import GUARANTEES, Settings
from processors.topology import copartitioned_topics, internal_topic_specs

log = logging.getLogger(__name__)
DEFAULTS = Settings()


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a Faust worker: EDNS0 filter agent, per-name-server aggregator and web views",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    topics = parser.add_argument_group("topics")
    topics.add_argument(
        "--raw-topic", default=DEFAULTS.raw_topic, help="input containers (default: %(default)s)"
    )
    topics.add_argument("--failures-topic", default=DEFAULTS.failures_topic, help="(default: %(default)s)")
    topics.add_argument(
        "--stats-topic", default=DEFAULTS.stats_topic, help="per-NS deltas (default: %(default)s)"
    )
    topics.add_argument(
        "--counts-topic", default=DEFAULTS.counts_topic, help="snapshots (default: %(default)s)"
    )
    topics.add_argument(
        "--dlq-topic", default=DEFAULTS.dlq_topic, help="undecodable input (default: %(default)s)"
    )
    topics.add_argument(
        "--progress-topic",
        default=DEFAULTS.progress_topic,
        help="the filter agent's receipts, one per batch and raw partition, which jobs read to prove they "
        "are complete (default: %(default)s)",
    )
    topics.add_argument(
        "--partitions",
        type=int,
        default=DEFAULTS.partitions,
        help="partitions of the topics the worker creates: ns-stats, counts, failures, DLQ, state changelog "
        "(default: %(default)s)",
    )
    topics.add_argument(
        "--replication-factor",
        type=int,
        default=DEFAULTS.replication_factor,
        help="of the topics and changelogs the worker creates (default: min(3, brokers), with "
        "min.insync.replicas = RF - 1 from 3 up)",
    )
    faust_group = parser.add_argument_group("Faust")
    faust_group.add_argument("--app-id", default=DEFAULTS.app_id, help="Faust app id = consumer group")
    faust_group.add_argument(
        "--processing-guarantee", choices=GUARANTEES, default=DEFAULTS.processing_guarantee
    )
    faust_group.add_argument("--window-seconds", type=int, default=DEFAULTS.window_seconds)
    faust_group.add_argument(
        "--window-expires-seconds",
        type=int,
        default=DEFAULTS.window_expires_seconds,
        help="free the windows starting this many seconds (record time) or more before stream time, the "
        "newest window's start; later records of a freed window count in the totals only; 0 = never "
        "(default: %(default)s)",
    )
    faust_group.add_argument(
        "--window-max-ahead-seconds",
        type=int,
        default=DEFAULTS.window_max_ahead_seconds,
        help="records whose window starts more than this many seconds after the worker's clock (a sensor "
        "with a bad clock) count in the totals only and do not move stream time (default: %(default)s)",
    )
    faust_group.add_argument(
        "--hot-windows",
        type=int,
        default=DEFAULTS.hot_windows,
        help="keep the newest N windows of each ns-stats partition as Python objects and freeze older "
        "windows no record reached for a commit interval into compact read-only buffers (~50 instead of "
        "~250 bytes per name server and window); a late record thaws its window; 0 = freeze none "
        "(default: %(default)s)",
    )
    faust_group.add_argument(
        "--hot-totals",
        type=int,
        default=DEFAULTS.hot_totals,
        metavar="N",
        help="keep the totals of at most about N name servers per ns-stats partition as Python objects "
        "(~300 bytes each); beyond, freeze the oldest outside the hot windows into compact read-only "
        "buffers (~55 bytes), at some CPU each time one freezes or thaws; 0 = no bound "
        "(default: %(default)s)",
    )
    faust_group.add_argument("--snapshot-interval", type=float, default=DEFAULTS.snapshot_interval)
    faust_group.add_argument(
        "--commit-interval",
        type=float,
        metavar="SECONDS",
        default=DEFAULTS.commit_interval,
        help="how often the worker commits its offsets and writes its changed counts to the changelog and "
        "the counts topic; the counts lag up to this much more (default: %(default)s)",
    )
    faust_group.add_argument(
        "--web-host",
        default=DEFAULTS.web_host,
        help="address of the web views and /metrics (default %(default)s; they have no authentication, "
        "so another address is logged as a warning)",
    )
    faust_group.add_argument("--web-port", type=int, default=DEFAULTS.web_port)
    faust_group.add_argument("--no-web", action="store_true", help="do not start the web server")
    faust_group.add_argument("--session-timeout", type=float, default=DEFAULTS.session_timeout)
    faust_group.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULTS.state_dir,
        help="keep a checkpoint of each ns-stats partition's state here when it leaves this worker "
        "(revocation, shutdown), so that a restart reads the changelog from the checkpoint on instead of "
        "from its beginning (default: no checkpoints)",
    )
    faust_group.add_argument(
        "--standby-replicas",
        type=int,
        metavar="N",
        default=DEFAULTS.standby_replicas,
        help="keep this many warm standby copies of each ns-stats partition's state on other workers, "
        "which tail its changelog, so that the worker taking a partition over (a failover prefers a "
        "standby) reads only the changelog's tail; each copy costs that state's memory again "
        "(default: %(default)s)",
    )
    faust_group.add_argument(
        "--no-warm-up",
        action="store_true",
        help="move an ns-stats partition to a worker that joins as soon as the group rebalances, instead of "
        "after that worker caught up with its state as a standby (a warm-up; decided by the group's leader)",
    )
    faust_group.add_argument(
        "--acceptable-recovery-lag",
        type=int,
        metavar="RECORDS",
        default=DEFAULTS.acceptable_recovery_lag,
        help="a partition whose changelog holds at most this many records moves without a warm-up, and a "
        "warm-up this close to the changelog's end has caught up (default: %(default)s)",
    )
    faust_group.add_argument(
        "--restore-buffer-mb",
        type=float,
        metavar="MB",
        default=DEFAULTS.restore_buffer_mb,
        help="ns-stats records kept per partition while its state is restored; beyond this the partition "
        "is paused and fetched again once its state is ready (default: %(default)s)",
    )
    add_kafka_arguments(parser)
    add_format_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The worker's settings from parsed flags."""
    if args.kafka_config:
        # librdkafka properties have no general aiokafka equivalent; silently ignoring them would surprise.
        raise SystemExit("--kafka-config applies to the librdkafka stages; the Faust worker does not take it")
    return Settings(
        app_id=args.app_id,
        bootstrap_servers=args.bootstrap_servers,
        raw_topic=args.raw_topic,
        failures_topic=args.failures_topic,
        stats_topic=args.stats_topic,
        counts_topic=args.counts_topic,
        dlq_topic=args.dlq_topic,
        progress_topic=args.progress_topic,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        processing_guarantee=args.processing_guarantee,
        window_seconds=args.window_seconds,
        window_expires_seconds=args.window_expires_seconds,
        window_max_ahead_seconds=args.window_max_ahead_seconds,
        hot_windows=args.hot_windows,
        hot_totals=args.hot_totals,
        snapshot_interval=args.snapshot_interval,
        commit_interval=args.commit_interval,
        web_host=args.web_host,
        web_port=args.web_port,
        web_enabled=not args.no_web,
        session_timeout=args.session_timeout,
        state_dir=args.state_dir,
        failures_format=args.failures_format,
        schema_registry=args.schema_registry or "",
        schema_registry_user=args.schema_registry_user or "",
        schema_registry_password=args.schema_registry_password or "",
        standby_replicas=args.standby_replicas,
        warm_up=not args.no_warm_up,
        acceptable_recovery_lag=args.acceptable_recovery_lag,
        restore_buffer_mb=args.restore_buffer_mb,
        credentials=Credentials.from_args(args),
    ).validated()


#: How long a starting worker keeps asking the cluster to create or show its topics (a controller
#: failing over takes several seconds).
TOPICS_TIMEOUT = 60.0


def create_internal_topics(kafka: dict[str, str], settings: Settings) -> None:
    """Create the worker's topics that are missing and wait until the cluster's metadata has them, so no
    agent starts against a topic that is not there yet (see :func:`processors.topology.internal_topic_specs`).

    Only missing topics are created (a job or ``topics create`` usually made them already), and a cluster
    that cannot answer yet (its controller failing over) is asked again until :data:`TOPICS_TIMEOUT`; a
    refused operation (no ACL) is not.
    """
    admin = admin_client(kafka)
    specs = internal_topic_specs(settings)
    deadline = time.monotonic() + TOPICS_TIMEOUT
    while True:
        try:
            have = list_topics(admin, bootstrap=settings.bootstrap_servers)
            missing = [spec for spec in specs if spec.name not in have]
            if missing:
                created = create_topics(
                    admin,
                    missing,
                    bootstrap=settings.bootstrap_servers,
                    partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                )
                log.info("created topics: %s", ", ".join(f"{n} ({o})" for n, o in created.items()))
            wait_for_leaders(admin, [s.name for s in specs], timeout=max(deadline - time.monotonic(), 1))
            have = list_topics(admin, bootstrap=settings.bootstrap_servers)
            break
        except TopicAdminError as exc:
            if time.monotonic() > deadline or access_error(exc, kafka):
                raise
            log.warning("%s; asking again", exc)
            time.sleep(1)
    wrong = [
        f"{name} has {have[name]}"
        for name in copartitioned_topics(settings)
        if have[name] != settings.partitions
    ]
    if wrong:
        # Kafka cannot shrink a topic, and growing a changelog would move its keys away from their
        # ns-stats partitions: an operator must decide (delete the topic, or run with --partitions N).
        raise TopicAdminError(
            f"the worker needs {settings.partitions} partitions (--partitions) in its co-partitioned topics, "
            f"but {', '.join(wrong)}"
        )


def access_needs(settings: Settings) -> list[Need]:
    """What the worker does on Kafka, checked before it starts: read raw and its group, write its outputs
    and read back ns-stats and the aggregator's state changelog."""
    outputs = [spec.name for spec in internal_topic_specs(settings)]
    changelogs = copartitioned_topics(settings)[1:]
    return [
        *topic_needs(AclOperation.READ, [settings.raw_topic, settings.stats_topic, *changelogs]),
        *topic_needs(AclOperation.WRITE, outputs),
        Need("group", settings.app_id, AclOperation.READ),
    ]


def run(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM. Exit status 2 when a start-up step fails: topics, or the
    Schema Registry (unreachable, or the subject refuses the worker's schema: one line naming it)."""
    settings = settings_from_args(args)
    try:
        formats = settings.topic_formats()
    except (RegistryError, FormatChoiceError) as exc:
        print(f"dnsqr-pipeline worker: {exc}", file=sys.stderr)
        return EXIT_REGISTRY
    kafka = client_config(args)
    try:
        check_access(kafka, access_needs(settings))
        if not settings.replication_factor:
            admin = admin_client(kafka)
            rf = cluster_replication_factor(admin, bootstrap=settings.bootstrap_servers)
            settings = settings.with_overrides(replication_factor=rf)
        create_internal_topics(kafka, settings)
    except KafkaAccessError as exc:
        return report("worker", exc)
    except TopicAdminError as exc:
        refused = access_error(exc, kafka)
        if refused:
            return report("worker", refused)
        log.error("%s", exc)
        return 2
    app = create_app(settings, formats)
    level = logging.getLogger().getEffectiveLevel()
    log.info(
        "worker %s: %s -> %s (%s), counts %s on %s",
        settings.app_id,
        settings.raw_topic,
        settings.failures_topic,
        formats.failures.describe(),
        formats.counts.describe(),
        settings.bootstrap_servers,
    )
    worker = Worker(app, loglevel=logging.getLevelName(level).lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        # a refusal after the up-front check (aiokafka's *AuthorizationFailed*) keeps its exit status
        refused = access_error(worker.crash_reason, kafka) if worker.crash_reason else None
        return report("worker", refused) if refused else int(exc.code or 0)
    return 0
