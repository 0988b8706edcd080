"""base:dnsqr records as JSON lines, exactly as ``nmsgtool -J`` prints them (libnmsg 1.3.3, libwdns 1.3.1).

For people without Avro or NMSG tooling: one object per line, ``{"time", "vname", "mname", "message"}``,
every field of the record under ``message`` in the message module's field order, with what libnmsg adds:

- enums by name (an unknown value as its number), IP addresses as text (null unless 4 or 16 bytes),
  bytes in base64, ``proto``/``qclass``/``qtype``/``rcode`` through the module's formatters (strings);
  repeated fields always, as arrays (empty ones too); 64-bit and signed integers printed as libnmsg's
  unsigned printer prints them (a negative ``query_time_nsec`` comes out as ``2**64 + n``);
- the derived fields: ``delay`` (seconds from the query to the latest response), ``query``/``response``
  (the DNS messages, base64), ``query_json``/``response_json`` (those messages parsed as libwdns parses
  them: RRs grouped into RRsets, OPT lifted into the header; null when they do not parse) and ``dns``
  (the response again); each only when libnmsg can derive it (see :mod:`nmsgdns.dnsqr`);
- doubles as C's ``"%.18f"`` with trailing zeros trimmed (``0.090998999999999997``).

:func:`json_line` gives the line's text, byte for byte what nmsgtool writes (key order, no spaces, the
same string escapes); :func:`dnsqr_json` the same content as Python objects.

The RDATA presentation follows libwdns ``wdns_rdata_to_str`` for every type of its record table, quirks
included: a type name libwdns does not know is printed in ``query_json`` as ``TYPE`` + the *class*
number (nmsg's JSON writer passes ``rrclass`` to that format), and RDATA of a type that is IN-only in a
record of another class prints as an empty string. Messages that libwdns refuses (per
:mod:`nmsgdns.wire`) render as null.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from struct import Struct
from typing import BinaryIO

from nmsgdns.dnsqr import decode_dnsqr, derive_query, derive_response, qname_to_text
from nmsgdns.errors import DnsWireError, PayloadError
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE, payload_fields
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from nmsgdns.wire import TYPE_OPT, scan_opt

__all__ = ["JsonLinesWriter", "dnsqr_json", "encode", "json_line", "message_json", "rdata_to_text"]

_U64 = (1 << 64) - 1
_U16 = Struct(">H").unpack_from
_U16_ITER = Struct(">H").iter_unpack
_HEADER = Struct(">6H").unpack_from
_RR = Struct(">HHIH").unpack_from

# --- names libwdns gives to numbers ------------------------------------------------------------------


def _numbered(start: int, names: str) -> dict[int, str]:
    """Consecutive numbers from ``start`` named by the space-separated ``names``."""
    return dict(enumerate(names.split(), start))


_TYPES = {
    **_numbered(
        1,
        "A NS MD MF CNAME SOA MB MG MR NULL WKS PTR HINFO MINFO MX TXT RP AFSDB X25 ISDN RT NSAP NSAP-PTR "
        "SIG KEY PX GPOS AAAA LOC NXT EID NIMLOC SRV ATMA NAPTR KX CERT A6 DNAME SINK OPT APL DS SSHFP "
        "IPSECKEY RRSIG NSEC DNSKEY DHCID NSEC3 NSEC3PARAM TLSA",
    ),
    **_numbered(55, "HIP NINFO RKEY TALINK CDS CDNSKEY OPENPGPKEY CSYNC SVCB HTTPS"),
    **_numbered(99, "SPF UINFO UID GID UNSPEC NID L32 L64 LP EUI48 EUI64"),
    **_numbered(249, "TKEY TSIG IXFR AXFR MAILB MAILA ANY URI CAA"),
    32768: "TA",
    32769: "DLV",
}
_CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_RCODES = {
    **_numbered(
        0, "NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED YXDOMAIN YXRRSET NXRRSET NOTAUTH NOTZONE"
    ),
    16: "BADVERS",
}
_OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE"}
_PROTOS = {17: "UDP", 6: "TCP", 1: "ICMP"}
_QR_TYPES = {v.number: v.name for v in DnsQR.DESCRIPTOR.fields_by_name["type"].enum_type.values}
_CHECKSUMS = {v.number: v.name for v in DnsQR.DESCRIPTOR.fields_by_name["udp_checksum"].enum_type.values}
_SVC_KEYS = {
    **_numbered(0, "mandatory alpn no-default-alpn port ipv4hint ech ipv6hint"),
    0xFFFF: "invalid key",
}
#: RFC 8914 purposes libwdns prints after an Extended DNS Error code.
_EDE_PURPOSES = (
    "Other Error",
    "Unsupported DNSKEY Algorithm",
    "Unsupported DS Digest Type",
    "Stale Answer",
    "Forged Answer",
    "DNSSEC Indeterminate",
    "DNSSEC Bogus",
    "Signature Expired",
    "Signature Not Yet Valid",
    "DNSKEY Missing",
    "RRSIGs Missing",
    "No Zone Key Bit Set",
    "NSEC Missing",
    "Cached Error",
    "Not Ready",
    "Blocked",
    "Censored",
    "Filtered",
    "Prohibited",
    "Stale NXDomain Answer",
    "Not Authoritative",
    "Not Supported",
    "No Reachable Authority",
    "Network Error",
    "Invalid Data",
)

# --- the libwdns record table: RDATA field kinds per type --------------------------------------------

(_NAME, _BYTES, _B64, _BSTR, _OPTS, _I8, _I16, _RRTYPE, _I32, _IPV4, _IPV6, _EUI48, _EUI64) = range(13)
(_STRING, _SALT, _HASH, _REPSTRING, _IPV6PREFIX, _BITMAP, _SVCPARAMS) = range(13, 20)
#: Sizes of the fixed-size kinds.
_FIXED = {_I8: 1, _I16: 2, _RRTYPE: 2, _I32: 4, _IPV4: 4, _IPV6: 16, _EUI48: 6, _EUI64: 8}

_UN, _IN = False, True  # the descriptor applies to every class / to class IN only
_DESCR: dict[int, tuple[bool, tuple[int, ...]]] = {
    **{t: (_UN, (_NAME,)) for t in (2, 3, 4, 5, 7, 8, 9, 12, 39)},  # NS MD MF CNAME MB MG MR PTR DNAME
    6: (_UN, (_NAME, _NAME, _I32, _I32, _I32, _I32, _I32)),  # SOA
    10: (_UN, (_BYTES,)),  # NULL
    **{t: (_UN, (_STRING, _STRING)) for t in (13, 20)},  # HINFO ISDN
    **{t: (_UN, (_NAME, _NAME)) for t in (14, 17)},  # MINFO RP
    **{t: (_UN, (_I16, _NAME)) for t in (15, 18, 21)},  # MX AFSDB RT
    **{t: (_UN, (_REPSTRING,)) for t in (16, 99)},  # TXT SPF
    19: (_UN, (_STRING,)),  # X25
    30: (_UN, (_NAME, _BYTES)),  # NXT
    24: (_UN, (_I16, _I8, _I8, _I32, _I32, _I32, _I16, _NAME, _BYTES)),  # SIG
    1: (_IN, (_IPV4,)),  # A
    11: (_IN, (_I32, _I8, _BYTES)),  # WKS
    28: (_IN, (_IPV6,)),  # AAAA
    38: (_IN, (_IPV6PREFIX, _NAME)),  # A6
    36: (_IN, (_I16, _NAME)),  # KX
    26: (_IN, (_I16, _NAME, _NAME)),  # PX
    35: (_IN, (_I16, _I16, _STRING, _STRING, _STRING, _NAME)),  # NAPTR
    33: (_IN, (_I16, _I16, _I16, _NAME)),  # SRV
    **{t: (_UN, (_I16, _I8, _I8, _B64)) for t in (48, 60)},  # DNSKEY CDNSKEY
    46: (_UN, (_RRTYPE, _I8, _I8, _I32, _I32, _I32, _I16, _NAME, _B64)),  # RRSIG
    47: (_UN, (_NAME, _BITMAP)),  # NSEC
    **{t: (_UN, (_I16, _I8, _I8, _BYTES)) for t in (43, 59)},  # DS CDS
    50: (_UN, (_I8, _I8, _I16, _SALT, _HASH, _BITMAP)),  # NSEC3
    51: (_UN, (_I8, _I8, _I16, _SALT)),  # NSEC3PARAM
    52: (_UN, (_I8, _I8, _I8, _BYTES)),  # TLSA
    61: (_UN, (_B64,)),  # OPENPGPKEY
    62: (_UN, (_I32, _I16, _BITMAP)),  # CSYNC
    108: (_UN, (_EUI48,)),
    109: (_UN, (_EUI64,)),
    256: (_UN, (_I16, _I16, _BSTR)),  # URI
    **{t: (_IN, (_I16, _NAME, _SVCPARAMS)) for t in (64, 65)},  # SVCB HTTPS
    257: (_IN, (_I8, _STRING, _BSTR)),  # CAA
    TYPE_OPT: (_UN, (_OPTS,)),
}
#: One past the highest type in libwdns's table; types from here on, and gaps below, print generically.
_DESCR_LEN = max(_DESCR) + 1


class _RdataError(Exception):
    """The RDATA ends inside a field: libwdns appends `` ### PARSE ERROR ###`` to what it printed."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.text = " ### PARSE ERROR ###" if code is None else f" ### PARSE ERROR #{code} ###"


