"""Ingest right after a broker's first start says nothing alarming.

A fresh broker answers the idempotent producer's first producer-id requests with "coordinator load in
progress" while it loads its transaction state, and librdkafka logs each retry as a WARNING; ingest lowers
those lines to DEBUG during its first seconds (``ingest.producer.LibrdkafkaLog``). The broker is this
module's own, started for the test, so it is fresh whatever ``$KAFKA_BOOTSTRAP`` says. Whether a given
start shows the coordinator loading depends on timing; the unit test in test_units.py covers the rule.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsqr_pipeline import localkafka
from tests import corpus
from tests.ingest.helpers import CLI, dnsqr_multiset, file_payloads, topic_payloads
from tests.kafka_fixture import start_test_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[str]:
    layout = start_test_cluster(tmp_path / "kafka", nodes=1)
    try:
        yield layout.bootstrap()
    finally:
        localkafka.stop(layout.directory)


def test_first_ingest_on_a_fresh_broker_logs_no_warning(fresh_broker: str):
    conn = ["--bootstrap-servers", fresh_broker]
    subprocess.run([*CLI, "topics", "create", *conn], check=True, capture_output=True, timeout=60)
    path = corpus.path("edge_cases.nmsg")
    proc = subprocess.run(
        [*CLI, "-vv", "ingest", *conn, "-r", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if " WARNING " in line or " ERROR " in line] == []
    pid_lines = [line for line in proc.stderr.splitlines() if "idempotence PID" in line]
    assert all(" DEBUG ingest.rdkafka: " in line for line in pid_lines), pid_lines
    assert topic_payloads(fresh_broker, "dnsqr.raw") == dnsqr_multiset(file_payloads(path))
