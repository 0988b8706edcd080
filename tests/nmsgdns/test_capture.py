"""The pcap -> base:dnsqr capture path against nmsgtool's own output, plus hand-built packets.

The corpus comparison is the point: every record nmsgtool wrote for NAME.pcap must come out of
``iter_pcap_payloads`` with identical DnsQR fields and identical NmsgPayload time. The hand-built packets
pin down the individual rules (pairing, expiry, filters, fragments, options) that the corpus exercises
only in passing, and that garbage never raises.
"""

from __future__ import annotations

import io
import ipaddress
import random
import struct
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from nmsgdns.capture import CaptureOptions, DnsqrCapture, iter_pcap_payloads
from nmsgdns.capture_options import QnameFilter, c_strtol, name_to_wire
from nmsgdns.errors import PcapError
from nmsgdns.input import ContainerStreamReader
from nmsgdns.proto import dnsqr_pb2, nmsg_pb2
from tests import corpus

T = dnsqr_pb2.DnsQRType
ETH = 1

#: The environment each corpus capture was converted with (see the corpus README).
CORPUS_ENV = {
    "live_resolver": {"DNSQR_RES_ADDRS": "127.0.0.2,127.0.0.3,fd00::2"},
    "edge_cases": {},
    "incompressible": {},
}


# -- corpus ------------------------------------------------------------------------------------------


def _reference(case: str) -> list[bytes]:
    with corpus.path(f"{case}.nmsg").open("rb") as fh:
        return list(ContainerStreamReader(fh, name=f"{case}.nmsg"))


def _ours(case: str) -> list[bytes]:
    options = CaptureOptions.from_env(CORPUS_ENV[case])
    return list(iter_pcap_payloads(corpus.path(f"{case}.pcap"), options))


def _fields(payload: bytes) -> tuple:
    """Envelope fields plus every DnsQR field (decoded, presence-aware) of one payload."""
    env = nmsg_pb2.NmsgPayload.FromString(payload)
    rec = dnsqr_pb2.DnsQR.FromString(env.payload)
    return (
        env.vid,
        env.msgtype,
        env.time_sec,
        env.time_nsec,
        tuple((f.name, v if isinstance(v, (bytes, int, float)) else tuple(v)) for f, v in rec.ListFields()),
    )


@pytest.mark.parametrize("case", corpus.PCAP_CASES)
def test_corpus_records_equal_nmsgtool(case: str) -> None:
    expected = [_fields(p) for p in _reference(case)]
    got = [_fields(p) for p in _ours(case)]
    assert len(got) == len(expected)
    missing = Counter(expected) - Counter(got)
    extra = Counter(got) - Counter(expected)
    assert not missing and not extra, (list(missing)[:2], list(extra)[:2])


@pytest.mark.parametrize("case", corpus.PCAP_CASES)
def test_corpus_output_is_byte_identical_in_order(case: str) -> None:
    # Stronger than the field comparison: same serialization and the same output order as nmsgtool.
    assert _ours(case) == _reference(case)


def test_corpus_counts_by_type() -> None:
    kinds = Counter(
        T.Name(dnsqr_pb2.DnsQR.FromString(nmsg_pb2.NmsgPayload.FromString(p).payload).type)
        for p in _ours("live_resolver")
    )
    assert kinds == {
        "UDP_QUERY_RESPONSE": 2527,
        "UDP_UNANSWERED_QUERY": 51,
        "UDP_UNSOLICITED_RESPONSE": 2,
        "TCP": 16,
    }


# -- options -----------------------------------------------------------------------------------------


def test_options_defaults() -> None:
    opts = CaptureOptions.from_env({})
    assert opts == CaptureOptions()
    assert opts.query_timeout == 60 and opts.state_table_max == 131072
    assert opts.capture_qr is None and opts.capture_rd is None and not opts.zero_resolver_address


