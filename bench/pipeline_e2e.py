"""End-to-end throughput: a capture through ingest -> Faust workers -> sink, as ``dnsqr-pipeline run``.

Reports records/s from the start of ingest until the sink's last file is durable and committed. By
default ingest starts once the workers and the sink own their partitions, so every stage runs (and
competes for the CPU) for the whole measured time: the pipeline's throughput, as ``faust_worker.py``
measures one worker's after its start-up. ``--cold`` starts ingest with the stages, as ``dnsqr-pipeline
run`` does, so the time includes the workers' start-up and group join (a job's time to results). Checks
that nothing was lost: the sink's files must hold exactly what the standalone filter selects from the
same input, and the tables' counts must equal its counts.

    python bench/make_big.py --records 300000 --out bench/out/300k.nmsg
    python bench/pipeline_e2e.py bench/out/300k.nmsg --workers 1 [--bootstrap-servers H:P]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dnsqr_pipeline.job import JobConfig, run_job
from ingest.bridge import IngestConfig
from nmsgdns.edns import EdnsFilter
from nmsgdns.input import ContainerStreamReader


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--bootstrap-servers", help="default: start a broker for the run")
    p.add_argument("--processing-guarantee", default="at_least_once")
    p.add_argument("--cold", action="store_true", help="start ingest with the stages, not when ready")
    args = p.parse_args(argv)

    rule = EdnsFilter()
    with args.input.open("rb") as fh:
        for batch in ContainerStreamReader(fh, name=str(args.input)).batches():
            for payload in batch:
                rule.select(payload)
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
        )
        result = run_job(cfg)
    records = sum(result.ingest.records_in.values())
    lost = rule.selected - result.sink_records
    if result.startup is not None:
        print(f"the stages owned their partitions {result.startup:.1f} s after they started")
    print(
        f"{records} records, {result.sink_records} failures written (standalone filter: {rule.selected}); "
        f"{args.workers} worker(s), {args.partitions} partitions, {args.processing_guarantee}, "
        f"{'cold' if args.cold else 'stages ready'}: "
        f"{result.processing:.1f} s from ingest start to the last durable file = "
        f"{records / result.processing:,.0f} records/s end to end"
    )
    if result.failures_by_ns != dict(rule.failures_by_ns.most_common()):
        print("per-name-server counts DIFFER from the standalone filter's", file=sys.stderr)
        return 1
    if lost:
        print(f"{lost} failures missing from the sink's files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
