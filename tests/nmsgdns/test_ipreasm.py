"""nmsgdns.ipreasm: the one IP fragment parser (libnmsg's ``reasm_parse_packet``) that the dnsqr response
getter and the pcap capture share, its field widths, and the edge where the two used to differ."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from nmsgdns.capture import DnsqrCapture
from nmsgdns.capture_reasm import Reassembler
from nmsgdns.ippacket import reassemble
from nmsgdns.ipreasm import IPSZ_MAX, IpFragments, parse_ip_fragment

LINKTYPE_RAW = 101


def ip4(body: bytes, flags_off: int, *, ident: int = 7, proto: int = 17, ihl: int = 5) -> bytes:
    total = ihl * 4 + len(body)
    src, dst = bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2))
    hdr = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags_off, 64, proto, 0, src, dst)
    return hdr + bytes(ihl * 4 - 20) + body


def ip6(body: bytes, offlg: int, *, ident: int = 77, plen: int | None = None) -> bytes:
    """An IPv6 packet whose fragment header says ``offlg`` (offset and M flag) and ``ident``."""
    payload = struct.pack(">BBHI", 17, 0, offlg, ident) + body
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    size = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, size, 44, 64, src, dst) + payload


def test_ipv4_fields_at_their_widths() -> None:
    # DF (0x4000) is no fragment bit; MF (0x2000) is not part of the 13-bit offset, counted in 8 bytes
    frag = parse_ip_fragment(ip4(b"x" * 8, 0x4000 | 0x2000 | 0x1FFF, ident=0xFFFF, proto=17))
    assert frag is not None
    assert (frag.offset, frag.length, frag.data_offset, frag.last, frag.family) == (
        0x1FFF * 8,
        8,
        20,
        False,
        4,
    )
    assert frag.key == (4, bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2)), 0xFFFF, 17)  # id: 16 bits
    assert parse_ip_fragment(ip4(b"x" * 8, 0x4000)) is None  # DF alone: a whole packet


def test_ipv6_fields_at_their_widths() -> None:
    # offset: the high 13 bits (times 8, so the mask is 0xFFF8); bits 1-2 reserved; bit 0 is M
    frag = parse_ip_fragment(ip6(b"y" * 8, 0xFFF8 | 0x6 | 1, ident=0xFFFFFFFF))
    assert frag is not None
    assert (frag.offset, frag.length, frag.data_offset, frag.last, frag.family) == (0xFFF8, 8, 48, False, 6)
    assert frag.key == (6, bytes(15) + b"\x01", bytes(15) + b"\x02", 0xFFFFFFFF)  # id: 32 bits
    assert (frag.last_nxt, frag.ip6f_nxt) == (6, 17)


@pytest.mark.parametrize(("plen", "fragment"), [(65495, True), (65496, False), (65535, False)])
def test_ipv6_length_is_libnmsgs_uint16(plen: int, fragment: bool) -> None:
    """40 + payload length wraps past 65535 in libnmsg, below the 40-byte header: no fragment then. The
    dnsqr response getter masked it; the capture did not, and took such a packet for a fragment."""
    packet = ip6(bytes(plen - 8), 0 | 1, plen=plen)
    assert len(packet) == 40 + plen
    frag = parse_ip_fragment(packet)
    assert (frag is not None) == fragment
    if frag is not None:
        assert frag.length == plen - 8 and len(frag.data) == 40 + plen
    reassembler = Reassembler(Counter())
    assert reassembler.next(packet, 1, 0) == (fragment, None)  # held when it is a fragment
    assert reassemble([packet]) is None  # more fragments follow, or none at all


def test_the_largest_ipv6_fragment_is_rebuilt_only_within_libnmsgs_buffer() -> None:
    datagram = bytes(range(256)) * 256  # 65536 bytes: with the 40-byte header, past IPSZ_MAX
    first = ip6(datagram[:65480], 0 | 1)
    last = ip6(datagram[65480:], 65480)
    assert reassemble([first, last]) is None
    fits = datagram[: IPSZ_MAX - 40]
    result = reassemble([ip6(fits[:65480], 0 | 1), ip6(fits[65480:], 65480)])
    assert result is not None and result[0][40:] == fits and result[1]


def test_one_parser_for_both_users() -> None:
    """The capture and the response getter read the same fragments the same way, and rebuild the same
    packet (the capture's keyed by identification, the getter's not)."""
    datagram = bytes(range(200))
    packets = [ip4(datagram[:96], 0x2000, ident=9), ip4(datagram[96:], 96 // 8, ident=9)]
    reassembler = Reassembler(Counter())
    assert reassembler.next(packets[1], 1, 0) == (True, None)
    is_fragment, fset = reassembler.next(packets[0], 1, 5)
    assert is_fragment and fset is not None
    assert [(f.offset, f.ts_nsec) for f in fset.frags] == [(0, 5), (96, 0)]
    assert reassemble(packets) == (fset.assemble(), False)


def test_an_empty_final_fragment_alone_completes_nothing_to_rebuild() -> None:
    """An IPv6 atomic fragment (offset 0, M clear) without payload: libnmsg counts its one hole filled
    and would rebuild from no fragment (a NULL dereference). The capture raised IndexError on it; now it
    is counted as an unusable fragment."""
    packet = ip6(b"", 0)
    fragments = IpFragments()
    assert fragments.add(parse_ip_fragment(packet))  # type: ignore[arg-type]
    assert fragments.holes == 0 and fragments.assemble() is None
    capture = DnsqrCapture()
    assert capture.add_packet(1, 0, packet, LINKTYPE_RAW) == []
    assert capture.stats["skip.fragment_unusable"] == 1
    assert reassemble([packet]) is None
