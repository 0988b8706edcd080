"""nmsgdns.dnsqr: every field of every corpus record, and the derived query/response, equal nmsgtool's
JSON dump (``nmsgtool -r NAME.nmsg -J -``), which was made by libnmsg 1.3.3 itself."""

from __future__ import annotations

import base64

import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from nmsgdns.dnsqr import DnsQR, decode_dnsqr, derive_query, derive_response, ip_to_text, qname_to_text
from nmsgdns.errors import PayloadError
from nmsgdns.proto import dnsqr_pb2
from tests import corpus
from tests.nmsgdns.test_wire import read_payloads

PROTO_NAMES = {17: "UDP", 6: "TCP", 1: "ICMP"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_json(rec: DnsQR) -> dict[str, object]:
    """The record as nmsgtool's JSON shows it, built from our decoding (without ``delay`` and the
    parsed ``*_json`` views, which belong to other modules)."""
    out: dict[str, object] = {"type": dnsqr_pb2.DnsQRType.Name(rec.type)}
    out["query_ip"] = ip_to_text(rec.query_ip) if rec.query_ip else None  # empty prints as null
    out["response_ip"] = ip_to_text(rec.response_ip) if rec.response_ip else None
    for field in ("proto", "query_port", "response_port", "id"):
        if rec.HasField(field):
            out[field] = getattr(rec, field)
    if "proto" in out:
        out["proto"] = PROTO_NAMES.get(rec.proto, rec.proto)
    if rec.HasField("qname"):
        out["qname"] = qname_to_text(rec.qname)
    if rec.HasField("qclass"):
        out["qclass"] = dns.rdataclass.to_text(rec.qclass)
    if rec.HasField("qtype"):
        out["qtype"] = dns.rdatatype.to_text(rec.qtype)
    if rec.HasField("rcode"):
        out["rcode"] = dns.rcode.to_text(rec.rcode)
    for field in ("query_packet", "response_packet"):
        out[field] = [b64(p) for p in getattr(rec, field)]
    for field in ("query_time_sec", "query_time_nsec", "response_time_sec", "response_time_nsec"):
        out[field] = list(getattr(rec, field))
    if rec.HasField("timeout"):
        out["timeout"] = rec.timeout
    if rec.HasField("udp_checksum"):
        out["udp_checksum"] = dnsqr_pb2.UdpChecksum.Name(rec.udp_checksum)
    if rec.HasField("resolver_address_zeroed"):
        out["resolver_address_zeroed"] = rec.resolver_address_zeroed
    for field in ("tcp", "icmp"):
        if rec.HasField(field):
            out[field] = b64(getattr(rec, field))
    query = derive_query(rec)
    if query is not None:
        out["query"] = b64(query)
    response = derive_response(rec)
    if response is not None:
        out["response"] = out["dns"] = b64(response)
    return out


@pytest.mark.parametrize("case", corpus.CASES)
def test_every_field_matches_nmsgtool_json(case: str) -> None:
    payloads = list(read_payloads(corpus.path(f"{case}.nmsg")))
    dumps = corpus.json_lines(f"{case}.json")
    assert len(payloads) == len(dumps)
    for payload, dump in zip(payloads, dumps, strict=True):
        assert (payload.vid, payload.msgtype) == (1, 9)
        assert (dump["vname"], dump["mname"]) == ("base", "dnsqr")
        expected = {
            k: v for k, v in dump["message"].items() if k not in ("delay", "query_json", "response_json")
        }
        assert as_json(decode_dnsqr(payload.payload)) == expected


def test_fragmented_responses_are_in_the_corpus() -> None:
    """The reassembly path is exercised by the corpus: edge_cases has IPv4 responses in two fragments
    (IPv6 reassembly is covered by test_ippacket)."""
    multi = [
        decode_dnsqr(p.payload)
        for p in read_payloads(corpus.path("edge_cases.nmsg"))
        if len(decode_dnsqr(p.payload).response_packet) > 1
    ]
    assert len(multi) == 2
    assert all(derive_response(r) is not None for r in multi)


def test_decode_rejects_garbage() -> None:
    with pytest.raises(PayloadError):
        decode_dnsqr(b"\xff\xff\xff")
    with pytest.raises(PayloadError):  # the required `type` is missing
        decode_dnsqr(b"")


def test_query_needs_exactly_one_packet_and_a_4_or_16_byte_address() -> None:
    packet = _udp4(b"\x12\x34" + bytes(10))
    rec = DnsQR(type=1, query_ip=bytes(4), query_packet=[packet])
    assert derive_query(rec) == b"\x12\x34" + bytes(10)
    assert derive_query(DnsQR(type=1, query_ip=bytes(4), query_packet=[packet, packet])) is None
    assert derive_query(DnsQR(type=1, query_packet=[packet])) is None
    assert derive_query(DnsQR(type=1, query_ip=bytes(5), query_packet=[packet])) is None
    # the address length, not the packet, chooses the parser
    assert derive_query(DnsQR(type=1, query_ip=bytes(16), query_packet=[packet])) is None


def test_response_needs_a_nonempty_address() -> None:
    packet = _udp4(b"\xab" * 12)
    assert derive_response(DnsQR(type=1, response_ip=bytes(4), response_packet=[packet])) == b"\xab" * 12
    assert derive_response(DnsQR(type=1, response_packet=[packet])) is None
    assert derive_response(DnsQR(type=1, response_ip=b"", response_packet=[packet])) is None
    assert derive_response(DnsQR(type=1, response_ip=bytes(4))) is None


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b"\x00", "."),
        (b"\x03www\x07example\x03com\x00", "www.example.com."),
        (b"\x03a.b\x02\\x\x00", "a\\.b.\\\\x."),
        (b"\x04a b\x7f\x01\x00\x00", "a\\032b\\127.\\000."),
        (b"\x03abc", "abc."),
        (b"", "."),
    ],
)
def test_qname_to_text(wire: bytes, text: str) -> None:
    assert qname_to_text(wire) == text


def _udp4(payload: bytes) -> bytes:
    udp = (8 + len(payload)).to_bytes(2, "big")
    return b"\x45" + bytes(8) + b"\x11" + bytes(10) + b"\x00\x35\x00\x35" + udp + b"\x00\x00" + payload
