"""pcap -> base:dnsqr payloads, as ``nmsgtool -p FILE -V base -T dnsqr`` produces them (libnmsg 1.3.3).

Why a re-implementation rather than "parse DNS, pair by id": every field of the reference output depends
on libnmsg's exact walk, and the downstream EDNS filter is validated against nmsgtool's files. The rules
reproduced here (from libnmsg's ``base/dnsqr.c``, ``ipdg.c`` and ``base/ipreasm.c``):

- Packets with caplen != len are ignored. UDP counts if either port is 53 or 5353, TCP and ICMP (the
  quoted UDP/TCP packet's ports) only on 53. Every other packet is skipped and counted in ``stats``.
- A UDP query (QR=0) waits in a table keyed by (query/response addresses, proto, ports, DNS id). A
  response takes the first waiting query with that key whose qname/qtype/qclass bytes are identical; when
  either side has no question, any query with the key matches, but only if the rcode is FORMERR,
  SERVFAIL, NOTIMP or REFUSED. No match: UDP_UNSOLICITED_RESPONSE.
- The record of a pair keeps the response's addresses, ports, id and rcode, the query's packets, and the
  query's question when the response has none.
- After each packet, waiting queries are expired in arrival order while the oldest one is more than
  ``query_timeout`` whole seconds older than that packet, or while more than ``state_table_max`` wait;
  their ``timeout`` is the packet time minus the query time. At end of input all are flushed (timeout
  relative to the last packet). Output order is therefore: a pair or unsolicited response when its
  response arrives, TCP/ICMP records immediately, expired queries after the packet that expired them.
- Record time: the first query packet's time, else the first response packet's; TCP/ICMP: packet time.
- ``udp_checksum`` is verified on the response packets with libnmsg's algorithm: IPv4 fragments are
  summed (pseudo header from the initial one), but a fragmented IPv6 response is always ERROR because
  libnmsg's header walk stops at the fragment header.
- IP fragments are reassembled first (see :mod:`nmsgdns.capture_reasm`); the record stores the fragments.

Deliberate differences from libnmsg (robust choices, none visible in the shared corpus):
``DNSQR_FILTER_QNAMES_INCLUDE`` really restricts (see :class:`~nmsgdns.capture_options.QnameFilter`);
``DNSQR_ZERO_RESOLVER_ADDRESS`` zeroes the destination of IPv6 *response* packets (libnmsg zeroes the
query packet's destination there, and crashes on an IPv6 response without a query); the address filter
is evaluated on the IP packet even for VLAN-tagged frames (libnmsg's BPF would drop those); malformed
IPv4 headers are skipped instead of being read past their end.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nmsgdns.capture_ipdg import (
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Datagram,
    link_to_network,
    parse_network,
    parse_raw,
)
from nmsgdns.capture_options import AddressFilter, CaptureOptions, QnameFilter
from nmsgdns.capture_pcap import read_pcap
from nmsgdns.capture_reasm import FragmentSet, Reassembler
from nmsgdns.proto import dnsqr_pb2, nmsg_pb2

__all__ = ["CaptureOptions", "DnsqrCapture", "iter_pcap_payloads"]

VID_BASE = 1
MSGTYPE_DNSQR = 9

_DNS_PORTS = (53, 5353)
#: Rcodes for which a response without a question may pair with a query on the 6-tuple alone.
_SIX_TUPLE_RCODES = frozenset({1, 2, 4, 5})  # FORMERR, SERVFAIL, NOTIMP, REFUSED

T = dnsqr_pb2.DnsQRType
C = dnsqr_pb2.UdpChecksum

Packet = tuple[bytes, int, int]  # (IP packet, time sec, time nsec)
Question = tuple[bytes, int, int]  # (qname wire bytes, qtype, qclass)
Key = tuple[bytes, bytes, int, int, int, int]  # (query_ip, response_ip, proto, qport, rport, id)


@dataclass(slots=True)
class _Record:
    """A DnsQR under construction; turned into protobuf bytes only when emitted."""

    type: int
    proto: int
    query_ip: bytes = b""
    response_ip: bytes = b""
    query_port: int = 0
    response_port: int = 0
    id: int = 0
    question: Question | None = None
    rcode: int | None = None
    query_packets: list[Packet] = field(default_factory=list)
    response_packets: list[Packet] = field(default_factory=list)
    tcp: bytes | None = None
    icmp: bytes | None = None
    timeout: float | None = None
    #: DNS flags of the query packet as libnmsg re-reads them for the RD filter (None: unreadable).
    query_flags: int | None = None
    time: tuple[int, int] = (0, 0)

    def key(self) -> Key:
        return (self.query_ip, self.response_ip, self.proto, self.query_port, self.response_port, self.id)


@dataclass(slots=True)
class _Dns:
    """What libnmsg reads from a UDP DNS header: id, flags and the question when QDCOUNT is 1."""

    id: int
    flags: int
    question: Question | None

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


class DnsqrCapture:
    """Stateful converter: feed frames in capture order, collect serialized NmsgPayload bytes.

    ``stats`` counts skipped packets by reason (``skip.*``), records dropped by the RD/qname filters
    (``filtered``), fragment reassembly (``fragment.*``) and emitted records by type (``emit.<TYPE>``).
    """

    def __init__(self, options: CaptureOptions | None = None) -> None:
        self.options = options or CaptureOptions()
        self._addr_filter = AddressFilter(self.options)
        opts = self.options
        self._qname_filter = QnameFilter(opts.filter_qnames_include, opts.filter_qnames_exclude)
        self.stats: Counter[str] = Counter()
        self._reasm = Reassembler(self.stats)
        self._pending: OrderedDict[int, _Record] = OrderedDict()
        self._by_key: dict[Key, list[int]] = {}
        self._serial = 0
        self._now = (0, 0)

    # -- input ---------------------------------------------------------------------------------------

    def add_packet(
        self, ts_sec: int, ts_nsec: int, frame: bytes, linktype: int, wire_len: int | None = None
    ) -> list[bytes]:
        """Process one captured frame; return the payloads completed by it (possibly none).

        ``wire_len`` is the frame's original length when known; a frame captured short is ignored.
        """
        out: list[bytes] = []
        link = link_to_network(frame, linktype)
        if self._addr_filter.active and (link is None or not self._addr_filter(link[0], _family(link[1]))):
            # libpcap's filter drops it before libnmsg ever sees it: no state change at all
            self.stats["skip.address_filter"] += 1
            return out
        if wire_len is not None and wire_len != len(frame):
            self.stats["skip.truncated_capture"] += 1
        elif link is None:
            self.stats["skip.link_layer"] += 1
        else:
            self._packet(link[0], link[1], ts_sec, ts_nsec, out)
        self._expire(out, flush=False)
        return out

    def flush(self) -> list[bytes]:
        """End of input: every waiting query becomes UDP_UNANSWERED_QUERY (unless filtered)."""
        out: list[bytes] = []
        self._expire(out, flush=True)
        return out

    # -- one packet ----------------------------------------------------------------------------------

    def _packet(self, net: bytes, etype: int, ts_sec: int, ts_nsec: int, out: list[bytes]) -> None:
        dg = parse_network(net, etype)
        if dg is None:
            self.stats["skip.not_parsed"] += 1
            return
        self._now = (ts_sec, ts_nsec)
        is_frag, fset = self._reasm.next(dg.network, ts_sec, ts_nsec)
        if is_frag:
            if fset is None:
                self.stats["skip.fragment_held"] += 1
                return
            whole = fset.assemble()
            dg = parse_raw(whole) if whole is not None else None
            if dg is None:
                self.stats["skip.fragment_unusable"] += 1
                return
            if not self._addr_filter(dg.network, dg.family):
                self.stats["skip.address_filter"] += 1
                return
        if dg.transport is None:  # a fragment that is not part of a reassembly
            self.stats["skip.fragment_unusable"] += 1
            return
        if dg.proto == IPPROTO_UDP:
            self._udp(dg, fset, ts_sec, ts_nsec, out)
        elif dg.proto == IPPROTO_TCP:
            self._tcp(dg, ts_sec, ts_nsec, out)
        elif dg.proto == IPPROTO_ICMP:
            self._icmp(dg, ts_sec, ts_nsec, out)
        else:
            self.stats["skip.other_protocol"] += 1

    def _tcp(self, dg: Datagram, ts_sec: int, ts_nsec: int, out: list[bytes]) -> None:
        ports = _ports(dg)
        if ports is None or 53 not in ports:
            self.stats["skip.not_dns_port"] += 1
            return
        rec = _Record(T.TCP, IPPROTO_TCP, tcp=dg.network, time=(ts_sec, ts_nsec))
        self._emit(rec, out)

    def _icmp(self, dg: Datagram, ts_sec: int, ts_nsec: int, out: list[bytes]) -> None:
        if dg.payload is None:  # an unreassembled fragment: libnmsg finds no quoted packet
            self.stats["skip.icmp_not_dns"] += 1
            return
        inner = parse_raw(dg.network[dg.payload : dg.payload + dg.payload_len])
        ports = _ports(inner) if inner is not None else None
        wanted = {IPPROTO_UDP: _DNS_PORTS, IPPROTO_TCP: (53,)}.get(inner.proto if inner else -1)
        if ports is None or wanted is None or not (ports[0] in wanted or ports[1] in wanted):
            self.stats["skip.icmp_not_dns"] += 1
            return
        rec = _Record(T.ICMP, IPPROTO_ICMP, icmp=dg.network, time=(ts_sec, ts_nsec))
        self._emit(rec, out)

    def _udp(
        self, dg: Datagram, fset: FragmentSet | None, ts_sec: int, ts_nsec: int, out: list[bytes]
    ) -> None:
        ports = _ports(dg)
        if ports is None or not (ports[0] in _DNS_PORTS or ports[1] in _DNS_PORTS):
            self.stats["skip.not_dns_port"] += 1
            return
        dns = _parse_dns(dg)
        if dns is None:
            self.stats["skip.dns_too_short"] += 1
            return
        src, dst = _addresses(dg)
        sport, dport = ports
        rec = _Record(T.UDP_INVALID, IPPROTO_UDP, id=dns.id, question=dns.question)
        if dns.is_response:
            rec.query_ip, rec.response_ip, rec.query_port, rec.response_port = dst, src, dport, sport
        else:
            rec.query_ip, rec.response_ip, rec.query_port, rec.response_port = src, dst, sport, dport
        packets = [(dg.network, ts_sec, ts_nsec)] if fset is None else _fragment_packets(fset)

        qr = self.options.capture_qr
        if qr is not None:
            # pairing disabled: emit one side immediately, no filters (as libnmsg)
            if qr == 0 and not dns.is_response:
                rec.type = T.UDP_QUERY_ONLY
                rec.query_packets = [(dg.network, ts_sec, ts_nsec)]  # the reassembled packet, if any
            elif qr == 1 and dns.is_response:
                rec.type = T.UDP_RESPONSE_ONLY
                rec.rcode = dns.flags & 0xF
                rec.response_packets = packets
            else:
                self.stats["skip.capture_qr"] += 1
                return
            self._emit(rec, out)
            return

        if not dns.is_response:
            rec.type = T.UDP_UNANSWERED_QUERY
            rec.query_packets = packets
            rec.query_flags = dns.flags if fset is None else None
            self._insert(rec)
            return

        rcode = dns.flags & 0xF
        rec.rcode = rcode
        rec.response_packets = packets
        query = self._retrieve(rec, rcode)
        if query is None:
            rec.type = T.UDP_UNSOLICITED_RESPONSE
            if self._drops_rd(dns.flags) or self._qname_filter.drops(_qname(rec)):
                self.stats["filtered"] += 1
                return
        else:
            rec.type = T.UDP_QUERY_RESPONSE
            rec.query_packets = query.query_packets
            rec.query_flags = query.query_flags
            if rec.question is None:
                rec.question = query.question
            if self._filtered(rec):
                self.stats["filtered"] += 1
                return
        self._emit(rec, out)

    # -- the table of waiting queries ----------------------------------------------------------------

    def _insert(self, rec: _Record) -> None:
        self._serial += 1
        self._pending[self._serial] = rec
        self._by_key.setdefault(rec.key(), []).append(self._serial)

    def _retrieve(self, response: _Record, rcode: int) -> _Record | None:
        """First waiting query (in arrival order) that libnmsg's ``dnsqr_eq`` accepts, removed."""
        key = response.key()
        serials = self._by_key.get(key)
        if not serials:
            return None
        for index, serial in enumerate(serials):
            query = self._pending[serial]
            if response.question is not None and query.question is not None:
                hit = response.question == query.question
            else:
                hit = rcode in _SIX_TUPLE_RCODES
            if hit:
                del serials[index]
                if not serials:
                    del self._by_key[key]
                del self._pending[serial]
                return query
        return None

    def _expire(self, out: list[bytes], *, flush: bool) -> None:
        """Emit expired queries, oldest first, the way libnmsg's per-call ``dnsqr_trim`` does.

        libnmsg trims one query per call and reads the next packet after a trimmed query is filtered
        out, so (outside the final flush) a filtered query ends this round.
        """
        now_sec, now_nsec = self._now
        while self._pending:
            serial, rec = next(iter(self._pending.items()))
            oldest_sec = rec.query_packets[0][1]
            if not (
                flush
                or len(self._pending) > self.options.state_table_max
                or now_sec - oldest_sec > self.options.query_timeout
            ):
                return
            self._pending.popitem(last=False)
            serials = self._by_key[rec.key()]
            serials.remove(serial)
            if not serials:
                del self._by_key[rec.key()]
            sec = now_sec - oldest_sec
            nsec = now_nsec - rec.query_packets[0][2]
            if nsec < 0:
                sec -= 1
                nsec += 1_000_000_000
            rec.timeout = sec + nsec / 1e9
            if self._filtered(rec):
                self.stats["filtered"] += 1
                if not flush:
                    return
                continue
            self._emit(rec, out)

    # -- filters and output --------------------------------------------------------------------------

    def _drops_rd(self, flags: int | None) -> bool:
        wanted = self.options.capture_rd
        return wanted is not None and flags is not None and ((flags >> 8) & 1) != wanted

    def _filtered(self, rec: _Record) -> bool:
        return self._drops_rd(rec.query_flags) or self._qname_filter.drops(_qname(rec))

    def _emit(self, rec: _Record, out: list[bytes]) -> None:
        msg = dnsqr_pb2.DnsQR(
            type=rec.type,
            query_ip=rec.query_ip,
            response_ip=rec.response_ip,
            proto=rec.proto,
            query_port=rec.query_port,
            response_port=rec.response_port,
            id=rec.id,
        )
        if rec.question is not None:
            msg.qname, msg.qtype, msg.qclass = rec.question
        if rec.rcode is not None:
            msg.rcode = rec.rcode
        zero = self.options.zero_resolver_address
        for pkt, sec, nsec in rec.query_packets:
            msg.query_packet.append(_zero_address(pkt, src=True) if zero else pkt)
            msg.query_time_sec.append(sec)
            msg.query_time_nsec.append(nsec)
        for pkt, sec, nsec in rec.response_packets:
            msg.response_packet.append(_zero_address(pkt, src=False) if zero else pkt)
            msg.response_time_sec.append(sec)
            msg.response_time_nsec.append(nsec)
        if rec.tcp is not None:
            msg.tcp = rec.tcp
        if rec.icmp is not None:
            msg.icmp = rec.icmp
        if rec.timeout is not None:
            msg.timeout = rec.timeout
        if rec.response_packets:
            # verified before zeroing, as libnmsg does
            msg.udp_checksum = _udp_checksum([p for p, _, _ in rec.response_packets])
        if zero:
            msg.query_ip = bytes(len(rec.query_ip))
            if rec.query_packets or rec.response_packets:
                msg.resolver_address_zeroed = True
        if rec.query_packets:
            sec, nsec = rec.query_packets[0][1:]
        elif rec.response_packets:
            sec, nsec = rec.response_packets[0][1:]
        else:
            sec, nsec = rec.time
        payload = nmsg_pb2.NmsgPayload(
            vid=VID_BASE,
            msgtype=MSGTYPE_DNSQR,
            time_sec=sec,
            time_nsec=nsec,
            payload=msg.SerializeToString(),
        )
        self.stats["emit." + T.Name(rec.type)] += 1
        out.append(payload.SerializeToString())


