"""``dnsqr-pipeline topics create|list|delete``: administer the pipeline's topics.

``create`` with no names creates every topic of the pipeline (:func:`pipeline_topics`), so
one command prepares a cluster before ingest, workers and sink start; running it again changes nothing.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka.admin import AdminClient

from dnsqr_kafka import topics
from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, report
from dnsqr_kafka.config import add_kafka_arguments, client_config
from processors.settings import Settings
from processors.topology import internal_topic_specs


def _key_values(items: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--config expects KEY=VALUE, got {item!r}")
        config[key.strip()] = value.strip()
    return config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("topics", help="create, list or delete the pipeline's Kafka topics")
    actions = parser.add_subparsers(dest="topics_action", required=True, metavar="ACTION")

    p = actions.add_parser("create", help="create topics that do not exist yet (default: the pipeline's)")
    p.add_argument("names", nargs="*", metavar="TOPIC", help="(default: all pipeline topics)")
    p.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="partitions per topic (default %(default)s); "
        "the raw topic's count bounds how many workers share the load",
    )
    p.add_argument(
        "--replication-factor",
        type=int,
        metavar="N",
        help="copies of each partition (default: the number of brokers in the cluster, at most 3); "
        "from 3 on, min.insync.replicas is set to N - 1 unless --config gives it",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="topic config for each created topic, repeatable (e.g. min.insync.replicas=2)",
    )
    p.add_argument(
        "--grow-partitions",
        action="store_true",
        help="add partitions to existing topics that have fewer than --partitions",
    )
    p.add_argument(
        "--app-id",
        default=Settings.app_id,
        help="the workers' app id, which names the aggregator's state changelog topic (default %(default)s)",
    )
    p.set_defaults(func=_create)

    p = actions.add_parser("list", help="list topics and their partition counts")
    p.add_argument("--internal", action="store_true", help="include Kafka's __ topics")
    p.set_defaults(func=_list)

    p = actions.add_parser("delete", help="delete topics (missing ones are not an error)")
    p.add_argument("names", nargs="+", metavar="TOPIC")
    p.set_defaults(func=_delete)

    for action in ("create", "list", "delete"):
        sub = actions.choices[action]
        add_kafka_arguments(sub)
        sub.add_argument(
            "--timeout",
            type=float,
            default=topics.DEFAULT_TIMEOUT,
            help="seconds to wait for the broker (default %(default)s)",
        )


def pipeline_topics(settings: Settings) -> list[topics.TopicSpec]:
    """The raw topic and every topic the workers of ``settings`` use: ns-stats, counts, failures, DLQ,
    progress and the aggregator's state changelog (named after the app id), as a worker would create them."""
    return [topics.RAW_TOPIC, *internal_topic_specs(settings)]


def _admin(args: argparse.Namespace) -> AdminClient:
    return topics.admin_client(client_config(args))


def _run(args: argparse.Namespace, action: str) -> dict[str, str | int]:
    admin = _admin(args)
    common = {"bootstrap": args.bootstrap_servers, "timeout": args.timeout}
    if action == "create":
        if args.names:
            specs = [topics.TopicSpec(n) for n in args.names]
        else:
            specs = pipeline_topics(Settings(app_id=args.app_id, partitions=args.partitions))
        return dict(
            topics.create_topics(
                admin,
                specs,
                partitions=args.partitions,
                replication_factor=args.replication_factor,
                config=_key_values(args.config),
                grow_partitions=args.grow_partitions,
                **common,
            )
        )
    if action == "list":
        return dict(topics.list_topics(admin, internal=args.internal, **common))
    return dict(topics.delete_topics(admin, args.names, **common))


def _report(args: argparse.Namespace, action: str) -> int:
    try:
        check_access(client_config(args), timeout=args.timeout)
        outcome = _run(args, action)
    except KafkaAccessError as exc:
        return report(f"topics {action}", exc)
    except topics.TopicAdminError as exc:
        refused = access_error(exc, client_config(args))
        if refused:
            return report(f"topics {action}", refused)
        print(f"dnsqr-pipeline topics {action}: {exc}", file=sys.stderr)
        return 1
    for name, what in outcome.items():
        print(f"{name}\t{what}")
    return 0


def _create(args: argparse.Namespace) -> int:
    return _report(args, "create")


def _list(args: argparse.Namespace) -> int:
    return _report(args, "list")


def _delete(args: argparse.Namespace) -> int:
    return _report(args, "delete")