#: wdns_res_parse_error, the code libwdns prints when an EDNS option or SvcParam does not render.
_WDNS_RES_PARSE_ERROR = 12


# --- presentation of names, strings and RDATA --------------------------------------------------------


def _quoted(data: bytes) -> str:
    """A character-string as libwdns prints it: quoted, ``"`` and ``\\`` escaped, others as ``\\DDD``."""
    out = []
    for c in data:
        if c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return '"' + "".join(out) + '" '


def _printable(data: bytes) -> str:
    """Bytes as C's ``isprint`` sees them: printable ASCII as is, anything else as ``.``."""
    return "".join(chr(c) if 0x20 <= c <= 0x7E else "." for c in data)


def _b64(data: bytes) -> str:
    """libwdns's base64 for DNSSEC keys and signatures: a space after every 56 characters and at the end."""
    text = base64.b64encode(data).decode("ascii")
    return " ".join(text[i : i + 56] for i in range(0, len(text), 56)) + " "


def _type_text(rrtype: int) -> str:
    return _TYPES.get(rrtype) or f"TYPE{rrtype}"


def _class_text(rrclass: int) -> str:
    return _CLASSES.get(rrclass) or f"CLASS{rrclass}"


def _uname_len(data: bytes, pos: int, end: int) -> int:
    """Length of the uncompressed name at ``data[pos:]`` (``wdns_len_uname``)."""
    start = pos
    while True:
        if pos >= end:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        c = data[pos]
        pos += c + 1
        if c == 0:
            return pos - start
        if c > 63 or pos > end:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)


