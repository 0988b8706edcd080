"""``dnsqr-pipeline top``: the cluster-wide table of the worst name servers, from the counts topic.

A worker's ``/dnsqr/top/`` view answers for the name servers of its own partitions only; the counts topic
(``NsCounts``, ``schemas/ns_counts.avsc``, compacted) carries every worker's snapshots, so reading it
whole answers for the cluster. Each snapshot is one (name server, window) with that name server's totals
at ``snapshot_time_ms``: the newest snapshot of each name server holds its current totals, and with
``--window START`` the newest snapshot of that window holds the window's counts (a window the workers
freed already is named as such on stderr: its counts are those it had when it was freed).

It reads from the beginning to the current end with a throw-away group, assigning the partitions itself
and committing nothing (``dnsqr_pipeline.counts_reader.LatestCounts``), then ranks like the workers' view
(``processors.views.top``): by failures, ties by rate, or by rate, ties by failures, of the name servers
with a failure and at least ``--min-answered`` EDNS answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AclOperation

from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, report, topic_needs
from dnsqr_kafka.argtypes import positive_int
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_kafka.value_formats import (
    EXIT_REGISTRY,
    RegistryError,
    RegistryUnavailable,
    add_format_arguments,
    registry_options,
    topic_formats,
)
from dnsqr_pipeline.completion import CompletionError
from dnsqr_pipeline.counts_reader import LatestCounts
from dnsqr_pipeline.job import format_rows
from processors.counts import counts_of
from processors.settings import Settings
from processors.views import top
from processors.worst_page import ORDERS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``top`` subcommand."""
    parser = subparsers.add_parser(
        "top",
        help="print the cluster-wide table of the worst name servers, from the counts topic",
        description=(
            "Read the counts topic from the beginning to its end (a throw-away group, nothing committed), "
            "keep each name server's newest totals (or, with --window, its newest counts of that window) "
            "and print the worst as a table (name server, failures, EDNS answered, rate, kinds) or, with "
            "--json, one JSON object per name server."
        ),
        epilog="Example: dnsqr-pipeline top --by rate --min-answered 100 -n 50",
    )
    parser.add_argument("--by", choices=ORDERS, default="failures", help="ranking (default %(default)s)")
    parser.add_argument("-n", type=positive_int, default=20, metavar="N", help="rows (default %(default)s)")
    parser.add_argument(
        "--window",
        type=int,
        metavar="START",
        help="rank the counts of the window that starts at START (record time, seconds since the epoch) "
        "instead of the totals",
    )
    parser.add_argument(
        "--min-answered",
        type=int,
        default=1,
        metavar="M",
        help="leave out name servers with fewer EDNS answers (default %(default)s)",
    )
    parser.add_argument(
        "--counts-topic", default=Settings.counts_topic, help="topic to read (default %(default)s)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per name server instead of a table"
    )
    add_kafka_arguments(parser)
    add_format_arguments(parser, failures=False)
    parser.set_defaults(func=run)


def rank(
    latest: Mapping[str, Mapping[str, Any]], *, by: str, min_answered: int, window_start: int | None
) -> list[dict[str, Any]]:
    """Every name server of ``latest`` (name server -> ``NsCountValues``) that has a failure and at least
    ``min_answered`` EDNS answers, worst first, as ``processors.views.top`` ranks them."""
    rows = [(ns, window_start, counts_of(values)) for ns, values in latest.items()]
    return top(rows, by=by, n=len(rows), min_answered=min_answered)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the ``-n`` worst name servers. Exit status 3 when Kafka refuses the credentials or the read
    (one line, as every command), 1 on another Kafka error (e.g. no such topic), 2 when the Schema
    Registry cannot be used at start-up."""
    out = out or sys.stdout
    try:
        value_format = topic_formats(
            registry_options(args), failures_topic=Settings.failures_topic, counts_topic=args.counts_topic
        ).counts
    except RegistryError as exc:
        print(f"dnsqr-pipeline top: {exc}", file=sys.stderr)
        return EXIT_REGISTRY
    conf = client_config(args)
    view = None
    try:
        check_access(conf, topic_needs(AclOperation.READ, [args.counts_topic]))
        view = LatestCounts(conf, args.counts_topic, args.window, value_format)
        latest = view.read()
    except KafkaAccessError as exc:
        return report("top", exc)
    except (CompletionError, KafkaException, RegistryUnavailable) as exc:
        refused = access_error(exc, conf)
        if refused is not None:
            return report("top", refused)
        detail = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
        print(f"dnsqr-pipeline top: {args.counts_topic}: {detail}", file=sys.stderr)
        return 1
    finally:
        if view is not None:
            view.close()
    if view.window_freed():
        print(
            f"dnsqr-pipeline top: window {args.window} was freed (the workers free windows starting at or "
            f"before {view.expired_through}): these are its counts when it was freed; its later records "
            "count in the totals only",
            file=sys.stderr,
        )
    ranked = rank(latest, by=args.by, min_answered=args.min_answered, window_start=args.window)
    shown = ranked[: args.n]
    if args.json:
        for row in shown:
            print(json.dumps(row), file=out)
    else:
        print(
            format_rows([(row["name_server"], row) for row in shown], more=len(ranked) - len(shown)), file=out
        )
    return 0
