"""``dnsqr-pipeline ingest``: nmsgtool-like sources into the raw topic.

Source flags follow nmsgtool (``-r``, ``-p``, ``-l``, ``-C``, and its Kafka endpoint syntax) so a user who
runs ``nmsgtool -l 0.0.0.0/8430 -w ...`` today can point the same flags here. The pcap capture settings
are nmsgtool's ``DNSQR_*`` environment variables; each also has a flag, which wins over the variable.

The exit status (:func:`exit_status`, listed in ``--help``) keeps apart what the operator does next: 1
means an input file was damaged (replace or repair it; what came before the damage is in Kafka, as with
``dnsqr-edns-filter``), 3 means records read were not delivered (look at Kafka), 2 means nothing was
read.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from types import FrameType

from confluent_kafka.admin import AclOperation

from dnsqr_kafka.access import KafkaAccessError, check_access, report, topic_needs
from dnsqr_kafka.argtypes import positive_int
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_kafka.names import DEFAULT_NAMES
from ingest.bridge import Bridge, IngestConfig, IngestSummary
from ingest.packer import DEFAULT_CONTAINER_BYTES, DEFAULT_CONTAINER_RECORDS
from ingest.producer import COMPRESSIONS, IngestError
from ingest.replay import parse_time
from ingest.sampling import DEFAULT_DLQ_RATE

log = logging.getLogger(__name__)

#: nmsgtool's capture environment variables, each exposed as ``--dnsqr-...``.
DNSQR_VARIABLES = {
    "DNSQR_RES_ADDRS": "resolver addresses/CIDRs, comma-separated (restricts capture)",
    "DNSQR_AUTH_ADDRS": "authoritative server addresses/CIDRs, comma-separated (restricts capture)",
    "DNSQR_CAPTURE_QR": "0: capture queries only, 1: responses only",
    "DNSQR_CAPTURE_RD": "capture only messages with this RD bit (0 or 1)",
    "DNSQR_ZERO_RESOLVER_ADDRESS": "zero the resolver address in records",
    "DNSQR_FILTER_QNAMES_INCLUDE": "only these qname suffixes, colon-separated",
    "DNSQR_FILTER_QNAMES_EXCLUDE": "not these qname suffixes, colon-separated",
    "DNSQR_QUERY_TIMEOUT": "seconds an unanswered query waits (default 60)",
    "DNSQR_STATE_TABLE_MAX": "most queries waiting for a response (default 131072)",
}


#: Exit statuses of ``dnsqr-pipeline ingest``; a second SIGINT interrupts the final flush with 130.
EXIT_OK = 0
EXIT_INPUT_DAMAGED = 1
EXIT_USAGE = 2
EXIT_UNDELIVERED = 3

EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}  every input read whole and every record read delivered (or dropped for a counted reason)
  {EXIT_INPUT_DAMAGED}  an input file was damaged or unreadable (the summary names it and the byte offset);
     every record before the damage was delivered
  {EXIT_USAGE}  bad usage, a missing or unreadable input, no broker or no raw topic: nothing was read
  {EXIT_UNDELIVERED}  not every record read was delivered: delivery failed, the producer hit a fatal
     error, or a source failed; or Kafka refused the credentials or the write to a topic (nothing
     was read; one line names the principal, the broker and what was refused)
  130  a second SIGINT interrupted the final flush"""


def exit_status(summary: IngestSummary) -> int:
    """The exit status of a run that started: undelivered records outrank damaged input."""
    if not summary.ok:
        return EXIT_UNDELIVERED
    if not summary.input_complete:
        return EXIT_INPUT_DAMAGED
    return EXIT_OK


