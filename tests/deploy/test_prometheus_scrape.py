"""A real Prometheus (Debian's ``prometheus`` binary) scrapes a running ingest, worker and sink.

The three stages run as subprocesses on unique topics of the test broker: ingest listens on UDP and gets
the datagrams ``nmsgtool -s`` sent for a corpus case (``sock_m512.udp.pcap``); the worker filters them;
the sink writes the failures to files. Prometheus, started on a free loopback port with a 1 s scrape
interval, the shipped alerting rules and the shipped job names, scrapes all three; the test reads back
through its HTTP API that every target is up and that each stage's record counter reached the corpus'
numbers: the payloads nmsgtool sent (ingest out, worker in) and the failures the reference C filter
selected (sink in).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dnsqr_kafka.topics import admin_client, delete_topics
from dnsqr_pipeline.job import Stage, free_port
from processors.settings import Settings
from processors.topology import internal_topic_specs
from tests import corpus
from tests.ingest.helpers import dnsqr_multiset, file_payloads, free_udp_port

pytestmark = pytest.mark.integration

CASE = "sock_m512"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
#: the job names of deploy/prometheus/prometheus.yml, which the rules select on
JOBS = ("dnsqr-ingest", "dnsqr-worker", "dnsqr-sink")
#: for the stages to start, join their groups and process the case, and for Prometheus to scrape them
DEADLINE = 150.0

PROMETHEUS = shutil.which("prometheus")


def _stage(*argv: str) -> list[str]:
    return [sys.executable, "-m", "dnsqr_pipeline.cli", *argv]


def prometheus_config(targets: dict[str, str]) -> dict[str, object]:
    """A scrape configuration like the shipped one, for the test's ports, scraping every second (JSON is
    YAML, so Prometheus reads it as is)."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "rules.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [targets[job]]}]} for job in JOBS
        ],
    }


