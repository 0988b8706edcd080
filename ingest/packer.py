"""Re-packing payloads into the raw topic's containers, and the vid/msgtype gate in front of it.

The raw topic carries one NMSG container per Kafka record (architecture.md): a container of a few hundred
records spreads the per-event cost of the Faust consumer. Inputs arrive in containers of any size (1 MiB
from files, 512-8192 bytes from sockets), so ingest re-packs. It does so by *slicing*: each payload is
already the exact bytes of one serialized ``NmsgPayload``, so a container body is just the concatenation
of ``0x0a <varint length> <payload>`` for each one. Nothing is decoded or re-encoded, which is what keeps
file replay above 400k records/s in one Python process.
"""

from __future__ import annotations

import operator
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from nmsgdns.container import payload_crc
from nmsgdns.errors import PayloadError
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE, encode_varint, payload_type

_MAGIC = b"NMSG"
_FLAGS_NONE_V2 = b"\x00\x02"
#: Container header: magic, flags, version, 4-byte body length.
HEADER_SIZE = 10
#: Largest body librdkafka's default message.max.bytes (1,000,000) leaves room for, with headroom for the
#: record overhead; containers above it would fail delivery with MSG_SIZE_TOO_LARGE.
DEFAULT_CONTAINER_BYTES = 900_000
DEFAULT_CONTAINER_RECORDS = 1000
#: libnmsg writes ``08 01 10 09`` (vid 1, msgtype 9) first: recognising it costs one comparison.
_DNSQR_PREFIX = bytes((0x08, VID_BASE, 0x10, MSGTYPE_DNSQR))


#: ``0x0a`` (field 1, length-delimited) plus the length varint for every payload shorter than 16 KiB:
#: a list index instead of a varint encode per payload.
_PREFIX_TABLE = [b"\x0a" + encode_varint(n) for n in range(1 << 14)]


def _payload_prefix(length: int) -> bytes:
    if length < 16384:
        return _PREFIX_TABLE[length]
    return b"\x0a" + encode_varint(length)


def _crc_field(payload: bytes) -> bytes:
    """``payload_crcs`` entry for one payload: field 2, CRC32C of field 5, byte-swapped as libnmsg does."""
    return b"\x10" + encode_varint(payload_crc(payload))


@dataclass(slots=True)
class Packed:
    """One finished container and how many records it holds (delivery callbacks count records)."""

    container: bytes
    records: int


@dataclass
class ContainerBuilder:
    """Accumulates payloads and cuts a container at ``max_records`` records or ``max_bytes`` body bytes.

    A single payload larger than ``max_bytes`` still gets a container of its own: splitting it would need
    NMSG fragments, which the raw topic's consumers need not handle.
    ``crcs`` adds ``payload_crcs`` (what nmsgtool writes to files); off by default because Kafka already
    checksums its record batches and the CRC costs a field walk per payload.
    """

    max_records: int = DEFAULT_CONTAINER_RECORDS
    max_bytes: int = DEFAULT_CONTAINER_BYTES
    crcs: bool = False
    _pieces: list[bytes] = field(default_factory=list)
    _crc_pieces: list[bytes] = field(default_factory=list)
    _size: int = 0
    _count: int = 0
    #: monotonic time the oldest pending payload arrived, so the caller can bound container latency
    oldest: float | None = None

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 64:
            raise ValueError("container limits must allow at least one record and 64 bytes")

    @property
    def pending(self) -> int:
        """Records waiting for the next container."""
        return self._count

    def add(self, payloads: list[bytes]) -> list[Packed]:
        """Append payloads; return the containers they completed (usually none or one).

        The hot path works per container, not per payload: entry sizes and their running sum are built
        by C-level ``map``/``accumulate``, each cut point is found by ``bisect``, and a container's pieces
        are interleaved by slice assignment. That is what keeps packing well under a microsecond a record.
        """
        if not payloads:
            return []
        now = time.monotonic()
        if self.crcs:
            return self._add_with_crcs(payloads, now)
        lens = list(map(len, payloads))
        try:
            prefixes = list(map(_PREFIX_TABLE.__getitem__, lens))
        except IndexError:
            prefixes = list(map(_payload_prefix, lens))
        ends = list(accumulate(map(operator.add, lens, map(len, prefixes))))
        out: list[Packed] = []
        n = len(payloads)
        i = 0
        while i < n:
            base = ends[i - 1] if i else 0
            room_records = self.max_records - self._count
            # Largest j with payloads[i:j] inside the bytes left (at least one when the builder is empty).
            j = bisect_right(ends, base + self.max_bytes - self._size, i, min(n, i + room_records))
            if j == i and self._count == 0:
                j = i + 1
            if j > i:
                if not self._count:
                    self.oldest = now
                pieces: list[bytes] = [b""] * (2 * (j - i))
                pieces[0::2] = prefixes[i:j]
                pieces[1::2] = payloads[i:j]
                self._pieces.extend(pieces)
                self._size += ends[j - 1] - base
                self._count += j - i
            if j < n or self._count >= self.max_records:
                out.append(self._cut())
            i = j
        return out

    def _add_with_crcs(self, payloads: list[bytes], now: float) -> list[Packed]:
        out: list[Packed] = []
        for payload in payloads:
            prefix = _payload_prefix(len(payload))
            crc = _crc_field(payload)
            grown = len(prefix) + len(payload) + len(crc)
            if self._count and self._size + grown > self.max_bytes:
                out.append(self._cut())
            if not self._count:
                self.oldest = now
            self._pieces += (prefix, payload)
            self._crc_pieces.append(crc)
            self._size += grown
            self._count += 1
            if self._count >= self.max_records:
                out.append(self._cut())
        return out

    def flush(self) -> list[Packed]:
        """The partial container, if any records are pending."""
        return [self._cut()] if self._count else []

    def _cut(self) -> Packed:
        header = _MAGIC + _FLAGS_NONE_V2 + self._size.to_bytes(4, "big")
        parts = [header, *self._pieces, *self._crc_pieces]
        packed = Packed(b"".join(parts), self._count)
        self._pieces = []
        self._crc_pieces = []
        self._size = 0
        self._count = 0
        self.oldest = None
        return packed


@dataclass
class DnsqrGate:
    """Keeps base:dnsqr payloads; counts what it drops, by reason, instead of passing it on silently."""

    not_dnsqr: int = 0
    bad_payload: int = 0

    def keep(self, payloads: list[bytes]) -> list[bytes]:
        """The base:dnsqr payloads of ``payloads``, in order.

        Like the rest of ingest this never parses the record itself: a payload with libnmsg's dnsqr
        envelope is passed on, and the filter downstream counts records whose body does not decode.
        """
        prefix = _DNSQR_PREFIX
        kept = [p for p in payloads if p[:4] == prefix]
        if len(kept) == len(payloads):
            return kept
        # Slow path only for batches holding something else: decide each payload properly.
        kept = []
        for p in payloads:
            if p[:4] == prefix:
                kept.append(p)
                continue
            try:
                vid, msgtype = payload_type(p)
            except PayloadError:
                self.bad_payload += 1
                continue
            if vid == VID_BASE and msgtype == MSGTYPE_DNSQR:
                kept.append(p)
            else:
                self.not_dnsqr += 1
        return kept

    def drops(self) -> dict[str, int]:
        """Drop counts by reason (only non-zero ones)."""
        return {k: v for k, v in (("not_dnsqr", self.not_dnsqr), ("bad_payload", self.bad_payload)) if v}