def _flag(variable: str) -> str:
    return "--" + variable.lower().replace("_", "-")


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more")
    return value


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="NMSG files, pcaps, UDP sockets, channels or a Kafka topic -> the raw topic",
        description="Read base:dnsqr from nmsgtool-like sources and produce containers to the raw topic.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_ingest_arguments(parser)
    add_kafka_arguments(parser)
    parser.set_defaults(func=main)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """Source, output, replay, capture and operations flags (also the sources of ``dnsqr-pipeline run``)."""
    src = parser.add_argument_group("sources (any number, any mix)")
    src.add_argument(
        "-r",
        "--readnmsg",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="NMSG file (repeatable; replayed in order)",
    )
    src.add_argument(
        "-p",
        "--readpcap",
        dest="pcaps",
        action="append",
        default=[],
        metavar="FILE",
        help="pcap file, converted as `nmsgtool -p FILE -V base -T dnsqr` (repeatable)",
    )
    src.add_argument(
        "-l",
        "--readsock",
        dest="listen",
        action="append",
        default=[],
        metavar="ADDR/PORT[..PORT2]",
        help="UDP socket(s) fed by nmsgtool -s (repeatable)",
    )
    src.add_argument(
        "-C",
        "--readchan",
        dest="channels",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="channel alias from the chalias file, e.g. ch202 (repeatable)",
    )
    src.add_argument(
        "--chalias",
        default=os.environ.get("NMSG_CHALIAS_FILE"),
        metavar="FILE",
        help="channel alias file (default: $NMSG_CHALIAS_FILE, else the nmsg defaults)",
    )
    src.add_argument(
        "--kafka-source",
        "--readkafka",
        dest="kafka_sources",
        action="append",
        default=[],
        metavar="TOPIC|nmsg:TOPIC[#PARTITION|%GROUP]@BROKER[,OFFSET]",
        help="topic written by nmsgtool --writekafka (one container per record); repeatable",
    )
    src.add_argument(
        "--kafka-source-eof",
        action="store_true",
        help="stop reading Kafka sources at the end of their partitions (finite replay)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--raw-topic", default=DEFAULT_NAMES.raw, help="topic for the containers (default %(default)s)"
    )
    out.add_argument(
        "--dlq-topic",
        default="dnsqr.raw.dlq",
        help="dead-letter topic for undecodable input; '' disables (default %(default)s)",
    )
    out.add_argument(
        "--dlq-rate",
        type=_rate,
        default=DEFAULT_DLQ_RATE,
        metavar="N",
        help="most undecodable datagrams dead-lettered per second per -l/-C source (token bucket, burst of "
        "N, at least 1); the rest are counted by reason only, so no sender can flood the DLQ. Files and "
        "Kafka sources dead-letter every bad record. 0: count only (default %(default)g)",
    )
    out.add_argument("--key", help="record key, e.g. a sensor name (default: none, spread over partitions)")
    out.add_argument(
        "--container-records",
        type=positive_int,
        default=DEFAULT_CONTAINER_RECORDS,
        metavar="N",
        help="most records per container (default %(default)s)",
    )
    out.add_argument(
        "--container-bytes",
        type=positive_int,
        default=DEFAULT_CONTAINER_BYTES,
        metavar="N",
        help="most body bytes per container (default %(default)s; keep under message.max.bytes)",
    )
    out.add_argument(
        "--container-crcs",
        action="store_true",
        help="write payload CRC32Cs in containers, as nmsgtool does in files",
    )
    out.add_argument(
        "--container-max-delay-ms",
        type=int,
        default=500,
        metavar="MS",
        help="send a partial container once its oldest record waited this long (default %(default)s)",
    )
    out.add_argument("--linger-ms", type=int, default=100, help="producer linger.ms (default %(default)s)")
    out.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="lz4",
        help="compression of the Kafka record batches the producer sends (librdkafka compression.type): "
        "less network and broker disk for some CPU; the topic keeps the batches as sent and consumers "
        "decompress them. The NMSG containers inside are never zlib-compressed (default %(default)s)",
    )
    out.add_argument(
        "--flush-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="how long to wait for outstanding deliveries at exit (default %(default)s)",
    )
    out.add_argument(
        "--startup-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="how long to wait for the broker at start (default %(default)s)",
    )

    rep = parser.add_argument_group("replay (-r / -p)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, metavar="X", help="pace by the records' own timestamps, X times real time"
    )
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default)")
    rep.add_argument(
        "--start", type=_time, metavar="TIME", help="skip records before TIME (epoch or ISO 8601)"
    )
    rep.add_argument("--end", type=_time, metavar="TIME", help="skip records at or after TIME")

    cap = parser.add_argument_group("pcap capture (flags override the DNSQR_* environment)")
    for variable, text in DNSQR_VARIABLES.items():
        cap.add_argument(_flag(variable), dest=variable, metavar="VALUE", help=f"{text} (${variable})")

    ops = parser.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    ops.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress log lines when stderr is not a terminal",
    )
    ops.add_argument("--no-progress-bar", action="store_true", help="log lines even on a terminal")


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    """Translate parsed flags into the library configuration."""
    environ = dict(os.environ)
    for variable in DNSQR_VARIABLES:
        value = getattr(args, variable, None)
        if value is not None:
            environ[variable] = value
    return IngestConfig(
        kafka=client_config(args),
        files=args.files,
        pcaps=args.pcaps,
        listen=args.listen,
        channels=args.channels,
        chalias=args.chalias,
        kafka_sources=args.kafka_sources,
        kafka_source_eof=args.kafka_source_eof,
        raw_topic=args.raw_topic,
        dlq_topic=args.dlq_topic or None,
        dlq_rate=args.dlq_rate,
        key=args.key,
        container_records=args.container_records,
        container_bytes=args.container_bytes,
        container_crcs=args.container_crcs,
        container_max_delay_ms=args.container_max_delay_ms,
        linger_ms=args.linger_ms,
        compression=args.compression,
        speed=args.speed,
        start=args.start,
        end=args.end,
        capture_environ=environ,
        metrics_port=args.metrics_port,
        progress_bar=False if args.no_progress_bar else None,
        progress_interval=args.progress_interval,
        startup_timeout=args.startup_timeout,
        flush_timeout=args.flush_timeout,
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        check_access(config.kafka, topic_needs(AclOperation.WRITE, [config.raw_topic, config.dlq_topic]))
        bridge = Bridge(config)
    except KafkaAccessError as exc:
        return report("ingest", exc)
    except IngestError as exc:
        print(f"dnsqr-pipeline ingest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping sources, flushing", signal.Signals(signum).name)
        bridge.stop.set()
        # A second signal interrupts the flush for real.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    summary = bridge.run()
    print(summary.format(), file=sys.stderr)
    status = exit_status(summary)
    if status == EXIT_UNDELIVERED:
        print("dnsqr-pipeline ingest: not every record was delivered (see summary)", file=sys.stderr)
    elif status == EXIT_INPUT_DAMAGED:
        print(
            f"dnsqr-pipeline ingest: input damaged: {len(summary.damaged_inputs)} file(s) not read whole "
            "(see summary); the records before the damage were delivered",
            file=sys.stderr,
        )
    return status
