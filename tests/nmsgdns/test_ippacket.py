"""nmsgdns.ippacket: libnmsg's IP/UDP walk and fragment reassembly, quirks included."""

from __future__ import annotations

import struct

import pytest

from nmsgdns.errors import PayloadError
from nmsgdns.ippacket import ip_to_text, reassemble, udp_payload

DNS = bytes(range(40))


def udp(payload: bytes, ulen: int | None = None) -> bytes:
    return struct.pack(">4H", 53, 5353, 8 + len(payload) if ulen is None else ulen, 0) + payload


def ip4(body: bytes, *, proto: int = 17, flags_off: int = 0, options: bytes = b"", ident: int = 7) -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(body)
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags_off, 64, proto, 0, bytes(4), bytes(4)
    )
    return hdr + options + body


def ip6(nxt: int, body: bytes, plen: int | None = None) -> bytes:
    return (
        struct.pack(
            ">IHBB16s16s", 0x60000000, len(body) if plen is None else plen, nxt, 64, bytes(16), bytes(16)
        )
        + body
    )


def ext(nxt: int, length_octet: int, size: int) -> bytes:
    """An IPv6 extension header of ``size`` bytes whose length octet says ``length_octet``."""
    return bytes([nxt, length_octet]) + bytes(size - 2)


def test_ipv4_udp_payload() -> None:
    assert udp_payload(ip4(udp(DNS)), False) == DNS


def test_ipv4_header_length_from_ihl() -> None:
    assert udp_payload(ip4(udp(DNS), options=b"\x01\x01\x01\x00"), False) == DNS


def test_ipv4_version_nibble_is_not_checked() -> None:
    packet = bytearray(ip4(udp(DNS)))
    packet[0] = 0x65  # "version 6", IHL 5: the address length chose IPv4, so it is read as IPv4
    assert udp_payload(bytes(packet), False) == DNS


def test_udp_length_clamped_to_capture() -> None:
    assert udp_payload(ip4(udp(DNS, ulen=8 + 100)), False) == DNS
    assert udp_payload(ip4(udp(DNS, ulen=8 + 10)), False) == DNS[:10]  # trailing bytes dropped
    assert udp_payload(ip4(udp(DNS, ulen=8)), False) == b""


def test_udp_length_below_8_is_taken_as_is() -> None:
    # libnmsg subtracts the header length only when udp_len >= 8
    assert udp_payload(ip4(udp(DNS, ulen=5)), False) == DNS[:5]


@pytest.mark.parametrize("flags_off", [0x2000, 0x0001, 0x2010])
def test_single_ipv4_fragment_yields_nothing(flags_off: int) -> None:
    assert udp_payload(ip4(udp(DNS), flags_off=flags_off), False) is None


def test_dont_fragment_bit_is_fine() -> None:
    assert udp_payload(ip4(udp(DNS), flags_off=0x4000), False) == DNS


def test_ipv4_non_udp_and_short_packets() -> None:
    assert udp_payload(ip4(udp(DNS), proto=6), False) is None
    assert udp_payload(ip4(udp(DNS))[:19], False) is None
    assert udp_payload(ip4(b"\x00" * 7), False) is None  # UDP header cut off
    packet = bytearray(ip4(udp(b"")))
    packet[0] = 0x4F  # IHL 15: 60 bytes, more than the packet
    assert udp_payload(bytes(packet), False) is None


def test_ipv6_udp_payload() -> None:
    assert udp_payload(ip6(17, udp(DNS)), True) == DNS


def test_ipv6_checks() -> None:
    assert udp_payload(ip6(17, udp(DNS))[:39], True) is None
    bad_version = bytearray(ip6(17, udp(DNS)))
    bad_version[0] = 0x40
    assert udp_payload(bytes(bad_version), True) is None
    assert udp_payload(ip6(17, udp(DNS), plen=0), True) is None
    assert udp_payload(ip6(17, udp(DNS), plen=len(udp(DNS)) + 1), True) is None  # payload length > capture
    assert udp_payload(ip6(6, udp(DNS)), True) is None
    # the payload length does not bound the UDP payload: only the capture does
    assert udp_payload(ip6(17, udp(DNS), plen=20), True) == DNS


@pytest.mark.parametrize("nxt", [0, 43, 60, 51, 50])
def test_ipv6_extension_header_of_8_bytes_is_skipped(nxt: int) -> None:
    assert udp_payload(ip6(nxt, ext(17, 0, 8) + udp(DNS)), True) == DNS


def test_ipv6_extension_header_length_quirk() -> None:
    # libnmsg computes 8 * (ntohs(len_octet) + 1) in 16 bits: octet 1 means 2056 bytes, not 16 ...
    assert udp_payload(ip6(0, ext(17, 1, 16) + udp(DNS)), True) is None
    # ... and octet 32 wraps around to 8 bytes.
    assert udp_payload(ip6(0, ext(17, 32, 8) + udp(DNS)), True) == DNS


