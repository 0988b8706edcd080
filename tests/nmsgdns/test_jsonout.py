"""nmsgdns.jsonout: our JSON lines against ``nmsgtool -J``.

Ground truth: the corpus dumps ``NAME.json`` (every record of ``NAME.nmsg``) and ``NAME.filtered.json``
(the reference selection), both written by nmsgtool 1.3.3 itself; and, for RDATA the corpus does not
contain, the expected strings of libwdns's own test suite (``t/test-rdata_to_str.c``).
"""

from __future__ import annotations

import io
import json
import struct

import pytest

from nmsgdns.errors import PayloadError
from nmsgdns.jsonout import JsonLinesWriter, dnsqr_json, encode, json_line, message_json, rdata_to_text
from nmsgdns.payload import make_payload
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from tests import corpus

DUMPS = [f"{case}{kind}" for case in corpus.CASES for kind in ("", ".filtered")]


@pytest.mark.parametrize("dump", DUMPS)
def test_every_record_equals_nmsgtool_json(dump: str) -> None:
    """Each record of NAME.nmsg / NAME.filtered.nmsg: the same object as nmsgtool's line, field by field,
    and the same text, byte for byte."""
    payloads = corpus.read_payloads(corpus.path(f"{dump}.nmsg"))
    lines = corpus.path(f"{dump}.json").read_text(encoding="utf-8").splitlines()
    assert len(payloads) == len(lines)
    for i, (payload, line) in enumerate(zip(payloads, lines, strict=True)):
        ours, ref = dnsqr_json(payload), json.loads(line)
        assert list(ours) == list(ref), (dump, i)
        assert list(ours["message"]) == list(ref["message"]), (dump, i)
        for key, value in ref["message"].items():
            assert ours["message"][key] == value, (dump, i, key)
        assert ours == ref, (dump, i)
        assert json_line(payload) == line, (dump, i)


FSI = b"\x03fsi\x02io\x00"
FOO = b"\x03foo\x07example\x03com\x00"
# (rdata, type, class, expected): from libwdns t/test-rdata_to_str.c
WDNS_VECTORS = [
    (bytes.fromhex("0020" + "00" * 11 + "deadbeef"), 38, 1, "0 2000::dead:beef"),
    (bytes.fromhex("08" + "00" * 11 + "deadbeef") + FSI, 38, 1, "8 ::222.173.190.239 fsi.io."),
    (b"\x80" + FSI, 38, 1, "128 fsi.io."),
    (b"\x00\x0a\x00\x01ftp://ftp1.example.com/public", 256, 1, '10 1 "ftp://ftp1.example.com/public"'),
    (b"\x04some\x04text", 16, 1, '"some" "text"'),
    (b'\x08"quoted"', 16, 1, '"\\"quoted\\""'),
    (b"\x1aPlease stop asking for ANY\x1fSee draft-ietf-dnsop-refuse-any", 13, 1,
     '"Please stop asking for ANY" "See draft-ietf-dnsop-refuse-any"'),
    (bytes.fromhex("00000042" "0003" "000460000008"), 62, 1, "66 3 A NS AAAA"),
    (bytes.fromhex("abcdef010203"), 108, 1, "ab-cd-ef-01-02-03"),
    (bytes.fromhex("abcdef0102030405"), 109, 1, "ab-cd-ef-01-02-03-04-05"),
    (bytes(range(1, 9)), 61, 1, "AQIDBAUGBwg="),
    (bytes.fromhex(
        "0100" "03" "05"
        "0103d22a6ca77f35b893206fd35e4c506d8378843709b97e041647e1bff43d8d64c649af1e371973c9e891fce3df519a"
        "8c840a63ee42a6d2ebddbb97035d215aa4e417b1fa45fa11a9741ea2098c1dfa5fb5feb332fd4bc8152089aef36ba644"
        "cce2413b3b72be18cbef8da253f4e93d2103866d9234a2e28df529a67d5468dbefe3"
    ), 48, 1,
     "256 3 5 AQPSKmynfzW4kyBv015MUG2DeIQ3Cbl+BBZH4b/0PY1kxkmvHjcZc8no "
     "kfzj31GajIQKY+5CptLr3buXA10hWqTkF7H6RfoRqXQeogmMHfpftf6z "
     "Mv1LyBUgia7za6ZEzOJBOztyvhjL742iU/TpPSEDhm2SNKLijfUppn1U aNvv4w=="),
    (bytes.fromhex("ec45" "05" "01" "2bb183af5f22588179a53b0a98631fad1a292118"), 43, 1,
     "60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118"),
    (bytes.fromhex("000001" "d2abde240d7cd3ee6b4b28c54df034b97983a1d16e8a410e4561cb106618e971"), 52, 1,
     "0 0 1 D2ABDE240D7CD3EE6B4B28C54DF034B97983A1D16E8A410E4561CB106618E971"),
    (FSI + bytes.fromhex("000140" "010140" "800140"), 47, 1, "fsi.io. A CAA DLV"),
    (b"\x00\x00" + FOO, 65, 1, "0 foo.example.com."),
    (b"\x00\x01\x00", 65, 1, "1 ."),
    (b"\x00\x10" + FOO + b"\x00\x03\x00\x02\x00\x35", 64, 1, "16 foo.example.com. port=53"),
    (b"\x00\x01" + FOO + b"\x02\x9b\x00\x05hello", 64, 1, '1 foo.example.com. key667="hello"'),
    (b"\x00\x01" + FOO + b"\x02\x9b\x00\x09hello\xd2qoo", 64, 1,
     '1 foo.example.com. key667="hello\\210qoo"'),
    (b"\x00\x01" + FOO + b"\x00\x06\x00\x20"
     + bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000530001"), 64, 1,
     "1 foo.example.com. ipv6hint=2001:db8::1,2001:db8::53:1"),
    (b"\x00\x01\x07example\x03com\x00\x00\x06\x00\x10" + bytes.fromhex("00000000000000000000ffffc6336464"),
     64, 1, "1 example.com. ipv6hint=::ffff:198.51.100.100"),
    (b"\x00\x10\x03foo\x07example\x03org\x00\x00\x01\x00\x0c\x08f\\oo,bar\x02h2", 64, 1,
     '16 foo.example.org. alpn="f\\\\\\\\oo\\\\,bar,h2"'),
    (b"\x00\x01\x00\x00\x01\x00\x03\x02h2\x00\x04\x00\x04\xc0\xa8\x00\x01", 65, 1,
     '1 . alpn="h2" ipv4hint=192.168.0.1'),
]  # fmt: skip


