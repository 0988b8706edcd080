"""Packet records of a pcap or pcapng file, with exactly the fields nmsgtool's capture path looks at.

dpkt's own readers hand out a float timestamp and drop the original packet length; nmsgtool needs both
(exact seconds/microseconds, and ``caplen != len`` means "ignore the packet"), so this module walks the
records itself with dpkt's header classes. Timestamps are truncated to microseconds because libpcap's
``pcap_open_offline`` delivers microsecond precision even for nanosecond files, and nmsgtool then sets
``tv_nsec = tv_usec * 1000``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dpkt
from dpkt import pcap as dpcap
from dpkt import pcapng as dpcapng

from nmsgdns.errors import PcapError

_PCAPNG_MAGIC = 0x0A0D0D0A


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One captured frame: time (microsecond precision, as nanoseconds), link type, lengths, bytes."""

    ts_sec: int
    ts_nsec: int
    linktype: int
    wire_len: int
    frame: bytes


def read_pcap(path: str | Path) -> Iterator[PcapRecord]:
    """Yield the records of a classic pcap or pcapng file.

    Raises :class:`PcapError` naming the file when it is not a capture file or ends mid-record; records
    before the damage have already been yielded, as libpcap would have delivered them.
    """
    name = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below, across yields
    except OSError as exc:
        raise PcapError(f"{name}: cannot open: {exc}") from exc
    try:
        head = fh.read(4)
        if len(head) < 4:
            raise PcapError(f"{name}: not a pcap file (only {len(head)} bytes)")
        fh.seek(0)
        if struct.unpack(">I", head)[0] == _PCAPNG_MAGIC:
            yield from _read_pcapng(fh, name)
        else:
            yield from _read_classic(fh, name)
    finally:
        fh.close()


def _read_classic(fh: BinaryIO, name: str) -> Iterator[PcapRecord]:
    buf = fh.read(dpcap.FileHdr.__hdr_len__)
    if len(buf) < dpcap.FileHdr.__hdr_len__:
        raise PcapError(f"{name}: truncated pcap file header")
    magic = dpcap.FileHdr(buf).magic
    if magic not in dpcap.MAGIC_TO_PKT_HDR:
        raise PcapError(f"{name}: not a pcap file (magic 0x{magic:08x})")
    little = magic in (dpcap.PMUDPCT_MAGIC, dpcap.PMUDPCT_MAGIC_NANO, dpcap.PACPDOM_MAGIC)
    fhdr = dpcap.LEFileHdr(buf) if little else dpcap.FileHdr(buf)
    nano = magic in (dpcap.TCPDUMP_MAGIC_NANO, dpcap.PMUDPCT_MAGIC_NANO)
    hdr_cls = dpcap.MAGIC_TO_PKT_HDR[magic]
    hdr_len = hdr_cls.__hdr_len__
    linktype = fhdr.linktype & 0x0FFFFFFF  # upper bits carry FCS information, not the link type
    offset = dpcap.FileHdr.__hdr_len__
    while True:
        raw = fh.read(hdr_len)
        if not raw:
            return
        if len(raw) < hdr_len:
            raise PcapError(f"{name}: truncated packet header at offset {offset}")
        hdr = hdr_cls(raw)
        frame = fh.read(hdr.caplen)
        if len(frame) < hdr.caplen:
            raise PcapError(f"{name}: truncated packet data at offset {offset}")
        usec = hdr.tv_usec // 1000 if nano else hdr.tv_usec
        yield PcapRecord(hdr.tv_sec, usec * 1000, linktype, hdr.len, frame)
        offset += hdr_len + hdr.caplen


def _read_pcapng(fh: BinaryIO, name: str) -> Iterator[PcapRecord]:
    """Section header, interface description and enhanced packet blocks; other blocks are skipped."""
    little = True
    interfaces: list[tuple[int, int, int]] = []  # (linktype, units per second, offset seconds)
    offset = 0
    while True:
        head = fh.read(12)
        if not head:
            return
        if len(head) < 12:
            raise PcapError(f"{name}: truncated pcapng block at offset {offset}")
        btype = struct.unpack(">I", head[:4])[0]
        if btype == _PCAPNG_MAGIC:
            bom = head[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                little = True
            elif bom == b"\x1a\x2b\x3c\x4d":
                little = False
            else:
                raise PcapError(f"{name}: bad pcapng byte-order magic at offset {offset}")
            interfaces = []
        order = "<" if little else ">"
        btype, blen = struct.unpack(order + "II", head[:8])
        if blen < 12 or blen % 4:
            raise PcapError(f"{name}: bad pcapng block length {blen} at offset {offset}")
        rest = fh.read(blen - 12)
        if len(rest) < blen - 12:
            raise PcapError(f"{name}: truncated pcapng block at offset {offset}")
        block = head + rest
        try:
            if btype == dpcapng.PCAPNG_BT_IDB:
                interfaces.append(_interface(block, little))
            elif btype == dpcapng.PCAPNG_BT_EPB:
                epb = dpcapng.EnhancedPacketBlockLE(block) if little else dpcapng.EnhancedPacketBlock(block)
                if epb.iface_id >= len(interfaces):
                    raise PcapError(f"{name}: packet for undeclared interface at offset {offset}")
                linktype, units, tsoffset = interfaces[epb.iface_id]
                stamp = (epb.ts_high << 32) | epb.ts_low
                sec, frac = divmod(stamp, units)
                usec = frac * 1_000_000 // units
                yield PcapRecord(sec + tsoffset, usec * 1000, linktype, epb.pkt_len, bytes(epb.pkt_data))
        except (dpkt.UnpackError, struct.error) as exc:
            raise PcapError(f"{name}: malformed pcapng block at offset {offset}: {exc}") from exc
        offset += blen


def _interface(block: bytes, little: bool) -> tuple[int, int, int]:
    idb = dpcapng.InterfaceDescriptionBlockLE(block) if little else dpcapng.InterfaceDescriptionBlock(block)
    units = 1_000_000
    tsoffset = 0
    for opt in idb.opts:
        if opt.code == dpcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
            value = opt.data[0]
            units = 2 ** (value & 0x7F) if value & 0x80 else 10 ** (value & 0x7F)
        elif opt.code == dpcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
            tsoffset = struct.unpack(("<" if little else ">") + "q", opt.data[:8])[0]
    return idb.linktype, units, tsoffset