def test_options_from_env() -> None:
    opts = CaptureOptions.from_env(
        {
            "DNSQR_RES_ADDRS": " 10.0.0.1 , fd00::/64,,",
            "DNSQR_AUTH_ADDRS": "192.0.2.0/24",
            "DNSQR_CAPTURE_QR": "1",
            "DNSQR_CAPTURE_RD": "0x0",
            "DNSQR_ZERO_RESOLVER_ADDRESS": "7",
            "DNSQR_FILTER_QNAMES_INCLUDE": "example.com::test.",
            "DNSQR_FILTER_QNAMES_EXCLUDE": "bad.example",
            "DNSQR_QUERY_TIMEOUT": "010",
            "DNSQR_STATE_TABLE_MAX": "5",
        }
    )
    assert opts.res_addrs == ("10.0.0.1", "fd00::/64")
    assert opts.auth_addrs == ("192.0.2.0/24",)
    assert (opts.capture_qr, opts.capture_rd, opts.zero_resolver_address) == (1, 0, True)
    assert opts.filter_qnames_include == ("example.com", "test.")
    assert opts.filter_qnames_exclude == ("bad.example",)
    assert (opts.query_timeout, opts.state_table_max) == (8, 5)  # "010" is octal, as strtol(…, 0)


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"DNSQR_CAPTURE_QR": "2"}, "capture_qr", None),  # out of range: unset
        ({"DNSQR_CAPTURE_QR": "1x"}, "capture_qr", None),  # trailing junk: unset
        ({"DNSQR_CAPTURE_QR": ""}, "capture_qr", 0),  # C strtol("") is 0 with the whole string consumed
        ({"DNSQR_QUERY_TIMEOUT": "0"}, "query_timeout", 60),
        ({"DNSQR_QUERY_TIMEOUT": "-5"}, "query_timeout", 60),
        ({"DNSQR_STATE_TABLE_MAX": "abc"}, "state_table_max", 131072),
        ({"DNSQR_ZERO_RESOLVER_ADDRESS": "0"}, "zero_resolver_address", False),
    ],
)
def test_options_env_edge_values(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(CaptureOptions.from_env(env), field) == value


def test_c_strtol() -> None:
    assert [c_strtol(s) for s in ("0", "12", "0x1F", " +3", "-0", "08", "0x", "1 ")] == [
        0,
        12,
        31,
        3,
        0,
        None,
        None,
        None,
    ]


def test_explicit_options_are_validated() -> None:
    with pytest.raises(ValueError):
        CaptureOptions(capture_qr=2)
    with pytest.raises(ValueError):
        CaptureOptions(query_timeout=0)
    with pytest.raises(ValueError):
        DnsqrCapture(CaptureOptions(res_addrs=("10.0.0.1/8",)))  # host bits set: libpcap refuses it


def test_name_to_wire_and_qname_filter() -> None:
    assert name_to_wire("Example.COM") == b"\x07example\x03com\x00"
    assert name_to_wire("a\\.b.") == b"\x03a.b\x00"
    assert name_to_wire("\\065x") == b"\x02ax\x00"
    assert name_to_wire(".") == b"\x00"
    assert name_to_wire("a..b") is None
    exclude = QnameFilter((), ("example.com",))
    assert exclude.drops(b"\x03WWW\x07example\x03com\x00")
    assert not exclude.drops(b"\x07example\x03net\x00")
    assert not exclude.drops(None)
    include = QnameFilter(("example.com",), ())
    assert not include.drops(b"\x03www\x07example\x03com\x00")
    assert include.drops(b"\x07example\x03net\x00")


# -- hand-built packets ------------------------------------------------------------------------------

CLIENT = "10.0.0.1"
SERVER = "192.0.2.53"
CLIENT6 = "2001:db8::1"
SERVER6 = "2001:db8::53"


def _dns(ident: int, *, response: bool = False, qname: bytes | None = b"\x07example\x03com\x00",
         rcode: int = 0, rd: bool = True) -> bytes:  # fmt: skip
    flags = (0x8000 if response else 0) | (0x0100 if rd else 0) | rcode
    question = b"" if qname is None else qname + b"\x00\x01\x00\x01"
    return struct.pack(">HHHHHH", ident, flags, 0 if qname is None else 1, 0, 0, 0) + question


def _ip(src: str, dst: str, transport: dpkt.Packet, proto: int, **kw: int) -> dpkt.Packet:
    if ":" in src:
        ip6 = dpkt.ip6.IP6(src=_aton(src), dst=_aton(dst), nxt=proto, hlim=64, data=transport)
        ip6.plen = len(bytes(transport))
        return ip6
    return dpkt.ip.IP(src=_aton(src), dst=_aton(dst), p=proto, data=transport, **kw)


def _aton(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def _eth(ip: dpkt.Packet | bytes, v6: bool = False) -> bytes:
    etype = dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


def _udp_frame(src: str, dst: str, sport: int, dport: int, body: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=body)
    udp.ulen = 8 + len(body)
    return _eth(_ip(src, dst, udp, dpkt.ip.IP_PROTO_UDP), v6=":" in src)


def _query(ident: int = 0x1234, sport: int = 40000, **kw: object) -> bytes:
    return _udp_frame(CLIENT, SERVER, sport, 53, _dns(ident, **kw))  # type: ignore[arg-type]


def _response(ident: int = 0x1234, dport: int = 40000, **kw: object) -> bytes:
    return _udp_frame(SERVER, CLIENT, 53, dport, _dns(ident, response=True, **kw))  # type: ignore[arg-type]


def _decode(payloads: list[bytes]) -> list[tuple[nmsg_pb2.NmsgPayload, dnsqr_pb2.DnsQR]]:
    out = []
    for p in payloads:
        env = nmsg_pb2.NmsgPayload.FromString(p)
        out.append((env, dnsqr_pb2.DnsQR.FromString(env.payload)))
    return out


def _run(frames: list[tuple[float, bytes]], options: CaptureOptions | None = None) -> list:
    cap = DnsqrCapture(options)
    out: list[bytes] = []
    for ts, frame in frames:
        sec = int(ts)
        out += cap.add_packet(sec, round((ts - sec) * 1e6) * 1000, frame, ETH)
    out += cap.flush()
    return _decode(out)


def test_query_response_pair() -> None:
    [(env, rec)] = _run([(100.25, _query()), (100.5, _response(rcode=3))])
    assert rec.type == T.UDP_QUERY_RESPONSE
    assert (env.vid, env.msgtype, env.time_sec, env.time_nsec) == (1, 9, 100, 250_000_000)
    assert rec.query_ip == _aton(CLIENT) and rec.response_ip == _aton(SERVER)
    assert (rec.proto, rec.query_port, rec.response_port, rec.id, rec.rcode) == (17, 40000, 53, 0x1234, 3)
    assert (rec.qname, rec.qtype, rec.qclass) == (b"\x07example\x03com\x00", 1, 1)
    assert len(rec.query_packet) == len(rec.response_packet) == 1
    assert list(rec.response_time_nsec) == [500_000_000]
    assert rec.udp_checksum == dnsqr_pb2.CORRECT  # dpkt computes real checksums
    assert not rec.HasField("timeout")


def test_case_change_does_not_match() -> None:
    frames = [(1.0, _query()), (1.1, _response(qname=b"\x07EXAMPLE\x03com\x00"))]
    recs = _run(frames)
    assert [r.type for _, r in recs] == [T.UDP_UNSOLICITED_RESPONSE, T.UDP_UNANSWERED_QUERY]
    assert recs[0][0].time_sec == 1 and recs[0][0].time_nsec == 100_000_000  # response time
    assert recs[1][1].timeout == pytest.approx(0.1)  # flushed relative to the last packet


@pytest.mark.parametrize(
    ("rcode", "paired"), [(1, True), (2, True), (4, True), (5, True), (0, False), (3, False)]
)
def test_six_tuple_match_only_for_error_rcodes(rcode: int, paired: bool) -> None:
    recs = _run([(1.0, _query()), (1.1, _response(qname=None, rcode=rcode))])
    if paired:
        [(_, rec)] = recs
        assert rec.type == T.UDP_QUERY_RESPONSE
        assert rec.qname == b"\x07example\x03com\x00"  # taken from the query
    else:
        assert [r.type for _, r in recs] == [T.UDP_UNSOLICITED_RESPONSE, T.UDP_UNANSWERED_QUERY]


def test_first_waiting_query_wins_and_duplicates_are_unsolicited() -> None:
    frames = [(1.0, _query()), (1.2, _query()), (1.3, _response()), (1.4, _response()), (1.5, _response())]
    recs = _run(frames)
    assert [r.type for _, r in recs] == [
        T.UDP_QUERY_RESPONSE,
        T.UDP_QUERY_RESPONSE,
        T.UDP_UNSOLICITED_RESPONSE,
    ]
    assert [list(r.query_time_nsec) for _, r in recs[:2]] == [[0], [200_000_000]]


def test_query_timeout_expires_after_the_packet_that_passes_it() -> None:
    frames = [(10.9, _query(1)), (70.0, _query(2)), (71.0, _query(3, sport=1))]
    recs = _run(frames)
    # 70 - 10 is not > 60 (whole seconds), 71 - 10 is: the first query expires after the third packet
    assert [(r.type, r.id) for _, r in recs] == [
        (T.UDP_UNANSWERED_QUERY, 1),
        (T.UDP_UNANSWERED_QUERY, 2),
        (T.UDP_UNANSWERED_QUERY, 3),
    ]
    assert recs[0][1].timeout == pytest.approx(60.1)
    assert recs[0][0].time_sec == 10


def test_state_table_max_and_query_timeout_options() -> None:
    frames = [(1.0, _query(i, sport=1000 + i)) for i in range(4)]
    cap = DnsqrCapture(CaptureOptions(state_table_max=2))
    emitted = [cap.add_packet(1, 0, f, ETH) for _, f in frames]
    assert [len(e) for e in emitted] == [0, 0, 1, 1]
    cap = DnsqrCapture(CaptureOptions(query_timeout=1))
    assert cap.add_packet(1, 0, _query(1), ETH) == []
    assert cap.add_packet(2, 0, _query(2, sport=2), ETH) == []
    assert len(cap.add_packet(3, 0, _query(3, sport=3), ETH)) == 1


def test_port_rules_and_skips_are_counted() -> None:
    cap = DnsqrCapture()
    assert cap.add_packet(1, 0, _udp_frame(CLIENT, SERVER, 1000, 5353, _dns(7)), ETH) == []  # waits
    assert cap.add_packet(1, 0, _udp_frame(CLIENT, SERVER, 1000, 54, _dns(7)), ETH) == []
    assert cap.add_packet(1, 0, _udp_frame(CLIENT, SERVER, 1000, 53, b"short"), ETH) == []
    assert cap.add_packet(1, 0, b"\x00" * 10, ETH) == []
    assert cap.add_packet(1, 0, _query(), ETH, wire_len=2000) == []
    assert cap.add_packet(1, 0, _query(), 9999) == []
    assert cap.stats["skip.not_dns_port"] == 1
    assert cap.stats["skip.dns_too_short"] == 1
    assert cap.stats["skip.truncated_capture"] == 1
    assert cap.stats["skip.link_layer"] == 2
    [(_, rec)] = _decode(cap.flush())
    assert rec.response_port == 5353


def test_tcp_segment_record() -> None:
    tcp = dpkt.tcp.TCP(sport=53, dport=40000, flags=dpkt.tcp.TH_ACK, data=b"\x00\x0cabcdefghijkl")
    ip = _ip(SERVER, CLIENT, tcp, dpkt.ip.IP_PROTO_TCP)
    [(env, rec)] = _run([(5.5, _eth(ip))])
    assert rec.type == T.TCP and rec.proto == 6 and rec.tcp == bytes(ip)
    assert rec.HasField("query_ip") and rec.query_ip == b"" and rec.id == 0  # required fields, empty
    assert (env.time_sec, env.time_nsec) == (5, 500_000_000)


def test_ipv6_pair() -> None:
    q = _udp_frame(CLIENT6, SERVER6, 4444, 53, _dns(9))
    r = _udp_frame(SERVER6, CLIENT6, 53, 4444, _dns(9, response=True))
    [(_, rec)] = _run([(1.0, q), (1.1, r)])
    assert rec.type == T.UDP_QUERY_RESPONSE and rec.query_ip == _aton(CLIENT6)


def _fragments(frame_ip: dpkt.ip.IP, size: int) -> list[bytes]:
    """Split an IPv4 packet's payload into fragments of ``size`` bytes (a multiple of 8)."""
    payload = bytes(frame_ip)[frame_ip.hl * 4 :]  # serialized within the IP packet: real UDP checksum
    frags = []
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        more = off + size < len(payload)
        ip = dpkt.ip.IP(src=frame_ip.src, dst=frame_ip.dst, p=frame_ip.p, id=77, data=chunk)
        ip.mf = int(more)
        ip.offset = off // 8
        frags.append(_eth(ip))
    return frags


def test_ipv4_fragmented_response_is_reassembled() -> None:
    body = _dns(0x1234, response=True) + b"\xaa" * 900
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=body)
    udp.ulen = 8 + len(body)
    whole = _ip(SERVER, CLIENT, udp, dpkt.ip.IP_PROTO_UDP)
    frags = _fragments(whole, 400)
    frames = [(1.0, _query())] + [(1.1 + i / 100, f) for i, f in enumerate(reversed(frags))]
    [(_, rec)] = _run(frames)
    assert rec.type == T.UDP_QUERY_RESPONSE
    assert len(rec.response_packet) == 3
    assert [len(p) for p in rec.response_packet] == [420, 420, 20 + len(bytes(udp)) - 800]  # offset order
    assert rec.udp_checksum == dnsqr_pb2.CORRECT


def test_fragments_spanning_a_second_are_lost() -> None:
    body = _dns(0x1234, response=True) + b"\xaa" * 900
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=body)
    udp.ulen = 8 + len(body)
    frags = _fragments(_ip(SERVER, CLIENT, udp, dpkt.ip.IP_PROTO_UDP), 400)
    frames = [(1.0, _query()), (1.9, frags[0]), (2.0, frags[1]), (2.1, frags[2])]
    recs = _run(frames)
    assert [r.type for _, r in recs] == [T.UDP_UNANSWERED_QUERY]  # libnmsg's reassembly timeout is 0


