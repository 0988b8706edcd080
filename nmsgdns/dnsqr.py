"""The base:dnsqr record: decoding, and the derived ``query``/``response`` exactly as libnmsg 1.3.3.

``query`` and ``response`` are not on the wire; libnmsg's dnsqr module computes them from the captured
IP packets when asked (``dnsqr_get_query`` / ``dnsqr_get_response``), and the reference EDNS0 filter works
on those. The conditions under which each exists are part of the rule:

- ``query``: exactly one query packet, and a ``query_ip`` of 4 or 16 bytes choosing IPv4 or IPv6.
- ``response``: at least one response packet and a non-empty ``response_ip``. One packet is parsed like
  the query (version chosen by the ``response_ip`` length); several are IP fragments, reassembled first
  (version chosen by the packets themselves, see :func:`nmsgdns.ippacket.reassemble`).
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from nmsgdns.errors import PayloadError
from nmsgdns.ippacket import ip_to_text, reassemble, udp_payload
from nmsgdns.native import load_extension
from nmsgdns.proto.dnsqr_pb2 import DnsQR

__all__ = [
    "DnsQR",
    "decode_dnsqr",
    "derive_query",
    "derive_response",
    "ip_to_text",
    "qname_to_text",
    "qname_to_text_py",
]


def decode_dnsqr(data: bytes) -> DnsQR:
    """Parse a serialized DnsQR (the ``payload`` bytes of a vid 1 / msgtype 9 NmsgPayload).

    Uses the upb-backed generated class directly (~1.5M records/s); raises :class:`PayloadError` when
    the bytes are not a valid DnsQR, including a missing required ``type``, which libnmsg also rejects.
    """
    try:
        rec = DnsQR.FromString(data)
    except DecodeError as exc:
        raise PayloadError(f"base:dnsqr payload does not decode: {exc}") from exc
    if not rec.HasField("type"):
        # upb does not enforce proto2 `required`; protobuf-c (libnmsg) refuses such a record.
        raise PayloadError("base:dnsqr payload lacks the required field `type`")
    return rec


def derive_query(rec: DnsQR) -> bytes | None:
    """The DNS message of the record's query packet, or None when libnmsg has no ``query`` field."""
    if len(rec.query_packet) != 1:
        return None
    n = len(rec.query_ip)
    if n == 4:
        return udp_payload(rec.query_packet[0], False)
    if n == 16:
        return udp_payload(rec.query_packet[0], True)
    return None


def derive_response(rec: DnsQR) -> bytes | None:
    """The DNS message of the record's response packet(s), or None when libnmsg has no ``response``."""
    packets = rec.response_packet
    if not packets or not rec.response_ip:
        # protobuf-c leaves the data pointer NULL for an absent or empty bytes field; libnmsg checks it.
        return None
    if len(packets) == 1:
        n = len(rec.response_ip)
        if n == 4:
            return udp_payload(packets[0], False)
        if n == 16:
            return udp_payload(packets[0], True)
        return None
    assembled = reassemble(packets)
    if assembled is None:
        return None
    return udp_payload(*assembled)


#: str.translate table for one label decoded as latin-1: the bytes nmsgtool escapes, and their escapes
_LABEL_ESCAPES = {
    c: "\\" + chr(c) if c in (0x2E, 0x5C) else f"\\{c:03d}"
    for c in range(256)
    if c in (0x2E, 0x5C) or not 0x21 <= c <= 0x7E
}


def qname_to_text_py(wire: bytes) -> str:
    """Render an uncompressed wire-format name like nmsgtool (``wdns_domain_to_str``).

    Bytes ``!``..``~`` are literal except ``.`` and ``\\`` (backslash-escaped); others become ``\\DDD``.
    The root name is ``.``; a name cut short is rendered as far as it goes. Each label is escaped by one
    ``str.translate`` (C) rather than a Python loop per byte: this runs for every failure the worker sends.
    The reference for the C version (``nmsgdns/_wirescan.c``) that :data:`qname_to_text` is when built.
    """
    out: list[str] = []
    n = len(wire)
    i = 0
    while i < n and wire[i]:
        end = i + 1 + wire[i]
        out.append(wire[i + 1 : end].decode("latin-1").translate(_LABEL_ESCAPES))
        out.append(".")
        i = end
    return "".join(out) or "."


_ext = load_extension("_wirescan")
if _ext is not None:
    _ext.configure_dnsqr(qname_to_text_py)
#: :func:`qname_to_text_py`, or its C transcription (same text) when the extension is built: the Python
#: version was ~3 us of the ~5 us classify_failure spends on each failure the worker sends.
qname_to_text: Callable[[bytes], str] = qname_to_text_py if _ext is None else _ext.qname_to_text
