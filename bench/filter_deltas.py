"""Micro-benchmark of the filter agent's per-container work: filter, count, encode the ns-stats records.

CPU seconds (``time.process_time``, best of ``--runs``) to run N raw containers of each FILE through what
``processors.filter_agent._process_events`` does without Kafka: ``filter_container`` per container,
``PartitionBatch.add``, and ``PartitionBatch.deltas`` per batch of ``BATCH_CONTAINERS`` containers (one
input partition, one ``KeyPartitioner`` kept across batches as in a worker). The containers are the
file's records packed 1000 a container, as ingest packs the raw topic.

When ``processors.deltas`` exists it times both of its implementations in the same run (the C
extension, and its Python specification swapped in); on an older checkout (main before it, for a
before/after figure) it times the code as it is. The NMSG/DNS extensions (nmsgdns) run in both.

    python bench/filter_deltas.py bench/out/big.nmsg bench/out/big-hc.nmsg --containers 200
    PYTHONPATH=/path/to/older/checkout python bench/filter_deltas.py ...   # the "before" figure
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from nmsgdns.container import encode_container
from nmsgdns.input import ContainerStreamReader
from processors import filter_agent
from processors.filter_agent import BATCH_CONTAINERS, PartitionBatch, WindowClock, filter_container

#: records per raw container (ingest's default, ``ingest/packer.py``)
PER_CONTAINER = 1000


def raw_containers(path: Path, count: int) -> list[bytes]:
    """The first ``count`` containers of ``path``'s records, packed as ingest packs them (the last one
    may be short)."""
    with path.open("rb") as fh:
        payloads = list(itertools.islice(ContainerStreamReader(fh, name=str(path)), count * PER_CONTAINER))
    return [
        encode_container(payloads[i : i + PER_CONTAINER], crcs=False)
        for i in range(0, len(payloads), PER_CONTAINER)
    ]


def run(containers: list[bytes], partitions: int, window: int) -> tuple[int, int]:
    """Everything the agent does per batch but sending; (rows, ns-stats records) made."""
    clock = WindowClock(window)
    partition_of = filter_agent.KeyPartitioner(partitions)
    rows = records = 0
    for first in range(0, len(containers), BATCH_CONTAINERS):
        batch = PartitionBatch()
        for offset, data in enumerate(containers[first : first + BATCH_CONTAINERS], first):
            batch.add(offset, filter_container(data, clock))
        rows += len(batch.counts)
        records += sum(len(values) for values in batch.deltas(partition_of).values())
    return rows, records


@contextmanager
def python_counting() -> Iterator[None]:
    """The filter agent with processors.deltas' Python specification instead of its C version."""
    deltas = sys.modules["processors.deltas"]
    saved = filter_agent.fold, filter_agent.encode  # type: ignore[attr-defined]
    filter_agent.fold, filter_agent.encode = deltas.fold_py, deltas.encode_py  # type: ignore[attr-defined]
    try:
        yield
    finally:
        filter_agent.fold, filter_agent.encode = saved  # type: ignore[attr-defined]


@contextmanager
def as_is() -> Iterator[None]:
    yield


def implementations() -> dict[str, Callable[[], AbstractContextManager[None]]]:
    """Label -> context manager that selects it."""
    deltas = sys.modules.get("processors.deltas")  # imported by filter_agent where it exists
    if deltas is None:
        return {"before deltas": as_is}
    if deltas.IMPLEMENTATION == "c":
        return {"deltas C": as_is, "deltas Python": python_counting}
    return {"deltas Python": as_is}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--containers", type=int, default=200, help="containers of each file (default 200)")
    p.add_argument("--runs", type=int, default=3, help="runs per implementation; the best counts")
    p.add_argument("--partitions", type=int, default=4, help="ns-stats partitions (default 4)")
    p.add_argument("--window", type=int, default=60, help="window seconds (default 60)")
    args = p.parse_args(argv)
    for path in args.files:
        containers = raw_containers(path, args.containers)
        print(f"{path.name}: {len(containers)} containers of {PER_CONTAINER} records")
        for label, select in implementations().items():
            best = float("inf")
            for _ in range(args.runs):
                with select():
                    t0 = time.process_time()
                    rows, out = run(containers, args.partitions, args.window)
                    best = min(best, time.process_time() - t0)
            per_container = best / len(containers) * 1e3
            print(
                f"  {label:18s} {best:6.3f} s CPU (best of {args.runs}), {per_container:6.2f} ms/container;"
                f" {rows:,} rows in {out:,} ns-stats records"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
