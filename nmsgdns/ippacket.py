"""IP packets of a base:dnsqr record: header walk, UDP payload, fragment reassembly, address text.

The derived ``query``/``response`` fields decide the EDNS0 verdict, so they must be byte-identical to what
libnmsg 1.3.3 derives (``nmsg_ipdg_parse`` and the ``ipreasm`` routines). This module reproduces those
routines' behaviour, quirks included, because a "more correct" parser would select different records than
the reference filter:

- IPv4: the header length comes from IHL alone; the version nibble, total length and checksum are not
  looked at. A fragment (offset or MF set) yields nothing unless it goes through reassembly.
- IPv6: hop-by-hop, routing, destination-options, AH and ESP headers are skipped with the length
  ``8 * (ntohs(len_octet) + 1)`` truncated to 16 bits. ``ntohs`` of a one-byte value on a little-endian
  host shifts it left by 8, so only extension headers whose length octet is 0 (8 bytes) or 32 (which
  wraps back to 8) are skipped as expected; any other length nearly always exceeds the payload length
  and the packet yields nothing. libnmsg on x86 behaves so; we match it.
- UDP: the payload is ``udp_len - 8`` bytes (``udp_len`` itself when it is below 8), clamped to what was
  captured; trailing capture bytes beyond the UDP length are dropped.

Where the C code reads past the end of a short packet (IPv4 shorter than 20 bytes or than its IHL, an
IPv4 fragment whose total length is smaller than its header) we return None instead of guessing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from functools import lru_cache
from struct import Struct

from nmsgdns.errors import PayloadError
from nmsgdns.native import load_extension

__all__ = ["ip_to_text", "reassemble", "udp_payload", "udp_payload_py"]

_IPPROTO_UDP = 17
#: IPv6 extension headers libnmsg's datagram parser walks over (fragment header included, which fails).
_IP6_EXT = frozenset((0, 43, 44, 60, 51, 50))
_IP6_FRAGMENT = 44
#: Extension headers the reassembler may skip before the fragment header (it uses the real lengths).
_IP6_REASM_SKIP = frozenset((0, 43, 60))
#: Size of libnmsg's reassembly output buffer (NMSG_IPSZ_MAX).
_IPSZ_MAX = 65536

_U16 = Struct(">H").unpack_from
_U16_AT_4 = Struct(">4xH").unpack_from


@lru_cache(maxsize=1 << 16)
def ip_to_text(raw: bytes) -> str:
    """Render a 4- or 16-byte address the way nmsgtool does (``inet_ntop``: dotted quad, or the
    compressed IPv6 form with embedded IPv4 for mapped/compatible addresses).

    Cached: the same few name servers and resolvers recur on every record of a stream, and the worker
    renders one per record (a cache hit is a C-level dict lookup on the bytes)."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise PayloadError(f"IP address field has {len(raw)} bytes, expected 4 or 16")


def udp_payload_py(packet: bytes, ipv6: bool) -> bytes | None:
    """The UDP payload of one unfragmented IP packet, or None where ``nmsg_ipdg_parse`` fails.

    ``ipv6`` chooses the parser (libnmsg chooses by the length of the record's address field, not by
    the packet's version nibble). The reference for the C version in ``nmsgdns/_wirescan.c``, which
    :data:`udp_payload` is when the extension is built (``nmsgdns.wire.IMPLEMENTATION``).
    """
    n = len(packet)
    if ipv6:
        if n < 40 or packet[0] & 0xF0 != 0x60:
            return None
        nxt = packet[6]
        off = 40
        plen = _U16_AT_4(packet)[0]
        while nxt in _IP6_EXT:
            if off + 2 > n or nxt == _IP6_FRAGMENT:
                return None
            ext_len = (8 * ((packet[off + 1] << 8) + 1)) & 0xFFFF
            nxt = packet[off]
            if ext_len > plen:
                return None
            off += ext_len
            plen -= ext_len
        if off + plen > n or plen == 0:
            return None
    else:
        if n < 20:
            return None
        if _U16(packet, 6)[0] & 0x3FFF:  # MF or a fragment offset
            return None
        nxt = packet[9]
        off = (packet[0] & 0x0F) * 4
    if nxt != _IPPROTO_UDP or n - off < 8:
        return None
    ulen = _U16(packet, off + 4)[0]
    if ulen >= 8:
        ulen -= 8
    start = off + 8
    return packet[start : start + ulen]


_ext = load_extension("_wirescan")
if _ext is not None:
    _ext.configure_ip(udp_payload_py)
#: :func:`udp_payload_py`, or its C transcription (same results) when the extension is built; it runs
#: once or twice per record, so the per-call cost of the Python walk showed in the filter's profile.
udp_payload: Callable[[bytes, bool], bytes | None] = udp_payload_py if _ext is None else _ext.udp_payload


class _Frag:
    """One fragment as libnmsg's reassembler keeps it."""

    __slots__ = ("data", "data_offset", "ip6f_nxt", "last_nxt", "length", "offset")

    def __init__(
        self, data: bytes, data_offset: int, offset: int, length: int, last_nxt: int = 0, ip6f_nxt: int = 0
    ) -> None:
        self.data = data
        self.data_offset = data_offset
        self.offset = offset
        self.length = length
        self.last_nxt = last_nxt
        self.ip6f_nxt = ip6f_nxt


