"""``dnsqr-pipeline tail``: print the failures topic, decoded, as a table or as JSON lines.

A downstream consumer's first tool, and a worked example of reading the topic: each value is one
``EdnsFailure`` (``schemas/edns_failure.avsc``) in the format the flags say (``dnsqr_kafka.value_formats``):
schemaless Avro by default, decoded with the published schema; the Confluent wire format with
``--schema-registry`` (each writer's schema looked up by its id); JSON with ``--failures-format json``.
The key is the name server.

It reads with a throw-away consumer group, assigns the partitions itself and commits nothing, so it never
moves anyone's offsets. It starts ``N`` records before the end of each partition (``-n``, default 10), or
at the beginning with ``--from-beginning``; it stops after ``N`` records when ``-n`` is given, and at the
end of the partitions unless ``--follow``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO, TypeVar

import dns.rcode
import dns.rdatatype
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AclOperation

from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, report, topic_needs
from dnsqr_kafka.argtypes import positive_int
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_kafka.value_formats import (
    EXIT_REGISTRY,
    FormatChoiceError,
    RegistryError,
    RegistryUnavailable,
    add_format_arguments,
    registry_options,
    topic_formats,
)
from dnsqr_schemas.value_format import record_json
from processors.settings import Settings

#: Records before the end of each partition where reading starts without ``--from-beginning`` or ``-n``.
DEFAULT_LAST = 10
#: Longest single wait on the broker (a consume, a metadata or watermark request): how soon tail sees a
#: Ctrl-C.
WAIT_SECONDS = 0.5
#: How long the set-up waits for the topic's metadata and for each partition's watermarks.
SETUP_SECONDS = 15.0
#: Exit status on Ctrl-C (128 + SIGINT, what a shell reports for a program SIGINT ended).
EXIT_INTERRUPTED = 130
#: librdkafka's errors for a wait that ended before the broker answered; the next wait may get it.
_NO_ANSWER_YET = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
#: Widths of the table's columns but the last; longer values (IPv6 addresses, long names) push the rest
#: of their row to the right.
_WIDTHS = (23, 24, 15, 32, 6, 8)


def _row(*cells: str) -> str:
    return " ".join(f"{c:<{w}}" for c, w in zip(cells[:-1], _WIDTHS, strict=True)) + " " + cells[-1]


HEADER = _row("time", "name server", "kind", "qname", "qtype", "rcode", "resolver")

T = TypeVar("T")


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
    add_format_arguments(parser)
    parser.set_defaults(func=run)


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


class InterruptFlag:
    """SIGINT while tail runs, as a flag that its loops look at between waits of at most
    :data:`WAIT_SECONDS`, so that Ctrl-C ends it within about that long, at a record boundary.

    tail installs this itself rather than rely on Python's KeyboardInterrupt: Python installs that
    handler only when SIGINT is at its default disposition at start-up, so a tail started with SIGINT
    ignored (a background job of a non-interactive shell, or anything run from one, such as a test run)
    ignored Ctrl-C and ``kill -INT`` and followed the topic for good; and an exception raised at any
    bytecode could cut the last output line short. The first SIGINT sets the flag; a second one raises
    KeyboardInterrupt at once (Python's handler), for a wait that does not end. Outside the main thread,
    where no handler can be installed, the flag stays unset.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None
        self._installed = False

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            # None: the previous handler was not installed from Python; the default is the nearest
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _Interrupted(Exception):
    """Ctrl-C while the set-up waited for the broker."""


def _answer(call: Callable[[float], T], interrupt: InterruptFlag) -> T:
    """``call(WAIT_SECONDS)`` until the broker answers within one wait: librdkafka's waits do not end on
    a signal, so one long wait would hold a Ctrl-C for its whole length. Raises the last error after
    :data:`SETUP_SECONDS` without an answer, at once an error that is an answer (e.g. no such
    partition), and :class:`_Interrupted` on Ctrl-C."""
    deadline = time.monotonic() + SETUP_SECONDS
    while not interrupt.requested:
        try:
            return call(WAIT_SECONDS)
        except KafkaException as exc:
            if exc.args[0].code() not in _NO_ANSWER_YET or time.monotonic() >= deadline:
                raise
    raise _Interrupted


def _assign(consumer: Consumer, topic: str, back: int | None, interrupt: InterruptFlag) -> int:
    """Assign every partition of ``topic``, at the beginning or ``back`` records before the end; returns
    the number of partitions."""
    meta = _answer(lambda wait: consumer.list_topics(topic, timeout=wait), interrupt).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(meta.error if meta is not None else KafkaError(KafkaError._UNKNOWN_TOPIC))
    partitions = []
    for p in sorted(meta.partitions):
        offset = OFFSET_BEGINNING
        if back is not None:
            tp = TopicPartition(topic, p)
            low, high = _answer(
                lambda wait, tp=tp: consumer.get_watermark_offsets(tp, timeout=wait), interrupt
            )
            offset = max(low, high - back)
        partitions.append(TopicPartition(topic, p, offset))
    consumer.assign(partitions)
    return len(partitions)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print records until the end (or ``-n``, or forever with ``--follow``), or until Ctrl-C (exit
    status 130, once the records read so far are printed and the consumer closed). Exit status 3 when
    Kafka refuses the credentials or the read, before or while reading (one line, as every command says
    it: :mod:`dnsqr_kafka.access`); 1 on another Kafka error (e.g. no such topic) or when a
    value was not an ``EdnsFailure`` (each is named on stderr); 2 when the Schema Registry cannot be used
    at start-up."""
    with InterruptFlag() as interrupt:
        return _tail(args, out or sys.stdout, interrupt)


def _tail(args: argparse.Namespace, out: TextIO, interrupt: InterruptFlag) -> int:
    """:func:`run` with its SIGINT handler installed: every wait ends within :data:`WAIT_SECONDS` to
    look at ``interrupt``."""
    try:
        value_format = topic_formats(
            registry_options(args),
            failures_topic=args.failures_topic,
            counts_topic=Settings.counts_topic,
            failures_format=args.failures_format,
        ).failures
    except (RegistryError, FormatChoiceError) as exc:
        print(f"dnsqr-pipeline tail: {exc}", file=sys.stderr)
        return EXIT_REGISTRY
    conf = client_config(args)
    try:
        check_access(conf, topic_needs(AclOperation.READ, [args.failures_topic]))
    except KafkaAccessError as exc:
        return report("tail", exc)
    if interrupt.requested:
        return EXIT_INTERRUPTED
    consumer = Consumer(
        {
            **conf,
            "group.id": f"dnsqr-tail-{uuid.uuid4().hex[:12]}",  # throw-away: nothing is ever committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
        }
    )
    fmt = record_json if args.json else format_row
    printed, bad = 0, 0
    at_end: set[int] = set()
    try:
        back = None if args.from_beginning else (args.count or DEFAULT_LAST)
        partitions = _assign(consumer, args.failures_topic, back, interrupt)
        if not args.json:
            print(HEADER, file=out)
        while (args.count is None or printed < args.count) and not interrupt.requested:
            for msg in consumer.consume(500, timeout=WAIT_SECONDS):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                try:
                    record = value_format.decode(msg.value() or b"")
                except OSError:  # the registry did not answer a lookup
                    raise
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
    except _Interrupted:
        return EXIT_INTERRUPTED
    except KafkaException as exc:
        refused = access_error(exc, conf)
        if refused is not None:
            return report("tail", refused)
        print(f"dnsqr-pipeline tail: {args.failures_topic}: {exc.args[0].str()}", file=sys.stderr)
        return 1
    except RegistryUnavailable as exc:
        print(f"dnsqr-pipeline tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (| head): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        consumer.close()
    if interrupt.requested:
        return EXIT_INTERRUPTED
    return 1 if bad else 0
