"""``dnsqr-pipeline sink``: the failures topic into rotated NMSG files, for deployments and batch jobs.

Long-running by default (stop with SIGINT/SIGTERM: open files are finalized, offsets committed, a summary
printed, exit 0); ``--idle-exit`` and ``--max-records`` make it end by itself in batch jobs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AclOperation

from dnsqr_kafka.access import KafkaAccessError, Need, access_error, check_access, report
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_kafka.names import DEFAULT_NAMES, DEFAULT_SINK_GROUP, SINK_DLQ_SUFFIX
from dnsqr_kafka.value_formats import (
    EXIT_REGISTRY,
    FormatChoiceError,
    RegistryError,
    add_format_arguments,
    registry_options,
    topic_formats,
)
from sink.consumer import FailureSink, SinkConfig
from sink.files import DEFAULT_PREFIX

log = logging.getLogger(__name__)

_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def byte_size(text: str) -> int:
    """``N`` with an optional binary suffix K, M or G (``64M``), as argparse ``type``."""
    number, scale = text.strip(), 1
    if number[-1:].upper() in _UNITS:
        number, scale = number[:-1], _UNITS[number[-1].upper()]
    try:
        value = int(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use N, NK, NM or NG)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sink`` subcommand."""
    parser = subparsers.add_parser(
        "sink",
        help="write the EDNS0 failures topic to rotated NMSG files",
        description=(
            "Consume Avro EdnsFailure records and append their original NmsgPayload to one NMSG file per "
            "partition. Files are written under a temporary name, fsync'd and renamed to "
            "PREFIX-pPPPP-oFIRST-LAST.nmsg; offsets are committed only after that, so a crash loses "
            "nothing and a replay rewrites or skips the same ranges instead of duplicating them."
        ),
    )
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR", help="where files go")
    parser.add_argument(
        "--failures-topic", default=DEFAULT_NAMES.failures, help="topic to read (default %(default)s)"
    )
    parser.add_argument("--group", default=DEFAULT_SINK_GROUP, help="consumer group id (default %(default)s)")
    parser.add_argument(
        "--dlq-topic",
        help="dead-letter topic for undecodable values, headers as in schemas/dead_letter.md "
        f"(default: the failures topic + {SINK_DLQ_SUFFIX})",
    )
    parser.add_argument(
        "--file-prefix", default=DEFAULT_PREFIX, help="first part of file names (default %(default)s)"
    )
    parser.add_argument(
        "--rotate-bytes",
        type=byte_size,
        default=64 * 1024 * 1024,
        metavar="N[K|M|G]",
        help="start a new file once this many payload bytes (uncompressed) are in it (default 64M)",
    )
    parser.add_argument(
        "--rotate-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="finalize a file open this long, records or not (default %(default)s; 0 disables)",
    )
    parser.add_argument(
        "--rotate-idle",
        type=float,
        metavar="S",
        help="also finalize a file no record joined for S seconds (batch jobs; default: off)",
    )
    parser.add_argument("-z", "--zlib", action="store_true", help="zlib-compress the containers")
    parser.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="batch jobs: finish once no record came for this long (counted from the partition assignment)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        metavar="N",
        help="finish after N records (the rest stays for the next run)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port at /metrics (default: no metrics)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the metrics port listens on (default %(default)s; 0.0.0.0 in a container)",
    )
    add_kafka_arguments(parser)
    add_format_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sink until signalled, idle or at its record limit; print the summary. Exit status 2 when
    the Schema Registry cannot be used at start-up (one line naming its URL)."""
    try:
        formats = topic_formats(
            registry_options(args),
            failures_topic=args.failures_topic,
            counts_topic=DEFAULT_NAMES.counts,
            failures_format=args.failures_format,
        )
    except (RegistryError, FormatChoiceError) as exc:
        print(f"dnsqr-pipeline sink: {exc}", file=sys.stderr)
        return EXIT_REGISTRY
    config = SinkConfig(
        output_dir=args.output_dir,
        kafka=client_config(args),
        topic=args.failures_topic,
        group=args.group,
        dlq_topic=args.dlq_topic,
        prefix=args.file_prefix,
        rotate_bytes=args.rotate_bytes,
        rotate_seconds=args.rotate_seconds or None,
        rotate_idle=args.rotate_idle or None,
        compress=args.zlib,
        idle_exit=args.idle_exit,
        max_records=args.max_records,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        value_format=formats.failures,
    )
    try:
        sink = FailureSink(config)
    except ValueError as exc:
        raise SystemExit(f"sink: {exc}") from None
    try:
        check_access(
            config.kafka,
            [
                Need("topic", config.topic, AclOperation.READ),
                Need("group", config.group, AclOperation.READ),
                Need("topic", config.dead_letter_topic, AclOperation.WRITE),
            ],
        )
    except KafkaAccessError as exc:
        return report("sink", exc)
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: sink.stop()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stats = sink.run()
    except (OSError, KafkaException) as exc:
        refused = access_error(exc, config.kafka)
        if refused is None:
            log.error(
                "sink failed; uncommitted files discarded, a restart resumes from the last commit: %s", exc
            )
        print(sink.stats.summary())
        return report("sink", refused) if refused else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(stats.summary())
    return 0