def _parse_fragment(packet: bytes) -> tuple[bool, _Frag, bool] | None:
    """(is IPv6, fragment, is last fragment) like ``reasm_parse_packet``, or None if not a fragment."""
    n = len(packet)
    if not n:
        return None
    version = packet[0] >> 4
    if version == 4:
        if n < 20:
            return None
        total = _U16(packet, 2)[0]
        flags = _U16(packet, 6)[0]
        hl = (packet[0] & 0x0F) * 4
        if n < total or not flags & 0x3FFF or total < hl:
            return None
        return False, _Frag(packet[:total], hl, (flags & 0x1FFF) * 8, total - hl), not flags & 0x2000
    if version == 6:
        if n < 40:
            return None
        plen = _U16_AT_4(packet)[0]
        if n < plen + 40:
            return None
        total = (plen + 40) & 0xFFFF  # a uint16_t in libnmsg
        off = 40
        nxt = packet[6]
        last_nxt = 6
        while nxt in _IP6_REASM_SKIP:
            if off + 2 > total:
                return None
            ext_len = 8 + 8 * packet[off + 1]
            if off + ext_len > total:
                return None
            nxt = packet[off]
            last_nxt = off
            off += ext_len
        if nxt != _IP6_FRAGMENT or off + 8 > total:
            return None
        offlg = _U16(packet, off + 2)[0]
        frag = _Frag(packet[:total], off + 8, offlg & 0xFFF8, total - off - 8, last_nxt, packet[off])
        return True, frag, not offlg & 1
    return None


def reassemble(packets: Sequence[bytes]) -> tuple[bytes, bool] | None:
    """Reassemble the fragments of a record's ``response_packet`` list as dnsqr's response getter does.

    Returns (reassembled IP packet, is IPv6) or None when any packet is not a fragment, a fragment does
    not fit (overlap, misaligned, past the end), or holes remain. Like libnmsg, fragments are not
    matched by identification: all packets of the record are one datagram, and the IP version of the
    last packet decides how the result is read.
    """
    head = _Frag(b"", 0, 0, 0)
    frags = [head]
    total_len = 0
    holes = 1
    ipv6 = False
    for packet in packets:
        parsed = _parse_fragment(packet)
        if parsed is None:
            return None
        ipv6, frag, last = parsed
        # reasm_add_fragment, step by step: its hole counting decides completeness.
        if not last and frag.length & 7:
            return None
        if total_len and frag.offset + frag.length > total_len:
            return None
        fit_left = fit_right = False
        if last:
            if total_len:
                return None
            total_len = frag.offset + frag.length
            fit_right = True
        i = 0
        while i + 1 < len(frags) and frags[i + 1].offset <= frag.offset:
            i += 1
        cur = frags[i]
        if cur.offset + cur.length > frag.offset:
            return None
        if cur.offset + cur.length == frag.offset:
            fit_left = True
        if i + 1 < len(frags):
            nxt = frags[i + 1]
            if last or frag.offset + frag.length > nxt.offset:
                return None
            if frag.offset + frag.length == nxt.offset:
                fit_right = True
        if frag.length:
            frags.insert(i + 1, frag)
            if fit_left and fit_right:
                holes -= 1
            elif not fit_left and not fit_right:
                holes += 1
        elif last and fit_left:
            holes -= 1
    if holes != 0 or len(frags) < 2:
        return None  # incomplete (with no stored fragment libnmsg would dereference NULL)
    packet = _assemble(frags[1:], total_len, ipv6)
    return None if packet is None else (packet, ipv6)


def _assemble(frags: list[_Frag], total_len: int, ipv6: bool) -> bytes | None:
    """``reasm_assemble``: first fragment's header, payloads at their offsets, length fields fixed.

    Works in a buffer of libnmsg's size, as the C code does, so that its fixed-offset header writes land
    where they land there even for absurdly short headers.
    """
    first = frags[0]
    hdr_len = first.data_offset - 8 if ipv6 else first.data_offset
    size = hdr_len + total_len
    if hdr_len < 0 or size > _IPSZ_MAX:
        return None
    out = bytearray(_IPSZ_MAX)
    out[:hdr_len] = first.data[:hdr_len]
    if ipv6:
        out[first.last_nxt] = first.ip6f_nxt
    for f in frags:
        start = hdr_len + f.offset
        out[start : start + f.length] = f.data[f.data_offset : f.data_offset + f.length]
    if ipv6:
        out[4:6] = ((size - 40) & 0xFFFF).to_bytes(2, "big")
    else:
        out[2:4] = (size & 0xFFFF).to_bytes(2, "big")
        out[6:8] = out[10:12] = b"\0\0"
        s = 0
        for i in range(0, (out[0] & 0x0F) * 4, 2):
            s += (out[i] << 8) | out[i + 1]
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        out[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(out[:size])
