"""Readers: a container stream (file, pipe, any byte stream) and a per-datagram decoder.

Both yield payloads as bytes sliced from container bodies, reassemble fragments, drop (and count) payloads
whose CRC32C does not match, and never parse a payload's protobuf. They differ in how they treat bad
input, because their inputs differ:

- A stream is one producer's output; bad bytes mean the file is damaged and later offsets cannot be
  trusted, so ContainerStreamReader raises (TruncatedError / ContainerError naming the stream and the
  byte offset of the container), after counting.
- Datagrams come from anyone on the network, one container each; DatagramDecoder never raises on bad
  input, it counts the datagram under a drop reason and carries on.

Counting rules in ``stats.drops``: ``crc_mismatch`` and ``bad_payload`` count payloads; fragment reasons
(see nmsgdns.nmsg_fragment) count fragments or sets; every other reason counts containers or datagrams.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Any, BinaryIO

from crc32c import crc32c

from nmsgdns.container import (
    FLAG_FRAGMENT,
    FLAG_ZLIB,
    HEADER_SIZE,
    MAX_BODY_SIZE,
    MAX_CONTAINER_SIZE,
    inflate,
    looks_like_headerless_zlib,
    parse_header,
    parse_ip_fragment,
    split_nmsg,
)
from nmsgdns.errors import ContainerError, NmsgDnsError, PayloadError, TruncatedError
from nmsgdns.nmsg_fragment import FRAGMENT_TIMEOUT, NmsgFragmentReassembler
from nmsgdns.payload import payload_data_span

# Drop reasons besides the fragment ones.
DROP_CRC = "crc_mismatch"
DROP_BAD_PAYLOAD = "bad_payload"
DROP_SHORT = "short"
DROP_GARBAGE = "garbage"
DROP_HEADERLESS_ZLIB = "headerless_zlib"
DROP_BAD_VERSION = "bad_version"
DROP_BAD_FLAGS = "bad_flags"
DROP_OVERSIZED = "oversized"
DROP_BAD_LENGTH = "bad_length"
DROP_BAD_ZLIB = "bad_zlib"
DROP_BAD_BODY = "bad_body"
DROP_BAD_FRAGMENT = "bad_fragment"

_KNOWN_FLAGS = FLAG_ZLIB | FLAG_FRAGMENT
_READ_CHUNK = 4 * 1048576


class DecodeStats:
    """Counters of one reader. ``containers`` counts whole containers decoded, including reassembled
    ones; ``fragments`` counts fragment containers received; ``payloads`` counts payloads delivered;
    ``bytes`` counts input consumed (for a stream: the offset just past the last good container)."""

    __slots__ = ("bytes", "containers", "datagrams", "drops", "fragments", "payloads")

    def __init__(self) -> None:
        self.bytes = 0
        self.containers = 0
        self.datagrams = 0
        self.fragments = 0
        self.payloads = 0
        self.drops: Counter[str] = Counter()

    @property
    def total_drops(self) -> int:
        """Sum over every drop reason."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, object]:
        """Plain-data snapshot, e.g. for logs or metrics."""
        return {
            "bytes": self.bytes,
            "containers": self.containers,
            "datagrams": self.datagrams,
            "fragments": self.fragments,
            "payloads": self.payloads,
            "drops": dict(self.drops),
        }


