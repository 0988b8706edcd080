"""``dnsqr-pipeline run`` (one job over finite sources) and ``demo`` (``run`` on the shipped sample).

Without ``--bootstrap-servers`` (and without ``$KAFKA_BOOTSTRAP``) the job starts its own local Kafka and
stops it afterwards: the embedded default for a user who only has a capture to look at. Likewise
``--schema-registry embedded`` starts a local Schema Registry for the job (the topics' values then in the
Confluent wire format) and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, report
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_kafka.topics import TopicAdminError
from dnsqr_kafka.value_formats import (
    EXIT_REGISTRY,
    FormatChoiceError,
    RegistryError,
    RegistryUnavailable,
    add_format_arguments,
    registry_options,
)
from dnsqr_pipeline.completion import CompletionError
from dnsqr_pipeline.job import JobConfig, JobError, format_table, job_files, run_job, write_counts_json
from dnsqr_pipeline.localkafka import LocalKafkaError
from dnsqr_pipeline.localregistry import LocalRegistryError
from ingest.bridge import IngestConfig
from ingest.command import add_ingest_arguments, config_from_args
from ingest.producer import IngestError

#: the ``--schema-registry`` value that starts a local registry for the job
EMBEDDED_REGISTRY = "embedded"
DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE = DATA_DIR / "sample.z.nmsg"
SAMPLE_EXPECTED = DATA_DIR / "sample.expected_counts.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="the whole pipeline for one job (e.g. replaying captures), then the table of name servers",
        description="Create the topics, run ingest, Faust workers and the sink until every input record "
        "is processed and every failure written, print name servers by failures and rate, and exit. "
        "Success is proven from Kafka: every raw container the job produced has a filter receipt, the "
        "sink's files hold every failure and the totals count them; otherwise the job exits 1 naming the "
        "stage and what is short. Without --bootstrap-servers it starts its own broker (its data is kept "
        "after a failure). On a given broker it uses per-run topics, deleted at the end unless "
        "--keep-topics, or the raw and DLQ topics named by --raw-topic/--dlq-topic. Exit status: 0 "
        "complete, 1 incomplete or damaged input (what was read is still processed), 2 usage or a Schema "
        "Registry that cannot be used (unreachable, or it refuses the workers' schemas), 3 Kafka "
        "refused the credentials or an operation (one line names the principal, broker and operation).",
    )
    add_ingest_arguments(run)
    # Not the contract's names: a job uses its own topics unless it is given names (see --keep-topics).
    run.set_defaults(raw_topic=None, dlq_topic=None)
    _add_job_arguments(run, output_default=None)
    add_kafka_arguments(run, embedded_default=True)
    add_format_arguments(run, embedded=True)
    run.set_defaults(func=run_main)

    demo = subparsers.add_parser(
        "demo",
        help="`run` on the sample capture shipped with the project (starts and stops a local Kafka)",
        description=f"Runs the pipeline on {SAMPLE.name} (2596 records from a test resolver) and compares "
        "the per-name-server counts with the reference C filter's.",
    )
    _add_job_arguments(demo, output_default="demo-out")
    add_kafka_arguments(demo, embedded_default=True)
    add_format_arguments(demo, embedded=True)
    demo.set_defaults(func=demo_main)


def _add_job_arguments(parser: argparse.ArgumentParser, output_default: str | None) -> None:
    job = parser.add_argument_group("job")
    job.add_argument(
        "--output-dir",
        required=output_default is None,
        default=output_default,
        type=Path,
        help="directory for the sink's NMSG files and the stages' logs"
        + (f" (default {output_default})" if output_default else ""),
    )
    job.add_argument("--workers", type=int, default=1, help="Faust worker processes (default %(default)s)")
    job.add_argument(
        "--partitions", type=int, default=4, help="partitions of the job's topics (default %(default)s)"
    )
    job.add_argument("--counts-json", type=Path, metavar="FILE", help="write {name_server_ip: failures}")
    job.add_argument(
        "--processing-guarantee",
        choices=("at_least_once", "exactly_once"),
        default="at_least_once",
        help="at_least_once (default): a worker restarted mid-job may write some failures twice and count "
        "them twice, never fewer; exactly_once: Kafka transactions, each failure written and counted once "
        "even across crashes, at some cost in throughput",
    )
    job.add_argument(
        "--replication-factor",
        type=int,
        help="replication factor of the job's topics (default: min(3, brokers); min.insync.replicas = "
        "RF - 1 from 3 up)",
    )
    job.add_argument(
        "--keep-topics",
        action="store_true",
        help="on a given broker, keep the job's per-run topics instead of deleting them at the end",
    )
    job.add_argument("--kafka-dir", type=Path, help="data directory of the embedded broker (default: temp)")
    job.add_argument(
        "--done-timeout",
        type=float,
        metavar="SECONDS",
        help="how long after ingest the stages may take to finish before the job fails, naming the stage "
        "that is short (default: 60 s + 1 s per 5,000 records)",
    )
    job.add_argument(
        "--timeout", type=float, default=3600, help="give up on the whole job after this many seconds"
    )
    job.add_argument("--top", type=int, default=20, help="rows of the name-server table")


def _job_config(args: argparse.Namespace, ingest: IngestConfig) -> JobConfig:
    if args.bootstrap_servers is None:
        args.bootstrap_servers = ""  # client_config needs a string; empty means "start one"
    kafka = {k: v for k, v in client_config(args).items() if v}
    embedded = args.schema_registry == EMBEDDED_REGISTRY
    return JobConfig(
        ingest=ingest,
        output_dir=args.output_dir,
        kafka=kafka,
        workers=args.workers,
        partitions=max(args.partitions, args.workers),
        processing_guarantee=args.processing_guarantee,
        kafka_dir=args.kafka_dir,
        timeout=args.timeout,
        done_timeout=args.done_timeout,
        replication_factor=args.replication_factor,
        keep_topics=args.keep_topics,
        raw_topic=getattr(args, "raw_topic", None),
        dlq_topic=getattr(args, "dlq_topic", None),
        schema_registry=None if embedded else registry_options(args),
        embedded_registry=embedded,
        failures_format=args.failures_format,
    )


def run_main(args: argparse.Namespace) -> int:
    try:
        ingest = config_from_args(args)
    except IngestError as exc:
        print(f"dnsqr-pipeline run: error: {exc}", file=sys.stderr)
        return 2
    if not (ingest.files or ingest.pcaps or ingest.kafka_sources):
        print(
            "dnsqr-pipeline run: give finite sources (-r, -p, or --kafka-source with --kafka-source-eof); "
            "for live sockets use `ingest`, `worker` and `sink`",
            file=sys.stderr,
        )
        return 2
    return _run(args, ingest)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace, ingest: IngestConfig) -> int:
    if args.workers < 1:
        print(f"dnsqr-pipeline {args.command}: --workers must be at least 1", file=sys.stderr)
        return 2
    # SIGTERM (e.g. from `timeout` or a scheduler) unwinds like Ctrl-C, so the job's workers, sink and
    # embedded broker are stopped on the way out instead of being left running.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    config = _job_config(args, ingest)
    try:
        if config.kafka.get("bootstrap.servers"):
            check_access(config.kafka)
        result = run_job(config)
    except KafkaAccessError as exc:
        return report(args.command, exc)
    except (RegistryError, FormatChoiceError) as exc:
        print(f"dnsqr-pipeline {args.command}: {exc}", file=sys.stderr)
        return EXIT_REGISTRY
    except (
        JobError,
        CompletionError,
        IngestError,
        LocalKafkaError,
        LocalRegistryError,
        TopicAdminError,
        RegistryUnavailable,
    ) as exc:
        refused = access_error(exc, config.kafka)
        if refused:
            return report(args.command, refused)
        print(f"dnsqr-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result.totals, args.top))
    print(
        f"\n{sum(result.ingest.records_in.values())} records in, {result.sink_records} EDNS0 failures "
        f"written to {len(result.sink_files)} file(s) in {args.output_dir}, "
        f"{len(result.totals)} name servers, {result.elapsed:.1f} s"
    )
    if args.counts_json:
        write_counts_json(args.counts_json, result.failures_by_ns)
    args.result = result
    if not result.ingest.input_complete:
        # The job is complete for what could be read; the input itself was not, and a script must see it.
        for damage in result.ingest.damaged_inputs:
            print(f"dnsqr-pipeline {args.command}: error: input damaged: {damage}", file=sys.stderr)
        print(
            f"dnsqr-pipeline {args.command}: the results above cover the records read before the damage",
            file=sys.stderr,
        )
        return 1
    return 0


def demo_main(args: argparse.Namespace) -> int:
    if args.counts_json is None:
        args.counts_json = args.output_dir / "counts.json"
    for old in job_files(args.output_dir) if args.output_dir.is_dir() else []:
        old.unlink()  # the demo's own directory: each demo starts afresh
    status = _run(args, IngestConfig(kafka={}, files=[str(SAMPLE)], progress_bar=False))
    if status:
        return status
    expected = json.loads(SAMPLE_EXPECTED.read_text(encoding="utf-8"))
    got = args.result.failures_by_ns
    if got == expected:
        print(f"counts equal the reference C filter's on this sample ({sum(expected.values())} failures)")
        return 0
    print(f"counts DIFFER from the reference C filter's: got {got}, expected {expected}", file=sys.stderr)
    return 1
