"""End-to-end throughput: a capture through ingest -> Faust workers -> sink, as ``dnsqr-pipeline run``.

Reports records/s from the start of ingest until the sink's last file is durable and committed. By
default ingest starts once the workers and the sink own their partitions, so every stage runs (and
competes for the CPU) for the whole measured time: the pipeline's throughput, as ``faust_worker.py``
measures one worker's after its start-up. ``--cold`` starts ingest with the stages, as ``dnsqr-pipeline
run`` does, so the time includes the workers' start-up and group join (a job's time to results). Checks
that nothing was lost: the sink's files must hold exactly what the standalone filter selects from the
same input, and the counts on the counts topic must equal its counts.

Also reports what the aggregation cost in messages (records per second of the processing time on the
ns-stats topic, the aggregator's changelog and the counts topic) and the workers' peak RSS (sampled every
0.2 s from /proc), for the name-server cardinality figures of issue #11.

    python bench/make_big.py --records 300000 --out bench/out/300k.nmsg
    python bench/pipeline_e2e.py bench/out/300k.nmsg --workers 1 [--bootstrap-servers H:P]
    python bench/pipeline_e2e.py bench/out/300k.nmsg --schema-registry embedded --rounds 3  # with vs without
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from dnsqr_kafka.names import DEFAULT_APP_ID, TopicNames
from dnsqr_kafka.topics import admin_client, delete_topics
from dnsqr_kafka.value_formats import RegistryOptions
from dnsqr_pipeline.completion import end_offsets
from dnsqr_pipeline.job import JobConfig, run_job
from ingest.bridge import IngestConfig
from nmsgdns.edns import EdnsFilter, ranked_counts
from nmsgdns.input import ContainerStreamReader


class PeakRss:
    """The highest resident set size of the processes whose command line holds ``marker``, sampled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if self.marker not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    continue  # exited meanwhile


