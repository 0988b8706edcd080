"""The failures topic's value: an ``EdnsFailure`` record (``edns_failure.avsc``), encoded and decoded.

The failures topic is the product downstream consumers read, so its value follows the published contract
exactly and keeps the original serialized ``NmsgPayload``: a consumer (or the sink) can always recover the
full record, byte for byte, whatever the Avro fields summarise. What this module writes and reads is the
Avro body (schemaless: the contract is the ``.avsc``); what goes around it on the topic, the Confluent wire
format's 5-byte prefix or nothing, or JSON instead, is ``value_format``'s business. The schema is at
version 2 (``source`` added, with a default); version 1 stays as ``edns_failure_v1.avsc``.

This module is the one owner of that value format: the filter agent writes it (:func:`encode_failure`),
the sink reads it (:func:`failure_payload`), ``dnsqr-pipeline tail`` and tests decode it
(:func:`decode_failure`). It lives with the contracts (``dnsqr_schemas``) because writer and reader are
different stages: neither should import the other for it.

fastavro is the specification. Flat records (primitive fields only, as ``EdnsFailure`` is) are written
and read by the optional C extension ``dnsqr_schemas._avro`` when built, which gives fastavro's bytes and
values exactly and returns None for anything it is not sure of (fastavro then decides and words the
error).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from dnsqr_schemas import avro_schema
from nmsgdns.native import load_extension

__all__ = [
    "FIELDS",
    "SCHEMA_NAME",
    "FailureRecordError",
    "decode_failure",
    "encode_failure",
    "encode_failure_py",
    "failure_payload",
    "failure_payload_py",
    "flat_fields",
]

SCHEMA_NAME = "edns_failure"

#: Avro primitive type -> the kind code of ``dnsqr_schemas._avro`` (``avro_record``, ``flat_field``).
_AVRO_KINDS = {"long": 0, "int": 0, "string": 1, "bytes": 2, "boolean": 3}


def flat_fields(schema: dict[str, Any]) -> tuple[tuple[str, int], ...] | None:
    """(name, kind) of each field of a record schema made only of primitive types, else None (unions,
    nested types, logical types...: fastavro's job)."""
    out = []
    for f in schema["fields"]:
        kind = _AVRO_KINDS.get(f["type"]) if isinstance(f["type"], str) else None
        if kind is None:
            return None
        out.append((f["name"], kind))
    return tuple(out)


#: The ``EdnsFailure`` fields as (name, kind) in schema order, or None if the schema stops being flat (the C
#: paths are then off). A C writer of the whole record compares its own layout with this one.
FIELDS = flat_fields(avro_schema(SCHEMA_NAME))

_ext = load_extension("_avro", "dnsqr_schemas")


def encode_failure_py(value: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of an ``EdnsFailure`` dict by fastavro: the reference for the C writer."""
    out = io.BytesIO()
    schemaless_writer(out, avro_schema(SCHEMA_NAME), value)
    return out.getvalue()


#: ``dnsqr_schemas._avro.avro_record`` when built and the schema is flat (it returns None for a value
#: fastavro must write).
_avro_c: Callable[[tuple[tuple[str, int], ...], dict[str, Any]], bytes | None] | None = (
    _ext.avro_record if _ext is not None and FIELDS is not None else None
)


def encode_failure(value: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of an ``EdnsFailure`` dict (the topic carries no schema id; the contract is
    the published ``.avsc``).

    Written by the C extension when built (the same bytes as :func:`encode_failure_py`; fastavro was
    ~5 us per failure, a sixth of the worker's time); values it does not handle go to fastavro.
    """
    if _avro_c is not None:
        out = _avro_c(FIELDS, value)  # type: ignore[arg-type]
        if out is not None:
            return out
    return encode_failure_py(value)


def decode_failure(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_failure`, for consumers and tests."""
    return schemaless_reader(io.BytesIO(data), avro_schema(SCHEMA_NAME), None)


class FailureRecordError(ValueError):
    """A value that is not exactly one ``EdnsFailure`` record; the message is fastavro's error (type and
    text) or the count of trailing bytes, which the sink puts in the dead letter's reason."""


def failure_payload_py(value: bytes) -> bytes:
    """The ``payload`` of ``value`` by fastavro: the specification of :func:`failure_payload`.

    The whole value must be one record: bytes left after it would be silently ignored by fastavro, and a
    value with them is not what the filter wrote.
    """
    stream = io.BytesIO(value)
    try:
        record = schemaless_reader(stream, avro_schema(SCHEMA_NAME), None)
    except Exception as exc:  # fastavro raises many types on bad bytes; all mean "not an EdnsFailure"
        raise FailureRecordError(f"{type(exc).__name__}: {exc}") from exc
    if stream.tell() != len(value):
        raise FailureRecordError(f"{len(value) - stream.tell()} trailing bytes after the record")
    payload: bytes = record["payload"]
    return payload


#: ``dnsqr_schemas._avro.flat_field`` when built and the schema is flat; for the ``payload`` field (bytes)
#: it returns the bytes, or None for a value fastavro must read or reject.
_flat_field: Callable[[tuple[tuple[str, int], ...], bytes, int], bytes | None] | None = (
    _ext.flat_field if _ext is not None and FIELDS is not None else None
)
_PAYLOAD_INDEX = [name for name, _ in FIELDS].index("payload") if FIELDS is not None else -1


def failure_payload(value: bytes) -> bytes:
    """The ``payload`` (serialized NmsgPayload) of an ``EdnsFailure`` value that is exactly one record,
    else :class:`FailureRecordError`; the sink's per-record read.

    Read by the C extension when built (fastavro built the whole record dict for this one field: ~5 us per
    record, most of the sink's CPU); any value it is not sure of goes to :func:`failure_payload_py`, which
    decides and words the error, so the result is always fastavro's.
    """
    if _flat_field is not None:
        payload = _flat_field(FIELDS, value, _PAYLOAD_INDEX)  # type: ignore[arg-type]
        if payload is not None:
            return payload
    return failure_payload_py(value)