class _Bad(ContainerError):
    """Internal: a container-level problem tagged with its drop reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_swap_cache: dict[int, tuple[struct.Struct, struct.Struct]] = {}


def _swapped(crcs: list[int], n: int) -> tuple[int, ...]:
    """Byte-swap the first ``n`` wire CRCs in two C calls instead of n Python-level swaps."""
    pair = _swap_cache.get(n)
    if pair is None:
        pair = (struct.Struct(f"<{n}I"), struct.Struct(f">{n}I"))
        if len(_swap_cache) < 4096:
            _swap_cache[n] = pair
    return pair[1].unpack(pair[0].pack(*crcs[:n]))


def verify_crcs(payloads: list[bytes], crcs: list[int], drops: Counter[str]) -> list[bytes]:
    """Keep the payloads whose CRC matches (or that have no CRC, as libnmsg does); count the rest.

    libnmsg checks payload i only when the container carries at least i+1 CRCs, and drops a mismatch
    silently; we count it. Speed: libnmsg's payloads end with field 5, which starts at byte 17 (length
    below 128) or 18, so the CRC is first taken over that guess, one byte read; only when it does not
    match is the payload walked to find field 5 exactly. A payload too malformed to walk is dropped.
    """
    n = min(len(payloads), len(crcs))
    if n == 0:
        return payloads
    expected = _swapped(crcs, n)
    head = payloads if n == len(payloads) else payloads[:n]
    try:  # the common case: every guess right, every CRC good, decided in one list comparison
        if [crc32c(p[17:] if p[16] < 0x80 else p[18:]) for p in head] == list(expected):
            return payloads
    except IndexError:  # a payload shorter than 17 bytes; the loop below sorts it out
        pass
    keep: list[bytes] | None = None
    for i, (p, want) in enumerate(zip(head, expected, strict=True)):
        if len(p) > 17 and crc32c(p[17:] if p[16] < 0x80 else p[18:]) == want:
            if keep is not None:
                keep.append(p)
            continue
        try:
            s, e = payload_data_span(p)
        except PayloadError:
            drops[DROP_BAD_PAYLOAD] += 1
        else:
            if crc32c(p[s:e]) == want:
                if keep is not None:
                    keep.append(p)
                continue
            drops[DROP_CRC] += 1
        if keep is None:
            keep = payloads[:i]
    if keep is None:
        return payloads
    keep.extend(payloads[n:])
    return keep


class _Decoder:
    """What both readers share: turning one container body into verified payloads."""

    def __init__(
        self,
        *,
        max_container_size: int = MAX_CONTAINER_SIZE,
        max_body_size: int = MAX_BODY_SIZE,
        verify_crcs: bool = True,
        fragment_timeout: float = FRAGMENT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_container_size = max_container_size
        self.max_body_size = max_body_size
        self.verify = verify_crcs
        self.stats = DecodeStats()
        self.reassembler = NmsgFragmentReassembler(
            timeout=fragment_timeout, max_size=max_body_size, clock=clock, drops=self.stats.drops
        )

    def _inflate(self, body: bytes) -> bytes:
        try:
            return inflate(body, self.max_body_size)
        except ContainerError as exc:
            raise _Bad(DROP_BAD_ZLIB, str(exc)) from None

    def _body(self, flags: int, data: bytes, start: int, end: int, sender: Hashable) -> list[bytes]:
        """Payloads of the container whose body is ``data[start:end]`` (none while fragments are pending)."""
        if flags & ~_KNOWN_FLAGS:
            raise _Bad(DROP_BAD_FLAGS, f"unsupported container flags 0x{flags:02x}")
        if flags & FLAG_FRAGMENT:
            self.stats.fragments += 1
            try:
                frag = parse_ip_fragment(data[start:end])
            except ContainerError as exc:
                raise _Bad(DROP_BAD_FRAGMENT, str(exc)) from None
            done = self.reassembler.add(frag, flags, sender)
            if done is None:
                return []
            data, flags = done
            start, end = 0, len(data)
        if flags & FLAG_ZLIB:
            data = self._inflate(data[start:end])
            start, end = 0, len(data)
        try:
            payloads, crcs, _seq, _seq_id = split_nmsg(data, start, end)
        except ContainerError as exc:
            raise _Bad(DROP_BAD_BODY, str(exc)) from None
        self.stats.containers += 1
        if crcs and self.verify:
            payloads = verify_crcs(payloads, crcs, self.stats.drops)
        self.stats.payloads += len(payloads)
        return payloads


class ContainerStreamReader(_Decoder):
    """Iterate the payloads of every container in a byte stream, reassembling fragments.

    Reads with ``read1`` where the stream has it, so a live pipe yields containers as they arrive
    instead of waiting for a full read buffer. IpFragments pending at end of input are counted as
    ``fragment_incomplete``. Iterate once; ``batches()`` gives the payloads container by container.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        name: str = "<stream>",
        **options: Any,
    ) -> None:
        """``name`` labels errors; ``options`` are the shared decoder options (caps, CRCs, timeouts)."""
        super().__init__(**options)
        self.name = name
        self._read = getattr(stream, "read1", None) or stream.read
        self._buf = b""
        self._pos = 0
        self._base = 0  # stream offset of self._buf[0]
        self._eof = False

    def __iter__(self) -> Iterator[bytes]:
        for batch in self.batches():
            yield from batch

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available at the read position; False if the stream ends first."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        parts = [self._buf[self._pos :]]
        self._base += self._pos
        self._pos = 0
        while have < need and not self._eof:
            chunk = self._read(max(need - have, _READ_CHUNK))
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        return have >= need

    def _error(self, exc_type: type[ContainerError], offset: int, message: str) -> ContainerError:
        return exc_type(f"{self.name}: offset {offset}: {message}")

    def batches(self) -> Iterator[list[bytes]]:
        """Yield the (verified) payloads of each container that has any, in stream order."""
        try:
            while True:
                if not self._fill(HEADER_SIZE) and len(self._buf) == self._pos:
                    return
                offset = self._base + self._pos
                try:
                    hdr = parse_header(self._buf, self._pos)
                except TruncatedError as exc:
                    self.stats.drops[DROP_SHORT] += 1
                    raise self._error(TruncatedError, offset, str(exc)) from None
                except ContainerError as exc:
                    if self._skip_headerless_zlib():
                        continue
                    self.stats.drops[DROP_GARBAGE] += 1
                    raise self._error(ContainerError, offset, str(exc)) from None
                if hdr.length > self.max_container_size:
                    self.stats.drops[DROP_OVERSIZED] += 1
                    raise self._error(
                        ContainerError,
                        offset,
                        f"container declares {hdr.length} bytes, above the cap of {self.max_container_size}",
                    )
                total = hdr.size + hdr.length
                if not self._fill(total):
                    self.stats.drops[DROP_SHORT] += 1
                    have = len(self._buf) - self._pos - hdr.size
                    message = f"container declares {hdr.length} body bytes, stream has {have}"
                    raise self._error(TruncatedError, offset, message)
                start = self._pos + hdr.size
                try:
                    payloads = self._body(hdr.flags, self._buf, start, start + hdr.length, None)
                except _Bad as exc:
                    self.stats.drops[exc.reason] += 1
                    raise self._error(ContainerError, offset, str(exc)) from None
                self._pos = start + hdr.length
                self.stats.bytes += total
                if payloads:
                    yield payloads
        finally:
            if self._eof:
                self.reassembler.drop_all()

    def _skip_headerless_zlib(self) -> bool:
        """Skip nmsgtool's header-less zlib blob at the read position, if that is what is there.

        The blob has no length of its own, so the zlib stream is inflated (bounded by the body cap,
        output discarded) only to find where it ends.
        """
        if not looks_like_headerless_zlib(self._buf, self._pos):
            return False
        self._fill(4 + self.max_container_size)
        dec = zlib.decompressobj()
        view = memoryview(self._buf)[self._pos + 4 :]
        try:
            dec.decompress(view, self.max_body_size + 1)
        except zlib.error:
            return False
        if not dec.eof:
            return False
        used = len(view) - len(dec.unused_data)
        view.release()
        self.stats.bytes += 4 + used
        self.stats.drops[DROP_HEADERLESS_ZLIB] += 1
        self._pos += 4 + used
        return True


