"""The local Schema Registry (Apicurio 2.4.2, Confluent-compatible API): build cache and errors (unit), and
confluent-kafka's schema-registry client against a real one (integration)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from dnsqr_pipeline import localregistry, registry_command
from dnsqr_schemas import schema_text
from dnsqr_schemas.edns_failure import encode_failure
from tests.kafka_fixture import free_port_block


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    registry_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: bytes = b"") -> Path:
    """A cache directory that counts as built, holding ``runner`` as the runner jar."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DNSQR_REGISTRY_CACHE", str(cache))
    cache.mkdir()
    (cache / localregistry.RUNNER).write_bytes(runner)
    (cache / ".complete").write_text(localregistry._marker_text())
    return cache


def test_url_is_the_confluent_compatible_api() -> None:
    assert localregistry.url(18081) == "http://127.0.0.1:18081/apis/ccompat/v7"


def test_missing_maven_is_a_clear_error_and_a_cached_runner_needs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DNSQR_REGISTRY_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("MVN", str(tmp_path / "no-such-mvn"))
    with pytest.raises(localregistry.LocalRegistryError, match=r"Maven \(mvn\) is needed once to build"):
        localregistry.build_runner()
    cache = _fake_cache(tmp_path, monkeypatch)
    assert localregistry.build_runner() == cache
    # a build by another pom (or version) is not trusted
    (cache / ".complete").write_text("2.4.2.Final 00000000\n")
    with pytest.raises(localregistry.LocalRegistryError, match="Maven"):
        localregistry.build_runner()