@pytest.mark.parametrize(("rdata", "rrtype", "rrclass", "expected"), WDNS_VECTORS)
def test_rdata_presentation_equals_libwdns(rdata: bytes, rrtype: int, rrclass: int, expected: str) -> None:
    assert rdata_to_text(rdata, rrtype, rrclass) == expected


def test_rdata_generic_and_class_rules() -> None:
    # a type outside libwdns's table: "\# LEN HEX"; an IN-only type in another class prints nothing
    assert rdata_to_text(b"\x0a\x00\x00\x01", 65280, 1) == "\\# 4 0a000001"
    assert rdata_to_text(b"\x0a\x00\x00\x01", 1, 3) == ""
    # RDATA ending inside a field: what was printed, then the marker
    assert rdata_to_text(b"\x00\x0a\x00", 33, 1) == "10  ### PARSE ERROR ###"


def test_edns_options_one_line_each() -> None:
    options = (
        b"\x00\x0a\x00\x02\x22A"
        + b"\x00\x08\x00\x07\x00\x01\x18\x00\xc0\x00\x02"
        + b"\x00\x0f\x00\x02\x00\x12"
    )
    lines = rdata_to_text(options, 41, 0).split("\n")[1:]
    # dig's style: hex bytes, then the printable ones in quotes, unescaped (as in the corpus: ("".X...))
    assert lines == ['OPT=10: 22 41 (""A")', "CLIENT-SUBNET: 192.0.2.0/24/0", "EDE: 18 (Prohibited): ()"]


def _message(flags: int, questions: list[bytes], answers: list[bytes], additional: list[bytes]) -> bytes:
    header = struct.pack(">6H", 0x1234, flags, len(questions), len(answers), 0, len(additional))
    return header + b"".join(questions + answers + additional)


def _rr(name: bytes, rrtype: int, rrclass: int, ttl: int, rdata: bytes) -> bytes:
    return name + struct.pack(">HHIH", rrtype, rrclass, ttl, len(rdata)) + rdata


