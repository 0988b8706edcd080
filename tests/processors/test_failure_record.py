"""The failures topic's value: every field of the published Avro contract, payload byte for byte."""

from __future__ import annotations

import io
import json

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from dnsqr_schemas import schema_text
from dnsqr_schemas.edns_failure import decode_failure, encode_failure, encode_failure_py
from nmsgdns.classify import classify_failure
from nmsgdns.edns import judge, judge_py
from nmsgdns.payload import make_payload, payload_fields, payload_time
from processors.failure_record import failure_dict, failure_fast, ip_text
from tests import corpus
from tests.nmsgdns.test_judge_fast import corpus_payloads
from tests.processors.helpers import read_payloads


def test_round_trip_with_the_published_schema_for_every_selected_record() -> None:
    published = parse_schema(json.loads(schema_text("edns_failure")))
    filtered = read_payloads(corpus.path("edge_cases.filtered.nmsg"))
    dumps = corpus.json_lines("edge_cases.filtered.json")
    for payload, dump in zip(filtered, dumps, strict=True):
        j = judge(payload, detail=True)
        detail = classify_failure(j.record, j.query_opt, j.response)
        value = failure_dict(payload, j, detail.kind, detail=detail)
        data = encode_failure(value)
        decoded = schemaless_reader(io.BytesIO(data), published, None)
        assert decoded == decode_failure(data) == value
        assert decoded["payload"] == payload
        assert (decoded["time_sec"], decoded["time_nsec"]) == payload_time(payload)
        assert decoded["name_server"] == dump["message"]["response_ip"]
        assert decoded["resolver"] == dump["message"]["query_ip"]
        assert decoded["qname"] == dump["message"].get("qname", "")
        assert decoded["kind"] == detail.kind
        assert decoded["query_edns_udp_size"] == j.query_opt.udp_size


def test_corpus_failures_are_written_as_fastavro_writes_them() -> None:
    """encode_failure (the C writer when built) on the failure values of every selected corpus record."""
    published = parse_schema(json.loads(schema_text("edns_failure")))
    n = 0
    for payload in corpus_payloads():
        j = judge_py(payload, detail=True)
        if j.selected:
            value = failure_dict(payload, j, "noopt")
            out = io.BytesIO()
            schemaless_writer(out, published, value)
            assert encode_failure(value) == out.getvalue() == encode_failure_py(value)
            n += 1
    assert n > 100


def test_detail_and_plain_kind_agree() -> None:
    payload = read_payloads(corpus.path("live_resolver.filtered.nmsg"))[0]
    j = judge(payload, detail=True)
    detail = classify_failure(j.record, j.query_opt, j.response)
    assert failure_dict(payload, j, detail.kind) == failure_dict(payload, j, detail.kind, detail=detail)


def test_ip_text() -> None:
    assert ip_text(bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert ip_text(bytes(15) + b"\x01") == "::1"
    assert ip_text(b"\x01\x02") == "0102"


def test_source_is_the_envelopes_and_0_when_absent() -> None:
    """Version 2's ``source``: the C record (payloads without one) writes 0, a payload with a source takes
    the Python path and carries it."""
    payload = read_payloads(corpus.path("edge_cases.filtered.nmsg"))[0]
    fields = payload_fields(payload)
    assert fields.source is None
    data = payload[fields.data_start : fields.data_end]
    with_source = make_payload(1, 9, fields.time_sec, fields.time_nsec, data, source=0xFEEDBEEF)
    for p, source in ((payload, 0), (with_source, 0xFEEDBEEF)):
        j = judge(p, detail=True)
        value = failure_dict(p, j, classify_failure(j.record, j.query_opt, j.response).kind)
        assert value["source"] == source and decode_failure(encode_failure(value)) == value
    if failure_fast is not None:
        assert failure_fast(with_source) is None
        assert decode_failure(failure_fast(payload)[2])["source"] == 0
