"""IP packets of a base:dnsqr record: header walk, UDP payload, fragment reassembly, address text.

The derived ``query``/``response`` fields decide the EDNS0 verdict, so they must be byte-identical to what
libnmsg 1.3.3 derives (``nmsg_ipdg_parse`` and the ``ipreasm`` routines, the latter in
:mod:`nmsgdns.ipreasm`, shared with the pcap capture). This module reproduces those routines' behaviour,
quirks included, because a "more correct" parser would select different records than the reference
filter:

- IPv4: the header length comes from IHL alone; the version nibble, total length and checksum are not
  looked at. A fragment (offset or MF set) yields nothing unless it goes through reassembly.
- IPv6: hop-by-hop, routing, destination-options, AH and ESP headers are skipped with the length
  ``8 * (ntohs(len_octet) + 1)`` truncated to 16 bits. ``ntohs`` of a one-byte value on a little-endian
  host shifts it left by 8, so only extension headers whose length octet is 0 (8 bytes) or 32 (which
  wraps back to 8) are skipped as expected; any other length nearly always exceeds the payload length
  and the packet yields nothing. libnmsg on x86 behaves so; we match it.
- UDP: the payload is ``udp_len - 8`` bytes (``udp_len`` itself when it is below 8), clamped to what was
  captured; trailing capture bytes beyond the UDP length are dropped.

Where the C code reads past the end of a short packet (IPv4 shorter than 20 bytes or than its IHL) we
return None instead of guessing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from functools import lru_cache
from struct import Struct

from nmsgdns.errors import PayloadError
from nmsgdns.ipreasm import IpFragments, parse_ip_fragment
from nmsgdns.native import load_extension

__all__ = ["ip_to_text", "reassemble", "udp_payload", "udp_payload_py"]

_IPPROTO_UDP = 17
#: IPv6 extension headers libnmsg's datagram parser walks over (fragment header included, which fails).
_IP6_EXT = frozenset((0, 43, 44, 60, 51, 50))
_IP6_FRAGMENT = 44

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


def reassemble(packets: Sequence[bytes]) -> tuple[bytes, bool] | None:
    """Reassemble the fragments of a record's ``response_packet`` list as dnsqr's response getter does.

    Returns (reassembled IP packet, is IPv6) or None when any packet is not a fragment, a fragment does
    not fit (overlap, misaligned, past the end), or holes remain. Like libnmsg, fragments are not
    matched by identification: all packets of the record are one datagram, and the IP version of the
    last packet decides how the result is read.
    """
    fragments = IpFragments()
    for packet in packets:
        frag = parse_ip_fragment(packet)
        if frag is None or not fragments.add(frag):
            return None
    packet = fragments.assemble()
    return None if packet is None else (packet, fragments.family == 6)
