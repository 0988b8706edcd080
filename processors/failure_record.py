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
from nmsgdns.classify import FailureDetail
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


#: Avro primitive type -> the kind code of ``nmsgdns._wirescan.avro_record``.
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


_ext = load_extension()
_FIELDS = flat_fields(avro_schema(SCHEMA_NAME))
#: ``nmsgdns._wirescan.avro_record`` when built and the schema is flat (it returns None for a value
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


def decode_failure(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_failure`, for consumers and tests."""
    return schemaless_reader(io.BytesIO(data), avro_schema(SCHEMA_NAME), None)
