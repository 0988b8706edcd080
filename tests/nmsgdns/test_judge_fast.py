"""The C fast paths of the rule's per-record loop against the Python code they stand in for.

``nmsgdns._wirescan.judge`` decides the common case of :func:`nmsgdns.edns.judge` from the serialized
payload and hands everything else back (None); :func:`judge_py` / :func:`triage_py` are the
specification. ``qname_to_text`` stands in for ``qname_to_text_py``.
Each must give the same values *and types* (an ``Opt`` stays an ``Opt``, a bool a bool) on the whole
corpus, on mutated corpus payloads, on arbitrary bytes and on records built to reach every branch
(both IP versions, wrong address lengths, several packets, odd envelopes). The bytes go through the
binding, so an over-read would show as a crash or a wrong value under the same inputs.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmsgdns import dnsqr, edns
from nmsgdns.dnsqr import qname_to_text_py
from nmsgdns.edns import judge, judge_py, judgement_of, triage, triage_py
from nmsgdns.input import ContainerStreamReader
from nmsgdns.payload import make_payload
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from tests import corpus

needs_c = pytest.mark.skipif(edns._judge_c is None, reason="nmsgdns._wirescan is not built or disabled")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def corpus_payloads() -> tuple[bytes, ...]:
    out: list[bytes] = []
    for case in corpus.CASES:
        for name in (f"{case}.nmsg", f"{case}.filtered.nmsg"):
            with corpus.path(name).open("rb") as fh:
                out.extend(ContainerStreamReader(fh, name=name))
    return tuple(out)


def typed(value: Any) -> Any:
    """A value with the type of every element spelled out, so that 1 == True or Opt == tuple cannot pass."""
    if isinstance(value, tuple):
        return (type(value), tuple(typed(v) for v in value))
    return (type(value), value)


def judgement_fields(j: edns.Judgement) -> Any:
    return typed(
        (j.verdict, j.record, j.query_opt, j.response_opt, j.response, j.edns_answered, j.edns_timeout)
    )


def same_judgement(payload: bytes) -> None:
    """judge / triage (C where it applies) agree with the Python specification on ``payload``."""
    for detail in (False, True):
        assert judgement_fields(judge(payload, detail=detail)) == judgement_fields(
            judge_py(payload, detail=detail)
        ), (detail, payload.hex())
    t = triage(payload)
    assert typed(t) == typed(triage_py(payload)), payload.hex()
    if t[0] is edns.Verdict.SELECTED or (edns._judge_c is not None and edns._judge_c(payload, True)):
        assert judgement_fields(judgement_of(payload, t)) == judgement_fields(judge_py(payload, detail=True))


def test_corpus_judgements_agree() -> None:
    for payload in corpus_payloads():
        same_judgement(payload)


@needs_c
def test_fast_path_takes_the_common_case() -> None:
    """The point of the C path: nearly every corpus record is decided without the Python code."""
    payloads = corpus_payloads()
    fallbacks = sum(edns._judge_c(p, True) is None for p in payloads)  # type: ignore[misc]
    assert fallbacks < len(payloads) / 50, (fallbacks, len(payloads))


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A corpus payload with a few bytes overwritten, inserted or removed, or cut short."""
    data = bytearray(draw(st.sampled_from(corpus_payloads())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("set",) * 6 + ("insert", "delete", "truncate")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_payloads())
def test_mutated_corpus_payloads_agree(payload: bytes) -> None:
    same_judgement(payload)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_agree(payload: bytes) -> None:
    same_judgement(payload)


@cache
def corpus_packets() -> tuple[bytes, ...]:
    out: set[bytes] = set()
    for payload in corpus_payloads():
        rec = judge_py(payload).record
        if rec is not None:
            out.update(rec.query_packet)
            out.update(rec.response_packet)
    return tuple(sorted(out))


ips = st.sampled_from([b"\x7f\x00\x00\x01"] * 3 + [b"\xc0\x00\x02\x35" * 4] * 3 + [b"", b"\x01\x02\x03"])
packets = st.one_of(st.sampled_from(corpus_packets()), st.binary(max_size=80))


def sometimes(draw: st.DrawFn) -> bool:
    """True about one time in five: the unusual variants, so that most records still reach the C path."""
    return draw(st.integers(0, 99)) >= 85


@st.composite
def built_payloads(draw: st.DrawFn) -> bytes:
    """A dnsqr record built field by field: every branch of the derivation and of the envelope walk."""
    rec = DnsQR()
    if draw(st.integers(0, 9)):
        rec.type = draw(st.sampled_from(range(8)))
    for name in ("query_ip", "response_ip"):
        if not sometimes(draw):
            setattr(rec, name, draw(ips))
    for field in (rec.query_packet, rec.response_packet):
        field.extend(draw(st.lists(packets, max_size=3)) if sometimes(draw) else [draw(packets)])
    for name in ("proto", "query_port", "response_port", "id", "qtype", "qclass", "rcode"):
        if draw(st.booleans()):
            setattr(rec, name, draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        rec.qname = draw(st.binary(max_size=20))
    rec.query_time_sec.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)))
    rec.response_time_nsec.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2)))
    if draw(st.booleans()):
        rec.timeout = draw(st.floats(allow_nan=False))
    if draw(st.booleans()):
        rec.udp_checksum = draw(st.sampled_from(range(4)))
    if draw(st.booleans()):
        rec.resolver_address_zeroed = draw(st.booleans())
    inner = rec.SerializePartialToString()
    if sometimes(draw):
        # the same record with the type dropped, or given twice, or an unknown field appended
        extra = draw(st.sampled_from([b"", b"\x08\x01", b"\x08\x09", b"\xb8\x01\x05", b"\x62\x00"]))
        inner = draw(st.sampled_from([inner.replace(b"\x08", b"", 1), inner + extra, extra + inner]))
    vid = draw(st.sampled_from([2, 2**32 + 1])) if sometimes(draw) else 1
    msgtype = 7 if sometimes(draw) else 9
    time_sec = draw(st.integers(-(2**63), 2**63 - 1))
    payload = make_payload(vid, msgtype, time_sec, draw(st.integers(0, 2**32 - 1)), inner)
    if sometimes(draw):
        payload += draw(st.sampled_from([b"\x30\x05", b"\x2a\x00", b"\x08\x01", b"\x1d\x00\x00\x00\x00"]))
    return payload