class DatagramDecoder(_Decoder):
    """Decode one container per datagram (UDP, a Kafka record value); never raises on bad input.

    ``sender`` keys fragment reassembly (pass the source address) so two senders that pick the same
    fragment id cannot mix. Call ``expire()`` when idle so stale fragment sets age out without traffic.
    The constructor's keyword options (size caps, CRC checking, fragment timeout) are the base class's.
    """

    def feed(self, datagram: bytes, sender: Hashable = None) -> list[bytes]:
        """Payloads completed by this datagram (often none while fragments are pending)."""
        stats = self.stats
        stats.datagrams += 1
        stats.bytes += len(datagram)
        try:
            hdr = parse_header(datagram)
        except TruncatedError:
            stats.drops[DROP_SHORT] += 1
            return []
        except ContainerError:
            if datagram[:4] == b"NMSG":
                stats.drops[DROP_BAD_VERSION] += 1
            elif looks_like_headerless_zlib(datagram):
                stats.drops[DROP_HEADERLESS_ZLIB] += 1
            else:
                stats.drops[DROP_GARBAGE] += 1
            return []
        if hdr.length > self.max_container_size:
            stats.drops[DROP_OVERSIZED] += 1
            return []
        if len(datagram) - hdr.size != hdr.length:
            stats.drops[DROP_BAD_LENGTH] += 1
            return []
        try:
            return self._body(hdr.flags, datagram, hdr.size, len(datagram), sender)
        except _Bad as exc:
            stats.drops[exc.reason] += 1
            return []
        except NmsgDnsError:
            stats.drops[DROP_GARBAGE] += 1
            return []

    def expire(self) -> int:
        """Age out incomplete fragment sets now; returns how many were dropped."""
        return self.reassembler.expire()