def query(port: int, expr: str) -> list[dict[str, object]]:
    """Instant query through Prometheus' HTTP API; the result vector."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(port: int, expr: str) -> float | None:
    """The value of a one-element result, None when the result is empty."""
    result = query(port, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def wait_until(what: str, check: Callable[[], bool], deadline: float, stages: list[Stage]) -> None:
    while not check():
        for stage in stages:
            if stage.proc.poll() is not None:
                pytest.fail(f"{stage.name} exited with {stage.proc.returncode}:\n{tail(stage)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + "\n".join(tail(s) for s in stages))
        time.sleep(0.5)


def tail(stage: Stage, lines: int = 30) -> str:
    text = stage.log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {stage.name} ---\n" + "\n".join(text)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def worker_settings(kafka_bootstrap: str, new_topic: Callable[..., str]) -> Iterator[Settings]:
    """One-partition topics of a unique name for a worker; the ones the worker creates are deleted after."""
    name = f"scrape-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        app_id=name,
        bootstrap_servers=kafka_bootstrap,
        raw_topic=new_topic(1, prefix="scrape-raw"),
        failures_topic=f"{name}.failures",
        stats_topic=f"{name}.ns-stats",
        counts_topic=f"{name}.ns-counts",
        dlq_topic=f"{name}.raw.dlq",
        progress_topic=f"{name}.progress",
        partitions=1,
        replication_factor=1,
    )
    yield settings
    created = [spec.name for spec in internal_topic_specs(settings)]
    delete_topics(admin_client({"bootstrap.servers": kafka_bootstrap}), [*created, f"{name}.failures.dlq"])


@pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus binary is not installed (.ci/run installs it)"
)
def test_prometheus_scrapes_ingest_worker_and_sink(
    kafka_bootstrap: str, new_topic: Callable[..., str], worker_settings: Settings, tmp_path: Path
) -> None:
    s = worker_settings
    sent = sum(dnsqr_multiset(file_payloads(corpus.path(f"{CASE}.nmsg"))).values())
    selected = len(corpus.read_payloads(corpus.path(f"{CASE}.filtered.nmsg")))
    assert sent and selected
    kafka = ("--bootstrap-servers", kafka_bootstrap)
    ports = {job: free_port() for job in JOBS}
    udp = free_udp_port()
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config({job: f"127.0.0.1:{p}" for job, p in ports.items()})))
    stages: list[Stage] = []
    try:
        stages.append(
            Stage(
                "prometheus",
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                tmp_path,
            )
        )
        stages.append(
            Stage(
                "ingest",
                _stage(
                    "ingest", *kafka, "-l", f"127.0.0.1/{udp}", "--raw-topic", s.raw_topic,
                    "--dlq-topic", new_topic(1, prefix="scrape-ingest-dlq"),
                    "--metrics-port", str(ports["dnsqr-ingest"]), "--no-progress-bar",
                ),
                tmp_path,
            )
        )  # fmt: skip
        stages.append(
            Stage(
                "worker",
                _stage(
                    "worker", *kafka, "--app-id", s.app_id, "--raw-topic", s.raw_topic,
                    "--failures-topic", s.failures_topic, "--stats-topic", s.stats_topic,
                    "--counts-topic", s.counts_topic, "--dlq-topic", s.dlq_topic,
                    "--progress-topic", s.progress_topic, "--partitions", "1", "--replication-factor", "1",
                    "--web-port", str(ports["dnsqr-worker"]),
                ),
                tmp_path,
            )
        )  # fmt: skip
        stages.append(
            Stage(
                "sink",
                _stage(
                    "sink", *kafka, "--output-dir", str(tmp_path / "out"),
                    "--failures-topic", s.failures_topic, "--group", f"{s.app_id}-sink", "--rotate-idle", "1",
                    "--metrics-port", str(ports["dnsqr-sink"]),
                ),
                tmp_path,
            )
        )  # fmt: skip
        deadline = time.monotonic() + DEADLINE
        wait_until("Prometheus to be ready", lambda: answers(prometheus_port), deadline, stages)
        # every target answers its scrapes (ingest's metrics port opens once its producer reached Kafka)
        wait_until(
            "every stage to be scraped",
            lambda: all(scalar(prometheus_port, f'up{{job="{job}"}}') == 1 for job in JOBS),
            deadline,
            stages,
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in corpus.udp_datagrams(CASE):
                sock.sendto(datagram, ("127.0.0.1", udp))
        counters = {
            "sum(dnsqr_ingest_records_out_total)": sent,
            "sum(dnsqr_worker_records_in_total)": sent,
            "sum(dnsqr_worker_records_out_total{output='failures'})": selected,
            "sum(dnsqr_sink_records_in_total)": selected,
        }
        seen: dict[str, float | None] = {}

        def reached() -> bool:
            seen.update({expr: scalar(prometheus_port, expr) for expr in counters})
            return all(seen[expr] == n for expr, n in counters.items())

        try:
            wait_until("the counters to reach the corpus' numbers", reached, deadline, stages)
        finally:
            print("through Prometheus:", seen, "expected:", counters)
        # Once everything is committed: no lag left on any partition of the worker's source topics or of
        # the sink's, commits and fsyncs timed, and the worker's state holds every failing name server.
        failing = len(corpus.expected_counts(CASE))
        settled = {
            f'max(dnsqr_worker_consumer_lag{{topic="{s.raw_topic}"}})': lambda v: v == 0,
            f'max(dnsqr_worker_consumer_lag{{topic="{s.stats_topic}"}})': lambda v: v == 0,
            f'max(dnsqr_sink_consumer_lag{{topic="{s.failures_topic}"}})': lambda v: v == 0,
            "sum(dnsqr_worker_commit_duration_seconds_count)": lambda v: v > 0,
            "sum(dnsqr_sink_commit_duration_seconds_count)": lambda v: v > 0,
            "sum(dnsqr_sink_fsync_duration_seconds_count)": lambda v: v > 0,
            "sum(dnsqr_sink_files_written_total)": lambda v: v > 0,
            'sum(dnsqr_worker_state_keys{map="totals"})': lambda v: v >= failing,
        }

        def settles() -> bool:
            seen.update({expr: scalar(prometheus_port, expr) for expr in settled})
            return all(seen[expr] is not None and ok(seen[expr]) for expr, ok in settled.items())

        try:
            wait_until("lag 0, commits and fsyncs timed, the state filled", settles, deadline, stages)
        finally:
            print("through Prometheus:", seen)
    finally:
        for stage in reversed(stages):
            stage.stop()
