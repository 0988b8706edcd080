"""nmsgdns.wire: the libwdns-compatible scanner.

The parity test runs the seed rule over every corpus record with our own derivation and scanner and
compares with what the reference C filter selected. It reads the corpus with a small container walker of
its own so that it depends on nothing but the scanner and the dnsqr derivation. The unit tests pin each
rule of ``edns-rule.md`` with hand-built messages.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from nmsgdns.dnsqr import decode_dnsqr, derive_query, derive_response
from nmsgdns.errors import DnsWireError
from nmsgdns.proto import nmsg_pb2
from nmsgdns.wire import Opt, scan_opt
from tests import corpus


def read_payloads(path: Path) -> Iterator[nmsg_pb2.NmsgPayload]:
    """Every NmsgPayload of an NMSG file: containers, zlib bodies and fragments (joined by id)."""
    data = path.read_bytes()
    pos = 0
    pending: dict[int, dict[int, bytes]] = {}
    while pos < len(data):
        magic, flags, _version, length = struct.unpack_from(">4sBBI", data, pos)
        assert magic == b"NMSG"
        body = data[pos + 10 : pos + 10 + length]
        pos += 10 + length
        if flags & 0x02:
            frag = nmsg_pb2.NmsgFragment.FromString(body)
            parts = pending.setdefault(frag.id, {})
            parts[frag.current] = frag.fragment
            if len(parts) < frag.last + 1:
                continue
            del pending[frag.id]
            body = b"".join(parts[i] for i in range(frag.last + 1))
        if flags & 0x01:
            body = zlib.decompress(body[4:])
        yield from nmsg_pb2.Nmsg.FromString(body).payloads


def _scan(wire: bytes) -> tuple[bool, Opt | None]:
    try:
        return True, scan_opt(wire)
    except DnsWireError:
        return False, None


@pytest.mark.parametrize("case", corpus.CASES)
def test_rule_selects_exactly_the_reference_output(case: str) -> None:
    selected: list[bytes] = []
    counts: Counter[str] = Counter()
    for payload in read_payloads(corpus.path(f"{case}.nmsg")):
        if payload.vid != 1 or payload.msgtype != 9:
            continue
        rec = decode_dnsqr(payload.payload)
        response = derive_response(rec)
        if response is None:
            continue
        ok, opt = _scan(response)
        if not ok or opt is not None:
            continue
        query = derive_query(rec)
        if query is None:
            continue
        ok, opt = _scan(query)
        if ok and opt is not None:
            selected.append(payload.payload)
            counts[decode_dnsqr(payload.payload).response_ip.hex()] += 1
    expected = [p.payload for p in read_payloads(corpus.path(f"{case}.filtered.nmsg"))]
    assert selected == expected
    by_text = {_ip_hex(ip): n for ip, n in corpus.expected_counts(case).items()}
    assert dict(counts) == by_text


def _ip_hex(text: str) -> str:
    import ipaddress

    return ipaddress.ip_address(text).packed.hex()


@pytest.mark.parametrize("case", corpus.PCAP_CASES)
def test_parse_and_edns_fields_match_nmsgtool_json(case: str) -> None:
    """nmsgtool's ``query_json``/``response_json`` is null exactly when libwdns fails to parse, and
    shows the EDNS version, UDP size and DO bit of the first OPT: compare every derived message."""
    checked = 0
    for obj in corpus.json_lines(f"{case}.json"):
        msg = obj["message"]
        for field in ("query", "response"):
            if field not in msg:
                continue
            ok, opt = _scan(base64.b64decode(msg[field]))
            parsed = msg[f"{field}_json"]
            assert ok == (parsed is not None), msg[field]
            if parsed is None:
                continue
            edns = parsed["header"].get("opt", {}).get("edns")
            if edns is None:
                assert opt is None
            else:
                assert opt is not None
                assert (opt.version, opt.udp_size, bool(opt.flags & 0x8000)) == (
                    edns["version"],
                    edns["udp"],
                    "do" in edns["flags"],
                )
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------- hand-built messages

QNAME = b"\x07example\x03com\x00"  # at offset 12 in every message built here
Q_A = QNAME + struct.pack(">HH", 1, 1)


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack(">6H", 0x1234, flags, qd, an, ns, ar)


def rr(rtype: int, rdata: bytes, name: bytes = b"\xc0\x0c", rclass: int = 1, ttl: int = 60) -> bytes:
    return name + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt_rr(
    udp: int = 1232, ext_rcode: int = 0, version: int = 0, flags: int = 0, options: bytes = b""
) -> bytes:
    return rr(41, options, name=b"\x00", rclass=udp, ttl=(ext_rcode << 24) | (version << 16) | flags)


def answer(*records: bytes, opt: bool = False) -> bytes:
    """A response with the standard question, ``records`` in the answer section, optionally an OPT."""
    extra = opt_rr() if opt else b""
    return header(1, len(records), 0, 1 if opt else 0) + Q_A + b"".join(records) + extra


def parses(wire: bytes) -> bool:
    return _scan(wire)[0]


def test_header_shorter_than_12_fails() -> None:
    for n in range(12):
        with pytest.raises(DnsWireError):
            scan_opt(header()[:n])


def test_header_only_with_counts_parses() -> None:
    assert scan_opt(header(1, 2, 3, 4)) is None
    assert scan_opt(header(0, 0, 0, 0)) is None


def test_truncation_at_record_boundary_succeeds() -> None:
    a = rr(1, bytes([192, 0, 2, 1]))
    full = answer(a, a, opt=True)
    assert scan_opt(full) == Opt(1232, 0, 0, 0, b"")
    # Every cut at a record boundary parses (with whatever was read) ...
    boundaries = {12, 12 + len(Q_A), 12 + len(Q_A) + len(a), 12 + len(Q_A) + 2 * len(a)}
    for cut in boundaries:
        assert scan_opt(full[:cut]) is None
    # ... every other cut fails.
    for cut in range(13, len(full)):
        if cut not in boundaries:
            with pytest.raises(DnsWireError):
                scan_opt(full[:cut])


def test_question_needs_type_and_class() -> None:
    with pytest.raises(DnsWireError):
        scan_opt(header() + QNAME + b"\x00\x01\x00")


def test_rr_needs_ten_header_bytes_and_its_rdata() -> None:
    base = header(1, 1) + Q_A
    with pytest.raises(DnsWireError):
        scan_opt(base + b"\xc0\x0c" + struct.pack(">HHI", 1, 1, 60) + b"\x00")
    with pytest.raises(DnsWireError):  # RDLENGTH 4, 3 bytes present
        scan_opt(base + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + b"\x01\x02\x03")


def test_compression_pointer_must_point_strictly_backwards() -> None:
    assert parses(answer(rr(1, bytes(4), name=b"\xc0\x0c")))
    at = 12 + len(Q_A)  # offset of the answer's owner name
    for target in (at, at + 1, at + 40):
        with pytest.raises(DnsWireError):
            scan_opt(answer(rr(1, bytes(4), name=bytes([0xC0 | target >> 8, target & 0xFF]))))


def test_pointer_cut_off_at_end_fails() -> None:
    with pytest.raises(DnsWireError):
        scan_opt(header(1, 1) + Q_A + b"\xc0")


def test_pointer_loop_fails_by_name_length() -> None:
    # label "a" at offset `at`, then a pointer back to it: a loop that only the 255-byte limit ends.
    at = 12 + len(Q_A)
    name = b"\x01a" + bytes([0xC0, at])
    with pytest.raises(DnsWireError):
        scan_opt(answer(rr(1, bytes(4), name=name)))


def test_pointer_chains_are_followed() -> None:
    at = 12 + len(Q_A)
    first = rr(1, bytes(4), name=b"\x03www\xc0\x0c")
    second = rr(1, bytes(4), name=bytes([0xC0, at]))  # -> "www" + pointer -> example.com
    third = rr(5, b"\x02m1" + bytes([0xC0, at + len(first)]))  # CNAME target through two pointers
    assert scan_opt(answer(first, second, third)) is None


def test_pointer_into_the_middle_of_a_name() -> None:
    assert parses(answer(rr(1, bytes(4), name=b"\xc0\x14")))  # "com" inside the question
    with pytest.raises(DnsWireError):  # offset 13 is inside the label "example": 'e' = 101 is no length
        scan_opt(answer(rr(1, bytes(4), name=b"\xc0\x0d")))


@pytest.mark.parametrize("octet", [64, 100, 128, 191])
def test_label_length_64_to_191_fails(octet: int) -> None:
    with pytest.raises(DnsWireError):
        scan_opt(header() + bytes([octet]) + b"x" * octet + b"\x00" + b"\x00\x01\x00\x01")


def test_label_63_parses() -> None:
    assert scan_opt(header() + b"\x3f" + b"x" * 63 + b"\x00\x00\x01\x00\x01") is None


def test_name_length_limit() -> None:
    labels = (b"\x3e" + b"x" * 62) * 4  # 252 bytes of labels
    ok = header() + labels + b"\x01y\x00" + b"\x00\x01\x00\x01"  # 254 + terminator
    bad = header() + labels + b"\x02yy\x00" + b"\x00\x01\x00\x01"  # 255 + terminator
    assert scan_opt(ok) is None
    with pytest.raises(DnsWireError):
        scan_opt(bad)


def test_name_length_counts_through_pointers() -> None:
    long_q = (b"\x3e" + b"x" * 62) * 3 + b"\x3d" + b"x" * 61 + b"\x00"  # 251 bytes of labels
    base = header(1, 1) + long_q + b"\x00\x01\x00\x01"
    assert parses(base + rr(1, bytes(4), name=b"\x02ab\xc0\x0c"))  # 3 + 251 = 254
    with pytest.raises(DnsWireError):
        scan_opt(base + rr(1, bytes(4), name=b"\x03abc\xc0\x0c"))  # 255


def test_name_running_off_the_end_fails() -> None:
    with pytest.raises(DnsWireError):
        scan_opt(header() + b"\x07example\x03com")  # no terminating zero
    with pytest.raises(DnsWireError):
        scan_opt(header() + b"\x07exam")  # label past the data


@pytest.mark.parametrize(
    ("rtype", "rdata", "ok"),
    [
        (1, bytes(4), True),
        (1, b"", True),  # RDATA may end before the first field
        (1, bytes(2), False),  # field cut in the middle
        (1, bytes(5), False),  # leftover byte after the last field
        (28, bytes(16), True),
        (28, bytes(17), False),
        (15, b"\x00\x0a", True),  # MX with the preference only: missing trailing name accepted
        (15, b"\x00\x0a\xc0\x0c", True),
        (15, b"\x00\x0a\xc0\x0c\x00", False),
        (15, b"\x00", False),
        (2, b"\x03ns1\xc0\x0c", True),
        (2, b"\x03ns1\xc0\x0c\x00", False),
        (6, b"\xc0\x0c", True),  # SOA cut after MNAME
        (6, b"\xc0\x0c\xc0\x0c" + bytes(20), True),
        (6, b"\xc0\x0c\xc0\x0c" + bytes(8), True),  # ends between two u32 fields
        (6, b"\xc0\x0c\xc0\x0c" + bytes(10), False),  # ends inside a u32
        (6, b"\xc0\x0c\xc0\x0c" + bytes(21), False),
        (16, b"", True),
        (16, b"\x03abc\x00\x01x", True),
        (16, b"\x03abc\x05ab", False),  # string past RDATA
        (13, b"\x01a\x01b", True),  # HINFO
        (13, b"\x01a\x01b\x00", False),
        (33, b"\x00\x01\x00\x02\x00\x35\xc0\x0c", True),  # SRV
        (33, b"\x00\x01\x00\x02\x00", False),
        (35, b"\x00\x01\x00\x02\x01S\x03SIP\x00\x00", True),  # NAPTR
        (43, b"\x12\x34\x08\x02" + bytes(32), True),  # DS: fixed fields then bytes
        (43, b"\x12\x34\x08", True),  # ends between fields
        (43, b"\x12", False),
        (48, b"\x01\x01\x03\x08" + bytes(64), True),  # DNSKEY
        (46, b"\x00\x01\x08\x02" + bytes(12) + b"\x12\x34\xc0\x0c" + bytes(64), True),  # RRSIG
        (46, b"\x00\x01\x08\x02" + bytes(12) + b"\x12\x34\x03abc", False),  # signer runs off RDATA
        (52, b"\x03\x01\x01" + bytes(32), True),  # TLSA
        (108, bytes(6), True),  # EUI48
        (108, bytes(7), False),
        (109, bytes(8), True),  # EUI64
        (256, b"\x00\x01\x00\x01https://x", True),  # URI
        (257, b"\x00\x05issue" + b"ca.example", True),  # CAA
        (257, b"\x00\x09issue", False),  # tag string past RDATA
        (11, bytes(4) + b"\x06" + b"\xff" * 8, True),  # WKS
        (30, b"\xc0\x0c\x40\x01", True),  # NXT: name then bytes
        (51, b"\x01\x00\x00\x0a\x02ab", True),  # NSEC3PARAM
        (51, b"\x01\x00\x00\x0a\x02ab\x00", False),
        (10, b"anything \xff at all", True),  # NULL is opaque
        (99, b"\x02ab", True),  # SPF
        (65280, b"\xff\xff\xff", True),  # unknown type: opaque
    ],
)
def test_rdata_field_rules(rtype: int, rdata: bytes, ok: bool) -> None:
    assert parses(answer(rr(rtype, rdata))) is ok


def test_in_only_types_are_opaque_in_other_classes() -> None:
    assert not parses(answer(rr(1, bytes(5))))
    assert parses(answer(rr(1, bytes(5), rclass=3)))  # A in CH: not checked
    assert not parses(answer(rr(6, b"\xc0\x0c\xc0\x0c\x00", rclass=3)))  # SOA is checked in any class


def test_name_in_rdata_must_end_inside_rdata() -> None:
    # CNAME whose RDLENGTH stops inside its (otherwise valid) target name
    record = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, 3) + b"\x03www\xc0\x0c"
    with pytest.raises(DnsWireError):
        scan_opt(header(1, 1) + Q_A + record)


@pytest.mark.parametrize(
    ("params", "ok"),
    [
        (b"", True),
        (struct.pack(">HH", 1, 3) + b"\x02h2", True),  # alpn
        (struct.pack(">HH", 1, 0), False),  # alpn empty
        (struct.pack(">HH", 1, 4) + b"\x02h2\x01", False),  # alpn not exactly filled
        (struct.pack(">HH", 1, 2) + b"\x02h", False),  # alpn string longer than value
        (struct.pack(">HH", 0, 4) + b"\x00\x01\x00\x03", True),  # mandatory
        (struct.pack(">HH", 0, 3) + b"\x00\x01\x00", False),  # mandatory odd length
        (struct.pack(">HH", 2, 0), True),  # no-default-alpn
        (struct.pack(">HH", 2, 1) + b"\x00", False),
        (struct.pack(">HH", 3, 2) + b"\x01\xbb", True),  # port
        (struct.pack(">HH", 3, 3) + b"\x01\xbb\x00", False),
        (struct.pack(">HH", 4, 8) + bytes(8), True),  # ipv4hint
        (struct.pack(">HH", 4, 5) + bytes(5), False),
        (struct.pack(">HH", 6, 16) + bytes(16), True),  # ipv6hint
        (struct.pack(">HH", 6, 15) + bytes(15), False),
        (struct.pack(">HH", 5, 3) + b"ech", True),  # ech: anything
        (struct.pack(">HH", 7, 1) + b"x", True),  # unknown key: anything
        (struct.pack(">HH", 65535, 0), False),  # invalid key
        (struct.pack(">HH", 7, 2) + b"x", False),  # value past RDATA
        (struct.pack(">HH", 7, 0xFFFC), False),  # 4 + length wraps in libwdns; we fail
        (b"\x00\x01\x00", False),  # key/length header cut off
    ],
)
def test_svcparams(params: bytes, ok: bool) -> None:
    for rtype in (64, 65):
        assert parses(answer(rr(rtype, b"\x00\x01\x00" + params))) is ok
        # not checked outside class IN
        assert parses(answer(rr(rtype, b"\x00\x01\x00" + params, rclass=4)))


@pytest.mark.parametrize(
    ("bitmap", "ok"),
    [
        (b"\x00\x01\x40", True),
        (b"\x00\x20" + bytes(32), True),
        (b"\x00\x00", False),  # window length 0
        (b"\x00\x21" + bytes(33), False),  # window length 33
        (b"\x00\x02\x40", False),  # window past RDATA
        (b"\x00\x01\x40\x01", False),  # a lone trailing byte is left over
        (b"", True),
    ],
)
def test_type_bitmap(bitmap: bytes, ok: bool) -> None:
    assert parses(answer(rr(47, b"\xc0\x0c" + bitmap))) is ok  # NSEC
    assert parses(answer(rr(62, b"\x00\x00\x00\x01\x00\x00" + bitmap))) is ok  # CSYNC
    nsec3 = b"\x01\x00\x00\x0a\x02ab\x03xyz"
    assert parses(answer(rr(50, nsec3 + bitmap))) is ok


@pytest.mark.parametrize(
    ("rdata", "ok"),
    [
        (b"\x00" + bytes(16) + b"\x00", True),  # prefix 0: 16 address bytes, then the prefix name
        (b"\x40" + bytes(8) + b"\xc0\x0c", True),  # prefix 64: 8 bytes
        (b"\x41" + bytes(8), True),  # prefix 65: ceil(63/8) = 8 bytes, name missing
        (b"\x80", True),  # prefix 128: no address bytes
        (b"\x80\xc0\x0c", True),
        (b"\x81", False),  # prefix > 128
        (b"\x40" + bytes(7), False),  # address cut off
    ],
)
def test_a6_ipv6prefix(rdata: bytes, ok: bool) -> None:
    assert parses(answer(rr(38, rdata))) is ok


def test_opt_fields() -> None:
    wire = (
        header(1, 0, 0, 1)
        + Q_A
        + opt_rr(4096, ext_rcode=1, version=2, flags=0x8000, options=b"\x00\x0a\x00\x00")
    )
    assert scan_opt(wire) == Opt(4096, 1, 2, 0x8000, b"\x00\x0a\x00\x00")


def test_opt_in_answer_and_authority_sections_counts() -> None:
    opt = opt_rr(512)
    assert scan_opt(header(1, 1) + Q_A + opt) == Opt(512, 0, 0, 0, b"")
    assert scan_opt(header(1, 0, 1) + Q_A + opt) == Opt(512, 0, 0, 0, b"")


def test_second_opt_is_an_ordinary_record() -> None:
    wire = header(1, 0, 0, 2) + Q_A + opt_rr(1232, version=0) + opt_rr(4096, version=1)
    assert scan_opt(wire) == Opt(1232, 0, 0, 0, b"")


def test_opt_rdata_is_opaque_and_failure_after_opt_fails_the_message() -> None:
    assert scan_opt(header(1, 0, 0, 1) + Q_A + opt_rr(options=b"\xff")) == Opt(1232, 0, 0, 0, b"\xff")
    with pytest.raises(DnsWireError):
        scan_opt(header(1, 0, 0, 2) + Q_A + opt_rr() + rr(1, bytes(3)))


def test_qtype_41_question_counts_as_edns() -> None:
    wire = header(1) + QNAME + struct.pack(">HH", 41, 4096)
    assert scan_opt(wire) == Opt(4096, 0, 0, 0, b"")
    # ... and is the first OPT: a later OPT record does not replace it
    assert scan_opt(
        header(1, 0, 0, 1)[:5]
        + b"\x01"
        + header(1, 0, 0, 1)[6:]
        + QNAME
        + struct.pack(">HH", 41, 4096)
        + opt_rr(1232, version=1)
    ) == Opt(4096, 0, 0, 0, b"")


def test_dnspython_messages() -> None:
    query = dns.message.make_query("www.example.com.", "A", use_edns=0, payload=1232, want_dnssec=True)
    query.use_edns(0, dns.flags.DO, 1232, options=[dns.edns.GenericOption(65001, b"abc")])
    assert scan_opt(query.to_wire()) == Opt(1232, 0, 0, 0x8000, b"\xfd\xe9\x00\x03abc")
    plain = dns.message.make_query("www.example.com.", "MX")
    assert scan_opt(plain.to_wire()) is None

    response = dns.message.make_response(query)
    records = [
        ("A", "192.0.2.1"),
        ("AAAA", "2001:db8::1"),
        ("NS", "ns1.example.com."),
        ("CNAME", "x.example.net."),
        ("SOA", "ns1 hostmaster 1 2 3 4 5"),
        ("MX", "10 mail"),
        ("TXT", '"a" "b c"'),
        ("SRV", "1 2 53 ns1"),
        ("NAPTR", '100 10 "S" "SIP+D2U" "" _sip._udp'),
        ("DS", "12345 8 2 " + "ab" * 32),
        ("DNSKEY", "257 3 8 AwEAAQ=="),
        ("RRSIG", "A 8 3 300 20300101000000 20200101000000 12345 example.com. AAAA"),
        ("NSEC", "z.example.com. A NS SOA RRSIG NSEC"),
        ("NSEC3", "1 0 10 abcd 0p9mhaveqvm6t7vbl5lop2u3t2rp3tom A RRSIG"),
        ("NSEC3PARAM", "1 0 10 abcd"),
        ("TLSA", "3 1 1 " + "cd" * 32),
        ("CAA", '0 issue "ca.example"'),
        ("HTTPS", '1 . alpn="h2,h3" port=443 ipv4hint=192.0.2.1 ipv6hint=2001:db8::1'),
        ("SVCB", "0 svc.example.com."),
        ("URI", '10 1 "https://example.com/"'),
        ("EUI48", "00-00-5e-00-53-2a"),
        ("EUI64", "00-00-5e-ef-10-00-00-2a"),
        ("HINFO", '"cpu" "os"'),
        ("RP", "mbox txt"),
        ("AFSDB", "1 afs"),
        ("KX", "10 kx"),
        ("CDS", "0 0 0 00"),
        ("OPENPGPKEY", "AAAA"),
        ("CSYNC", "66 3 A NS AAAA"),
        ("DNAME", "example.net."),
        ("PTR", "ptr.example."),
        ("SPF", '"v=spf1 -all"'),
    ]
    origin = dns.name.from_text("example.com.")
    for rtype, text in records:
        rd = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text, origin=origin, relativize=False
        )
        response.answer.append(dns.rrset.from_rdata("example.com.", 300, rd))
    response.use_edns(0, 0, 4096)
    wire = response.to_wire()
    assert scan_opt(wire) == Opt(4096, 0, 0, 0, b"")
    # the same records, compressed differently, without EDNS
    response.use_edns(None)
    assert scan_opt(response.to_wire()) is None


# ---------------------------------------------------------------- speed (reported, loosely asserted)


def referral() -> bytes:
    """A root-style referral: 13 NS, 13 A and 4 AAAA glue records and an OPT (31 records)."""
    query = dns.message.make_query("www.example.com.", "A", use_edns=0)
    msg = dns.message.make_response(query)
    msg.flags &= ~dns.flags.AA
    servers = [f"{c}.gtld-servers.net." for c in "abcdefghijklm"]
    msg.authority.append(dns.rrset.from_text_list("com.", 172800, "IN", "NS", servers))
    for i, server in enumerate(servers):
        msg.additional.append(dns.rrset.from_text(server, 172800, "IN", "A", f"192.0.2.{i + 1}"))
        if i < 4:
            msg.additional.append(dns.rrset.from_text(server, 172800, "IN", "AAAA", f"2001:db8::{i + 1}"))
    msg.use_edns(0, 0, 1232)
    wire = msg.to_wire()
    assert sum(struct.unpack_from(">3H", wire, 6)) == 31
    return wire


@pytest.mark.slow
def test_scan_rate_on_live_resolver_responses() -> None:
    """Scans per second over the corpus responses; prints the figures the issue notes quote."""
    responses = []
    for payload in read_payloads(corpus.path("live_resolver.nmsg")):
        wire = derive_response(decode_dnsqr(payload.payload))
        if wire is not None and parses(wire):
            responses.append(wire)
    responses.sort(key=len)
    median = responses[len(responses) // 2]
    answers_a = [w for w in responses if w[3] & 0x0F == 0 and struct.unpack_from(">H", w, 6)[0] == 1]

    def rate(batch: list[bytes], rounds: int) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for w in batch:
                scan_opt(w)
            best = min(best, time.process_time() - start)
        return len(batch) / best

    figures = {
        "all responses": rate(responses, 15),
        "one-answer NOERROR responses": rate(answers_a, 15),
        f"median response ({len(median)} B)": rate([median] * 2000, 15),
        "31-record referral": rate([referral()] * 500, 15),
    }
    for what, value in figures.items():
        print(f"scan_opt {what}: {value:,.0f}/s")
    assert figures["all responses"] > 50_000  # a tripwire for gross regressions, not the target
