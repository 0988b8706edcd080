"""Link-layer and IP header walk as libnmsg's ``nmsg_ipdg_parse_pcap_raw`` does it for the capture path.

The bytes kept in a DnsQR record (``query_packet``, ``response_packet``, ``tcp``, ``icmp``) are "the
network layer" as libnmsg sees it: everything after the link header, *including* any Ethernet trailer
padding, because libnmsg never trims to the IP length. Matching nmsgtool byte for byte therefore means
walking headers the same way, quirks included (noted where they matter). Where libnmsg would read past the
buffer on garbage, we refuse the packet instead (the caller counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

ETHERTYPE_IP = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
#: LINKTYPE_RAW as written in files, plus the platform DLT_RAW values libpcap also maps to raw IP.
LINKTYPES_RAW = frozenset({101, 12, 14})

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60, 51, 50})  # hop-by-hop, routing, fragment, dstopts, AH, ESP
IPPROTO_FRAGMENT = 44


@dataclass(slots=True)
class Datagram:
    """One parsed network packet. Offsets index into ``network``.

    For an IPv4 fragment, the initial one is parsed like a whole packet (transport header, payload up
    to the end of the fragment) and a later one has no ``transport`` and its whole data as ``payload``;
    libnmsg's UDP checksum verification relies on exactly that. An IPv6 fragment stops at the fragment
    header: ``proto`` is 44, no transport, no payload.
    """

    network: bytes
    family: int  # 4 or 6
    proto: int  # transport protocol number (44 for an IPv6 fragment)
    transport: int | None
    payload: int | None
    payload_len: int


def link_to_network(frame: bytes, linktype: int) -> tuple[bytes, int] | None:
    """Strip the link header: (network bytes, ethertype), or None when libnmsg would skip the frame."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        etype = int.from_bytes(frame[12:14], "big")
        start = 14
        if etype == ETHERTYPE_VLAN:
            if len(frame) < 18:
                return None
            etype = int.from_bytes(frame[16:18], "big")
            start = 18
        return frame[start:], etype
    if linktype in LINKTYPES_RAW:
        if len(frame) < 20:
            return None
        version = frame[0] >> 4
        if version == 4:
            return frame, ETHERTYPE_IP
        if version == 6:
            return frame, ETHERTYPE_IPV6
        return None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return frame[16:], int.from_bytes(frame[14:16], "big")
    return None


def parse_raw(packet: bytes) -> Datagram | None:
    """Parse a bare IP packet (libnmsg's DLT_RAW path, used on reassembled and stored packets)."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        return parse_network(packet, ETHERTYPE_IP)
    if version == 6:
        return parse_network(packet, ETHERTYPE_IPV6)
    return None


def parse_network(net: bytes, etype: int) -> Datagram | None:
    """Walk the IP header(s) and the transport header; None when libnmsg would return "again"."""
    length = len(net)
    if etype == ETHERTYPE_IP:
        if length < 20:
            return None
        hlen = (net[0] & 0x0F) * 4
        if hlen < 20 or hlen > length:
            return None
        ip_off = int.from_bytes(net[6:8], "big")
        proto = net[9]
        if ip_off & 0x1FFF:
            return Datagram(net, 4, proto, None, hlen, length - hlen)
        family = 4  # an initial IPv4 fragment is walked like a whole packet
        pos = hlen
    elif etype == ETHERTYPE_IPV6:
        if length < 40 or (net[0] & 0xF0) != 0x60:
            return None
        proto = net[6]
        pos = 40
        payload_len = int.from_bytes(net[4:6], "big")
        fragment = False
        while proto in _IPV6_EXT_HEADERS:
            if pos + 2 > length:
                return None
            if proto == IPPROTO_FRAGMENT:
                fragment = True
                break
            # libnmsg applies ntohs() to the one-byte length field, so on little-endian hosts any
            # non-zero length becomes length*256 and the packet is refused below; we do the same.
            ext_len = (8 * (((net[pos + 1] << 8) & 0xFFFF) + 1)) & 0xFFFF
            if ext_len > payload_len:
                return None
            proto = net[pos]
            pos += ext_len
            payload_len -= ext_len
        if pos + payload_len > length or payload_len == 0:
            return None
        if fragment:
            return Datagram(net, 6, proto, None, None, 0)
        family = 6
    else:
        return None

    remaining = length - pos
    if proto == IPPROTO_UDP:
        if remaining < 8:
            return None
        ulen = int.from_bytes(net[pos + 4 : pos + 6], "big")
        plen = ulen - 8 if ulen >= 8 else ulen
        return Datagram(net, family, proto, pos, pos + 8, min(plen, remaining - 8))
    if proto == IPPROTO_TCP:
        if remaining < 20:
            return None
        data_off = (net[pos + 12] >> 4) * 4
        start = min(pos + data_off, length)
        return Datagram(net, family, proto, pos, start, length - start)
    if proto == IPPROTO_ICMP:
        if remaining < 8:
            return None
        return Datagram(net, family, proto, pos, pos + 8, remaining - 8)
    return None
