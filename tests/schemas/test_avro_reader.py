"""``dnsqr_schemas._avro.flat_field`` against fastavro, its specification.

The C reader only accepts values that are clearly one well-formed record and returns None for the rest;
the rule checked here is that it never disagrees with fastavro: None, or exactly fastavro's value (same
type: a bool stays a bool), and never a value where fastavro raises or leaves trailing bytes. It must also
read every record fastavro's writer produces (else the fast path would be dead code). Checked on the
``EdnsFailure`` schema and on other flat schemas, on written records, on records truncated, extended or
with bytes changed, on arbitrary bytes, on every UTF-8 boundary, and on the edge cases where fastavro is
lenient (the table below records what fastavro 1.13 does with them). The bytes go through the binding,
so an over-read shows as a crash or a wrong value (and under the sanitizer build, as a report).
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsqr_schemas import avro_schema, edns_failure
from dnsqr_schemas.edns_failure import (
    SCHEMA_NAME,
    FailureRecordError,
    failure_payload,
    failure_payload_py,
    flat_fields,
)
from nmsgdns.native import PURE_PYTHON_ENV, load_extension
from tests.mutations import mutated
from tests.nmsgdns.test_wirescan import ALLOW_PURE_PYTHON_ENV

avro = load_extension("_avro", "dnsqr_schemas")
needs_c = pytest.mark.skipif(avro is None, reason="dnsqr_schemas._avro is not built or disabled")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EDNS = avro_schema(SCHEMA_NAME)
PRIMITIVES = ("long", "int", "string", "bytes", "boolean")
#: What fastavro's writer accepts for each type (an "int" outside 32 bits is the edge table's business).
PLAIN = {
    "long": st.integers(-(2**63), 2**63 - 1),
    "int": st.integers(-(2**31), 2**31 - 1),
    "string": st.text(max_size=40),
    "bytes": st.binary(max_size=80),
    "boolean": st.booleans(),
}


def record_schema(types: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A parsed record schema whose fields f0, f1... have the primitive ``types``."""
    fields = [{"name": f"f{i}", "type": t} for i, t in enumerate(types)]
    return parse_schema({"type": "record", "name": "Flat", "fields": fields})


def fields_of(schema: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    fields = flat_fields(schema)
    assert fields is not None
    return fields


def write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema, record)
    return out.getvalue()


def fastavro_record(schema: dict[str, Any], value: bytes) -> dict[str, Any] | None:
    """The record fastavro reads when ``value`` is exactly one record; None when it raises or bytes are
    left over (what ``failure_payload_py`` rejects)."""
    stream = io.BytesIO(value)
    try:
        record = schemaless_reader(stream, schema, None)
    except Exception:
        return None
    return record if stream.tell() == len(value) else None


def check(schema: dict[str, Any], value: bytes, *, must_read: bool = False) -> None:
    """Every field of ``value`` read by C is None or fastavro's value; with ``must_read``, never None."""
    fields = fields_of(schema)
    expected = fastavro_record(schema, value)
    for index, (name, _) in enumerate(fields):
        got = avro.flat_field(fields, value, index)
        if got is None:
            assert not must_read, (index, value.hex())
            continue
        assert expected is not None, f"C read field {index} of a value fastavro rejects: {value.hex()}"
        assert got == expected[name] and type(got) is type(expected[name]), (index, value.hex())


@st.composite
def schemas(draw: st.DrawFn) -> dict[str, Any]:
    """The EdnsFailure schema or another flat one."""
    if draw(st.booleans()):
        return EDNS
    return record_schema(draw(st.lists(st.sampled_from(PRIMITIVES), min_size=1, max_size=8)))


@st.composite
def records(draw: st.DrawFn, schema: dict[str, Any]) -> bytes:
    """A record of ``schema`` written by fastavro from hypothesis-drawn field values."""
    return write(schema, {f["name"]: draw(PLAIN[f["type"]]) for f in schema["fields"]})


# ------------------------------------------------------------------------------ C against fastavro


@needs_c
@FUZZ
@given(st.data())
def test_written_records_are_read(data: st.DataObject) -> None:
    schema = data.draw(schemas())
    check(schema, data.draw(records(schema)), must_read=True)


@needs_c
@FUZZ
@given(records(EDNS))
def test_written_failure_records_are_read(value: bytes) -> None:
    check(EDNS, value, must_read=True)


@needs_c
@FUZZ
@given(st.data())
def test_mutated_records_agree(data: st.DataObject) -> None:
    schema = data.draw(schemas())
    check(schema, data.draw(mutated(data.draw(records(schema)))))


@needs_c
@FUZZ
@given(schemas(), st.binary(max_size=200))
def test_arbitrary_bytes_agree(schema: dict[str, Any], value: bytes) -> None:
    check(schema, value)


#: Marks a row where fastavro's value is not worth pinning (it depends on how its shift overflows).
SOME_INT = object()


