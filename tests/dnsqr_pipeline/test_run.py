"""``dnsqr-pipeline run``/``demo`` end to end on the real broker: ingest, Faust workers, sink, tables.

Every corpus case goes through the whole pipeline; what comes out is compared with the reference C
filter's selection (``NAME.filtered.nmsg``) and per-name-server counts (``NAME.expected_counts.json``).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_reader

from dnsqr_kafka.names import TopicNames
from dnsqr_pipeline.job import JobConfig, JobError, job_files, run_job
from dnsqr_schemas import avro_schema
from ingest.bridge import IngestConfig
from nmsgdns.input import ContainerStreamReader
from tests import corpus
from tests.kafka_fixture import read_topic

pytestmark = pytest.mark.integration


def payloads_of(paths: list[Path]) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for path in paths:
        with path.open("rb") as fh:
            out.update(ContainerStreamReader(fh, name=str(path)))
    return out


def run_case(
    bootstrap: str,
    case: str,
    out_dir: Path,
    workers: int = 1,
    partitions: int = 4,
    wait_for_stages: bool = False,
):
    cfg = JobConfig(
        ingest=IngestConfig(kafka={}, files=[str(corpus.path(f"{case}.nmsg"))], progress_bar=False),
        output_dir=out_dir,
        kafka={"bootstrap.servers": bootstrap},
        workers=workers,
        partitions=partitions,
        timeout=240,
        wait_for_stages=wait_for_stages,
        keep_topics=True,  # read back below
    )
    return cfg, run_job(cfg)


@pytest.mark.parametrize("case", corpus.CASES)
def test_run_equals_reference(case: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    cfg, result = run_case(kafka_bootstrap, case, tmp_path / "out")
    expected = payloads_of([corpus.path(f"{case}.filtered.nmsg")])
    # The sink's files hold exactly the reference selection (as a multiset: partitions reorder).
    assert payloads_of(result.sink_files) == expected
    assert result.sink_records == sum(expected.values())
    # The table's totals equal the reference per-name-server counts.
    assert result.failures_by_ns == corpus.expected_counts(case)
    # The failures topic holds the same records, decodable with the published schema, keyed by NS.
    topic = TopicNames.named(f".run-{cfg.run_id}").failures
    schema = avro_schema("edns_failure")
    raw = read_topic(kafka_bootstrap, topic)
    records = [(k, schemaless_reader(io.BytesIO(v), schema, None)) for k, v in raw]
    assert Counter(r["payload"] for _, r in records) == expected
    assert all(k.decode() == r["name_server"] for k, r in records)
    assert Counter(r["name_server"] for _, r in records) == corpus.expected_counts(case)


def test_two_workers_share_the_work(kafka_bootstrap: str, tmp_path: Path) -> None:
    # wait_for_stages (the benchmark's mode): ingest only starts once both workers own partitions
    _cfg, result = run_case(
        kafka_bootstrap, "live_resolver", tmp_path / "out", workers=2, partitions=4, wait_for_stages=True
    )
    assert result.startup is not None and 0 < result.startup < result.elapsed
    assert payloads_of(result.sink_files) == payloads_of([corpus.path("live_resolver.filtered.nmsg")])
    assert result.failures_by_ns == corpus.expected_counts("live_resolver")
    logs = [(tmp_path / "out" / "logs" / f"worker-{i}.log").read_text() for i in (1, 2)]
    assert all("Traceback" not in log for log in logs)


def test_run_command_on_a_given_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``dnsqr-pipeline run --bootstrap-servers`` as scripts call it: every stage reaches that broker, and
    the job deletes its per-run topics at the end (no --keep-topics)."""
    out, counts = tmp_path / "out", tmp_path / "counts.json"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    before = set(admin.list_topics(timeout=10).topics)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "dnsqr_pipeline.cli", "run", "--no-progress-bar"),
            *("-r", str(corpus.path("edge_cases.nmsg")), "--bootstrap-servers", kafka_bootstrap),
            *("--output-dir", str(out), "--counts-json", str(counts)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(counts.read_text()) == corpus.expected_counts("edge_cases")
    assert payloads_of(job_files(out)) == payloads_of([corpus.path("edge_cases.filtered.nmsg")])
    # byte for byte the standalone filter's --counts-json (same ranking, ties by address)
    standalone = tmp_path / "standalone.json"
    filtered = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmsgdns.cli",
            "-r",
            str(corpus.path("edge_cases.nmsg")),
            *("-w", str(tmp_path / "standalone.nmsg")),
            *("--counts-json", str(standalone)),
        ],
        capture_output=True,
        timeout=60,
    )
    assert filtered.returncode == 0, filtered.stderr[-2000:]
    assert counts.read_bytes() == standalone.read_bytes()
    left = {t for t in set(admin.list_topics(timeout=10).topics) - before if "run-" in t}
    assert not left, f"per-run topics left behind: {left}"


def test_run_refuses_a_directory_with_earlier_results(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "failures-p0000-o000000000000-000000000001.nmsg").write_bytes(b"")
    with pytest.raises(JobError, match="already holds NMSG files"):
        run_case(kafka_bootstrap, "edge_cases", out)
    assert len(job_files(out)) == 1


def test_demo_starts_its_own_broker_and_matches_the_reference(tmp_path: Path) -> None:
    """The README's first command, as a user runs it: no broker given, so the job starts one."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.run(
        [sys.executable, "-m", "dnsqr_pipeline.cli", "demo", "--output-dir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "counts equal the reference C filter's on this sample (598 failures)" in proc.stdout
    assert (tmp_path / "demo" / "counts.json").exists()


def test_run_needs_finite_sources(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dnsqr_pipeline.cli", "run", "-l", "127.0.0.1/9", "--output-dir", tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "finite sources" in proc.stderr


def test_sigterm_stops_the_job_and_everything_it_started(tmp_path: Path) -> None:
    """A job killed by SIGTERM (as `timeout` does) leaves no worker, sink or broker behind."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dnsqr_pipeline.cli",
            "demo",
            "--output-dir",
            str(out),
            "--kafka-dir",
            str(tmp_path / "kafka"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    broker = None
    try:
        for line in proc.stderr:
            if found := re.search(r"local Kafka broker on (127\.0\.0\.1:\d+)", line):
                broker = found[1]
            if "started 1 worker(s)" in line:
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert broker is not None
    # The broker's command line names its directory, the stages' name the broker's address (other tests'
    # workers may run at the same time).
    for pattern in (str(tmp_path), f"dnsqr_pipeline.cli (worker|sink) .*{broker}"):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        assert not left, f"processes matching {pattern!r} still running: {left}"
