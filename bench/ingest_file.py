"""Benchmark: NMSG file -> raw topic through the ingest bridge, in one process, records/s.

Generates the input with bench/make_big.py when it is missing, creates a fresh raw topic, runs
``run_ingest`` and reports the rate over the whole run, which includes waiting for every delivery.

    python bench/ingest_file.py --bootstrap-servers 127.0.0.1:9092 --records 1000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from ingest.bridge import IngestConfig, run_ingest

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--file", type=Path, help="input (default bench/out/big-RECORDS.nmsg, generated)")
    p.add_argument("--zlib", action="store_true", help="generate zlib containers")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--compression", default="lz4")
    p.add_argument("--container-records", type=int, default=1000)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)

    path = args.file or REPO / "bench" / "out" / f"big-{args.records}{'.z' if args.zlib else ''}.nmsg"
    if not path.exists():
        cmd = [
            sys.executable,
            str(REPO / "bench" / "make_big.py"),
            "--records",
            str(args.records),
            "--out",
            str(path),
        ]
        subprocess.run(cmd + (["--zlib"] if args.zlib else []), check=True)
    admin = AdminClient({"bootstrap.servers": args.bootstrap_servers})
    for run in range(args.runs):
        topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(30)
        try:
            config = IngestConfig(
                kafka={"bootstrap.servers": args.bootstrap_servers},
                files=[str(path)],
                raw_topic=topic,
                dlq_topic=None,
                compression=args.compression,
                container_records=args.container_records,
                progress_bar=False,
                progress_interval=3600,
            )
            t0 = time.perf_counter()
            summary = run_ingest(config)
            elapsed = time.perf_counter() - t0
        finally:
            admin.delete_topics([topic])[topic].result(30)
        n = summary.records_out
        print(
            f"run {run + 1}: {path.name} ({path.stat().st_size / 1e6:.0f} MB) -> "
            f"{args.partitions}-partition topic, {args.compression}, containers of {args.container_records}: "
            f"{n} records delivered in {elapsed:.2f} s = {n / elapsed:,.0f} records/s (ok={summary.ok})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
