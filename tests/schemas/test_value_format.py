"""``dnsqr_schemas.value_format``: the Confluent framing, JSON failures, and schema resolution between the
two ``EdnsFailure`` versions (unit; the registry is a dict of parsed schemas)."""

from __future__ import annotations

import io
import json

import pytest
from fastavro import schemaless_writer

from dnsqr_schemas import avro_schema
from dnsqr_schemas.edns_failure import decode_failure, encode_failure
from dnsqr_schemas.value_format import (
    PREFIX_SIZE,
    UnknownSchemaId,
    ValueFormat,
    ValueFormatError,
    confluent_prefix,
    record_json,
    split_confluent,
)
from tests.sink.helpers import corpus_payloads, failure_value

V1, V2 = 11, 12
#: what a registry holds: id -> the writer's schema
REGISTRY = {V1: avro_schema("edns_failure_v1"), V2: avro_schema("edns_failure")}


def lookup(schema_id: int) -> dict:
    try:
        return REGISTRY[schema_id]
    except KeyError:
        raise UnknownSchemaId(f"schema id {schema_id}") from None


def _body() -> bytes:
    """A corpus failure's value as the worker writes it (schemaless Avro, version 2)."""
    return failure_value(corpus_payloads("live_resolver")[0])[1]


def _record() -> dict:
    return decode_failure(_body())


def encode_v1(record: dict) -> bytes:
    """The record as a version-1 writer wrote it (no ``source``)."""
    out = io.BytesIO()
    schemaless_writer(out, avro_schema("edns_failure_v1"), {k: v for k, v in record.items() if k != "source"})
    return out.getvalue()


def test_the_prefix_is_magic_zero_and_a_big_endian_id() -> None:
    assert confluent_prefix(1) == b"\x00\x00\x00\x00\x01"
    assert confluent_prefix(0x01020304) == b"\x00\x01\x02\x03\x04"
    assert split_confluent(confluent_prefix(70000) + b"body") == (70000, b"body")
    assert PREFIX_SIZE == 5


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00\x01", b"\x01\x00\x00\x00\x01body"])
def test_a_value_that_is_not_framed_is_refused(value: bytes) -> None:
    with pytest.raises(ValueFormatError, match="not the Confluent wire format"):
        split_confluent(value)


def test_schemaless_leaves_the_bytes_alone() -> None:
    body = _body()
    fmt = ValueFormat("edns_failure")
    assert fmt.schemaless and fmt.encode(body) is body
    assert fmt.own_body(body) is body and fmt.decode(body) == decode_failure(body)


def test_a_framed_value_is_the_prefix_and_the_same_body() -> None:
    body = _body()
    writer = ValueFormat("edns_failure", "confluent", V2)
    assert writer.encode(body) == b"\x00\x00\x00\x00\x0c" + body
    reader = ValueFormat("edns_failure", "confluent", lookup=lookup)
    # the reader's own schema: the body as it is, for the fast paths
    assert reader.own_body(writer.encode(body)) == body
    assert reader.decode(writer.encode(body)) == decode_failure(body)


def test_a_new_reader_reads_version_1_records_with_the_default() -> None:
    record = _record()
    old_value = confluent_prefix(V1) + encode_v1(record)
    reader = ValueFormat("edns_failure", "confluent", lookup=lookup)
    assert reader.own_body(old_value) is None  # another schema: resolved, not read as is
    assert reader.decode(old_value) == {**record, "source": 0}


def test_an_old_reader_reads_version_2_records() -> None:
    record = {**_record(), "source": 7}
    new_value = ValueFormat("edns_failure", "confluent", V2).encode(encode_failure(record))
    old_reader = ValueFormat("edns_failure_v1", "confluent", lookup=lookup)
    assert old_reader.decode(new_value) == {k: v for k, v in record.items() if k != "source"}


def test_an_unknown_schema_id_is_a_format_error() -> None:
    reader = ValueFormat("edns_failure", "confluent", lookup=lookup)
    with pytest.raises(UnknownSchemaId, match="schema id 99"):
        reader.decode(confluent_prefix(99) + _body())


def test_json_failures_are_what_tail_json_prints_and_read_back() -> None:
    body = _body()
    record = decode_failure(body)
    fmt = ValueFormat("edns_failure", "json")
    value = fmt.encode(body)
    assert value == record_json(record).encode()
    obj = json.loads(value)
    assert list(obj) == [f["name"] for f in avro_schema("edns_failure")["fields"]]
    assert obj["source"] == 0 and isinstance(obj["payload"], str)
    assert fmt.own_body(value) is None and fmt.decode(value) == record
    # a version-1 JSON object (no source) reads with the default
    del obj["source"]
    assert fmt.decode(json.dumps(obj).encode()) == record


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x00\x01", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "no field 'time_sec'"),
    ],
)
def test_bad_json_is_a_format_error(value: bytes, message: str) -> None:
    with pytest.raises(ValueFormatError, match=message):
        ValueFormat("edns_failure", "json").decode(value)


def test_bad_base64_payload_is_a_format_error() -> None:
    obj = json.loads(record_json(_record()))
    obj["payload"] = "not base64!"
    with pytest.raises(ValueFormatError, match="'payload' is not base64"):
        ValueFormat("edns_failure", "json").decode(json.dumps(obj).encode())