def test_capture_qr_modes() -> None:
    frames = [(1.0, _query()), (1.1, _response())]
    assert [r.type for _, r in _run(frames, CaptureOptions(capture_qr=0))] == [T.UDP_QUERY_ONLY]
    [(_, rec)] = _run(frames, CaptureOptions(capture_qr=1))
    assert rec.type == T.UDP_RESPONSE_ONLY and rec.rcode == 0 and not rec.query_packet


def test_capture_rd_filters_on_the_query_flag() -> None:
    frames = [(1.0, _query(rd=False)), (1.1, _response(rd=True))]
    assert _run(frames, CaptureOptions(capture_rd=1)) == []
    assert len(_run(frames, CaptureOptions(capture_rd=0))) == 1


def test_zero_resolver_address() -> None:
    [(_, rec)] = _run([(1.0, _query()), (1.1, _response())], CaptureOptions(zero_resolver_address=True))
    assert rec.resolver_address_zeroed and rec.query_ip == b"\x00" * 4
    assert rec.query_packet[0][12:16] == b"\x00" * 4 and rec.response_packet[0][16:20] == b"\x00" * 4
    assert rec.udp_checksum == dnsqr_pb2.CORRECT  # verified before zeroing


def test_resolver_address_filter() -> None:
    other_q = _udp_frame("10.9.9.9", SERVER, 5, 53, _dns(1))
    frames = [(1.0, _query()), (1.1, other_q), (1.2, _response())]
    recs = _run(frames, CaptureOptions(res_addrs=(CLIENT,)))
    assert [r.type for _, r in recs] == [T.UDP_QUERY_RESPONSE]
    tcp = _eth(_ip(SERVER, CLIENT, dpkt.tcp.TCP(sport=53, dport=1), dpkt.ip.IP_PROTO_TCP))
    assert _run([(1.0, tcp)], CaptureOptions(res_addrs=(CLIENT,))) == []  # IPv4 TCP never passes
    assert len(_run([(1.0, tcp)])) == 1


