"""Benchmark of the standalone filter: ``dnsqr-edns-filter -r BIG -w OUT`` in records/s.

Runs the real command (a subprocess, as a user would) several times and reports each run's rate and the
best; the machine is noisy, so compare figures from one invocation only.

    python bench/make_big.py --records 1000000 --out bench/out/big.nmsg
    python bench/filter_bench.py bench/out/big.nmsg --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nmsgdns.input import ContainerStreamReader


def count_records(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(len(batch) for batch in ContainerStreamReader(fh, name=str(path)).batches())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target", type=float, default=175_000, help="records/s the issue asks for")
    args = p.parse_args(argv)
    exe = shutil.which("dnsqr-edns-filter") or str(Path(sys.executable).with_name("dnsqr-edns-filter"))
    records = count_records(args.input)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"out{i}.nmsg"
            t0 = time.perf_counter()
            subprocess.run([exe, "-r", str(args.input), "-w", str(out), "--progress", "never"],
                           check=True, stderr=subprocess.DEVNULL)
            dt = time.perf_counter() - t0
            rates.append(records / dt)
            print(f"run {i + 1}: {records} records in {dt:.2f} s = {records / dt:,.0f} records/s")
    best = max(rates)
    verdict = "met" if best >= args.target else "NOT met"
    print(f"best {best:,.0f} records/s; target {args.target:,.0f}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
