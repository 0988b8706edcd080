"""Jobs that tell the truth: a stage that does not finish fails the job by name, and a worker never sits in
a crash loop behind a live process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dnsqr_pipeline.completion import ReceiptReader
from dnsqr_pipeline.counts_reader import read_latest_counts
from nmsgdns.container import BUFSZ_JUMBO
from nmsgdns.output import NmsgFileWriter
from processors.receipts import Ledger
from tests import corpus
from tests.corpus import read_payloads
from tests.kafka_fixture import wait_for_leaders
from tests.processors.helpers import raw_containers

pytestmark = pytest.mark.integration

CLI = (sys.executable, "-m", "dnsqr_pipeline.cli")


def find_process(pattern: str, timeout: float) -> int:
    """pid of the one process whose command line contains ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no process matching {pattern!r}")


def test_a_sink_that_never_commits_fails_the_run_naming_the_sink(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The sink is stopped (SIGSTOP) as soon as it starts, before it can commit anything: the run must not
    report success; it exits 1 after --done-timeout with the sink and its lag in the message."""
    out = tmp_path / "out"
    stopped: list[int] = []

    def stop_the_sink() -> None:
        pid = find_process(f"sink .*--output-dir {out}", timeout=60)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    stopper = threading.Thread(target=stop_the_sink, daemon=True)
    stopper.start()
    proc = subprocess.run(
        [
            *CLI,
            *("run", "--no-progress-bar", "-r", str(corpus.path("edge_cases.nmsg"))),
            *("--bootstrap-servers", kafka_bootstrap, "--output-dir", str(out), "--done-timeout", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    stopper.join(1)
    assert stopped, "the test did not stop the sink"
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "the sink" in last and "records behind on dnsqr.edns.failures.run-" in last, last
    assert "EDNS0 failures written" not in proc.stdout  # no success line on partial output
    # the waiting job explained itself while it waited
    assert "still waiting after" in proc.stderr
    # and no stage is left running (the stopped sink included)
    assert subprocess.run(["pgrep", "-f", f"output-dir {out}"], capture_output=True).returncode == 1


def create(admin: AdminClient, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(30)
    wait_for_leaders(admin, name)


def worker(bootstrap: str, app_id: str, topics: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(*CLI, "worker", "--no-web", "--bootstrap-servers", bootstrap, "--app-id", app_id),
            *("--raw-topic", topics["raw"], "--failures-topic", topics["failures"]),
            *("--stats-topic", topics["stats"], "--counts-topic", topics["counts"]),
            *("--dlq-topic", topics["dlq"], "--progress-topic", topics["progress"]),
            *("--partitions", "4"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def names(prefix: str) -> dict[str, str]:
    return {role: f"{prefix}.{role}" for role in ("raw", "failures", "stats", "counts", "dlq", "progress")}


def test_a_worker_creates_missing_changelogs_before_its_agents_start(
    kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """Only the raw topic exists: the worker creates every other topic, the state changelog included,
    with the ns-stats partition count, and the corpus comes out exact, with no agent crash on the way."""
    run = uuid.uuid4().hex[:8]
    app_id, topics = f"test-cl-{run}", names(f"test-cl-{run}")
    create(kafka_admin, topics["raw"], 4)
    log = tmp_path / "worker.log"
    proc = worker(kafka_bootstrap, app_id, topics, log)
    kafka = {"bootstrap.servers": kafka_bootstrap}
    try:
        producer = Producer(kafka)
        containers = raw_containers("edge_cases", per_container=10)
        for i, container in enumerate(containers):
            producer.produce(topics["raw"], container, partition=i % 4)
        assert producer.flush(30) == 0
        # the progress topic is the worker's to create: wait for it, then for every receipt
        deadline = time.monotonic() + 120
        while topics["progress"] not in kafka_admin.list_topics(timeout=10).topics:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        reader = ReceiptReader(kafka, topics["progress"], Ledger(topics["raw"]), {0: 0})
        produced = {p: (0, len(range(p, len(containers), 4))) for p in range(4)}
        while reader.ledger.shortfall(produced):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            reader.poll()
            time.sleep(0.2)
        reader.close()
        assert reader.ledger.totals(produced).failures == sum(corpus.expected_counts("edge_cases").values())
        while True:
            latest = read_latest_counts(kafka, topics["counts"])
            if {ns: t["failures"] for ns, t in latest.items() if t["failures"]} == corpus.expected_counts(
                "edge_cases"
            ):
                break
            assert time.monotonic() < deadline, latest
            time.sleep(0.5)
        metadata = kafka_admin.list_topics(timeout=10).topics
        assert len(metadata[f"{app_id}-ns-state-changelog"].partitions) == 4
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert "PartitionsMismatch" not in text and "Crashed reason" not in text, text[-3000:]


def test_a_worker_refuses_a_changelog_with_the_wrong_partition_count(
    kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Path
) -> None:
    """Kafka cannot shrink a topic and growing a changelog would move its keys: the worker stops at once
    with exit status 2 and names the topic, instead of starting agents that crash forever."""
    run = uuid.uuid4().hex[:8]
    app_id, topics = f"test-cl-{run}", names(f"test-cl-{run}")
    create(kafka_admin, topics["raw"], 4)
    create(kafka_admin, f"{app_id}-ns-state-changelog", 1, {"cleanup.policy": "compact"})
    log = tmp_path / "worker.log"
    proc = worker(kafka_bootstrap, app_id, topics, log)
    try:
        assert proc.wait(60) == 2
    finally:
        proc.kill()
    assert f"{app_id}-ns-state-changelog has 1" in log.read_text()


def test_a_truncated_capture_makes_run_exit_1_naming_file_and_offset(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """What came before the cut is processed completely (as ``dnsqr-edns-filter`` does it), and the exit
    status still tells a script that the input was damaged."""
    whole = tmp_path / "whole.nmsg"
    with NmsgFileWriter(whole, bufsz=BUFSZ_JUMBO * 8) as writer:  # 64 KiB containers: ~14 of them
        for payload in read_payloads(corpus.path("live_resolver.nmsg")):
            writer.write(payload)
    data = whole.read_bytes()
    cut = tmp_path / "cut.nmsg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    reference = tmp_path / "reference.json"
    filtered = subprocess.run(
        [
            Path(sys.executable).with_name("dnsqr-edns-filter"),
            "-r",
            cut,
            "-w",
            "/dev/null",
            "--counts-json",
            reference,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert filtered.returncode == 1, filtered.stderr
    counts = tmp_path / "counts.json"
    proc = subprocess.run(
        [
            *(*CLI, "run", "--no-progress-bar", "-r", str(cut), "--bootstrap-servers", kafka_bootstrap),
            *("--output-dir", str(tmp_path / "out"), "--counts-json", str(counts)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    damage = [line for line in proc.stderr.splitlines() if "error: input damaged:" in line]
    assert len(damage) == 1 and str(cut) in damage[0] and "offset" in damage[0], proc.stderr[-3000:]
    expected = json.loads(reference.read_text())
    assert expected and json.loads(counts.read_text()) == expected