def test_a_failed_build_names_maven_and_shows_its_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = tmp_path / "mvn"
    mvn.write_text("#!/bin/sh\necho '[ERROR] Failed to execute goal quarkus-maven-plugin:build'\nexit 1\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("MVN", str(mvn))
    monkeypatch.setenv("DNSQR_REGISTRY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(localregistry.LocalRegistryError) as err:
        localregistry.build_runner()
    text = str(err.value)
    assert "Maven could not build the Apicurio Registry 2.4.2.Final runner (exit 1" in text
    assert "Java 17+" in text and text.endswith("[ERROR] Failed to execute goal quarkus-maven-plugin:build\n")
    assert not (tmp_path / "cache").exists()  # nothing half-built is left to trust
    assert [p.name for p in tmp_path.iterdir()] == ["mvn"]


def test_status_and_stop_without_a_registry_or_with_a_stale_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert localregistry.status(tmp_path) == (None, None)
    assert localregistry.stop(tmp_path) is None
    assert _run_cli(["registry", "status", "--dir", str(tmp_path)]) == 3
    assert "no registry in" in capsys.readouterr().out
    (tmp_path / "registry.json").write_text(json.dumps({"version": "2.4.2.Final", "port": 18081}))
    # our own pid is alive but is not this directory's registry: it must not count as running
    (tmp_path / "registry.pid").write_text(f"{os.getpid()}\n")
    registry, pid = localregistry.status(tmp_path)
    assert registry is not None and registry.port == 18081 and pid is None
    assert localregistry.stop(tmp_path) is None
    assert _run_cli(["registry", "status", "--dir", str(tmp_path)]) == 3
    assert "http://127.0.0.1:18081/apis/ccompat/v7 stopped" in capsys.readouterr().out


def test_a_port_in_use_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind((localregistry.HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert _run_cli(["registry", "start", "--dir", str(tmp_path), "--port", str(port)]) == 1
    assert f"port 127.0.0.1:{port} is in use" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_a_server_that_exits_during_startup_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cache(tmp_path, monkeypatch, runner=b"not a jar")
    with pytest.raises(localregistry.LocalRegistryError, match="exited with status 1") as err:
        localregistry.start(tmp_path / "reg", free_port_block(1), timeout=30)
    assert "jarfile" in str(err.value)  # java's own complaint, from the log's tail


# ------------------------------------------------------------------------------------------ integration

RECORD_V1 = {
    "type": "record",
    "name": "Probe",
    "namespace": "org.dnsqr.test",
    "fields": [{"name": "name_server", "type": "string"}],
}


def _with_field(field: dict) -> str:
    return json.dumps({**RECORD_V1, "fields": [*RECORD_V1["fields"], field]})


@pytest.mark.integration
def test_backward_compatibility_refuses_a_breaking_change_and_takes_a_default(registry_url: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"probe-{uuid.uuid4().hex[:12]}-value"
    first = client.register_schema(subject, Schema(json.dumps(RECORD_V1), "AVRO"))
    assert client.set_compatibility(subject_name=subject, level="BACKWARD")["compatibility"] == "BACKWARD"
    assert client.get_compatibility(subject) == "BACKWARD"

    # a new field without a default: the new schema cannot read the old records
    breaking = Schema(_with_field({"name": "failures", "type": "long"}), "AVRO")
    assert client.test_compatibility(subject, breaking) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, breaking)
    assert refused.value.http_status_code == 409

    compatible = Schema(_with_field({"name": "failures", "type": "long", "default": 0}), "AVRO")
    assert client.test_compatibility(subject, compatible) is True
    second = client.register_schema(subject, compatible)
    assert second != first
    latest = client.get_latest_version(subject)
    assert latest.version == 2 and latest.schema_id == second


@pytest.mark.integration
def test_an_edns_failure_round_trips_through_the_registry_serializers(registry_url: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    topic = f"dnsqr.edns.failures-{uuid.uuid4().hex[:12]}"
    ctx = SerializationContext(topic, MessageField.VALUE)
    failure = {
        "time_sec": 1_795_000_000,
        "time_nsec": 123_456_789,
        "name_server": "192.0.2.53",
        "resolver": "198.51.100.7",
        "query_port": 40000,
        "response_port": 53,
        "proto": 17,
        "qname": "example.com.",
        "qtype": 48,
        "qclass": 1,
        "rcode": 1,
        "kind": "formerr",
        "query_edns_udp_size": 1232,
        "query_edns_version": 0,
        "query_edns_do": True,
        "payload": bytes(range(40)),
        "source": 0,
    }
    data = AvroSerializer(client, schema_text("edns_failure"))(failure, ctx)
    schema_id = client.get_latest_version(f"{topic}-value").schema_id
    # Confluent wire format: magic byte, schema id, then exactly the topic's schemaless Avro value
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == schema_id
    assert data[5:] == encode_failure(failure)
    assert AvroDeserializer(client)(data, ctx) == failure


@pytest.mark.integration
def test_cli_status_of_the_running_registry(
    local_registry: localregistry.Registry | None, capsys: pytest.CaptureFixture[str]
) -> None:
    if local_registry is None:
        pytest.skip("SCHEMA_REGISTRY_URL names an external registry")
    assert _run_cli(["registry", "status", "--dir", str(local_registry.directory)]) == 0
    assert f"{local_registry.url} running (pid " in capsys.readouterr().out


@pytest.mark.integration
def test_cli_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port_block(1)
    directory = str(tmp_path / "registry")
    try:
        assert _run_cli(["registry", "start", "--dir", directory, "--port", str(port)]) == 0
        assert capsys.readouterr().out.strip() == localregistry.url(port)
        assert _run_cli(["registry", "status", "--dir", directory]) == 0
        assert "running (pid " in capsys.readouterr().out
        # a second start leaves it alone; another port while it runs is refused
        assert _run_cli(["registry", "start", "--dir", directory]) == 0
        assert _run_cli(["registry", "start", "--dir", directory, "--port", str(port + 1)]) == 1
        assert "already runs" in capsys.readouterr().err
    finally:
        assert _run_cli(["registry", "stop", "--dir", directory]) == 0
    assert "stopped the registry (pid " in capsys.readouterr().out
    assert _run_cli(["registry", "status", "--dir", directory]) == 3
    assert _run_cli(["registry", "stop", "--dir", directory]) == 0
    assert "no registry was running" in capsys.readouterr().out
