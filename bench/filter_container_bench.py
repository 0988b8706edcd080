"""In-process timing of ``processors.filter_agent.filter_container``: the current code against the code
before the C fast paths of issue #5, alternating in one process (the machine is shared and noisy, so
only figures from one run are compared, as ratios).

"before" is the old loop, kept here: ``judge`` in Python for every payload (with the C scanner and UDP
walk it already had), the envelope parsed again, fastavro and the Python ``qname_to_text`` per failure.
Both must give the same outputs; the script checks that before timing.

    .venv/bin/python bench/filter_container_bench.py --records 200000 --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nmsgdns import classify
from nmsgdns.container import decode_container, encode_container
from nmsgdns.dnsqr import qname_to_text_py
from nmsgdns.edns import judge_py
from nmsgdns.input import ContainerStreamReader
from nmsgdns.wire import IMPLEMENTATION
from processors.failure_record import encode_failure_py, failure_dict
from processors.filter_agent import ContainerResult, Counts, WindowClock, filter_container

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "nmsg" / "live_resolver.nmsg"


def old_filter_container(data: bytes, clock: WindowClock) -> ContainerResult:
    """filter_container before issue #5 (same outputs, see tests/processors/test_filter_container.py)."""
    payloads = decode_container(data).payloads
    failures: list[tuple[bytes | None, bytes]] = []
    counts: dict[tuple[str, int], Counts] = {}
    for payload in payloads:
        j = judge_py(payload, detail=True)
        if j.selected:
            ns = j.ns_ip or ""
            detail = classify.classify_failure(j.record, j.query_opt, j.response)
            failures.append(
                (ns.encode(), encode_failure_py(failure_dict(payload, j, detail.kind, detail=detail)))
            )
            key = (ns, clock.window_start(payload))
            c = counts.get(key) or counts.setdefault(key, Counts())
            c.failures += 1
            c.edns_answered += 1
            c.by_kind[detail.kind] += 1
        elif j.edns_answered or j.edns_timeout:
            ns_ip = j.ns_ip
            if ns_ip is None:
                continue
            key = (ns_ip, clock.window_start(payload))
            c = counts.get(key) or counts.setdefault(key, Counts())
            if j.edns_timeout:
                c.timeouts += 1
            else:
                c.edns_answered += 1
                if j.response_opt is not None and j.response is not None:
                    seen = classify.observe(j.record, j.query_opt, j.response_opt, j.response[3] & 0x0F)
                    if seen is not None:
                        c.observations[seen] += 1
    return ContainerResult(len(payloads), failures, counts)


@contextlib.contextmanager
def old_qname() -> Iterator[None]:
    """classify_failure with the Python qname_to_text it used before."""
    saved = classify.qname_to_text
    classify.qname_to_text = qname_to_text_py
    try:
        yield
    finally:
        classify.qname_to_text = saved


def containers(path: Path, records: int, per_container: int) -> list[bytes]:
    """As bench/faust_worker.py fills the raw topic: the input's payloads repeated, re-packed."""
    with path.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(path)))
    out = []
    for n in range(0, records, per_container):
        out.append(encode_container([payloads[(n + i) % len(payloads)] for i in range(per_container)]))
    return out


def run(fn: Any, data: list[bytes]) -> tuple[float, int, int]:
    clock = WindowClock(60)
    t0 = time.perf_counter()
    records = failures = 0
    for c in data:
        r = fn(c, clock)
        records += r.records
        failures += len(r.failures)
    return time.perf_counter() - t0, records, failures


def outputs(fn: Any, data: list[bytes]) -> list[Any]:
    clock = WindowClock(60)
    return [(r.records, r.failures, r.counts) for r in (fn(c, clock) for c in data)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--container-records", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    data = containers(args.input, args.records, args.container_records)
    with old_qname():
        before = outputs(old_filter_container, data[:20])
    assert outputs(filter_container, data[:20]) == before, "outputs differ"
    print(f"implementation: {IMPLEMENTATION}; {len(data)} containers of {args.container_records} records")
    ratios = []
    for rep in range(args.reps):
        with old_qname():
            old_s, n, f = run(old_filter_container, data)
        new_s, n2, f2 = run(filter_container, data)
        assert (n, f) == (n2, f2)
        ratios.append(old_s / new_s)
        print(
            f"rep {rep + 1}: before {n / old_s:,.0f} records/s, now {n / new_s:,.0f} records/s, "
            f"ratio {old_s / new_s:.2f} ({f} failures)"
        )
    ratios.sort()
    print(f"ratio min {ratios[0]:.2f} median {ratios[len(ratios) // 2]:.2f} max {ratios[-1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
