"""Benchmark of the standalone filter: ``dnsqr-edns-filter -r BIG -w OUT`` in records/s.

Runs the real command (a subprocess, as a user would) several times and reports each run's rate and the
best; the machine is noisy, so compare figures from one invocation only. ``--compare`` alternates runs
with the C extension and with the pure-Python fallback (``NMSGDNS_PURE_PYTHON=1``) in the same
invocation; ``--judge`` adds an in-process micro-benchmark of ``nmsgdns.edns.judge`` per implementation.

    python bench/make_big.py --records 1000000 --out bench/out/big.nmsg
    python bench/filter_bench.py bench/out/big.nmsg --runs 3
    python bench/filter_bench.py bench/out/big.nmsg --runs 3 --compare --judge
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nmsgdns.input import ContainerStreamReader
from nmsgdns.native import PURE_PYTHON_ENV

#: In-process judge() timing, run in a child so each implementation is chosen at import, as in real use.
_JUDGE_CHILD = r"""
import itertools, sys, time
from nmsgdns.edns import judge
from nmsgdns.input import ContainerStreamReader
from nmsgdns.wire import IMPLEMENTATION
with open(sys.argv[1], "rb") as fh:
    payloads = list(itertools.islice(ContainerStreamReader(fh, name=sys.argv[1]), int(sys.argv[2])))
for detail in (False, True):
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for p in payloads:
            judge(p, detail=detail)
        best = min(best, time.process_time() - t0)
    print(f"judge(detail={detail}) [{IMPLEMENTATION}]: {len(payloads) / best:,.0f} payloads/s "
          f"(best of 5 over {len(payloads)} payloads, CPU time)")
"""


def count_records(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(len(batch) for batch in ContainerStreamReader(fh, name=str(path)).batches())


def _env(pure_python: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_ENV}
    if pure_python:
        env[PURE_PYTHON_ENV] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target", type=float, default=175_000, help="records/s the issue asks for")
    p.add_argument("--compare", action="store_true", help="also time the pure-Python fallback, alternating")
    p.add_argument("--judge", action="store_true", help="micro-benchmark judge() in-process too")
    p.add_argument("--judge-records", type=int, default=100_000, help="payloads for --judge")
    args = p.parse_args(argv)
    exe = shutil.which("dnsqr-edns-filter") or str(Path(sys.executable).with_name("dnsqr-edns-filter"))
    records = count_records(args.input)
    variants = [("default", False), ("pure-python", True)] if args.compare else [("default", False)]
    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, pure in variants:
                out = Path(tmp) / f"out{i}.nmsg"
                t0 = time.perf_counter()
                subprocess.run(
                    [exe, "-r", str(args.input), "-w", str(out), "--progress", "never"],
                    check=True,
                    stderr=subprocess.DEVNULL,
                    env=_env(pure),
                )
                dt = time.perf_counter() - t0
                rates[name].append(records / dt)
                rate = records / dt
                print(f"run {i + 1} [{name}]: {records} records in {dt:.2f} s = {rate:,.0f} records/s")
    for name, _ in variants:
        best = max(rates[name])
        verdict = "met" if best >= args.target else "NOT met"
        print(f"best [{name}] {best:,.0f} records/s; target {args.target:,.0f}: {verdict}")
    if args.judge:
        for pure in (False, True):
            subprocess.run(
                [sys.executable, "-c", _JUDGE_CHILD, str(args.input), str(args.judge_records)],
                check=True,
                env=_env(pure),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
