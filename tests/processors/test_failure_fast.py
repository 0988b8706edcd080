"""``processors._failure_record.failure_record`` (``failure_fast``) against the Python path it replaces.

For a payload the EDNS0 rule selects, the worker built its failure record in Python: ``judgement_of`` (the
protobuf record), ``classify_failure``, ``failure_dict``, ``encode_failure``. The C call must return the
same (name server, kind, Avro bytes) or None (the Python path then runs), and None for every payload the
rule does not select. Checked on the corpus, on mutated corpus payloads and on records built to reach
every field (both IP versions and address corner cases, absent and present fields, wide and repeated
fields, every rcode and the TC bit, OPT record or type-41 question, long names); and ``filter_container``
must give the same result with and without the call.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnsqr_schemas import edns_failure
from dnsqr_schemas.edns_failure import decode_failure, encode_failure_py
from nmsgdns import edns, native
from nmsgdns.classify import KINDS, classify_failure
from nmsgdns.container import encode_container
from nmsgdns.dnsqr import ip_to_text
from nmsgdns.edns import judge_py
from nmsgdns.payload import make_payload
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from processors import failure_record, filter_agent
from processors.failure_record import failure_dict
from processors.filter_agent import ContainerResult, WindowClock, filter_container
from tests import corpus
from tests.nmsgdns.test_judge_fast import FUZZ, built_payloads, corpus_payloads, mutated_payloads, typed
from tests.nmsgdns.test_wirescan import ALLOW_PURE_PYTHON_ENV
from tests.processors.helpers import expected_failures, raw_containers

fast = failure_record.failure_fast
needs_c = pytest.mark.skipif(fast is None, reason="processors._failure_record is not built or disabled")


def python_path(payload: bytes) -> tuple[str, str, bytes] | None:
    """(name server, kind, Avro value) as the Python code builds them; None when the rule does not select
    the payload. Independent of every C path: judge_py, the envelope parsed again, fastavro."""
    j = judge_py(payload, detail=True)
    if not j.selected:
        return None
    detail = classify_failure(j.record, j.query_opt, j.response)
    value = failure_dict(payload, j, detail.kind, detail=detail)
    return (j.ns_ip or "", detail.kind, encode_failure_py(value))


def same_failure(payload: bytes) -> tuple[str, str, bytes] | None:
    """The C result on ``payload`` is None or the Python path's; None when the rule does not select it."""
    assert fast is not None
    got = fast(payload)
    expected = python_path(payload)
    if expected is None:
        assert got is None, payload.hex()
    elif got is not None:
        assert typed(got) == typed(expected), payload.hex()
        assert got[1] in KINDS
    return got


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback (or a layout or kinds check that
    turned it off) would cost the worker ~10 us a failure."""
    if os.environ.get(native.PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    assert failure_record._ext is not None
    assert failure_record.failure_fast is failure_record._ext.failure_record


@needs_c
def test_the_schema_is_the_layout_c_writes() -> None:
    assert failure_record._ext is not None
    assert failure_record._ext.FAILURE_FIELDS == edns_failure.FIELDS


@needs_c
def test_the_kinds_are_the_ones_classify_labels_with() -> None:
    """The C labels are classify.KINDS, in their order (failure_fast is off otherwise)."""
    assert failure_record._ext is not None
    assert failure_record._ext.KINDS == KINDS


@needs_c
def test_corpus_failures_agree_and_take_the_fast_path() -> None:
    taken = 0
    for payload in corpus_payloads():
        got = same_failure(payload)
        if judge_py(payload, detail=True).selected and edns._judge_c is not None:
            # the fast path is taken wherever judge() itself decides in C (not: fragmented responses)
            assert (got is None) == (edns._judge_c(payload, True) is None), payload.hex()
        taken += got is not None
    assert taken > 1000, taken


@needs_c
def test_corpus_values_decode() -> None:
    """The bytes are a whole EdnsFailure whose payload is the input (not only equal to fastavro's)."""
    for payload in corpus.read_payloads(corpus.path("edge_cases.filtered.nmsg")):
        got = fast(payload)  # type: ignore[misc]
        if got is not None:
            value = decode_failure(got[2])
            assert value["payload"] == payload
            assert (value["name_server"], value["kind"]) == got[:2]


@needs_c
@FUZZ
@given(mutated_payloads())
def test_mutated_corpus_payloads_agree(payload: bytes) -> None:
    same_failure(payload)


@needs_c
@FUZZ
@given(built_payloads())
def test_built_records_agree(payload: bytes) -> None:
    same_failure(payload)


@needs_c
def test_non_bytes_take_the_python_path() -> None:
    payload = next(p for p in corpus_payloads() if fast(p) is not None)  # type: ignore[misc]
    assert fast(bytearray(payload)) is None  # type: ignore[misc, arg-type]
    assert fast(memoryview(payload)) is None  # type: ignore[misc, arg-type]


# --- selected records built field by field -------------------------------------------------------------


def dns_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def udp_packet(src: bytes, dst: bytes, message: bytes) -> bytes:
    """An IPv4 or IPv6 packet (by the address length) carrying ``message`` in UDP."""
    udp = struct.pack(">HHHH", 53000, 53, 8 + len(message), 0) + message
    if len(src) == 4:
        return struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0) + src + dst + udp
    return struct.pack(">IHBB", 0x60000000, len(udp), 17, 64) + src + dst + udp


