"""IP fragment reassembly as libnmsg 1.3.3 does it (``base/ipreasm.c``): the one parser of IPv4 and IPv6
fragments, the insertion that counts holes, and the assembly of the whole packet.

libnmsg reassembles IP fragments in two places that this package reproduces, with the same routines:
the dnsqr record's response getter takes all response packets of a record as one datagram
(:func:`nmsgdns.ippacket.reassemble`), and the pcap capture keys fragments by datagram and expires them
(:mod:`nmsgdns.capture_reasm`). Which fragmented DNS messages the reference filter sees depends on these
rules, so they keep libnmsg's quirks:

- IPv4: a packet with MF or a fragment offset (``ip_off & 0x3FFF``) is a fragment when it holds its
  whole total length. Its payload starts after the header (IHL alone: libnmsg checks neither the
  version nor a 20-byte minimum), ends at the total length and goes at the 13-bit fragment offset times 8.
  The identification is 16 bits.
- IPv6: hop-by-hop, routing and destination-options headers (with their real lengths) may precede the
  fragment header. The payload goes at the fragment header's 13-bit offset times 8 (``offlg & 0xFFF8``);
  the identification is 32 bits. libnmsg holds the packet's length, 40 + payload length, in a
  ``uint16_t``: from a payload length of 65496 on it wraps below the 40-byte header, and the packet is no
  fragment.
- Where the C code would read past the end (an IPv4 packet shorter than 20 bytes, a total length shorter
  than the header) the packet is no fragment.
- A non-final fragment whose length is not a multiple of 8, an overlap, a second final fragment or a
  fragment past the end makes the datagram impossible to rebuild (:meth:`IpFragments.add` returns False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct

#: Size of libnmsg's reassembly output buffer (NMSG_IPSZ_MAX): no larger packet is rebuilt.
IPSZ_MAX = 65536
#: IPv6 extension headers skipped before the fragment header: hop-by-hop, routing, destination options.
_IP6_SKIP = frozenset((0, 43, 60))
_IP6_FRAGMENT = 44

_U16 = Struct(">H").unpack_from
_U32 = Struct(">I").unpack_from


@dataclass(slots=True)
class IpFragment:
    """One fragment as ``reasm_parse_packet`` makes it."""

    #: the packet cut to its IP length (trailer padding removed)
    data: bytes
    #: where this fragment's payload goes in the reassembled payload
    offset: int
    #: its payload bytes
    length: int
    #: where its payload starts in ``data``
    data_offset: int
    #: no more fragments follow (MF clear)
    last: bool
    #: 4 or 6
    family: int
    #: what identifies its datagram: (4, source, destination, id, protocol) or (6, source, destination, id)
    key: tuple[object, ...]
    ts_sec: int = 0
    ts_nsec: int = 0
    #: IPv6: the index of the next-header byte that names the fragment header
    last_nxt: int = 0
    #: IPv6: the next header the fragment header names, which takes its place on reassembly
    ip6f_nxt: int = 0


def parse_ip_fragment(packet: bytes, ts_sec: int = 0, ts_nsec: int = 0) -> IpFragment | None:
    """The fragment ``packet`` is (captured at ``ts_sec.ts_nsec``), or None when it is none."""
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
        key = (4, packet[12:16], packet[16:20], _U16(packet, 4)[0], packet[9])
        return IpFragment(
            packet[:total], (flags & 0x1FFF) * 8, total - hl, hl, not flags & 0x2000, 4, key, ts_sec, ts_nsec
        )
    if version == 6:
        if n < 40:
            return None
        plen = _U16(packet, 4)[0]
        if n < plen + 40:
            return None
        total = (plen + 40) & 0xFFFF  # libnmsg's uint16_t
        off = 40
        nxt = packet[6]
        last_nxt = 6
        while nxt in _IP6_SKIP:
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
        key = (6, packet[8:24], packet[24:40], _U32(packet, off + 4)[0])
        return IpFragment(
            packet[:total],
            offlg & 0xFFF8,
            total - off - 8,
            off + 8,
            not offlg & 1,
            6,
            key,
            ts_sec,
            ts_nsec,
            last_nxt,
            packet[off],
        )
    return None


@dataclass(slots=True)
class IpFragments:
    """The fragments of one datagram received so far, in offset order, and libnmsg's count of holes: one
    is assumed above the highest fragment until the final one arrives; none left means complete."""

    frags: list[IpFragment] = field(default_factory=list)
    #: payload length, known once the final fragment arrived
    total: int = 0
    holes: int = 1
    #: how the packet is rebuilt: the IP version of the fragment added last (libnmsg's response getter
    #: takes it from each packet it parses; the capture's fragments share theirs by key)
    family: int = 4

    def add(self, frag: IpFragment) -> bool:
        """``reasm_add_fragment``: insert ``frag`` in offset order; False when it makes the datagram
        impossible to rebuild (the set is then of no further use: like libnmsg, a final fragment has
        already set the length)."""
        self.family = frag.family
        if not frag.last and frag.length & 7:
            return False
        if self.total and frag.offset + frag.length > self.total:
            return False
        fit_left = fit_right = False
        if frag.last:
            if self.total:
                return False
            self.total = frag.offset + frag.length
            fit_right = True
        index = 0
        while index < len(self.frags) and self.frags[index].offset <= frag.offset:
            index += 1
        prev_end = self.frags[index - 1].offset + self.frags[index - 1].length if index else 0
        if prev_end > frag.offset:
            return False
        if prev_end == frag.offset:
            fit_left = True
        if index < len(self.frags):
            nxt = self.frags[index]
            if frag.last or frag.offset + frag.length > nxt.offset:
                return False
            if frag.offset + frag.length == nxt.offset:
                fit_right = True
        if frag.length:
            self.frags.insert(index, frag)
            if fit_left and fit_right:
                self.holes -= 1
            elif not fit_left and not fit_right:
                self.holes += 1
        elif frag.last and fit_left:
            self.holes -= 1
        return True

    def assemble(self) -> bytes | None:
        """``reasm_assemble``: the first fragment's header, the payloads at their offsets, the length
        fields fixed and (IPv4) the checksum recomputed; None while holes remain, when no fragment holds
        data (a lone empty final fragment: libnmsg would dereference NULL), or when the packet would not
        fit libnmsg's buffer.

        Works in a buffer of libnmsg's size, as the C code does, so that its writes at fixed header
        offsets land where they land there even for absurdly short headers.
        """
        if self.holes or not self.frags:
            return None
        ipv6 = self.family == 6
        first = self.frags[0]
        hdr_len = first.data_offset - 8 if ipv6 else first.data_offset
        size = hdr_len + self.total
        if hdr_len < 0 or size > IPSZ_MAX:
            return None
        out = bytearray(IPSZ_MAX)
        out[:hdr_len] = first.data[:hdr_len]
        if ipv6:
            out[first.last_nxt] = first.ip6f_nxt
        for f in self.frags:
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
