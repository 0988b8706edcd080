"""One selected record -> the ``EdnsFailure`` value of the failures topic (pure; no Kafka).

What goes into each field is the filter agent's business and is decided here (:func:`failure_dict`, and in
C :data:`failure_fast`); the value's format, its encoding and decoding, is the contract's:
``dnsqr_schemas.edns_failure`` (the sink reads it from there too).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from dnsqr_schemas.edns_failure import FIELDS
from nmsgdns.classify import KINDS, FailureDetail
from nmsgdns.dnsqr import qname_to_text
from nmsgdns.native import load_extension
from nmsgdns.payload import decode_payload

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
) -> dict[str, Any]:
    """The Avro ``EdnsFailure`` value (as a dict) of one selected payload and its failure ``kind``.

    ``detail`` (``nmsgdns.classify.classify_failure``), when the caller has it, supplies the question
    name it already rendered instead of rendering it again; the rcode is the response header's 4 bits.
    Time and ``source`` (version 2 of the schema: 0 when absent) are the envelope's.
    """
    rec = judgement.record
    opt = judgement.query_opt
    response = judgement.response
    # the protobuf (upb) parse is ~5x faster than the pure-Python envelope walk
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
        "source": envelope.source,
    }


_ext = load_extension("_failure_record", "processors")
#: ``processors._failure_record.failure_record`` when built, writing the schema's fields in the schema's
#: order (``dnsqr_schemas.edns_failure.FIELDS``) and labelling with ``classify.KINDS``: payload ->
#: (name_server, kind, Avro value) of a payload the EDNS0 rule selects, as the Python path gives them
#: (``judgement_of``, ``classify_failure``, :func:`failure_dict`, ``encode_failure``: ~10 us of Python per
#: failure, a quarter of the worker's CPU); None for any payload it leaves to that path.
failure_fast: Callable[[bytes], tuple[str, str, bytes] | None] | None = (
    _ext.failure_record
    if _ext is not None
    and getattr(_ext, "FAILURE_FIELDS", None) == FIELDS
    and getattr(_ext, "KINDS", None) == KINDS
    else None
)
