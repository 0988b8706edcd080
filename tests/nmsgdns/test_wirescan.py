"""The C extension ``nmsgdns._wirescan`` against the pure-Python code it transcribes.

``scan_opt_py`` / ``udp_payload_py`` are the specification (they are what test_wire and test_wire_fuzz pin
to libwdns and libnmsg); the C versions must give the same result for every input: the same Opt, the same
None, and the same DnsWireError with the same message (so the same offset). Checked on every query and
response of the corpus, on every captured packet of it, on arbitrary and mutated bytes, and on messages
shaped to reach the C code's less common paths (heap caches, long pointer chains).
"""

from __future__ import annotations

import base64
import os
import struct
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmsgdns import ippacket, native, wire
from nmsgdns.dnsqr import decode_dnsqr
from nmsgdns.edns import EdnsFilter
from nmsgdns.errors import DnsWireError, PayloadError
from nmsgdns.input import ContainerStreamReader
from nmsgdns.ippacket import reassemble, udp_payload_py
from nmsgdns.wire import Opt, scan_opt_c, scan_opt_py, scan_or_py
from tests import corpus
from tests.nmsgdns.test_wire import read_payloads
from tests.nmsgdns.test_wire_fuzz import mutated, structured

#: Set where a build without a C compiler is expected (the fallback is then what runs, and is tested).
ALLOW_PURE_PYTHON_ENV = "NMSGDNS_ALLOW_PURE_PYTHON"

needs_c = pytest.mark.skipif(scan_opt_c is None, reason="nmsgdns._wirescan is not built or disabled")


def outcome(scan: object, data: object) -> tuple[str, object]:
    """What a scanner did: ("ok", result with its exact type) or ("error", exception type and text)."""
    try:
        result = scan(data)  # type: ignore[operator]
    except DnsWireError as exc:
        return ("error", (type(exc), str(exc)))
    return ("ok", (type(result), result, type(result[4]) if isinstance(result, Opt) else None))


