"""Records/s through Faust workers of the processors app (filter agent + aggregator), broker on this host.

The raw topic is filled first (corpus payloads repeated, re-packed into containers of
``--container-records``), then ``--workers`` workers start (``faust -A processors.app worker``, as users
run them) and the clock runs from the first record a worker reports (``/dnsqr/stats/``) to the last, so
group join and start-up are not counted; they are reported separately.

    .venv/bin/python bench/faust_worker.py                 # starts a throw-away local broker
    .venv/bin/python bench/faust_worker.py --bootstrap-servers 127.0.0.1:9092 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from nmsgdns.container import encode_container
from nmsgdns.input import ContainerStreamReader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO / "tests" / "data" / "nmsg" / "live_resolver.nmsg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a throw-away local one (started and stopped here)."""
    if bootstrap:
        yield bootstrap
        return
    from dnsqr_pipeline import localkafka

    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        layout = localkafka.start(Path(tmp), port=free_port())
        try:
            yield layout.bootstrap()
        finally:
            localkafka.stop(Path(tmp))


def containers(path: Path, records: int, per_container: int) -> tuple[list[bytes], int]:
    with path.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(path)))
    out: list[bytes] = []
    n = 0
    while n < records:
        chunk = [payloads[(n + i) % len(payloads)] for i in range(min(per_container, records - n))]
        out.append(encode_container(chunk))
        n += len(chunk)
    return out, n


def worker_records(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dnsqr/stats/", timeout=5) as resp:
        return int(json.load(resp)["records"])


def measure(
    ports: list[int], total: int, launched: float, args: argparse.Namespace, n_containers: int
) -> None:
    """Poll the workers' counters until every record is processed; print the rate."""
    first: float | None = None
    first_done = done = 0
    while done < total:
        time.sleep(0.05)
        counts = []
        for port in ports:
            try:
                counts.append(worker_records(port))
            except OSError:
                counts.append(0)
        done = sum(counts)
        if done and first is None:
            first, first_done = time.monotonic(), done
        if time.monotonic() - launched > 300:
            raise SystemExit(f"timed out at {done} of {total} records")
    end = time.monotonic()
    assert first is not None
    elapsed = end - first
    rate = (total - first_done) / elapsed
    print(
        f"{total} records in {n_containers} containers of {args.container_records}, "
        f"{args.workers} worker(s), "
        f"{args.partitions} partitions, {args.processing_guarantee}: "
        f"{elapsed:.2f} s after start-up ({first - launched:.1f} s) = {rate:,.0f} records/s",
        flush=True,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the workers' process groups; SIGKILL what has not exited after 30 s."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"worker {proc.pid} ignored SIGTERM for 30 s; killed", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--container-records", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--processing-guarantee", default="at_least_once")
    args = parser.parse_args()

    with broker(args.bootstrap_servers) as bootstrap:
        tag = uuid.uuid4().hex[:8]
        topics = {name: f"bench.{tag}.{name}" for name in ("raw", "failures", "ns-stats", "ns-counts", "dlq")}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for fut in admin.create_topics([NewTopic(t, args.partitions, 1) for t in topics.values()]).values():
            fut.result(30)
        data, total = containers(args.input, args.records, args.container_records)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4"})
        for item in data:
            producer.produce(topics["raw"], item)
            producer.poll(0)
        producer.flush(60)
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP=bootstrap,
            DNSQR_APP_ID=f"bench-{tag}",
            DNSQR_RAW_TOPIC=topics["raw"],
            DNSQR_FAILURES_TOPIC=topics["failures"],
            DNSQR_STATS_TOPIC=topics["ns-stats"],
            DNSQR_COUNTS_TOPIC=topics["ns-counts"],
            DNSQR_DLQ_TOPIC=topics["dlq"],
            DNSQR_PARTITIONS=str(args.partitions),
            DNSQR_PROCESSING_GUARANTEE=args.processing_guarantee,
        )
        ports = [free_port() for _ in range(args.workers)]
        log_path = Path(tempfile.gettempdir(), f"bench-faust-{tag}.log")
        print(f"worker logs: {log_path}", file=sys.stderr)
        with log_path.open("ab") as log:
            procs = [
                subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("faust")),
                        "-A",
                        "processors.app",
                        "worker",
                        "-l",
                        "warn",
                        "--web-port",
                        str(port),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                for port in ports
            ]
        launched = time.monotonic()
        try:
            measure(ports, total, launched, args, len(data))
        finally:
            stop(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
