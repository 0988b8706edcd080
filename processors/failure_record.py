"""One selected record -> the ``EdnsFailure`` Avro value of the failures topic (pure; no Kafka).

The failures topic is the product downstream consumers read, so its value follows the published contract
``schemas/edns_failure.avsc`` exactly and keeps the original serialized ``NmsgPayload``: a consumer (or the
sink) can always recover the full record, byte for byte, whatever the Avro fields summarise.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from dnsqr_schemas import avro_schema
from nmsgdns.classify import KINDS, FailureDetail
from nmsgdns.dnsqr import qname_to_text
from nmsgdns.payload import decode_payload
from nmsgdns.wire import load_extension

SCHEMA_NAME = "edns_failure"
#: The DO bit in the OPT TTL's flags half (RFC 3225).
DO_BIT = 0x8000


class OptLike(Protocol):
    """The fields of the query's OPT record used here (``nmsgdns.wire.Opt``)."""

    udp_size: int
    version: int
    flags: int


class JudgementLike(Protocol):
    """The part of ``nmsgdns.edns.Judgement`` a failure record is built from."""

    record: Any
    query_opt: OptLike | None
    response: bytes | None
    ns_ip: str | None


def ip_text(raw: bytes) -> str:
    """An address from a dnsqr record (4 or 16 bytes) as text; anything else as hex, not an error."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return raw.hex()


def failure_dict(
    payload: bytes,
    judgement: JudgementLike,
    kind: str,
    *,
    detail: FailureDetail | None = None,
    time: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The Avro ``EdnsFailure`` value (as a dict) of one selected payload and its failure ``kind``.

    ``detail`` (``nmsgdns.classify.classify_failure``), when the caller has it, supplies the question
    name it already rendered instead of rendering it again; the rcode is the response header's 4 bits.
    ``time`` is the payload's (time_sec, time_nsec) when the caller has already decoded them
    (``nmsgdns.edns.triage`` does); otherwise the envelope is parsed again for them.
    """
    rec = judgement.record
    opt = judgement.query_opt
    response = judgement.response
    if time is None:
        # the protobuf (upb) parse is ~5x faster than the pure-Python envelope walk for this one need
        envelope = decode_payload(payload)
        time = (envelope.time_sec, envelope.time_nsec)
    if detail is not None:
        qname = detail.qname or ""
    else:
        qname = qname_to_text(rec.qname) if rec.HasField("qname") else ""
    return {
        "time_sec": time[0],
        "time_nsec": time[1],
        "name_server": judgement.ns_ip or "",
        "resolver": ip_text(rec.query_ip) if rec.HasField("query_ip") else "",
        "query_port": rec.query_port,
        "response_port": rec.response_port,
        "proto": rec.proto,
        "qname": qname,
        "qtype": rec.qtype,
        "qclass": rec.qclass,
        "rcode": response[3] & 0x0F if response and len(response) > 3 else rec.rcode,
        "kind": kind,
        "query_edns_udp_size": opt.udp_size if opt is not None else 0,
        "query_edns_version": opt.version if opt is not None else 0,
        "query_edns_do": bool(opt.flags & DO_BIT) if opt is not None else False,
        "payload": payload,
    }


def encode_failure_py(value: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of an ``EdnsFailure`` dict by fastavro: the reference for the C writer."""
    out = io.BytesIO()
    schemaless_writer(out, avro_schema(SCHEMA_NAME), value)
    return out.getvalue()


#: Avro primitive type -> the kind code of ``processors._failure_record.avro_record``.
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


_ext = load_extension("_failure_record", "processors")
_FIELDS = flat_fields(avro_schema(SCHEMA_NAME))
#: ``processors._failure_record.avro_record`` when built and the schema is flat (it returns None for a value
#: fastavro must write).
_avro_c: Callable[[tuple[tuple[str, int], ...], dict[str, Any]], bytes | None] | None = (
    _ext.avro_record if _ext is not None and _FIELDS is not None else None
)


def encode_failure(value: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of an ``EdnsFailure`` dict (the topic carries no schema id; the contract is
    the published ``.avsc``).

    Written by the C extension when built (the same bytes as :func:`encode_failure_py`; fastavro was
    ~5 us per failure, a sixth of the worker's time); values it does not handle go to fastavro.
    """
    if _avro_c is not None:
        out = _avro_c(_FIELDS, value)  # type: ignore[arg-type]
        if out is not None:
            return out
    return encode_failure_py(value)


#: ``processors._failure_record.failure_record`` when built, writing the schema's fields in the schema's
#: order and labelling with ``classify.KINDS``: payload -> (name_server, kind, Avro value) of a payload the
#: EDNS0 rule selects, as the Python path gives them (``judgement_of``, ``classify_failure``,
#: :func:`failure_dict`, :func:`encode_failure`: ~10 us of Python per failure, a quarter of the worker's
#: CPU); None for any payload it leaves to that path.
failure_fast: Callable[[bytes], tuple[str, str, bytes] | None] | None = (
    _ext.failure_record
    if _ext is not None
    and getattr(_ext, "FAILURE_FIELDS", None) == _FIELDS
    and getattr(_ext, "KINDS", None) == KINDS
    else None
)


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


_avro_reader = load_extension("_avro")
#: ``nmsgdns._avro.flat_field`` when built and the schema is flat; for the ``payload`` field (bytes) it
#: returns the bytes, or None for a value fastavro must read or reject.
_flat_field: Callable[[tuple[tuple[str, int], ...], bytes, int], bytes | None] | None = (
    _avro_reader.flat_field if _avro_reader is not None and _FIELDS is not None else None
)
_PAYLOAD_INDEX = [name for name, _ in _FIELDS].index("payload") if _FIELDS is not None else -1


def failure_payload(value: bytes) -> bytes:
    """The ``payload`` (serialized NmsgPayload) of an ``EdnsFailure`` value that is exactly one record,
    else :class:`FailureRecordError`; the sink's per-record read.

    Read by the C extension when built (fastavro built the whole record dict for this one field: ~5 us per
    record, most of the sink's CPU); any value it is not sure of goes to :func:`failure_payload_py`, which
    decides and words the error, so the result is always fastavro's.
    """
    if _flat_field is not None:
        payload = _flat_field(_FIELDS, value, _PAYLOAD_INDEX)  # type: ignore[arg-type]
        if payload is not None:
            return payload
    return failure_payload_py(value)
