"""The dead-letter contract's codec, and its published description naming every header."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from dnsqr_schemas import dead_letter
from dnsqr_schemas.dead_letter import ERROR, ERROR_MAX_BYTES, DeadLetterHeaders, with_input_headers
from tests.corpus import REPO_ROOT

DOC = REPO_ROOT / "schemas" / "dead_letter.md"
#: one letter of each shape the stages write
SHAPES = [
    DeadLetterHeaders("worker", "bad magic", "container", topic="dnsqr.raw", partition=3, offset=17),
    DeadLetterHeaders("sink", "null value", "null", topic="f", partition=0, offset=0),
    DeadLetterHeaders("ingest", "undecodable record (garbage)", "garbage", "kafka:t", "t", 1, 2),
    DeadLetterHeaders(
        "ingest", "undecodable datagram (short)", "short", "udp:0.0.0.0/8430", sender="::1/9", unsampled=41
    ),
    DeadLetterHeaders(
        "ingest", "x.nmsg: offset 5: bad", "bad_container", "nmsg:x.nmsg", file="x.nmsg", file_offset=5
    ),
]


@pytest.mark.parametrize("letter", SHAPES, ids=lambda h: f"{h.stage}-{h.error_type}")
def test_headers_round_trip_and_leave_out_what_does_not_apply(letter: DeadLetterHeaders):
    headers = letter.encode()
    assert DeadLetterHeaders.decode(headers) == letter
    present = {name for name, _ in headers}
    assert len(present) == len(headers)  # each header once
    absent = sum(getattr(letter, f.name) is None for f in fields(DeadLetterHeaders))
    assert len(headers) + absent == len(fields(DeadLetterHeaders))
    assert all(isinstance(v, bytes) and v for _, v in headers)


def test_origin_is_the_input_coordinates_and_none_for_a_datagram():
    worker, sink, kafka, datagram, file = SHAPES
    assert worker.origin() == ("worker", "dnsqr.raw", 3, 17)
    assert sink.origin() == ("sink", "f", 0, 0)
    assert kafka.origin() == ("ingest", "t", 1, 2)
    assert datagram.origin() is None
    assert file.origin() == ("ingest", "x.nmsg", 5)


def test_decode_ignores_other_headers_and_refuses_a_record_without_the_contract():
    headers = [("trace", b"1"), *SHAPES[0].encode(), ("dlq.future-field", b"?"), ("other", None)]
    assert DeadLetterHeaders.decode(headers) == SHAPES[0]
    with pytest.raises(ValueError, match=r"no dlq\.stage"):
        DeadLetterHeaders.decode([("dnsqr-error", b"old names")])
    with pytest.raises(ValueError, match=r"dlq\.source\.offset: 'x' is not a number"):
        DeadLetterHeaders.decode([*SHAPES[2].encode()[:-1], ("dlq.source.offset", b"x")])


def test_long_error_is_cut_at_a_character_boundary():
    letter = DeadLetterHeaders("worker", "é" * ERROR_MAX_BYTES, "E")
    [value] = [v for k, v in letter.encode() if k == ERROR]
    assert len(value) <= ERROR_MAX_BYTES and len(value) >= ERROR_MAX_BYTES - 1
    assert value.decode("utf-8") == "é" * (len(value) // 2)


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage"):
        DeadLetterHeaders("filter", "e", "E")


def test_input_headers_follow_the_contract_without_its_namespace():
    contract = SHAPES[1].encode()
    merged = with_input_headers(contract, [("trace", b"t"), ("dlq.stage", b"forged"), ("nil", None)])
    assert merged == [*contract, ("trace", b"t"), ("nil", None)]
    assert with_input_headers(contract, None) == contract


def test_the_published_contract_names_every_header_and_stage():
    text = DOC.read_text(encoding="utf-8")
    every = DeadLetterHeaders("ingest", "e", "E", "s", "t", 1, 2, "a/1", "f", 3, 4)  # every field set
    names = {name for name, _ in every.encode()}
    assert len(names) == len(fields(DeadLetterHeaders))
    documented = set(re.findall(r"^\| `(dlq\.[a-z.]+)` \|", text, flags=re.MULTILINE))
    assert documented == names
    assert all(f"`{stage}`" in text for stage in dead_letter.STAGES)


def test_the_published_contract_names_every_reason_of_the_worker_and_the_sink():
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| (worker|sink) \| `([a-z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {("worker", r) for r in dead_letter.WORKER_REASONS} | {
        ("sink", r) for r in dead_letter.SINK_REASONS
    }
