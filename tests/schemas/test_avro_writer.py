"""``dnsqr_schemas._avro.avro_record`` (``edns_failure.encode_failure``) against fastavro.

A flat record of primitive fields is written directly in C; anything but the plain types goes to fastavro,
whose errors and conversions stay the reference. The bytes must be fastavro's for every plain value, and
for odd values (missing fields, wrong types, surrogates, ints beyond 64 bits) the outcome, bytes or
exception type, must be fastavro's too. The corpus's failure records: tests/processors/test_failure_record.py
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsqr_schemas import avro_schema, edns_failure
from dnsqr_schemas.edns_failure import SCHEMA_NAME, encode_failure, flat_fields
from nmsgdns import native
from tests.nmsgdns.test_wirescan import ALLOW_PURE_PYTHON_ENV

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(encode: Any, value: Any) -> tuple[str, Any]:
    try:
        return ("ok", encode(value))
    except Exception as exc:
        return ("error", type(exc))


def fastavro_bytes(value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, avro_schema(SCHEMA_NAME), value)
    return out.getvalue()


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback would cost the worker ~5 us a
    failure written in Python."""
    if os.environ.get(native.PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    assert edns_failure._ext is not None
    assert edns_failure._avro_c is edns_failure._ext.avro_record


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
    fields = flat_fields(avro_schema(SCHEMA_NAME))
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
        name: 0 if kind in (0, 3) else ("" if kind == 1 else b"") for name, kind in edns_failure.FIELDS or ()
    }
    base["query_edns_do"] = False
    for change in ({"qname": "\ud800"}, {"time_sec": 2**64}, {"time_sec": True}, {"kind": "é€"}):
        value = {**base, **change}
        assert outcome(encode_failure, value) == outcome(fastavro_bytes, value)
