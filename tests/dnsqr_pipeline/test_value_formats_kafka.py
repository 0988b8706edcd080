"""Issue #18's value formats against the real broker and a real Schema Registry (Apicurio, Confluent API):
the Confluent wire format end to end (worker, sink, run, tail, top), ``run --schema-registry embedded``,
JSON failures, and schema evolution of ``EdnsFailure`` (version 1 and 2 read each other; an incompatible
schema is refused and the worker exits 2 naming the subject)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_writer

from dnsqr_kafka.names import TopicNames
from dnsqr_kafka.value_formats import RegistryOptions, subject, topic_formats
from dnsqr_pipeline.cli import build_parser
from dnsqr_pipeline.job import JobConfig, JobResult, run_job
from dnsqr_schemas import avro_schema, schema_text
from dnsqr_schemas.edns_failure import decode_failure, encode_failure
from dnsqr_schemas.value_format import ValueFormat, confluent_prefix, split_confluent
from ingest.bridge import IngestConfig
from nmsgdns.input import ContainerStreamReader
from tests import corpus
from tests.dnsqr_pipeline.test_run import payloads_of
from tests.kafka_fixture import read_topic
from tests.sink.helpers import corpus_payloads, failure_value

pytestmark = pytest.mark.integration

CASE = "live_resolver"


def run_case(
    bootstrap: str, out: Path, *, registry: RegistryOptions | None = None, failures_format: str = "avro"
) -> tuple[TopicNames, JobResult]:
    """A job on the corpus case over one partition (so two runs' files hold the same records in the same
    order), its topics kept for reading back."""
    cfg = JobConfig(
        ingest=IngestConfig(kafka={}, files=[str(corpus.path(f"{CASE}.nmsg"))], progress_bar=False),
        output_dir=out,
        kafka={"bootstrap.servers": bootstrap},
        partitions=1,
        timeout=120,
        keep_topics=True,
        schema_registry=registry,
        failures_format=failures_format,
    )
    result = run_job(cfg)
    return TopicNames.named(f".run-{cfg.run_id}"), result


def ordered_payloads(files: list[Path]) -> list[bytes]:
    """Every payload of the sink's files in offset order (the names sort by partition and first offset)."""
    out: list[bytes] = []
    for path in sorted(files):
        with path.open("rb") as fh:
            out += list(ContainerStreamReader(fh, name=str(path)))
    return out


def cli(command: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = build_parser().parse_args(command)
    status = args.func(args)
    return status, capsys.readouterr().out


def test_worker_and_sink_in_the_confluent_format_write_the_same_files(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_topics, plain = run_case(kafka_bootstrap, tmp_path / "plain")
    topics, framed = run_case(kafka_bootstrap, tmp_path / "framed", registry=RegistryOptions(registry_url))
    assert ordered_payloads(framed.sink_files) == ordered_payloads(plain.sink_files)
    assert payloads_of(framed.sink_files) == payloads_of([corpus.path(f"{CASE}.filtered.nmsg")])
    assert framed.failures_by_ns == plain.failures_by_ns == corpus.expected_counts(CASE)

    # on the topics: magic 0, the id of <topic>-value's latest version, the very body of the run without
    client = SchemaRegistryClient({"url": registry_url})
    for topic in (topics.failures, topics.counts):
        assert client.get_compatibility(subject(topic)) == "BACKWARD"
    failures_id = client.get_latest_version(subject(topics.failures)).schema_id
    counts_id = client.get_latest_version(subject(topics.counts)).schema_id
    framed_values = [v for _, v in read_topic(kafka_bootstrap, topics.failures)]
    assert {split_confluent(v)[0] for v in framed_values} == {failures_id}
    assert [split_confluent(v)[1] for v in framed_values] == [
        v for _, v in read_topic(kafka_bootstrap, plain_topics.failures)
    ]
    assert all(v[:5] == confluent_prefix(counts_id) for _, v in read_topic(kafka_bootstrap, topics.counts))
    # what any Confluent-format consumer does: confluent-kafka's own deserializer reads them
    deserialize = AvroDeserializer(client)
    ctx = SerializationContext(topics.failures, MessageField.VALUE)
    assert [deserialize(v, ctx) for v in framed_values[:50]] == [
        decode_failure(split_confluent(v)[1]) for v in framed_values[:50]
    ]

    # tail and top read them with the flag
    status, out = cli(
        [
            "tail",
            "--failures-topic",
            topics.failures,
            "--from-beginning",
            "--json",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--schema-registry",
            registry_url,
        ],
        capsys,
    )
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["name_server"] for r in records] == [
        decode_failure(split_confluent(v)[1])["name_server"] for v in framed_values
    ]
    status, out = cli(
        [
            "top",
            "--counts-topic",
            topics.counts,
            "--json",
            "-n",
            "1000",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--schema-registry",
            registry_url,
        ],
        capsys,
    )
    assert status == 0
    assert {row["name_server"]: row["failures"] for row in map(json.loads, out.splitlines())} == (
        corpus.expected_counts(CASE)
    )


def test_json_failures_end_to_end(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--failures-format json``: the sink writes the same records, the topic holds tail --json's lines."""
    topics, result = run_case(kafka_bootstrap, tmp_path / "json", failures_format="json")
    assert payloads_of(result.sink_files) == payloads_of([corpus.path(f"{CASE}.filtered.nmsg")])
    assert result.failures_by_ns == corpus.expected_counts(CASE)
    values = [v.decode() for _, v in read_topic(kafka_bootstrap, topics.failures)]
    status, out = cli(
        [
            "tail",
            "--failures-topic",
            topics.failures,
            "--from-beginning",
            "--json",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--failures-format",
            "json",
        ],
        capsys,
    )
    assert status == 0 and out.splitlines() == values


def test_run_with_an_embedded_registry(kafka_bootstrap: str, tmp_path: Path) -> None:
    out, counts = tmp_path / "out", tmp_path / "counts.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "dnsqr_pipeline.cli", "run", "--no-progress-bar"),
            *("-r", str(corpus.path("edge_cases.nmsg")), "--bootstrap-servers", kafka_bootstrap),
            *("--output-dir", str(out), "--counts-json", str(counts), "--schema-registry", "embedded"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting a local Schema Registry" in proc.stderr
    # dnsqr-edns-filter --counts-json's, byte for byte
    standalone = tmp_path / "standalone.json"
    filtered = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmsgdns.cli",
            "-r",
            str(corpus.path("edge_cases.nmsg")),
            "-w",
            str(tmp_path / "standalone.nmsg"),
            "--counts-json",
            str(standalone),
        ],
        capture_output=True,
        timeout=60,
    )
    assert filtered.returncode == 0, filtered.stderr[-2000:]
    assert counts.read_bytes() == standalone.read_bytes()
    # the registry went with the job
    assert (
        "java"
        not in subprocess.run(["pgrep", "-af", "dnsqr-registry-"], capture_output=True, text=True).stdout
    )


def _v1_value(schema_id: int, record: dict) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, avro_schema("edns_failure_v1"), {k: v for k, v in record.items() if k != "source"})
    return confluent_prefix(schema_id) + out.getvalue()


