"""Micro-benchmark of the aggregator's per-name-server work: Python against C (``processors._state``).

Builds the ns-stats records the filter agent would send for the first ``--containers`` containers of each
input (re-packed as ingest does, ``--group`` containers per filter batch, ``--partitions`` ns-stats
partitions, all owned by one worker), then times, in CPU time (``time.process_time``), what the aggregator
does with them: apply every record to its partition's state, write the changelog records
(``NsState.changelog``) every ``--commit-every`` records, and the counts snapshots of what changed every
``--tick-every`` records. Each implementation runs ``--repeat`` times on fresh states, alternating; the best
run of each is reported, phase by phase. Building the records (the filter's work) is not timed.

    python bench/state_bench.py /work/main/bench/out/big-hc.nmsg /work/main/bench/out/big.nmsg
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import processors.state
from nmsgdns.container import encode_container
from nmsgdns.input import ContainerStreamReader
from processors.delta_batch import decode_batch
from processors.filter_agent import KeyPartitioner, PartitionBatch, WindowClock, filter_container
from processors.snapshots import SnapshotEncoder, snapshot_records_py
from processors.state import NsState, counts_records_py

PHASES = ("apply", "changelog", "snapshots")


def ns_stats_records(
    path: Path, containers: int, group: int, partitions: int, window_seconds: int
) -> list[tuple[int, bytes]]:
    """(ns-stats partition, NsStatsBatch) in the order the filter agent would send them."""
    with path.open("rb") as fh:
        payloads = list(itertools.islice(ContainerStreamReader(fh, name=str(path)).batches(), containers))
    raw = [encode_container(p) for p in payloads]
    clock, partition_of = WindowClock(window_seconds), KeyPartitioner(partitions)
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(raw), group):
        batch = PartitionBatch()
        for offset, data in enumerate(raw[i : i + group], start=i):
            batch.add(offset, filter_container(data, clock))
        out += [(p, value) for p, values in sorted(batch.deltas(partition_of).items()) for value in values]
    return out


def run(
    records: list[tuple[int, bytes]], implementation: str, args: argparse.Namespace
) -> tuple[dict[str, float], int, int, int]:
    """CPU seconds per phase of one run; also the name servers, changelog records and snapshots."""
    ext = processors.state._ext
    if implementation == "c":
        assert ext is not None, "processors._state is not built"
        processors.state.counts_records = ext.counts_records
        snapshot_records: Callable = ext.snapshot_records

        def apply(state: NsState, value: bytes) -> None:
            state.apply_record(value)
    else:
        processors.state.counts_records = counts_records_py
        snapshot_records = snapshot_records_py

        def apply(state: NsState, value: bytes) -> None:
            state.apply(decode_batch(value))

    states = {p: NsState(args.expires) for p in range(args.partitions)}
    spent = dict.fromkeys(PHASES, 0.0)
    changelog = snapshots = 0
    clock = time.process_time
    for i, (p, value) in enumerate(records, start=1):
        t0 = clock()
        apply(states[p], value)
        spent["apply"] += clock() - t0
        last = i == len(records)
        if i % args.commit_every == 0 or last:
            t0 = clock()
            for state in states.values():
                changelog += len(state.changelog())
            spent["changelog"] += clock() - t0
        if i % args.tick_every == 0 or last:
            t0 = clock()
            for state in states.values():
                encode = SnapshotEncoder(args.window_seconds, expired_through=state.expired_through())
                changed, outside = state.take_snapshot_changes()
                snapshots += len(snapshot_records(changed, state.totals, encode))
                snapshots += len([encode(ns, None, None, total) for ns, total in outside.items()])
            spent["snapshots"] += clock() - t0
    processors.state.counts_records = counts_records_py if ext is None else ext.counts_records
    return spent, sum(len(s.totals) for s in states.values()), changelog, snapshots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--containers", type=int, default=200, help="first containers of each input")
    p.add_argument("--group", type=int, default=64, help="containers per filter batch")
    p.add_argument("--partitions", type=int, default=4, help="ns-stats partitions")
    p.add_argument("--window-seconds", type=int, default=3600)
    p.add_argument("--expires", type=int, default=7 * 86400)
    p.add_argument("--commit-every", type=int, default=100, help="ns-stats records between changelogs")
    p.add_argument("--tick-every", type=int, default=50, help="ns-stats records between snapshot ticks")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    for path in args.inputs:
        records = ns_stats_records(path, args.containers, args.group, args.partitions, args.window_seconds)
        rows = sum(len(decode_batch(v).name_servers) for _, v in records)
        print(f"{path.name}: {args.containers} containers -> {len(records)} ns-stats records, {rows} rows")
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for implementation in ("python", "c"):
                spent, names, changelog, snapshots = run(records, implementation, args)
                mine = best.setdefault(implementation, spent)
                for phase in PHASES:
                    mine[phase] = min(mine[phase], spent[phase])
        print(f"  {names} name servers, {changelog} changelog records, {snapshots} snapshots per run")
        for implementation, spent in best.items():
            phases = ", ".join(f"{phase} {spent[phase]:.3f}" for phase in PHASES)
            total = sum(spent.values())
            print(f"  {implementation:6}: total {total:.3f} s CPU ({phases}; best of {args.repeat})")
        speedup = sum(best["python"].values()) / sum(best["c"].values())
        print(f"  C is {speedup:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