def iter_pcap_payloads(path: str | Path, options: CaptureOptions | None = None) -> Iterator[bytes]:
    """Serialized NmsgPayloads for a whole pcap/pcapng file, flushed at its end.

    Raises :class:`~nmsgdns.errors.PcapError` naming the file if it is not a capture or is truncated.
    """
    capture = DnsqrCapture(options)
    for rec in read_pcap(path):
        yield from capture.add_packet(rec.ts_sec, rec.ts_nsec, rec.frame, rec.linktype, rec.wire_len)
    yield from capture.flush()


# -- packet helpers ------------------------------------------------------------------------------------


def _ports(dg: Datagram) -> tuple[int, int] | None:
    """(source, destination) port of a UDP/TCP datagram; None when there is no transport header."""
    start = dg.transport
    if start is None or len(dg.network) < start + 4:
        return None
    net = dg.network
    return (net[start] << 8 | net[start + 1], net[start + 2] << 8 | net[start + 3])


def _family(etype: int) -> int:
    return {ETHERTYPE_IP: 4, ETHERTYPE_IPV6: 6}.get(etype, 0)


def _addresses(dg: Datagram) -> tuple[bytes, bytes]:
    net = dg.network
    if dg.family == 4:
        return net[12:16], net[16:20]
    return net[8:24], net[24:40]