def topic_records(bootstrap: str, topic: str) -> int:
    """Offsets used on ``topic`` (its records, at_least_once has no transaction markers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dnsqr-bench-ends"})
    try:
        ends = end_offsets(consumer, topic)
        starts = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in ends}
        return sum(ends[p] - starts[p] for p in ends)
    finally:
        consumer.close()


def run_once(
    args: argparse.Namespace,
    rule: EdnsFilter,
    registry: RegistryOptions | None,
    embedded: bool,
    hot: tuple[int, int],
) -> tuple[float, bool]:
    """One job over the input; prints its figures and returns (records/s end to end, output exact)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = JobConfig(
            ingest=IngestConfig(kafka={}, files=[str(args.input)], progress_bar=False),
            output_dir=Path(tmp) / "out",
            kafka={"bootstrap.servers": args.bootstrap_servers} if args.bootstrap_servers else {},
            workers=args.workers,
            partitions=args.partitions,
            processing_guarantee=args.processing_guarantee,
            timeout=3600,
            wait_for_stages=not args.cold,
            # on a given broker: counted below, then deleted
            keep_topics=bool(args.bootstrap_servers),
            schema_registry=registry,
            embedded_registry=embedded,
            hot_windows=hot[0],
            hot_totals=hot[1],
        )
        # the worker's app id: per run on a given broker, the contract's on an embedded one (job.py)
        app_id = f"{DEFAULT_APP_ID}-run-{cfg.run_id}" if args.bootstrap_servers else DEFAULT_APP_ID
        with PeakRss(f"--app-id\0{app_id}\0") as rss:
            result = run_job(cfg)
        if args.bootstrap_servers:
            topics = TopicNames.named(f".run-{cfg.run_id}")
            changelog = f"{app_id}-ns-state-changelog"
            counted = {
                name: topic_records(args.bootstrap_servers, t)
                for name, t in (
                    ("ns-stats", topics.stats),
                    ("changelog", changelog),
                    ("counts", topics.counts),
                )
            }
            print(
                "messages: "
                + ", ".join(f"{name} {n:,} ({n / result.processing:,.0f}/s)" for name, n in counted.items())
            )
            admin = admin_client({"bootstrap.servers": args.bootstrap_servers})
            ours = [
                t
                for t in admin.list_topics(timeout=10).topics
                if t.endswith(f".run-{cfg.run_id}")
                or t.startswith(f"{app_id}-")
                or f".run-{cfg.run_id}." in t
            ]
            delete_topics(admin, ours, bootstrap=args.bootstrap_servers)
        print(
            f"worker peak RSS {rss.peak_kb / 1024:,.0f} MB (largest of {args.workers}; "
            f"--hot-windows {hot[0]} --hot-totals {hot[1]})"
        )
    records = sum(result.ingest.records_in.values())
    lost = rule.selected - result.sink_records
    if result.startup is not None:
        print(f"the stages owned their partitions {result.startup:.1f} s after they started")
    rate = records / result.processing
    print(
        f"{records} records, {result.sink_records} failures written (standalone filter: {rule.selected}); "
        f"{args.workers} worker(s), {args.partitions} partitions, {args.processing_guarantee}, "
        f"{'cold' if args.cold else 'stages ready'}, "
        f"{'Schema Registry (Confluent wire format)' if registry or embedded else 'schemaless Avro'}: "
        f"{result.processing:.1f} s from ingest start to the last durable file = "
        f"{rate:,.0f} records/s end to end"
    )
    exact = True
    if result.failures_by_ns != ranked_counts(rule.failures_by_ns):
        print("per-name-server counts DIFFER from the standalone filter's", file=sys.stderr)
        exact = False
    if lost:
        print(f"{lost} failures missing from the sink's files", file=sys.stderr)
        exact = False
    return rate, exact


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--bootstrap-servers", help="default: start a broker for the run")
    p.add_argument("--processing-guarantee", default="at_least_once")
    p.add_argument("--cold", action="store_true", help="start ingest with the stages, not when ready")
    p.add_argument(
        "--schema-registry",
        metavar="URL|embedded",
        help="also run with this Schema Registry (Confluent wire format) and compare: the runs alternate, "
        "without it first, and the ratio of the medians is printed",
    )
    p.add_argument("--rounds", type=int, default=1, help="runs of each variant (default 1)")
    p.add_argument(
        "--hot-windows",
        default="2",
        help="the workers' --hot-windows; several, comma-separated, are variants run in turn (e.g. 2,0: "
        "windows frozen or not), and each one's median rate is printed",
    )
    p.add_argument(
        "--hot-totals",
        default=str(JobConfig.hot_totals),
        help="the workers' --hot-totals; several, comma-separated, are variants too (each with each "
        "--hot-windows)",
    )
    args = p.parse_args(argv)

    rule = EdnsFilter()
    with args.input.open("rb") as fh:
        for batch in ContainerStreamReader(fh, name=str(args.input)).batches():
            for payload in batch:
                rule.select(payload)
    embedded = args.schema_registry == "embedded"
    registry = RegistryOptions(args.schema_registry) if args.schema_registry and not embedded else None
    formats = [("schemaless", None, False)]
    if args.schema_registry:
        formats.append(("registry", registry, embedded))
    hot = [(int(w), int(t)) for w in args.hot_windows.split(",") for t in args.hot_totals.split(",")]
    variants = [
        (name if len(hot) == 1 else f"{name} hot {w}/{t}", options, embed, (w, t))
        for name, options, embed in formats
        for w, t in hot
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _, _ in variants}
    exact = True
    for _ in range(args.rounds):
        for name, options, embed, n in variants:
            rate, ok = run_once(args, rule, options, embed, n)
            rates[name].append(rate)
            exact &= ok
    if len(hot) > 1:
        print(
            f"records/s, median of {args.rounds}: "
            + ", ".join(f"{name} {statistics.median(rs):,.0f}" for name, rs in rates.items())
        )
    if args.schema_registry and len(hot) == 1:
        plain, framed = (statistics.median(rates[name]) for name in ("schemaless", "registry"))
        print(
            f"records/s, median of {args.rounds}: schemaless {plain:,.0f}, registry {framed:,.0f} "
            f"(registry / schemaless = {framed / plain:.2f}); each run: "
            + "; ".join(f"{name} " + ", ".join(f"{r:,.0f}" for r in rs) for name, rs in rates.items())
        )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
