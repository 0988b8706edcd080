"""One selected record -> the ``EdnsFailure`` Avro value of the failures topic (pure; no Kafka).

The failures topic is the product downstream consumers read, so its value follows the published contract
``schemas/edns_failure.avsc`` exactly and keeps the original serialized ``NmsgPayload``: a consumer (or the
sink) can always recover the full record, byte for byte, whatever the Avro fields summarise.
"""

from __future__ import annotations

import io
import socket
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from dnsqr_schemas import avro_schema
from nmsgdns.classify import FailureDetail
from nmsgdns.dnsqr import qname_to_text
from nmsgdns.payload import decode_payload

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
    payload: bytes, judgement: JudgementLike, kind: str, *, detail: FailureDetail | None = None
) -> dict[str, Any]:
    """The Avro ``EdnsFailure`` value (as a dict) of one selected payload and its failure ``kind``.

    ``detail`` (``nmsgdns.classify.classify_failure``), when the caller has it, supplies the question
    name it already rendered instead of rendering it again; the rcode is the response header's 4 bits.
    """
    rec = judgement.record
    opt = judgement.query_opt
    response = judgement.response
    # the protobuf (upb) parse is ~5x faster than the pure-Python envelope walk for this one need
    envelope = decode_payload(payload)
    if detail is not None:
        qname = detail.qname or ""
    else:
        qname = qname_to_text(rec.qname) if rec.HasField("qname") else ""
    return {
        "time_sec": envelope.time_sec,
        "time_nsec": envelope.time_nsec,
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


def encode_failure(value: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of an ``EdnsFailure`` dict (the topic carries no schema id; the contract is
    the published ``.avsc``)."""
    out = io.BytesIO()
    schemaless_writer(out, avro_schema(SCHEMA_NAME), value)
    return out.getvalue()


def decode_failure(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_failure`, for consumers and tests."""
    return schemaless_reader(io.BytesIO(data), avro_schema(SCHEMA_NAME), None)