def _option_label(code: int) -> str:
    return {8: "CLIENT-SUBNET:", 15: "EDE:"}.get(code, f"OPT={code}:")


def _option_data(code: int, data: bytes) -> str:
    """One EDNS option's data as libwdns prints it after its label (dig's style)."""
    if code == 8:  # family, source and scope prefix lengths, then the (truncated) address
        size = {1: 4, 2: 16}.get(data[0] << 8 | data[1]) if len(data) >= 4 else None
        addr = data[4:]
        if size is None or not addr or len(addr) > size:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        af = socket.AF_INET if size == 4 else socket.AF_INET6
        return f"{socket.inet_ntop(af, addr.ljust(size, bytes(1)))}/{data[2]}/{data[3]}"
    if code == 15:  # INFO-CODE, its purpose, the extra text
        if len(data) < 2:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        info = data[0] << 8 | data[1]
        purpose = f" ({_EDE_PURPOSES[info]})" if info < len(_EDE_PURPOSES) else ""
        return f"{info}{purpose}: ({_printable(data[2:])})"
    return "".join(f"{c:02x} " for c in data) + f'("{_printable(data)}")'


def _svcparam(key: int, value: bytes) -> str:
    """One SvcParam value as libwdns prints it after ``key=``."""
    if key == 0:  # mandatory: key names
        if len(value) % 2:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        keys = [_SVC_KEYS.get(k, f"key{k}") for (k,) in _U16_ITER(value)]
        return ",".join(keys) + " " if keys else ""
    if key == 2:  # no-default-alpn
        if value:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        return " "
    if key == 3:  # port
        if len(value) != 2:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        return f"{_U16(value)[0]} "
    if key == 5:  # ech: base64, then a second space
        return _b64(value) + " "
    if key in (4, 6):  # ipv4hint, ipv6hint
        size, af = (4, socket.AF_INET) if key == 4 else (16, socket.AF_INET6)
        if len(value) % size:
            raise _RdataError(_WDNS_RES_PARSE_ERROR)
        hints = [socket.inet_ntop(af, value[i : i + size]) for i in range(0, len(value), size)]
        return ",".join(hints) + " " if hints else ""
    if key == 1:  # alpn: quoted, comma-separated ids
        ids, p = [], 0
        while p < len(value):
            n = value[p]
            if p + 1 + n > len(value):
                raise _RdataError(_WDNS_RES_PARSE_ERROR)
            ids.append(_alpn_id(value[p + 1 : p + 1 + n]))
            p += 1 + n
        return '"' + ",".join(ids) + ('"' if ids else "") + " "
    return _quoted(value)