V6_CORNERS = [
    "::",
    "::1",
    "1::",
    "::ffff:1.2.3.4",  # mapped
    "::1.2.3.4",  # compatible
    "::ffff:0:1.2.3.4",
    "64:ff9b::1.2.3.4",
    "2001:db8::1",
    "2001:db8:0:1:0:0:0:1",  # two runs of zeros: the longer one is compressed
    "2001:0:0:1:0:0:1:1",  # two equal runs: the first
    "2001:db8:0:1:1:1:1:1",  # one zero: not compressed
    "fe80::1:0:0:0",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "0:0:1:0:0:0:0:0",
]


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


addresses = st.one_of(
    st.sampled_from([b"\xc0\x00\x02\x35", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x0a\x00\x00\x01"]),
    st.binary(min_size=4, max_size=4),
    st.sampled_from([v6(t) for t in V6_CORNERS]),
    # groups drawn mostly from 0 so that runs of zeros of every length and place occur
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x0DB8]), min_size=8, max_size=8).map(
        lambda groups: struct.pack(">8H", *groups)
    ),
)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 53, 2**31, 2**32 - 1]))


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


@st.composite
def selected_records(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A record the rule selects (an EDNS query answered without OPT), with every field the failure record
    reads drawn: absent or present, small or at the top of its range; and whether it is plain, that is
    not given a field twice or a uint32 wider than 32 bits (which the C call may leave to Python)."""
    labels = draw(st.lists(st.binary(min_size=1, max_size=63), max_size=6))
    qname = dns_name(labels)
    qtype, qclass = draw(st.integers(0, 65535)), draw(st.sampled_from([1, 3, 255, 41, 65535]))
    question = qname + struct.pack(">HH", qtype, qclass)
    udp_size = draw(st.integers(0, 65535))
    ext_rcode, version = draw(st.integers(0, 255)), draw(st.sampled_from([0, 0, 0, 1, 255]))
    flags = draw(st.sampled_from([0, 0x8000, 0xFFFF, 0x7FFF]))
    if draw(st.integers(0, 9)):
        opt = b"\x00" + struct.pack(">HHBBHH", 41, udp_size, ext_rcode, version, flags, 0)
        query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 1) + question + opt
    else:  # a question of type 41 also counts as EDNS (libwdns)
        query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 41, udp_size)
    rflags = 0x8000 | draw(st.integers(0, 15)) | (0x0200 if draw(st.booleans()) else 0)
    response = struct.pack(">HHHHHH", 7, rflags, 1, 0, 0, 0) + question

    resolver = draw(addresses)
    server = draw(addresses.filter(lambda a: len(a) == len(resolver)))
    rec = DnsQR(type=1, query_ip=resolver, response_ip=server)
    rec.query_packet.append(udp_packet(resolver, server, query))
    rec.response_packet.append(udp_packet(server, resolver, response))
    for name in ("proto", "query_port", "response_port", "id", "qtype", "qclass", "rcode"):
        if draw(st.booleans()):
            setattr(rec, name, draw(u32))
    choice = draw(st.integers(0, 9))
    if choice < 5:
        rec.qname = qname
    elif choice == 5:
        rec.qname = b""
    elif choice == 6:
        rec.qname = draw(st.binary(min_size=200, max_size=600))  # text longer than the stack buffer
    inner = rec.SerializeToString()
    plain = draw(st.integers(0, 9)) > 0
    if not plain:
        # a field given again (upb: last wins) or a uint32 wider than 32 bits (upb truncates)
        field = draw(st.sampled_from([4, 5, 6, 7, 9, 10, 11]))
        value = draw(st.sampled_from([5, 2**32 + 5, 2**64 - 1]))
        inner += draw(st.sampled_from([varint(field << 3) + varint(value), b"\x42\x03\x01a\x00"]))
    time_sec = draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(1_795_772_099)))
    return make_payload(1, 9, time_sec, draw(u32), inner), plain


selected_payloads = selected_records().map(lambda built: built[0])


@needs_c
@FUZZ
@given(selected_records())
def test_selected_records_agree(built: tuple[bytes, bool]) -> None:
    payload, plain = built
    assert python_path(payload) is not None, "the strategy builds selected records"
    got = same_failure(payload)
    if plain:
        assert got is not None, payload.hex()


@needs_c
@pytest.mark.parametrize("text", V6_CORNERS)
def test_ipv6_text_is_inet_ntop(text: str) -> None:
    """The name server and resolver texts are socket.inet_ntop's for IPv6 corner cases."""
    addr = v6(text)
    other = v6("2001:db8::53")
    for resolver, server in ((addr, other), (other, addr)):
        query = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 1) + b"\x00\x00\x01\x00\x01"
        query += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
        response = struct.pack(">HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01"
        rec = DnsQR(type=1, query_ip=resolver, response_ip=server, qname=b"\x00")
        rec.query_packet.append(udp_packet(resolver, server, query))
        rec.response_packet.append(udp_packet(server, resolver, response))
        payload = make_payload(1, 9, 1, 2, rec.SerializeToString())
        got = same_failure(payload)
        assert got is not None
        value = decode_failure(got[2])
        assert got[0] == value["name_server"] == ip_to_text(server)
        assert value["resolver"] == socket.inet_ntop(socket.AF_INET6, resolver)


# --- filter_container with and without the call --------------------------------------------------------


def outputs(result: ContainerResult) -> Any:
    return (result.records, result.failures, result.counted)


def outcome(data: bytes) -> Any:
    """filter_container's outputs, or the error it raises (the worker sends such a container to the
    dead-letter topic: e.g. a selected payload whose envelope lacks a required time field)."""
    try:
        return outputs(filter_container(data, WindowClock(60)))
    except Exception as exc:
        return ("error", type(exc), str(exc))


def both_ways(monkeypatch: pytest.MonkeyPatch, data: bytes) -> tuple[Any, Any]:
    with_fast = outcome(data)
    with monkeypatch.context() as m:
        m.setattr(filter_agent, "failure_fast", None)
        without = outcome(data)
    return with_fast, without


@needs_c
@pytest.mark.parametrize("case", corpus.CASES)
def test_filter_container_same_with_and_without(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    calls = 0

    def counting(payload: bytes) -> Any:
        nonlocal calls
        calls += 1
        return fast(payload)  # type: ignore[misc]

    for data in raw_containers(case, 200):
        with_fast, without = both_ways(monkeypatch, data)
        assert with_fast == without
    monkeypatch.setattr(filter_agent, "failure_fast", counting)
    for data in raw_containers(case, 200):
        filter_container(data, WindowClock(60))
    assert calls == sum(expected_failures(case).values()), "called once for each selected payload"


@needs_c
@FUZZ
@given(st.lists(st.one_of(selected_payloads, built_payloads(), mutated_payloads()), min_size=1, max_size=8))
def test_filter_container_same_on_built_containers(payloads: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        with_fast, without = both_ways(monkeypatch, encode_container(payloads, crcs=False))
    assert with_fast == without