def test_qname_exclude_filter() -> None:
    frames = [(1.0, _query()), (1.1, _response())]
    assert _run(frames, CaptureOptions(filter_qnames_exclude=("com",))) == []
    assert len(_run(frames, CaptureOptions(filter_qnames_exclude=("org",)))) == 1


def test_garbage_never_raises() -> None:
    rng = random.Random(5)
    cap = DnsqrCapture()
    base = _query()
    for i in range(3000):
        if i % 2:
            frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        else:  # mutate a valid frame past the Ethernet header so the IP/UDP/DNS walk sees garbage
            frame = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                frame[rng.randrange(14, len(frame))] = rng.getrandbits(8)
            frame = bytes(frame[: rng.randrange(14, len(frame) + 1)])
        cap.add_packet(i, 0, frame, rng.choice((ETH, 101, 113)))
    cap.flush()
    assert sum(cap.stats.values()) > 0


# -- files -------------------------------------------------------------------------------------------


def _write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=ETH)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)


def test_pcap_and_pcapng_files(tmp_path: Path) -> None:
    frames = [(1000.25, _query()), (1000.5, _response())]
    _write_pcap(tmp_path / "a.pcap", frames)
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf, linktype=ETH)
    for ts, frame in frames:
        writer.writepkt(frame, ts=ts)
    (tmp_path / "a.pcapng").write_bytes(buf.getvalue())
    classic = list(iter_pcap_payloads(tmp_path / "a.pcap"))
    assert len(classic) == 1
    assert list(iter_pcap_payloads(tmp_path / "a.pcapng")) == classic


def test_bad_files_raise_pcap_error_naming_the_file(tmp_path: Path) -> None:
    _write_pcap(tmp_path / "t.pcap", [(1.0, _query()), (2.0, _query(2))])
    data = (tmp_path / "t.pcap").read_bytes()
    (tmp_path / "t.pcap").write_bytes(data[:-5])
    (tmp_path / "junk.pcap").write_bytes(b"this is not a capture file at all")
    (tmp_path / "empty.pcap").write_bytes(b"")
    for name in ("t.pcap", "junk.pcap", "empty.pcap", "missing.pcap"):
        with pytest.raises(PcapError, match=name):
            list(iter_pcap_payloads(tmp_path / name))