def same_scan(data: bytes) -> None:
    assert outcome(scan_opt_c, data) == outcome(scan_opt_py, data), data.hex()
    absent, malformed = object(), object()
    c_side = wire.scan_or(data, absent, malformed)
    py_side = scan_or_py(data, absent, malformed)
    assert c_side == py_side and type(c_side) is type(py_side), data.hex()


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback would cost the throughput."""
    if os.environ.get(native.PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    assert wire.IMPLEMENTATION == "c"
    assert wire.scan_opt is scan_opt_c
    assert ippacket.udp_payload is not udp_payload_py


def test_implementation_names_the_scanner() -> None:
    assert wire.IMPLEMENTATION in ("c", "python")
    assert (wire.IMPLEMENTATION == "c") is (scan_opt_c is not None)
    assert wire.scan_opt is (scan_opt_py if scan_opt_c is None else scan_opt_c)


@cache
def corpus_records() -> tuple[tuple[bytes, ...], tuple[tuple[bytes, bool], ...]]:
    """Every query/response of the corpus JSON dumps, and every captured packet with its IP version
    as the dnsqr derivation would choose it (both choices, to reach the mismatched-version paths)."""
    messages = []
    for case in corpus.CASES:
        for obj in corpus.json_lines(f"{case}.json"):
            for field in ("query", "response"):
                if field in obj.get("message", {}):
                    messages.append(base64.b64decode(obj["message"][field]))
    packets: list[tuple[bytes, bool]] = []
    for case in corpus.CASES:
        for payload in read_payloads(corpus.path(f"{case}.nmsg")):
            if payload.vid != 1 or payload.msgtype != 9:
                continue
            try:
                rec = decode_dnsqr(payload.payload)
            except PayloadError:
                continue
            for packet in (*rec.query_packet, *rec.response_packet):
                packets.extend(((packet, False), (packet, True)))
            if len(rec.response_packet) > 1:
                assembled = reassemble(rec.response_packet)
                if assembled is not None:
                    packets.append(assembled)
    return tuple(messages), tuple(packets)


@needs_c
def test_every_corpus_message_scans_the_same() -> None:
    messages, _ = corpus_records()
    assert len(messages) > 1000
    for data in messages:
        same_scan(data)


@needs_c
def test_every_corpus_packet_has_the_same_udp_payload() -> None:
    _, packets = corpus_records()
    assert len(packets) > 1000
    for packet, ipv6 in packets:
        assert ippacket.udp_payload(packet, ipv6) == udp_payload_py(packet, ipv6)


@needs_c
def test_judge_uses_the_extension_and_selects_the_reference_output() -> None:
    """The rule over the C scanner still selects exactly what the reference filter selected."""
    for case in corpus.CASES:
        rule = EdnsFilter()
        with corpus.path(f"{case}.nmsg").open("rb") as fh:
            selected = [p for p in ContainerStreamReader(fh, name=case) if rule.select(p)]
        with corpus.path(f"{case}.filtered.nmsg").open("rb") as fh:
            assert selected == list(ContainerStreamReader(fh, name=case))
        assert dict(rule.failures_by_ns) == corpus.expected_counts(case)


# ----------------------------------------------------------------------------------------------------
# Shapes the corpus does not reach.


def header(qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">6H", 0x1234, 0x8180, qd, an, ns, ar)


def null_record(owner: bytes, rdata: bytes) -> bytes:
    return owner + struct.pack(">HHIH", 10, 1, 0, len(rdata)) + rdata


def pointer_chain(length: int) -> bytes:
    """A message whose second record's owner is a chain of ``length`` pointers, each one pointing at the
    one before it, ending at the root name of the question: every hop is an unknown target."""
    question = b"\x00" + struct.pack(">HH", 1, 1)  # root at offset 12
    rdata_start = 12 + len(question) + 1 + 10
    chain = [struct.pack(">H", 0xC000 | 12)]
    chain += [struct.pack(">H", 0xC000 | (rdata_start + 2 * i)) for i in range(length - 1)]
    first = null_record(b"\x00", b"".join(chain))
    top = rdata_start + 2 * (length - 1)
    second = null_record(struct.pack(">H", 0xC000 | top), b"")
    return header(1, 2) + question + first + second


@needs_c
@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 3000, 8000])
def test_long_pointer_chains(length: int) -> None:
    data = pointer_chain(length)
    assert scan_opt_py(data) is None
    same_scan(data)
    same_scan(data + b"\x00")  # one more byte: a third record cut off
    same_scan(data[:-3])


@needs_c
@pytest.mark.parametrize("size", [4095, 4096, 4097, 16383, 16384, 16385, 65000])
def test_messages_around_the_cache_sizes(size: int) -> None:
    """Large messages (the name cache leaves the stack, then stops at 14-bit offsets), with names at the
    end pointing at names near the start and at the last cached offset."""
    question = b"\x03www\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
    filler_len = max(size - 12 - len(question) - 11 - 2 * 13, 0)
    body = question + null_record(b"\xc0\x0c", bytes(filler_len))
    tail = b"".join(null_record(struct.pack(">H", 0xC000 | t), b"") for t in (12, 16, 0x3FFF))
    data = header(1, 4) + body + null_record(b"\xc0\x10", b"") + tail
    same_scan(data)
    same_scan(data[:size])


@needs_c
def test_opt_fields_and_types() -> None:
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0x01028000, 4) + b"\x00\x0a\x00\x00"
    data = header(1, 0, 0, 1) + b"\x00" + struct.pack(">HH", 1, 1) + opt
    result = scan_opt_c(data)  # type: ignore[misc]
    assert result == Opt(1232, 1, 2, 0x8000, b"\x00\x0a\x00\x00") and type(result) is Opt
    question_41 = header(1, 0) + b"\x00" + struct.pack(">HH", 41, 4096)
    assert scan_opt_c(question_41) == Opt(4096, 0, 0, 0, b"")  # type: ignore[misc]
    same_scan(data)
    same_scan(question_41)


@needs_c
@pytest.mark.parametrize(
    "data", [bytearray(header(0, 0)), memoryview(header(1, 0) + b"\x00\x00\x01\x00\x01")]
)
def test_other_buffers_take_the_python_code(data: bytearray | memoryview) -> None:
    """Only bytes go through C; anything else gets exactly what the Python code returns or raises."""
    assert outcome(scan_opt_c, data) == outcome(scan_opt_py, data)
    packet = bytearray(28)
    assert ippacket.udp_payload(packet, False) == udp_payload_py(packet, False)


@needs_c
def test_errors_carry_the_python_message() -> None:
    short = r"^DNS message does not parse: shorter than the 12-byte header at offset 0$"
    with pytest.raises(DnsWireError, match=short):
        scan_opt_c(b"\x00" * 11)  # type: ignore[misc]
    aaaa = header(1, 1) + b"\x00\x00\x01\x00\x01" + b"\x00" + struct.pack(">HHIH", 28, 1, 0, 3) + b"abc"
    with pytest.raises(DnsWireError, match=r"RDATA length 3 invalid for type 28 at offset 28$"):
        scan_opt_c(aaaa)  # type: ignore[misc]
    same_scan(aaaa)


# ----------------------------------------------------------------------------------------------------
# Property tests: arbitrary, mutated and structured input.

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_c
@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_scan_the_same(data: bytes) -> None:
    same_scan(data)


@needs_c
@FUZZ
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=300))
def test_small_counts_then_anything_scan_the_same(head: bytes, body: bytes) -> None:
    head = head[:4] + bytes([0, head[5] % 3, 0, head[7] % 4, 0, head[9] % 3, 0, head[11] % 3])
    same_scan(head + body)


@needs_c
@FUZZ
@given(mutated())
def test_mutated_corpus_messages_scan_the_same(data: bytes) -> None:
    same_scan(data)


@needs_c
@FUZZ
@given(structured())
def test_structured_messages_scan_the_same(data: bytes) -> None:
    same_scan(data)


@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    """IPv4/IPv6 headers with UDP, extension headers and lengths around the edges, then anything."""
    if draw(st.booleans()):
        ihl = draw(st.integers(0, 15))
        frag = draw(st.sampled_from((0, 0, 0x2000, 0x0001, 0x4000)))
        head = bytes([0x40 | ihl, 0]) + struct.pack(">HHH", draw(st.integers(0, 600)), 0, frag)
        head += bytes([64, draw(st.sampled_from((17, 17, 6)))]) + bytes(10)
        head += bytes(max(ihl * 4 - 20, 0))
    else:
        nxt = draw(st.sampled_from((17, 17, 0, 43, 44, 60, 51, 50, 6)))
        head = bytes([draw(st.sampled_from((0x60, 0x60, 0x40))), 0, 0, 0])
        head += struct.pack(">HBB", draw(st.integers(0, 600)), nxt, 64) + bytes(32)
        for _ in range(draw(st.integers(0, 2))):
            ext = (draw(st.sampled_from((17, 0, 60, 44))), draw(st.sampled_from((0, 32, 1))))
            head += bytes(ext) + bytes(6)
    udp = struct.pack(">HHHH", 53, 53, draw(st.integers(0, 700)), 0)
    return head + udp + draw(st.binary(max_size=200))


@needs_c
@FUZZ
@given(st.one_of(ip_packets(), st.binary(max_size=120)), st.booleans())
def test_udp_payload_the_same(packet: bytes, ipv6: bool) -> None:
    got = ippacket.udp_payload(packet, ipv6)
    expected = udp_payload_py(packet, ipv6)
    assert got == expected and type(got) is type(expected), packet.hex()


@needs_c
@FUZZ
@given(st.data())
def test_corpus_packets_derive_and_scan_the_same(data: st.DataObject) -> None:
    """A captured packet through both implementations: the derived message, then its scan."""
    _, packets = corpus_records()
    packet, ipv6 = packets[data.draw(st.integers(0, len(packets) - 1))]
    message = udp_payload_py(packet, ipv6)
    assert ippacket.udp_payload(packet, ipv6) == message
    if message is not None:
        same_scan(message)