def test_message_grouping_and_edns() -> None:
    """RRs of one owner (case-insensitively), type and class form one RRset with the lowest TTL and the
    first owner's spelling; the OPT record moves to the header; compressed names are followed."""
    q = b"\x07Example\x03com\x00" + struct.pack(">HH", 1, 1)
    answers = [
        _rr(b"\xc0\x0c", 1, 1, 300, b"\xc0\x00\x02\x01"),
        _rr(b"\x07EXAMPLE\x03com\x00", 1, 1, 60, b"\xc0\x00\x02\x02"),
        _rr(b"\xc0\x0c", 5, 1, 10, b"\x03www\xc0\x0c"),
    ]
    opt = _rr(b"\x00", 41, 1232, 0x01008000, b"")
    out = message_json(_message(0x8580, [q], answers, [opt]))
    assert out == {
        "header": {
            "opcode": "QUERY",
            "rcode": 256,  # libwdns ORs the extended rcode in at bit 8; no name for 256
            "id": 0x1234,
            "flags": ["qr", "aa", "rd", "ra"],
            "opt": {"edns": {"version": 0, "flags": ["do"], "udp": 1232, "options": []}},
        },
        "question": [{"qname": "Example.com.", "qclass": "IN", "qtype": "A"}],
        "answer": [
            {"rrname": "Example.com.", "rrttl": 60, "rrclass": "IN", "rrtype": "A",
             "rdata": ["192.0.2.1", "192.0.2.2"]},
            {"rrname": "Example.com.", "rrttl": 10, "rrclass": "IN", "rrtype": "CNAME",
             "rdata": ["www.Example.com."]},
        ],
        "authority": [],
        "additional": [],
    }  # fmt: skip


def test_message_quirks() -> None:
    q = b"\x00" + struct.pack(">HH", 41, 512)
    # an OPT question is EDNS without options; an unnamed type prints as TYPE + the class number
    out = message_json(_message(0, [q], [_rr(b"\x00", 65280, 1, 5, b"")], []))
    assert out is not None
    assert out["header"]["opt"] == {"edns": {"version": 0, "flags": [], "udp": 512}}
    assert out["answer"] == [
        {"rrname": ".", "rrttl": 5, "rrclass": "IN", "rrtype": "TYPE1", "rdata": ["\\# 0 "]}
    ]
    # a message libwdns refuses renders as null
    assert message_json(b"\x00" * 11) is None
    assert message_json(_message(0, [b"\xc0\x0c" + b"\x00" * 4], [], [])) is None


def test_envelope_fields_and_time() -> None:
    rec = DnsQR(type=3, response_ip=b"\xc0\x00\x02\x01", id=7, rcode=0x10000 + 11)
    payload = make_payload(
        1, 9, 951782400 + 3661, 5, rec.SerializeToString(), source=0xABC, operator=2, group=3
    )
    line = dnsqr_json(payload)
    assert line["time"] == "2000-02-29 01:01:01.000000005"
    assert (line["source"], line["operator"], line["group"]) == ("00000abc", 2, 3)
    assert line["message"]["type"] == "UDP_UNSOLICITED_RESPONSE"
    assert line["message"]["rcode"] == "11"  # a uint16 field (0x1000b prints as 11); unnamed, as text
    assert dnsqr_json(make_payload(1, 9, 0, 0, DnsQR(type=4).SerializeToString()))["time"] == (
        "1970-01-01 00:00:00.000000000"
    )
    with pytest.raises(PayloadError):
        dnsqr_json(make_payload(1, 2, 0, 0, b""))


def test_doubles_print_like_c() -> None:
    assert encode(0.1) == "0.100000000000000006"
    assert encode(0.02) == "0.02"
    assert encode(1.0) == "1.0"
    assert encode({"a": [True, None, "x\n\x01\x7f"]}) == '{"a":[true,null,"x\\n\\u0001\x7f"]}'


def test_writer_writes_lines() -> None:
    payloads = corpus.read_payloads(corpus.path("incompressible.filtered.nmsg"))
    buf = io.BytesIO()
    writer = JsonLinesWriter(buf)
    for p in payloads:
        writer.write(p)
    writer.close()
    assert writer.payloads_written == len(payloads)
    assert buf.getvalue() == corpus.path("incompressible.filtered.json").read_bytes()
