"""The pipeline's own topics read by systems that import nothing of ours (issue #18): a job with a Schema
Registry on a corpus capture, then its failures and counts topics read by

- confluent-kafka's ``AvroDeserializer`` (``docs/examples/read_topics.py``, run in a process that must not
  import any of this project's packages),
- ClickHouse's ``AvroConfluent`` format (``docs/examples/clickhouse_failures.sql`` in chdb),
- Flink SQL's ``avro-confluent`` format (``docs/examples/flink_failures.sql``),

each giving the reference C filter's per-name-server counts (the corpus's ground truth). The job runs two
workers under exactly_once, so the framed values also go through the transactional commit path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from dnsqr_kafka.names import TopicNames
from dnsqr_kafka.value_formats import RegistryOptions
from dnsqr_pipeline.job import JobConfig, run_job
from ingest.bridge import IngestConfig
from tests import corpus
from tests.consumers import clickhouse_sql, flink_sql
from tests.kafka_fixture import read_topic

pytestmark = [pytest.mark.consumer, pytest.mark.integration]

CASE = "live_resolver"
REPO = Path(__file__).resolve().parents[2]
READ_TOPICS = REPO / "docs" / "examples" / "read_topics.py"
#: the top-level packages of this project: the example consumer must load none of them
OURS = ("nmsgdns", "dnsqr_schemas", "dnsqr_kafka", "ingest", "processors", "sink", "dnsqr_pipeline", "tests")


@pytest.fixture(scope="module")
def job_topics(
    kafka_bootstrap: str, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TopicNames]:
    """The topics of one finished job on the corpus case, written in the Confluent wire format."""
    cfg = JobConfig(
        ingest=IngestConfig(kafka={}, files=[str(corpus.path(f"{CASE}.nmsg"))], progress_bar=False),
        output_dir=tmp_path_factory.mktemp("job") / "out",
        kafka={"bootstrap.servers": kafka_bootstrap},
        workers=2,
        partitions=4,
        processing_guarantee="exactly_once",
        timeout=240,
        keep_topics=True,
        schema_registry=RegistryOptions(registry_url),
    )
    result = run_job(cfg)
    assert result.failures_by_ns == corpus.expected_counts(CASE)
    topics = TopicNames.named(f".run-{cfg.run_id}")
    yield topics
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    ours = [t for t in existing if t.endswith(f".run-{cfg.run_id}") or cfg.run_id in t]
    for future in admin.delete_topics(ours, operation_timeout=30).values():
        future.result()


def test_confluent_kafkas_avro_deserializer_reads_both_topics(
    job_topics: TopicNames, kafka_bootstrap: str, registry_url: str
) -> None:
    argv = [str(READ_TOPICS), kafka_bootstrap, registry_url, job_topics.failures, job_topics.counts]
    guard = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({OURS!r}))\n"
        "assert not loaded, f'the example imported {loaded}'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", guard], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout)
    expected = corpus.expected_counts(CASE)
    assert counts["failures"] == expected
    assert counts["totals"] == expected


def test_clickhouse_reads_the_failures_topic(
    job_topics: TopicNames, kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    values = [value for _key, value in read_topic(kafka_bootstrap, job_topics.failures)]
    counts = clickhouse_sql.failures_per_name_server(values, registry_url, tmp_path)
    assert counts == corpus.expected_counts(CASE)


@pytest.mark.slow
def test_flink_sql_reads_the_failures_topic(
    flink_jars: None, job_topics: TopicNames, kafka_bootstrap: str, registry_url: str
) -> None:
    counts = flink_sql.failures_per_name_server(kafka_bootstrap, registry_url, job_topics.failures)
    assert counts == corpus.expected_counts(CASE)