def _parse_dns(dg: Datagram) -> _Dns | None:
    """Header and question the way libnmsg's ``do_packet_dns`` reads them; None means "skip packet"."""
    if dg.payload is None or dg.payload_len < 12:
        return None
    body = dg.network[dg.payload : dg.payload + dg.payload_len]
    ident = body[0] << 8 | body[1]
    flags = body[2] << 8 | body[3]
    qdcount = body[4] << 8 | body[5]
    rest = body[12:]
    if qdcount != 1 or not rest:
        return _Dns(ident, flags, None)
    # wdns_skip_name: labels up to the root label or a compression pointer, clamped to the buffer
    end = len(rest)
    pos = 0
    while pos < end and rest[pos] != 0:
        if rest[pos] >= 192:
            pos += 1
            break
        pos += rest[pos] + 1
    pos = min(pos + 1, end)
    if end - pos < 4:
        return None
    qtype = rest[pos] << 8 | rest[pos + 1]
    qclass = rest[pos + 2] << 8 | rest[pos + 3]
    return _Dns(ident, flags, (rest[:pos], qtype, qclass))


def _fragment_packets(fset: FragmentSet) -> list[Packet]:
    return [(f.data, f.ts_sec, f.ts_nsec) for f in fset.frags]


def _qname(rec: _Record) -> bytes | None:
    return rec.question[0] if rec.question is not None else None