@pytest.mark.parametrize(
    ("types", "value", "fastavro", "c"),
    [
        # booleans: fastavro reads any non-zero byte as True; C leaves all but 0 and 1 to it
        (("boolean",), b"\x00", False, False),
        (("boolean",), b"\x01", True, True),
        (("boolean",), b"\x02", True, None),
        (("boolean",), b"\xff", True, None),
        (("boolean",), b"", EOFError, None),
        # varints: fastavro reads non-shortest forms and drops bits past 64; C takes only canonical ones
        (("long",), b"\x80\x00", 0, None),
        (("long",), b"\x81\x00", -1, None),
        (("long",), b"\xfe" + b"\xff" * 8 + b"\x01", 2**63 - 1, 2**63 - 1),
        (("long",), b"\xff" * 9 + b"\x01", -(2**63), -(2**63)),
        (("long",), b"\xfe" + b"\xff" * 8 + b"\x02", 2**62 - 1, None),
        (("long",), b"\xfe" + b"\xff" * 8 + b"\x7f", 2**63 - 1, None),
        (("long",), b"\x80" * 10 + b"\x01", SOME_INT, None),
        (("long",), b"\x83" * 69 + b"\x01", SOME_INT, None),
        (("long",), b"\x80", IndexError, None),
        (("long",), b"", EOFError, None),
        # "int" has no 32-bit range check in fastavro: C reads it as a long too
        (("int",), b"\x80\x80\x80\x80\x10", 2**31, 2**31),
        (("int",), b"\xff\xff\xff\xff\x1f", -(2**32), -(2**32)),
        (("int", "boolean"), b"\xfe" + b"\xff" * 8 + b"\x01\x01", 2**63 - 1, 2**63 - 1),
        # lengths: negative or past the end is an EOFError in fastavro 1.13
        (("bytes",), b"\x06abc", b"abc", b"abc"),
        (("bytes",), b"\x01abc", EOFError, None),
        (("bytes",), b"\x03abc", EOFError, None),
        (("bytes",), b"\x0aabc", EOFError, None),
        (("bytes",), b"\xff" * 9 + b"\x01abc", EOFError, None),
        (("bytes",), b"\xfe" + b"\xff" * 7 + b"\x7f", EOFError, None),
        (("bytes", "long"), b"\x06abc", EOFError, None),
        (("string",), b"\x06abc", "abc", "abc"),
        (("string",), b"\x04\xc3\xa9", "é", "é"),
        (("string",), b"\x00", "", ""),
        # strings: Python's strict UTF-8 decoder, as fastavro's bytes.decode()
        (("string",), b"\x02\xff", UnicodeDecodeError, None),
        (("string",), b"\x04\xc0\x80", UnicodeDecodeError, None),
        (("string",), b"\x06\xed\xa0\x80", UnicodeDecodeError, None),
        (("string",), b"\x08\xf4\x90\x80\x80", UnicodeDecodeError, None),
        (("string",), b"\x04\xe2\x82", UnicodeDecodeError, None),
        (("string", "bytes"), b"\x02\x80\x00", UnicodeDecodeError, None),
        (("bytes",), b"\x06\xed\xa0\x80", b"\xed\xa0\x80", b"\xed\xa0\x80"),
        # trailing bytes: fastavro reads the record and stops; the caller rejects, C says None
        (("long",), b"\x02\x00", 1, None),
        (("boolean", "string"), b"\x01\x00\x00", True, None),
    ],
)
def test_fastavro_edge_cases(types: tuple[str, ...], value: bytes, fastavro: Any, c: Any) -> None:
    """What fastavro does on the edges (pinned, so an upgrade that changes it is noticed), and that C
    either agrees or leaves the value to it."""
    schema = record_schema(types)
    stream = io.BytesIO(value)
    if isinstance(fastavro, type) and issubclass(fastavro, Exception):
        with pytest.raises(fastavro):
            schemaless_reader(stream, schema, None)
    else:
        got = schemaless_reader(stream, schema, None)["f0"]
        if fastavro is SOME_INT:
            assert type(got) is int
        else:
            assert got == fastavro and type(got) is type(fastavro)
    if avro is not None:
        result = avro.flat_field(fields_of(schema), value, 0)
        assert result == c and type(result) is type(c)
        check(schema, value)


def _utf8_candidates() -> list[bytes]:
    """Every 1- and 2-byte sequence, and 3- and 4-byte ones over every lead and second byte with the
    continuation bytes at their bounds: every boundary of Unicode's table 3-7, plus truncations."""
    out = [bytes([a]) for a in range(256)]
    out += [bytes([a, b]) for a in range(256) for b in range(256)]
    tails = (0x00, 0x7F, 0x80, 0xBF, 0xC0, 0xFF)
    out += [bytes([a, b, c]) for a in range(0xE0, 0x100) for b in range(256) for c in tails]
    out += [bytes([a, b, c, d]) for a in range(0xF0, 0x100) for b in range(256) for c in tails for d in tails]
    return out


