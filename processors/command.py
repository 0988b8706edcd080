"""``dnsqr-pipeline worker``: run one Faust worker of the processors app.

Equivalent to ``faust -A processors.app worker`` with ``DNSQR_*`` variables (see ``app.py``), but with
flags, the shared Kafka connection options and the project's logging. Start as many workers as the raw
topic has partitions to scale out; they share the work through the consumer group ``--app-id``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from faust.worker import Worker

from dnsqr_pipeline.kafka_config import add_kafka_arguments
from processors.app import GUARANTEES, Settings, create_app

log = logging.getLogger(__name__)
DEFAULTS = Settings()


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a Faust worker: EDNS0 filter agent, per-name-server tables and web views",
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
        "--partitions",
        type=int,
        default=DEFAULTS.partitions,
        help="partitions of the topics the worker creates: ns-stats, counts, failures, DLQ, state changelog "
        "(default: %(default)s)",
    )
    topics.add_argument("--replication-factor", type=int, default=DEFAULTS.replication_factor)
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
        help="drop windows older than this from the table, 0 = never (default: %(default)s)",
    )
    faust_group.add_argument("--snapshot-interval", type=float, default=DEFAULTS.snapshot_interval)
    faust_group.add_argument("--web-host", default=DEFAULTS.web_host)
    faust_group.add_argument("--web-port", type=int, default=DEFAULTS.web_port)
    faust_group.add_argument("--no-web", action="store_true", help="do not start the web server")
    faust_group.add_argument("--session-timeout", type=float, default=DEFAULTS.session_timeout)
    add_kafka_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The worker's settings from parsed flags."""
    if args.kafka_config:
        # librdkafka properties have no general aiokafka equivalent; silently ignoring them would surprise.
        raise SystemExit("--kafka-config applies to the librdkafka stages; the Faust worker does not take it")
    credentials = {
        "security_protocol": args.security_protocol,
        "sasl_mechanism": args.sasl_mechanism or "",
        "sasl_username": args.sasl_username or "",
        "sasl_password": args.sasl_password or "",
        "ssl_ca_location": args.ssl_ca_location or "",
    }
    return Settings(
        app_id=args.app_id,
        bootstrap_servers=args.bootstrap_servers,
        raw_topic=args.raw_topic,
        failures_topic=args.failures_topic,
        stats_topic=args.stats_topic,
        counts_topic=args.counts_topic,
        dlq_topic=args.dlq_topic,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        processing_guarantee=args.processing_guarantee,
        window_seconds=args.window_seconds,
        window_expires_seconds=args.window_expires_seconds,
        snapshot_interval=args.snapshot_interval,
        web_host=args.web_host,
        web_port=args.web_port,
        web_enabled=not args.no_web,
        session_timeout=args.session_timeout,
        credentials={k: v for k, v in credentials.items() if v},
    ).validated()


def run(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM."""
    settings = settings_from_args(args)
    app = create_app(settings)
    level = logging.getLogger().getEffectiveLevel()
    log.info(
        "worker %s: %s -> %s on %s",
        settings.app_id,
        settings.raw_topic,
        settings.failures_topic,
        settings.bootstrap_servers,
    )
    worker = Worker(app, loglevel=logging.getLevelName(level).lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
