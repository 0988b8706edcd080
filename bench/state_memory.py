"""Memory of the aggregator's state per (name server, window) (issue #20: "a week of hourly windows").

For each input, the ns-stats records the filter agent would send for the whole file are built first (as
``bench/state_bench.py`` builds them), then applied to one ``NsState`` per ns-stats partition the way a
worker applies them (``apply_record``, the C path when built), with the changelog and the snapshot
changes taken every ``--commit-every`` records as commits and ticks take them. Reported: the process's
RSS growth while applying (``/proc/self/status`` VmRSS, after ``gc.collect()``), the name servers, the
(name server, window) entries, and the bytes per entry and per name server; then the state's own account
of its parts (``processors.metrics.state_size``: the frozen buffers exactly, the dicts estimated).

The ns-stats records are built in a child process: building them in this one would leave its freed
memory to the allocator, which the state then reuses without growing the RSS (a figure too low).

    python bench/make_big.py --records 2000000 --name-servers 1000000 --zipf 0.8 --time-span-days 7 \\
        --out bench/out/week-hc.nmsg
    python bench/state_memory.py bench/out/week-hc.nmsg

Run one input per process for a clean figure (the allocator keeps freed memory).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.state_bench import ns_stats_records
from processors.metrics import state_size
from processors.state import NsState


def rss_bytes() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--group", type=int, default=64, help="containers per filter batch")
    p.add_argument("--partitions", type=int, default=4, help="ns-stats partitions")
    p.add_argument("--window-seconds", type=int, default=3600)
    p.add_argument("--expires", type=int, default=7 * 86400)
    p.add_argument("--commit-every", type=int, default=100, help="ns-stats records between commits")
    p.add_argument(
        "--hot-windows", type=int, default=2, help="the worker's --hot-windows (0: freeze no window)"
    )
    p.add_argument("--hot-totals", type=int, default=0, help="the worker's --hot-totals (0: freeze none)")
    args = p.parse_args(argv)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as child:
        records = child.submit(
            ns_stats_records, args.input, 10**12, args.group, args.partitions, args.window_seconds
        ).result()
    states = {
        part: NsState(args.expires, hot_windows=args.hot_windows, hot_totals=args.hot_totals)
        for part in range(args.partitions)
    }
    gc.collect()
    before = rss_bytes()
    started = time.process_time()
    for i, (part, value) in enumerate(records, start=1):
        states[part].apply_record(value)
        if i % args.commit_every == 0 or i == len(records):
            for state in states.values():
                state.changelog()
                state.take_snapshot_changes()
    spent = time.process_time() - started
    gc.collect()
    grown = rss_bytes() - before
    names = sum(len(s.totals) for s in states.values())
    entries = sum(len(w) for s in states.values() for w in s.all_windows().values())
    windows = max(len(s.all_windows()) for s in states.values())
    frozen = max(len(s.frozen) for s in states.values())
    print(
        f"{args.input.name}: {len(records)} ns-stats records applied in {spent:.1f} s CPU; "
        f"{names} name servers, {windows} windows ({frozen} frozen), {entries} (name server, window) "
        f"entries; "
        f"RSS +{grown / 2**20:.0f} MiB = {grown / max(entries, 1):.0f} bytes per entry, "
        f"{grown / max(names, 1):.0f} per name server"
    )
    parts: dict[str, list[int]] = {}
    for state in states.values():
        for part, (keys, size) in state_size(state).items():
            parts.setdefault(part, [0, 0])
            parts[part][0] += keys
            parts[part][1] += size
    print(
        "  the state's account: "
        + ", ".join(f"{part} {keys} entries {size / 2**20:.0f} MiB" for part, (keys, size) in parts.items())
        + f"; in all {sum(size for _, size in parts.values()) / max(entries, 1):.0f} bytes per entry"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