def _alpn_id(data: bytes) -> str:
    out = []
    for c in data:
        if c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\\\\\")
        elif c == 0x2C:
            out.append("\\\\,")
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def _bitmap(data: bytes, p: int, end: int, out: list[str]) -> int:
    """The type bitmap windows at ``data[p:end]`` as type names; returns where it stopped."""
    if end - p < 2:
        raise _RdataError
    while end - p >= 2:
        window, length = data[p], data[p + 1]
        p += 2
        if end - p < length:
            raise _RdataError
        for i in range(length * 8):
            if data[p + i // 8] & (0x80 >> (i % 8)):
                out.append(_type_text((window << 8) | i) + " ")
        p += length
    return p


def rdata_to_text(rdata: bytes, rrtype: int, rrclass: int) -> str:
    """Uncompressed RDATA in presentation format, as ``wdns_rdata_to_str`` writes it.

    Unknown types print generically (``\\# LEN HEX``); RDATA that ends inside a field prints as far as
    it goes followed by `` ### PARSE ERROR ###``. For OPT (EDNS options) every option starts a line.
    """
    descr = _DESCR.get(rrtype)
    if descr is None:
        return f"\\# {len(rdata)} " + rdata.hex()
    in_only, kinds = descr
    if in_only and rrclass != 1:
        return ""
    out: list[str] = []
    p, end = 0, len(rdata)
    try:
        for kind in kinds:
            if p == end:
                break
            p = _field(rdata, p, end, kind, out)
    except _RdataError as exc:
        return "".join(out) + exc.text
    text = "".join(out)
    return text[:-1] if text.endswith(" ") else text


def _field(data: bytes, p: int, end: int, kind: int, out: list[str]) -> int:
    """Print one RDATA field of ``kind`` at ``data[p:end]``; returns the offset after it."""
    size = _FIXED.get(kind)
    if size is not None:
        if end - p < size:
            raise _RdataError
        raw = data[p : p + size]
        if kind == _IPV4:
            out.append(socket.inet_ntop(socket.AF_INET, raw) + " ")
        elif kind == _IPV6:
            out.append(socket.inet_ntop(socket.AF_INET6, raw) + " ")
        elif kind in (_EUI48, _EUI64):
            out.append("-".join(f"{c:02x}" for c in raw))
        elif kind == _RRTYPE:
            out.append(_type_text(_U16(raw)[0]) + " ")
        else:
            out.append(f"{int.from_bytes(raw, 'big')} ")
        return p + size
    if kind == _NAME:
        n = _uname_len(data, p, end)
        out.append(qname_to_text(data[p : p + n]) + " ")
        return p + n
    if kind == _BYTES:
        out.append(data[p:end].hex().upper())
        return end
    if kind == _B64:
        out.append(_b64(data[p:end]))
        return end
    if kind == _BSTR:
        out.append(_quoted(data[p:end]))
        return end
    if kind in (_STRING, _SALT, _HASH):
        n = data[p]
        if end - p - 1 < n:
            raise _RdataError
        raw = data[p + 1 : p + 1 + n]
        if kind == _STRING:
            out.append(_quoted(raw))
        elif kind == _SALT:
            out.append((raw.hex() or "-") + " ")
        else:
            out.append(base64.b32hexencode(raw).decode("ascii").rstrip("=") + " " if raw else "0 ")
        return p + 1 + n
    if kind == _REPSTRING:
        while p < end:
            n = data[p]
            if end - p - 1 < n:
                raise _RdataError
            out.append(_quoted(data[p + 1 : p + 1 + n]))
            p += 1 + n
        return p
    if kind == _IPV6PREFIX:
        plen = data[p]
        if plen > 128:
            raise _RdataError
        n = (128 - plen + 7) // 8
        if end - p < 1 + n:
            raise _RdataError
        out.append(f"{plen} ")
        if n:
            addr = data[p + 1 : p + 1 + n].rjust(16, b"\0")
            out.append(socket.inet_ntop(socket.AF_INET6, addr) + " ")
        return p + 1 + n
    if kind == _BITMAP:
        return _bitmap(data, p, end, out)
    if kind == _SVCPARAMS:
        while p < end:
            if end - p < 2:
                raise _RdataError
            key = _U16(data, p)[0]
            if key == 0xFFFF:
                raise _RdataError
            out.append(_SVC_KEYS.get(key, f"key{key}") + ("" if key == 2 else "="))
            if end - p < 4 or end - p - 4 < _U16(data, p + 2)[0]:
                raise _RdataError
            vlen = _U16(data, p + 2)[0]
            out.append(_svcparam(key, data[p + 4 : p + 4 + vlen]))
            p += 4 + vlen
        return p
    # _OPTS: EDNS options, each on its own line
    while p < end:
        if end - p < 2:
            raise _RdataError
        code = _U16(data, p)[0]
        out.append("\n" + _option_label(code))
        if end - p < 4 or end - p - 4 < _U16(data, p + 2)[0]:
            raise _RdataError
        length = _U16(data, p + 2)[0]
        out.append(" ")
        out.append(_option_data(code, data[p + 4 : p + 4 + length]))
        p += 4 + length
    return p


# --- DNS messages as libwdns parses them -------------------------------------------------------------


def _unpack_name(wire: bytes, pos: int) -> tuple[bytes, int]:
    """The name at ``wire[pos:]`` uncompressed, and the offset after it in place (the message has been
    validated, so every pointer points backwards at a valid name)."""
    out = bytearray()
    after = -1
    while True:
        c = wire[pos]
        if c >= 0xC0:
            if after < 0:
                after = pos + 2
            pos = (c & 0x3F) << 8 | wire[pos + 1]
            continue
        out += wire[pos : pos + c + 1]
        pos += c + 1
        if c == 0:
            return bytes(out), (pos if after < 0 else after)


def _uncompress_rdata(wire: bytes, pos: int, end: int, rrtype: int, rrclass: int) -> bytes:
    """The RDATA at ``wire[pos:end]`` with its name fields uncompressed, as ``_wdns_parse_rdata`` keeps it."""
    descr = _DESCR.get(rrtype)
    if descr is None or (descr[0] and rrclass != 1) or _NAME not in descr[1]:
        return wire[pos:end]
    out = bytearray()
    for kind in descr[1]:
        if pos == end:
            break
        if kind == _NAME:
            name, pos = _unpack_name(wire, pos)
            out += name
            continue
        size = _FIXED.get(kind)
        if size is None:  # the names of these types are followed by fixed fields or by the rest
            size = end - pos if kind in (_BYTES, _B64, _BITMAP, _SVCPARAMS) else wire[pos] + 1
        out += wire[pos : pos + size]
        pos += size
    return bytes(out)


@dataclass
class _RRset:
    name: bytes
    ttl: int
    rrtype: int
    rrclass: int
    rdatas: list[bytes] = field(default_factory=list)


@dataclass
class _Message:
    """What ``wdns_parse_message`` fills in: the header, the last OPT record's EDNS fields, and the
    sections as RRsets (a question is one entry each; other RRs join the RRset of the same owner name,
    case-insensitively, type and class, which keeps the lowest TTL)."""

    id: int
    flags: int
    rcode: int
    sections: tuple[list[_RRset], ...] = field(default_factory=lambda: ([], [], [], []))
    #: (UDP size, version, flags, options or None for an OPT question) of the last type-41 record
    edns: tuple[int, int, int, bytes | None] | None = None


def _parse_message(wire: bytes) -> _Message | None:
    try:
        scan_opt(wire)
    except DnsWireError:
        return None
    msg_id, flags, *counts = _HEADER(wire, 0)
    msg = _Message(msg_id, flags, flags & 0xF)
    pos, n = 12, len(wire)
    for sec, count in enumerate(counts):
        for _ in range(count):
            if pos == n:
                return msg
            name, pos = _unpack_name(wire, pos)
            if sec == 0:
                rrtype, rrclass = _HEADER(wire, pos - 8)[4:]
                ttl, rdata = 0, None
                pos += 4
            else:
                rrtype, rrclass, ttl, rdlen = _RR(wire, pos)
                pos += 10
                rdata = _uncompress_rdata(wire, pos, pos + rdlen, rrtype, rrclass)
                pos += rdlen
            if rrtype == TYPE_OPT:
                msg.edns = (rrclass, ttl >> 16 & 0xFF, ttl & 0xFFFF, rdata)
                msg.rcode |= ttl >> 16 & 0xFF00
            else:
                _insert(msg.sections[sec], name, ttl, rrtype, rrclass, rdata)
    return msg


def _insert(
    rrsets: list[_RRset], name: bytes, ttl: int, rrtype: int, rrclass: int, rdata: bytes | None
) -> None:
    if rdata is not None:
        key = name.lower()
        for rrset in reversed(rrsets):
            if rrset.rrtype == rrtype and rrset.rrclass == rrclass and rrset.name.lower() == key:
                rrset.rdatas.append(rdata)
                rrset.ttl = min(rrset.ttl, ttl)
                return
    rrsets.append(_RRset(name, ttl, rrtype, rrclass, [] if rdata is None else [rdata]))


_FLAG_BITS = (("qr", 15), ("aa", 10), ("tc", 9), ("rd", 8), ("ra", 7), ("ad", 5), ("cd", 4))


def message_json(wire: bytes) -> dict | None:
    """A DNS message as libnmsg's dnsqr module renders it in ``query_json``/``response_json``, or None
    when libwdns does not parse it."""
    msg = _parse_message(wire)
    if msg is None:
        return None
    opcode = msg.flags >> 11 & 0xF
    header: dict = {
        "opcode": _OPCODES.get(opcode, opcode),
        "rcode": _RCODES.get(msg.rcode, msg.rcode),
        "id": msg.id,
        "flags": [name for name, bit in _FLAG_BITS if msg.flags >> bit & 1],
    }
    if msg.edns is not None:
        size, version, flags, options = msg.edns
        edns: dict = {"version": version, "flags": ["do"] if flags & 0x8000 else [], "udp": size}
        if options is not None:
            edns["options"] = [o for o in rdata_to_text(options, TYPE_OPT, 0).split("\n") if o]
        header["opt"] = {"edns": edns}
    out: dict = {"header": header}
    for sec, title in enumerate(("question", "answer", "authority", "additional")):
        out[title] = [_rrset_json(r, sec == 0) for r in msg.sections[sec]]
    return out


def _rrset_json(rrset: _RRset, question: bool) -> dict:
    name = qname_to_text(rrset.name)
    rrclass = _class_text(rrset.rrclass)
    # nmsg's writer formats an unnamed type with the class number: "TYPE%u", rrset->rrclass
    rrtype = _TYPES.get(rrset.rrtype) or f"TYPE{rrset.rrclass}"
    if question:
        return {"qname": name, "qclass": rrclass, "qtype": rrtype}
    rdata = [rdata_to_text(r, rrset.rrtype, rrset.rrclass) for r in rrset.rdatas]
    return {"rrname": name, "rrttl": rrset.ttl, "rrclass": rrclass, "rrtype": rrtype, "rdata": rdata}


# --- the base:dnsqr record ---------------------------------------------------------------------------


def _b64_or_null(data: bytes) -> str | None:
    """A bytes field: protobuf-c leaves an empty one's data pointer NULL, which libnmsg prints as null."""
    return base64.b64encode(data).decode("ascii") if data else None


def _ip(raw: bytes) -> str | None:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def _delay(rec: DnsQR) -> float | None:
    """Seconds from the query to the (latest) response, as ``dnsqr_get_delay`` computes it."""
    qs, qn, rs, rn = rec.query_time_sec, rec.query_time_nsec, rec.response_time_sec, rec.response_time_nsec
    if rec.type != 1 or len(qs) != 1 or len(qn) != 1 or not rs or len(rs) != len(rn):
        return None
    delays = []
    for sec, nsec in zip(rs, rn, strict=True):
        dsec, dnsec = sec - qs[0], nsec - qn[0]
        if dnsec < 0:
            dsec, dnsec = dsec - 1, dnsec + 1_000_000_000
        delays.append(dsec + dnsec / 1e9)
    return delays[0] if len(delays) == 1 else max(0.0, *delays)


def _time_text(sec: int, nsec: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.nnnnnnnnn`` in UTC, for any second count (proleptic Gregorian calendar)."""
    days, rem = divmod(sec, 86400)
    # days since 1970-01-01 -> civil date (H. Hinnant's algorithm)
    z = days + 719468
    era, doe = divmod(z, 146097)
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day, month = doy - (153 * mp + 2) // 5 + 1, mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return (
        f"{year % 10000:04d}-{month:02d}-{day:02d} "
        f"{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}.{nsec % 1_000_000_000:09d}"
    )


def dnsqr_json(payload: bytes) -> dict:
    """One serialized NmsgPayload holding a base:dnsqr record as ``nmsgtool -J`` shows it (see module doc).

    Raises :class:`PayloadError` for another message type or a record that does not decode.
    """
    env = payload_fields(payload)
    if (env.vid, env.msgtype) != (VID_BASE, MSGTYPE_DNSQR):
        raise PayloadError(f"not a base:dnsqr payload (vid {env.vid}, msgtype {env.msgtype})")
    rec = decode_dnsqr(payload[env.data_start : env.data_end])
    line: dict = {"time": _time_text(env.time_sec, env.time_nsec), "vname": "base", "mname": "dnsqr"}
    if env.source:
        line["source"] = f"{env.source:08x}"
    if env.operator:
        line["operator"] = env.operator
    if env.group:
        line["group"] = env.group
    line["message"] = _record_json(rec)
    return line


def _record_json(rec: DnsQR) -> dict:
    has = rec.HasField
    m: dict = {"type": _QR_TYPES.get(rec.type, rec.type)}
    for name in ("query_ip", "response_ip"):
        if has(name):
            m[name] = _ip(getattr(rec, name))
    if has("proto"):
        proto = rec.proto & 0xFFFF
        m["proto"] = _PROTOS.get(proto) or str(proto)
    for name in ("query_port", "response_port", "id"):
        if has(name):
            m[name] = getattr(rec, name) & 0xFFFF
    if has("qname"):
        m["qname"] = qname_to_text(rec.qname) if 0 < len(rec.qname) <= 255 else ""
    if has("qclass"):
        m["qclass"] = _class_text(rec.qclass & 0xFFFF)
    if has("qtype"):
        m["qtype"] = _type_text(rec.qtype & 0xFFFF)
    if has("rcode"):
        m["rcode"] = _RCODES.get(rec.rcode & 0xFFFF) or str(rec.rcode & 0xFFFF)
    for side in ("query", "response"):
        m[f"{side}_packet"] = [base64.b64encode(p).decode("ascii") for p in getattr(rec, f"{side}_packet")]
        for unit in ("sec", "nsec"):
            m[f"{side}_time_{unit}"] = [v & _U64 for v in getattr(rec, f"{side}_time_{unit}")]
    if has("timeout"):
        m["timeout"] = rec.timeout
    delay = _delay(rec)
    if delay is not None:
        m["delay"] = delay
    if has("udp_checksum"):
        m["udp_checksum"] = _CHECKSUMS.get(rec.udp_checksum, rec.udp_checksum)
    if has("resolver_address_zeroed"):
        m["resolver_address_zeroed"] = rec.resolver_address_zeroed
    query, response = derive_query(rec), derive_response(rec)
    for side, wire in (("query", query), ("response", response)):
        if wire is not None:
            m[side] = base64.b64encode(wire).decode("ascii")
            m[f"{side}_json"] = message_json(wire)
    if response is not None:
        m["dns"] = m["response"]
    for name in ("tcp", "icmp"):
        if has(name):
            m[name] = _b64_or_null(getattr(rec, name))
    return m


# --- the text of a line ------------------------------------------------------------------------------


def _c_double(value: float) -> str:
    """A double as libnmsg prints it: ``"%.18f"``, trailing zeros trimmed down to one after the point."""
    text = f"{value:.18f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


_string = json.encoder.encode_basestring  # escapes exactly what nmsg's JSON writer escapes


def encode(value: object) -> str:
    """Compact JSON as libnmsg writes it: keys in order, no spaces, doubles as :func:`_c_double`.

    Strings are escaped like ``nmsg_strbuf_append_str_json`` (``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t``,
    other control characters as ``\\u00xx``, everything else as is)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(encode, value)) + "]"
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _c_double(value)
    return str(value)


def json_line(payload: bytes) -> str:
    """The line ``nmsgtool -J`` prints for one base:dnsqr payload (without the newline)."""
    return encode(dnsqr_json(payload))


class JsonLinesWriter:
    """Writes payloads as ``nmsgtool -J`` lines to a binary file; ``close()`` flushes, the caller closes."""

    def __init__(self, fh: BinaryIO, render: Callable[[bytes], str] = json_line) -> None:
        self._fh = fh
        self._render = render
        self.payloads_written = 0

    def write(self, payload: bytes) -> None:
        self._fh.write(self._render(payload).encode("utf-8") + b"\n")
        self.payloads_written += 1

    def close(self) -> None:
        self._fh.flush()