def _zero_address(packet: bytes, *, src: bool) -> bytes:
    """Zero the resolver's address in a stored packet: source of queries, destination of responses."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        start = 12 if src else 16
        return packet[:start] + bytes(4) + packet[start + 4 :]
    if version == 6 and len(packet) >= 40:
        start = 8 if src else 24
        return packet[:start] + bytes(16) + packet[start + 16 :]
    return packet


def _udp_checksum(packets: list[bytes]) -> int:
    """libnmsg's ``dnsqr_checksum_verify`` over the response packets (quirks included, see module doc)."""
    total = 0
    pseudo: bytes | None = None
    for packet in packets:
        dg = parse_raw(packet)
        if dg is None or dg.proto != IPPROTO_UDP:
            return C.ERROR
        net = dg.network
        if dg.transport is not None:  # the initial fragment (or the whole datagram)
            if len(net) - dg.transport < 8:
                return C.ERROR
            udp = net[dg.transport : dg.transport + 8]
            if udp[6:8] == b"\x00\x00":
                return C.ABSENT
            if dg.family == 4:
                pseudo = net[12:20] + b"\x00" + net[9:10] + udp[4:6] + udp
            else:
                pseudo = net[8:40] + b"\x00\x00" + udp[4:6] + b"\x00\x00\x00\x11" + udp
        if dg.payload is not None:
            data = net[dg.payload : dg.payload + dg.payload_len]
            if len(data) & 1:
                data += b"\x00"
            total += _ones_sum(data)
    if pseudo is None:
        return C.ERROR
    total += _ones_sum(pseudo)
    # the folded one's-complement sum is 0xFFFF exactly when the 16-bit word sum is a multiple of 0xFFFF
    # (it cannot be 0: the checksum word itself is non-zero here)
    return C.CORRECT if total % 0xFFFF == 0 else C.INCORRECT


def _ones_sum(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of ``data`` (even length), modulo 0xFFFF.

    Reading the bytes as one big integer works because 0x10000 is 1 modulo 0xFFFF.
    """
    return int.from_bytes(data, "big") % 0xFFFF
