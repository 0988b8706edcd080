"""``processors._failure_record.avro_record`` (``failure_record.encode_failure``) against fastavro.

A flat record of primitive fields is written directly in C; anything but the plain types goes to fastavro,
whose errors and conversions stay the reference. The bytes must be fastavro's for every plain value (the
corpus's failure records and drawn ones), and for odd values (missing fields, wrong types, surrogates,
ints beyond 64 bits) the outcome, bytes or exception type, must be fastavro's too.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from dnsqr_schemas import avro_schema
from nmsgdns import wire
from nmsgdns.edns import judge_py
from processors import failure_record
from processors.failure_record import encode_failure, encode_failure_py, failure_dict
from tests.nmsgdns.test_judge_fast import FUZZ, corpus_payloads
from tests.nmsgdns.test_wirescan import ALLOW_PURE_PYTHON_ENV


def outcome(encode: Any, value: Any) -> tuple[str, Any]:
    try:
        return ("ok", encode(value))
    except Exception as exc:
        return ("error", type(exc))


def fastavro_bytes(value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, avro_schema(failure_record.SCHEMA_NAME), value)
    return out.getvalue()


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback (or a layout or kinds check that
    turned it off) would cost the worker ~10 us a failure."""
    if os.environ.get(wire.PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    assert failure_record._ext is not None
    assert failure_record._avro_c is failure_record._ext.avro_record
    assert failure_record.failure_fast is failure_record._ext.failure_record


def test_avro_failures_of_the_corpus_agree() -> None:
    n = 0
    for payload in corpus_payloads():
        j = judge_py(payload, detail=True)
        if j.selected:
            value = failure_dict(payload, j, "noopt")
            assert encode_failure(value) == fastavro_bytes(value) == encode_failure_py(value)
            n += 1
    assert n > 100


ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(), st.booleans(), st.floats(), st.none())
texts = st.one_of(st.text(max_size=20), st.binary(max_size=5), st.none(), st.integers())
blobs = st.one_of(st.binary(max_size=300), st.text(max_size=5), st.none(), st.just(bytearray(b"ab")))
bools = st.one_of(st.booleans(), st.integers(0, 2), st.none())
KIND_VALUES = {0: ints, 1: texts, 2: blobs, 3: bools}
PLAIN_VALUES = {
    0: st.integers(-(2**63), 2**63 - 1),
    1: st.text(max_size=30),
    2: st.binary(max_size=300),
    3: st.booleans(),
}


@st.composite
def failure_values(draw: st.DrawFn, odd: bool) -> dict[str, Any]:
    fields = failure_record.flat_fields(avro_schema(failure_record.SCHEMA_NAME))
    assert fields is not None
    value: dict[str, Any] = {}
    for name, kind in fields:
        if odd and draw(st.integers(0, 30)) == 0:
            continue  # missing field
        value[name] = draw((KIND_VALUES if odd else PLAIN_VALUES)[kind])
    return value


@FUZZ
@given(failure_values(odd=False))
def test_avro_plain_values_agree(value: dict[str, Any]) -> None:
    assert outcome(encode_failure, value) == outcome(fastavro_bytes, value) == ("ok", fastavro_bytes(value))


@FUZZ
@given(failure_values(odd=True))
def test_avro_odd_values_agree(value: dict[str, Any]) -> None:
    assert outcome(encode_failure, value) == outcome(fastavro_bytes, value)


def test_avro_surrogates_and_big_ints_go_to_fastavro() -> None:
    base = {
        name: 0 if kind in (0, 3) else ("" if kind == 1 else b"")
        for name, kind in failure_record._FIELDS or ()
    }
    base["query_edns_do"] = False
    for change in ({"qname": "\ud800"}, {"time_sec": 2**64}, {"time_sec": True}, {"kind": "é€"}):
        value = {**base, **change}
        assert outcome(encode_failure, value) == outcome(fastavro_bytes, value)
