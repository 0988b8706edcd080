"""``dnsqr-pipeline tail``: print the failures topic, decoded, as a table or as JSON lines.

A downstream consumer's first tool, and a worked example of reading the topic: each value is one Avro
``EdnsFailure`` (``schemas/edns_failure.avsc``), written *schemaless* (no registry, no schema id), so a
reader decodes it with the published schema (here ``processors.failure_record.decode_failure``, which is
fastavro's ``schemaless_reader``); the key is the name server.

It reads with a throw-away consumer group, assigns the partitions itself and commits nothing, so it never
moves anyone's offsets. It starts ``N`` records before the end of each partition (``-n``, default 10), or
at the beginning with ``--from-beginning``; it stops after ``N`` records when ``-n`` is given, and at the
end of the partitions unless ``--follow``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from typing import Any, TextIO

import dns.rcode
import dns.rdatatype
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AclOperation

from dnsqr_pipeline.argtypes import positive_int
from dnsqr_pipeline.kafka_config import add_kafka_arguments, client_config
from dnsqr_pipeline.kafka_errors import KafkaAccessError, access_error, check_access, report, topic_needs
from processors.app import Settings
from processors.failure_record import decode_failure

#: Records before the end of each partition where reading starts without ``--from-beginning`` or ``-n``.
DEFAULT_LAST = 10
#: Widths of the table's columns but the last; longer values (IPv6 addresses, long names) push the rest
#: of their row to the right.
_WIDTHS = (23, 24, 15, 32, 6, 8)


def _row(*cells: str) -> str:
    return " ".join(f"{c:<{w}}" for c, w in zip(cells[:-1], _WIDTHS, strict=True)) + " " + cells[-1]


HEADER = _row("time", "name server", "kind", "qname", "qtype", "rcode", "resolver")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tail`` subcommand."""
    parser = subparsers.add_parser(
        "tail",
        help="print the EDNS0 failures topic, decoded (a table or JSON lines)",
        description=(
            "Print the failures topic's Avro EdnsFailure records as a table (time, name server, kind, "
            "qname, qtype, rcode, resolver) or, with --json, one JSON object per record (the schema's "
            "fields; payload in base64). Reads with a throw-away group and commits nothing."
        ),
        epilog="Example: dnsqr-pipeline tail --from-beginning --json | jq -r .name_server | sort | uniq -c",
    )
    parser.add_argument(
        "--failures-topic",
        default=Settings.failures_topic,
        help="topic to read (default %(default)s)",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help=f"start at the first record (default: {DEFAULT_LAST} or -n records before the end of each "
        "partition)",
    )
    parser.add_argument("-n", dest="count", type=positive_int, metavar="N", help="stop after N records")
    parser.add_argument("--json", action="store_true", help="one JSON object per record instead of a table")
    parser.add_argument(
        "--follow", action="store_true", help="keep printing new records instead of stopping at the end"
    )
    add_kafka_arguments(parser)
    parser.set_defaults(func=run)


def format_json(record: dict[str, Any]) -> str:
    """One record as a JSON line: the Avro fields by name, ``payload`` (bytes) in base64."""
    return json.dumps({**record, "payload": base64.b64encode(record["payload"]).decode("ascii")})


def format_row(record: dict[str, Any]) -> str:
    """One record as a table row (time in UTC, to the millisecond)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record["time_sec"]))
    return _row(
        f"{when}.{record['time_nsec'] // 1_000_000:03d}",
        record["name_server"],
        record["kind"],
        record["qname"],
        dns.rdatatype.to_text(record["qtype"]),
        dns.rcode.to_text(record["rcode"]),
        record["resolver"],
    )


def _assign(consumer: Consumer, topic: str, back: int | None) -> int:
    """Assign every partition of ``topic``, at the beginning or ``back`` records before the end; returns
    the number of partitions."""
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(meta.error if meta is not None else KafkaError(KafkaError._UNKNOWN_TOPIC))
    partitions = []
    for p in sorted(meta.partitions):
        offset = OFFSET_BEGINNING
        if back is not None:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            offset = max(low, high - back)
        partitions.append(TopicPartition(topic, p, offset))
    consumer.assign(partitions)
    return len(partitions)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print records until the end (or ``-n``, or forever with ``--follow``). Exit status 3 when Kafka
    refuses the credentials or the read, before or while reading (one line, as every command says it:
    :mod:`dnsqr_pipeline.kafka_errors`); 1 on another Kafka error (e.g. no such topic) or when a value
    was not an ``EdnsFailure`` (each is named on stderr)."""
    out = out or sys.stdout
    conf = client_config(args)
    try:
        check_access(conf, topic_needs(AclOperation.READ, [args.failures_topic]))
    except KafkaAccessError as exc:
        return report("tail", exc)
    consumer = Consumer(
        {
            **conf,
            "group.id": f"dnsqr-tail-{uuid.uuid4().hex[:12]}",  # throw-away: nothing is ever committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
        }
    )
    fmt = format_json if args.json else format_row
    printed, bad = 0, 0
    at_end: set[int] = set()
    try:
        back = None if args.from_beginning else (args.count or DEFAULT_LAST)
        partitions = _assign(consumer, args.failures_topic, back)
        if not args.json:
            print(HEADER, file=out)
        while args.count is None or printed < args.count:
            for msg in consumer.consume(500, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                try:
                    record = decode_failure(msg.value() or b"")
                except Exception as exc:  # fastavro raises many types; all mean "not an EdnsFailure"
                    bad += 1
                    print(f"partition {msg.partition()} offset {msg.offset()}: not an EdnsFailure: {exc}",
                          file=sys.stderr)  # fmt: skip
                    continue
                print(fmt(record), file=out)
                printed += 1
                if printed == args.count:
                    break
            out.flush()
            if not args.follow and len(at_end) == partitions:
                break
    except KafkaException as exc:
        refused = access_error(exc, conf)
        if refused is not None:
            return report("tail", refused)
        print(f"dnsqr-pipeline tail: {args.failures_topic}: {exc.args[0].str()}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (| head): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        consumer.close()
    return 1 if bad else 0