@FUZZ
@given(built_payloads())
def test_built_records_agree(payload: bytes) -> None:
    same_judgement(payload)


def test_non_bytes_take_the_python_path() -> None:
    payload = corpus_payloads()[0]
    assert typed(triage(bytearray(payload))) == typed(triage_py(payload))  # type: ignore[arg-type]


def test_time_fields_come_from_the_envelope() -> None:
    rec = DnsQR(type=1, response_ip=b"\x7f\x00\x00\x01", response_packet=[corpus_packets()[0]])
    payload = make_payload(1, 9, -5, 2**32 - 1, rec.SerializeToString())
    assert triage(payload)[6:] == (b"\x7f\x00\x00\x01", 1, -5, 2**32 - 1) == triage_py(payload)[6:]


# --- qname_to_text ------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_qname_to_text_agrees(wire: bytes) -> None:
    assert dnsqr.qname_to_text(wire) == qname_to_text_py(wire)


def test_qname_to_text_on_corpus_names() -> None:
    for payload in corpus_payloads():
        rec = judge_py(payload).record
        if rec is not None and rec.HasField("qname"):
            assert dnsqr.qname_to_text(rec.qname) == qname_to_text_py(rec.qname)
    assert dnsqr.qname_to_text(bytearray(b"\x01a\x00")) == "a."  # type: ignore[arg-type]
