"""``dnsqr_kafka.value_formats``: the one choice of the topics' formats, against confluent-kafka's mock
registry (unit); the real registry's checks: tests/dnsqr_pipeline/test_value_formats_kafka.py."""

from __future__ import annotations

import argparse
import json

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from dnsqr_kafka.value_formats import (
    FormatChoiceError,
    RegistryError,
    RegistryOptions,
    add_format_arguments,
    registry_options,
    stage_flags,
    subject,
    topic_formats,
)
from dnsqr_schemas.edns_failure import decode_failure
from dnsqr_schemas.value_format import confluent_prefix
from processors.settings import Settings
from tests.sink.helpers import corpus_payloads, failure_value

TOPICS = {"failures_topic": "f.topic", "counts_topic": "c.topic"}
#: nothing listens there
UNREACHABLE = "http://127.0.0.1:1/apis/ccompat/v7"


def mock_client() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://value-formats"})


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_format_arguments(parser)
    return parser.parse_args(argv)


def test_without_a_registry_the_topics_stay_schemaless() -> None:
    formats = topic_formats(None, **TOPICS)
    assert formats.failures.schemaless and formats.counts.schemaless
    assert formats.by_topic("f.topic", "c.topic") == {}
    json_formats = topic_formats(None, **TOPICS, failures_format="json")
    assert json_formats.failures.layout == "json" and json_formats.counts.schemaless
    assert list(json_formats.by_topic("f.topic", "c.topic")) == ["f.topic"]


def test_a_writer_registers_both_subjects_and_frames_with_their_ids() -> None:
    client = mock_client()
    formats = topic_formats(RegistryOptions("mock://x"), **TOPICS, register=True, client=client)
    failures_id = client.get_latest_version(subject("f.topic")).schema_id
    counts_id = client.get_latest_version(subject("c.topic")).schema_id
    assert (formats.failures.schema_id, formats.counts.schema_id) == (failures_id, counts_id)
    assert json.loads(client.get_schema(failures_id).schema_str)["name"] == "EdnsFailure"
    body = failure_value(corpus_payloads("live_resolver")[0])[1]
    value = formats.failures.encode(body)
    assert value == confluent_prefix(failures_id) + body
    # a reader of the same registry takes it back, without registering anything
    reader = topic_formats(RegistryOptions("mock://x"), **TOPICS, client=client).failures
    assert reader.schema_id is None and reader.own_body(value) == body
    assert reader.decode(value) == decode_failure(body)
    # registering again (a restarted worker) gives the same id
    again = topic_formats(RegistryOptions("mock://x"), **TOPICS, register=True, client=client)
    assert again.failures.schema_id == failures_id


def test_json_failures_with_a_registry_are_refused() -> None:
    with pytest.raises(FormatChoiceError, match="--failures-format json takes no --schema-registry"):
        topic_formats(RegistryOptions("mock://x"), **TOPICS, failures_format="json", client=mock_client())


@pytest.mark.parametrize("register", [True, False])
def test_an_unreachable_registry_is_named(register: bool) -> None:
    with pytest.raises(RegistryError, match=f"schema registry {UNREACHABLE} unreachable"):
        topic_formats(RegistryOptions(UNREACHABLE), **TOPICS, register=register)


def test_flags_and_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse([])
    assert registry_options(args) is None and args.failures_format == "avro"
    args = _parse(
        ["--schema-registry", "http://r:8081", "--schema-registry-user", "u", "--failures-format", "json"]
    )
    assert registry_options(args) == RegistryOptions("http://r:8081", "u", "")
    assert args.failures_format == "json"
    monkeypatch.setenv("DNSQR_SCHEMA_REGISTRY", "http://env:8081")
    monkeypatch.setenv("DNSQR_SCHEMA_REGISTRY_USER", "alice")
    monkeypatch.setenv("DNSQR_SCHEMA_REGISTRY_PASSWORD", "secret")
    options = registry_options(_parse([]))
    assert options == RegistryOptions("http://env:8081", "alice", "secret")
    assert options.client_config()["basic.auth.user.info"] == "alice:secret"
    # the worker's Settings read the same variables (the `faust -A processors.app worker` path)
    monkeypatch.setenv("DNSQR_FAILURES_FORMAT", "json")
    settings = Settings.from_env()
    assert settings.registry == options and settings.failures_format == "json"


def test_stage_flags_keep_the_password_off_the_command_line() -> None:
    assert stage_flags(None, "json") == (["--failures-format", "json"], {})
    flags, env = stage_flags(RegistryOptions("http://r", "u", "pw"), "avro")
    assert flags == [
        "--failures-format",
        "avro",
        "--schema-registry",
        "http://r",
        "--schema-registry-user",
        "u",
    ]
    assert env == {"DNSQR_SCHEMA_REGISTRY_PASSWORD": "pw"}