def test_ipv6_chained_extension_headers() -> None:
    assert udp_payload(ip6(0, ext(60, 0, 8) + ext(17, 0, 8) + udp(DNS)), True) == DNS


def test_single_ipv6_fragment_yields_nothing() -> None:
    frag = struct.pack(">BBHI", 17, 0, 0, 99)  # offset 0, no more fragments: still a fragment header
    assert udp_payload(ip6(44, frag + udp(DNS)), True) is None


def test_ipv6_extension_header_past_the_packet() -> None:
    assert udp_payload(ip6(0, b"\x11"), True) is None


# ---------------------------------------------------------------- reassembly


def ip4_fragments(datagram: bytes, cut: int) -> list[bytes]:
    assert cut % 8 == 0
    return [
        ip4(datagram[:cut], flags_off=0x2000, ident=42),
        ip4(datagram[cut:], flags_off=cut // 8, ident=42),
    ]


def ip6_fragments(datagram: bytes, cut: int, prefix: bytes = b"", prefix_nxt: int = 44) -> list[bytes]:
    first = struct.pack(">BBHI", 17, 0, 0 | 1, 77)
    second = struct.pack(">BBHI", 17, 0, cut, 77)
    return [
        ip6(prefix_nxt, prefix + first + datagram[:cut]),
        ip6(prefix_nxt, prefix + second + datagram[cut:]),
    ]


def test_ipv4_reassembly_in_any_order() -> None:
    datagram = udp(DNS * 5)
    frags = ip4_fragments(datagram, 104)
    for order in (frags, frags[::-1]):
        result = reassemble(order)
        assert result is not None
        packet, ipv6 = result
        assert not ipv6
        assert udp_payload(packet, False) == DNS * 5
        # header fixed up like libnmsg: total length, no fragment bits, valid checksum
        assert struct.unpack_from(">H", packet, 2)[0] == len(packet) == 20 + len(datagram)
        assert struct.unpack_from(">H", packet, 6)[0] == 0
        words = struct.unpack(">10H", packet[:20])
        s = sum(words)
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        assert s == 0xFFFF


def test_ipv6_reassembly() -> None:
    datagram = udp(DNS * 5)
    result = reassemble(ip6_fragments(datagram, 96))
    assert result is not None
    packet, ipv6 = result
    assert ipv6
    assert packet[6] == 17  # the fragment header's next header replaces the fragment header
    assert udp_payload(packet, True) == DNS * 5


def test_ipv6_reassembly_after_hop_by_hop() -> None:
    datagram = udp(DNS * 5)
    result = reassemble(ip6_fragments(datagram, 96, prefix=ext(44, 0, 8), prefix_nxt=0))
    assert result is not None
    packet, ipv6 = result
    assert ipv6
    assert packet[40] == 17  # hop-by-hop's next header now says UDP
    assert udp_payload(packet, True) == DNS * 5


def test_reassembly_failures() -> None:
    datagram = udp(DNS * 5)
    first, last = ip4_fragments(datagram, 104)
    assert reassemble([first]) is None  # one piece is not a whole
    assert reassemble([last, last]) is None  # two last fragments
    assert reassemble([first, first]) is None  # overlap, and no end
    assert reassemble([first, ip4(udp(DNS))]) is None  # a non-fragment among fragments
    # a non-final fragment whose length is not a multiple of 8
    assert (
        reassemble([ip4(datagram[:100], flags_off=0x2000), ip4(datagram[100:], flags_off=100 // 8)]) is None
    )
    # a hole between the pieces
    middle_missing = [
        ip4(datagram[:48], flags_off=0x2000),
        ip4(datagram[96:], flags_off=96 // 8),
    ]
    assert reassemble(middle_missing) is None
    # a fragment extending past the last one's end
    assert reassemble([last, ip4(datagram[:112], flags_off=0x2000)]) is None


def test_reassembly_does_not_match_fragment_ids() -> None:
    """libnmsg's response getter treats all packets of a record as one datagram."""
    datagram = udp(DNS * 5)
    first, last = ip4_fragments(datagram, 104)
    other = bytearray(last)
    other[4:6] = b"\x99\x99"
    result = reassemble([first, bytes(other)])
    assert result is not None
    assert udp_payload(result[0], False) == DNS * 5


def test_ip_to_text() -> None:
    assert ip_to_text(bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert ip_to_text(bytes.fromhex("fd000000000000000000000000000012")) == "fd00::12"
    assert ip_to_text(bytes.fromhex("20010db8000000010001000100010001")) == "2001:db8:0:1:1:1:1:1"
    assert ip_to_text(bytes.fromhex("00000000000000000000ffffc0000201")) == "::ffff:192.0.2.1"
    assert ip_to_text(bytes(16)) == "::"
    with pytest.raises(PayloadError):
        ip_to_text(bytes(5))