@needs_c
def test_strings_decode_as_python_does() -> None:
    """C takes a string exactly when Python's strict decoder (fastavro's) does, with the same text; also
    when the field read is another one (the string is then only validated, not decoded). The next field
    is 64 continuation bytes (its length too is 0x80 0x01), so a sequence cut by the string's end must
    not be completed from them."""
    fields = fields_of(record_schema(("string", "bytes")))
    after = b"\x80" * 64
    for text in _utf8_candidates():
        value = bytes([len(text) << 1]) + text + b"\x80\x01" + after
        try:
            expected: str | None = text.decode()
        except UnicodeDecodeError:
            expected = None
        assert avro.flat_field(fields, value, 0) == expected, text.hex()
        assert avro.flat_field(fields, value, 1) == (None if expected is None else after), text.hex()


@needs_c
@FUZZ
@given(st.text(max_size=30), st.binary(max_size=6), st.text(max_size=5))
def test_strings_with_bad_bytes_inside(head: str, middle: bytes, tail: str) -> None:
    text = head.encode() + middle + tail.encode()
    check(
        record_schema(("string", "boolean")),
        write(record_schema(("bytes", "boolean")), {"f0": text, "f1": True}),
    )


# ------------------------------------------------------------------------------ the binding


@needs_c
def test_bad_arguments_raise() -> None:
    fields = fields_of(EDNS)
    value = write(record_schema(("long",)), {"f0": 1})
    with pytest.raises(TypeError):
        avro.flat_field(fields, value)
    with pytest.raises(TypeError):
        avro.flat_field(list(fields), value, 0)
    with pytest.raises(TypeError):
        avro.flat_field((("f0",),), value, 0)
    with pytest.raises(TypeError):
        avro.flat_field((("f0", "long"),), value, 0)
    with pytest.raises(TypeError):
        avro.flat_field((("f0", 0),), value, "0")
    for index in (-1, 1, 2**70):
        with pytest.raises(IndexError):
            avro.flat_field((("f0", 0),), value, index)


@needs_c
def test_unknown_kinds_and_other_buffers_go_to_fastavro() -> None:
    value = write(record_schema(("long",)), {"f0": 1})
    assert avro.flat_field((("f0", 0),), value, 0) == 1
    assert avro.flat_field((("f0", 4),), value, 0) is None
    assert avro.flat_field((("f0", 0),), bytearray(value), 0) is None
    assert avro.flat_field((("f0", 0),), memoryview(value), 0) is None


@needs_c
def test_references_are_kept_straight() -> None:
    """No reference leaked or stolen: the value's count is unchanged, each result is a fresh object."""
    schema = record_schema(("bytes", "string", "long", "boolean"))
    value = write(schema, {"f0": b"x" * 100, "f1": "text", "f2": 2**40, "f3": True})
    fields = fields_of(schema)
    before = sys.getrefcount(value), sys.getrefcount(fields)
    for _ in range(1000):
        for index in range(4):
            avro.flat_field(fields, value, index)
        avro.flat_field(fields, value + b"!", 0)
    assert (sys.getrefcount(value), sys.getrefcount(fields)) == before
    result = avro.flat_field(fields, value, 0)
    count = sys.getrefcount(result)  # outside the assert: pytest's rewriting holds more references
    assert count == 2  # the local name and getrefcount's argument: nothing else kept one


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback costs the sink ~4 us a record."""
    if os.environ.get(PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    assert avro is not None
    assert edns_failure._flat_field is avro.flat_field


# ------------------------------------------------------------------------------ failure_payload


def payload_outcome(read: Any, value: bytes) -> tuple[str, Any]:
    """What a payload reader did: ("ok", payload) or ("error", exception type and text), the text without
    object addresses (fastavro's EOFError names its stream, ``<_io.BytesIO object at 0x...>``)."""
    try:
        return ("ok", read(value))
    except FailureRecordError as exc:
        return ("error", (type(exc), re.sub(r" at 0x[0-9a-f]+", " at 0x", str(exc))))


@FUZZ
@given(st.data())
def test_failure_payload_is_fastavros(data: st.DataObject) -> None:
    value = data.draw(records(EDNS))
    if data.draw(st.booleans()):
        value = data.draw(mutated(value))
    assert payload_outcome(failure_payload, value) == payload_outcome(failure_payload_py, value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "EOFError: "),
        (b"\x02", "EOFError: "),
        (b"\x80", "IndexError: "),
    ],
)
def test_failure_payload_errors_are_fastavros(value: bytes, message: str) -> None:
    with pytest.raises(FailureRecordError, match=f"^{message}"):
        failure_payload(value)


def test_failure_payload_rejects_trailing_bytes() -> None:
    value = write(
        EDNS,
        {
            f["name"]: {"boolean": True, "string": "é", "bytes": b"\x08\x01"}.get(f["type"], -1)
            for f in EDNS["fields"]
        },
    )
    assert failure_payload(value) == failure_payload_py(value)
    with pytest.raises(FailureRecordError, match=r"^2 trailing bytes after the record$"):
        failure_payload(value + b"\x00\x00")