def test_edns_failure_evolves_from_version_1_to_2(registry_url: str) -> None:
    """Version-1 records on a subject (an older worker), then a version-2 worker: both versions' readers
    read both versions' records, through the registry's ids."""
    client = SchemaRegistryClient({"url": registry_url})
    topic = f"evolution-{uuid.uuid4().hex[:12]}"
    v1_id = client.register_schema(subject(topic), Schema(schema_text("edns_failure_v1"), "AVRO"))
    registry = RegistryOptions(registry_url)
    writer = topic_formats(
        registry, failures_topic=topic, counts_topic=f"{topic}.counts", register=True
    ).failures
    assert writer.schema_id is not None and writer.schema_id != v1_id
    assert client.get_versions(subject(topic)) == [1, 2]

    record = {**decode_failure(failure_value(corpus_payloads(CASE)[0])[1]), "source": 42}
    new_value = writer.encode(encode_failure(record))
    old_value = _v1_value(v1_id, record)
    new_reader = topic_formats(registry, failures_topic=topic, counts_topic=f"{topic}.counts").failures
    assert new_reader.decode(new_value) == record
    assert new_reader.decode(old_value) == {**record, "source": 0}
    old_reader = ValueFormat("edns_failure_v1", "confluent", lookup=new_reader.lookup)
    v1_record = {k: v for k, v in record.items() if k != "source"}
    assert old_reader.decode(new_value) == old_reader.decode(old_value) == v1_record


def test_an_incompatible_change_is_refused_and_the_worker_exits_2(registry_url: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    topic = f"incompatible-{uuid.uuid4().hex[:12]}"
    registry = RegistryOptions(registry_url)
    topic_formats(registry, failures_topic=topic, counts_topic=f"{topic}.counts", register=True)
    # a type changed (rcode int -> string): the registry refuses it on the BACKWARD subject
    changed = json.loads(schema_text("edns_failure"))
    next(f for f in changed["fields"] if f["name"] == "rcode")["type"] = "string"
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject(topic), Schema(json.dumps(changed), "AVRO"))
    assert refused.value.http_status_code == 409

    # a subject whose latest version this worker's schema cannot read: the worker refuses to start
    other = f"incompatible-{uuid.uuid4().hex[:12]}"
    client.register_schema(subject(other), Schema(json.dumps(changed), "AVRO"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnsqr_pipeline.cli",
            "worker",
            "--failures-topic",
            other,
            "--schema-registry",
            registry_url,
            "--bootstrap-servers",
            "127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"subject {other}-value" in lines[0] and "incompatible" in lines[0], lines


@pytest.mark.parametrize("command", ["worker", "sink", "tail", "top"])
def test_an_unreachable_registry_stops_a_command_at_once(command: str, tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/apis/ccompat/v7"
    extra = ["--output-dir", str(tmp_path)] if command == "sink" else []
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnsqr_pipeline.cli",
            command,
            "--schema-registry",
            url,
            *extra,
            "--bootstrap-servers",
            "127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"schema registry {url} unreachable" in proc.stderr
