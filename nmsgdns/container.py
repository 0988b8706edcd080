"""NMSG container framing: the header, the (optionally zlib) body, and a hand-written walk of ``Nmsg``.

Why by hand: the body of a container is a protobuf ``Nmsg`` whose field 1 entries are the payloads. A
protobuf parse would build one message object per payload and re-serialization would not reproduce the
bytes exactly; the pipeline passes payload *bytes* on, so the walk slices them straight out of the body,
which is both lossless and several times faster.

Layout facts (libnmsg 1.3.3): header = ``NMSG`` + flags byte + version byte + big-endian body length
(4 bytes in version 2, 2 bytes in version 1). With FLAG_ZLIB the body is a 4-byte big-endian
uncompressed length followed by a zlib stream. Payload CRCs are CRC32C of each payload's field 5,
byte-swapped (htonl on little-endian hosts) before being varint-encoded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from crc32c import crc32c
from google.protobuf.message import DecodeError

from nmsgdns.errors import ContainerError, TruncatedError
from nmsgdns.native import load_extension
from nmsgdns.payload import encode_varint, payload_data_span, read_varint
from nmsgdns.proto.nmsg_pb2 import Nmsg

MAGIC = b"NMSG"
HEADER_SIZE = 10
HEADER_SIZE_V1 = 8
FLAG_ZLIB = 0x01
FLAG_FRAGMENT = 0x02
VERSION = 2

BUFSZ_MIN = 512
BUFSZ_ETHER = 1280
BUFSZ_JUMBO = 8192
BUFSZ_MAX = 1048576

#: Largest declared container body accepted by default. libnmsg never writes a body above its buffer
#: size (1 MiB for files) except that zlib can expand incompressible data slightly; 64 KiB of slack
#: covers that, and anything larger is refused before it is read, so a bad length is no memory bomb.
MAX_CONTAINER_SIZE = BUFSZ_MAX + 65536
#: Largest inflated body or reassembled fragment set accepted by default (go-nmsg uses the same 16 MiB).
MAX_BODY_SIZE = 16 * BUFSZ_MAX

ZLIB_LEVEL = 6  # Z_DEFAULT_COMPRESSION: what nmsgtool -z produced in the corpus (byte-identical)


class Header(NamedTuple):
    """A parsed container header; ``size`` is the header's own length (10, or 8 for version 1)."""

    flags: int
    version: int
    length: int
    size: int


@dataclass
class Container:
    """A decoded, non-fragment container: payload bytes sliced from the body, CRCs as on the wire."""

    payloads: list[bytes]
    crcs: list[int] = field(default_factory=list)
    sequence: int | None = None
    sequence_id: int | None = None


class Fragment(NamedTuple):
    """One ``NmsgFragment``; ``crc`` is None when the optional field is absent."""

    id: int
    current: int
    last: int
    fragment: bytes
    crc: int | None


_SWAP = struct.Struct("<I")
_BE32 = struct.Struct(">I")


def nmsg_crc(data: bytes) -> int:
    """CRC32C of ``data`` as libnmsg stores it: the big-endian CRC read back as little-endian."""
    return _SWAP.unpack(_BE32.pack(crc32c(data)))[0]


def swap32(value: int) -> int:
    """Byte-swap a 32-bit value (undo libnmsg's htonl on stored CRCs)."""
    return _SWAP.unpack(_BE32.pack(value & 0xFFFFFFFF))[0]


def payload_crc(payload: bytes) -> int:
    """The wire CRC value libnmsg writes for one serialized NmsgPayload (over its field 5)."""
    start, end = payload_data_span(payload)
    return nmsg_crc(payload[start:end])


def looks_like_headerless_zlib(data: bytes, offset: int = 0) -> bool:
    """True when ``data[offset:]`` starts like nmsgtool's header-less blob: a 4-byte length, then zlib.

    nmsgtool -z sends a compressed body without the 10-byte header when a single oversized payload
    compresses below the fragment size (a libnmsg bug). A zlib header is CMF=0x?8 with
    (CMF*256+FLG) % 31 == 0; nmsgtool's is 78 9c.
    """
    if len(data) < offset + 6:
        return False
    cmf, flg = data[offset + 4], data[offset + 5]
    return (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and ((cmf << 8) | flg) % 31 == 0


def parse_header(buf: bytes, offset: int = 0) -> Header:
    """Parse the container header at ``offset``.

    Raises TruncatedError when fewer bytes than a header are available, ContainerError on a bad magic
    or an unknown version (1 and 2 are read; libnmsg 1.3.3 writes 2).
    """
    avail = len(buf) - offset
    if avail < 6:
        raise TruncatedError(f"container header needs at least 6 bytes, have {max(avail, 0)}")
    if buf[offset : offset + 4] != MAGIC:
        raise ContainerError(f"bad magic {bytes(buf[offset : offset + 4])!r}")
    flags = buf[offset + 4]
    version = buf[offset + 5]
    if version == 2:
        if avail < HEADER_SIZE:
            raise TruncatedError(f"version 2 header needs {HEADER_SIZE} bytes, have {avail}")
        length = int.from_bytes(buf[offset + 6 : offset + 10], "big")
        return Header(flags, version, length, HEADER_SIZE)
    if version == 1:
        if avail < HEADER_SIZE_V1:
            raise TruncatedError(f"version 1 header needs {HEADER_SIZE_V1} bytes, have {avail}")
        length = int.from_bytes(buf[offset + 6 : offset + 8], "big")
        return Header(flags, version, length, HEADER_SIZE_V1)
    raise ContainerError(f"unsupported container version {version}")


def inflate(body: bytes, max_size: int = MAX_BODY_SIZE) -> bytes:
    """Decompress a zlib body (4-byte big-endian uncompressed length, then a zlib stream).

    The declared length is only a hint in libnmsg; we refuse a declared or actual size above
    ``max_size`` so a small datagram cannot expand into gigabytes.
    """
    if len(body) < 4:
        raise ContainerError(f"zlib body of {len(body)} bytes has no length prefix")
    declared = int.from_bytes(body[:4], "big")
    if declared > max_size:
        raise ContainerError(f"zlib body declares {declared} bytes, above the cap of {max_size}")
    dec = zlib.decompressobj()
    try:
        out = dec.decompress(memoryview(body)[4:], max_size + 1)
    except zlib.error as exc:
        raise ContainerError(f"zlib stream does not inflate: {exc}") from exc
    if len(out) > max_size:
        raise ContainerError(f"zlib body inflates past the cap of {max_size} bytes")
    if not dec.eof:
        raise ContainerError("zlib stream is truncated")
    return out


def deflate(body: bytes, level: int = ZLIB_LEVEL) -> bytes:
    """Compress a serialized body as libnmsg does: 4-byte big-endian length, then a zlib stream."""
    return _BE32.pack(len(body)) + zlib.compress(body, level)


def _bad(msg: str) -> ContainerError:
    return ContainerError(f"Nmsg body: {msg}")


def split_nmsg(
    data: bytes, start: int = 0, end: int | None = None
) -> tuple[list[bytes], list[int], int | None, int | None]:
    """Walk the ``Nmsg`` message in ``data[start:end]``: (payloads, crcs, sequence, sequence_id).

    Payloads are slices of ``data`` (bytes objects, not re-encoded). This is the reader's hot loop.
    libnmsg writes every payload first, then the CRCs and sequence fields, so the walk slices payloads
    with their one- and two-byte length varints decoded inline, and hands the tail (which is itself a
    valid ``Nmsg`` without payloads) to the C protobuf parser, which decodes thousands of CRC varints
    far faster than Python can. Any other field order falls back to a general walk. A structure that
    protobuf would reject raises ContainerError.
    """
    if end is None:
        end = len(data)
    payloads: list[bytes] = []
    append = payloads.append
    pos = start
    try:
        while pos < end and data[pos] == 0x0A:  # field 1, length-delimited: one NmsgPayload
            b = data[pos + 1]
            if b < 0x80:
                pos += 2
                nxt = pos + b
            else:
                c = data[pos + 2]
                if c < 0x80:
                    pos += 3
                    nxt = pos + ((b & 0x7F) | (c << 7))
                else:
                    length, pos = _varint(data, pos + 1, end)
                    nxt = pos + length
            if nxt > end:
                raise _bad(f"payload at offset {pos - start} runs past the end of the body")
            append(data[pos:nxt])
            pos = nxt
    except IndexError:  # a length byte beyond the data: the body is cut short
        raise _bad("truncated payload length") from None
    if pos >= end:
        return payloads, [], None, None
    tail = Nmsg()
    try:
        tail.ParseFromString(data[pos:end])
    except DecodeError as exc:
        raise _bad(f"does not parse after the payloads: {exc}") from None
    if len(tail.payloads):
        crcs: list[int] = []
        sequence, sequence_id = _split_generic(data, pos, end, payloads, crcs)
        return payloads, crcs, sequence, sequence_id
    return (
        payloads,
        list(tail.payload_crcs),
        tail.sequence if tail.HasField("sequence") else None,
        tail.sequence_id if tail.HasField("sequence_id") else None,
    )


def _split_generic(
    data: bytes, pos: int, end: int, payloads: list[bytes], crcs: list[int]
) -> tuple[int | None, int | None]:
    """Field-by-field walk for bodies whose fields are not in libnmsg's order; fills the lists."""
    sequence = sequence_id = None
    while pos < end:
        key, pos = _varint(data, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 0:
            raise _bad("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if fno == 2:
                crcs.append(value & 0xFFFFFFFF)
            elif fno == 3:
                sequence = value & 0xFFFFFFFF
            elif fno == 4:
                sequence_id = value
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            nxt = pos + length
            if nxt > end:
                raise _bad(f"field {fno} runs past the end of the body")
            if fno == 1:
                payloads.append(data[pos:nxt])
            elif fno == 2:  # packed payload_crcs, which a proto2 reader must accept
                while pos < nxt:
                    value, pos = _varint(data, pos, nxt)
                    crcs.append(value & 0xFFFFFFFF)
            pos = nxt
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise _bad(f"unsupported wire type {wire} for field {fno}")
        if pos > end:
            raise _bad(f"field {fno} runs past the end of the body")
    return sequence, sequence_id


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    return read_varint(data, pos, end, ContainerError, "Nmsg body")


def parse_ip_fragment(body: bytes) -> Fragment:
    """Parse an ``NmsgFragment`` body; raises ContainerError when a required field is missing."""
    end = len(body)
    pos = 0
    values: dict[int, int] = {}
    fragment = None
    while pos < end:
        key, pos = _varint(body, pos, end)
        fno, wire = key >> 3, key & 7
        if fno == 0:
            raise ContainerError("NmsgFragment: field number 0")
        if wire == 0:
            value, pos = _varint(body, pos, end)
            values[fno] = value & 0xFFFFFFFF
        elif wire == 2:
            length, pos = _varint(body, pos, end)
            if pos + length > end:
                raise ContainerError("NmsgFragment: field runs past the end")
            if fno == 4:
                fragment = body[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ContainerError(f"NmsgFragment: unsupported wire type {wire}")
        if pos > end:
            raise ContainerError("NmsgFragment: field runs past the end")
    if fragment is None or 1 not in values or 2 not in values or 3 not in values:
        raise ContainerError("NmsgFragment: a required field (id, current, last, fragment) is missing")
    return Fragment(values[1], values[2], values[3], fragment, values.get(5))


def decode_body(body: bytes, flags: int, max_body_size: int = MAX_BODY_SIZE) -> Container:
    """Decode a non-fragment container body (inflating it first when FLAG_ZLIB is set)."""
    if flags & FLAG_ZLIB:
        body = inflate(body, max_body_size)
    payloads, crcs, sequence, sequence_id = split_nmsg(body)
    return Container(payloads, crcs, sequence, sequence_id)


def decode_container(data: bytes, max_body_size: int = MAX_BODY_SIZE) -> Container:
    """Decode one complete container (header + body, nothing after it, no fragment flag)."""
    hdr = parse_header(data)
    if hdr.flags & FLAG_FRAGMENT:
        raise ContainerError("container is a fragment; feed it to a reader that reassembles")
    have = len(data) - hdr.size
    if have < hdr.length:
        raise TruncatedError(f"container declares {hdr.length} body bytes, have {have}")
    if have > hdr.length:
        raise ContainerError(f"{have - hdr.length} bytes follow the container")
    if hdr.flags & FLAG_ZLIB:
        return decode_body(data[hdr.size :], hdr.flags, max_body_size)
    payloads, crcs, sequence, sequence_id = split_nmsg(data, hdr.size)
    return Container(payloads, crcs, sequence, sequence_id)


def encode_header(flags: int, length: int) -> bytes:
    """A version 2 header."""
    return MAGIC + bytes((flags, VERSION)) + _BE32.pack(length)


def encode_body_py(
    payloads: Sequence[bytes],
    *,
    crcs: bool = True,
    sequence: int | None = None,
    sequence_id: int | None = None,
) -> bytes:
    """Serialize an ``Nmsg`` body exactly as protobuf-c does: payloads, then CRCs, then sequence fields.

    Each payload is embedded as given. Raises PayloadError when ``crcs`` is set and a payload is not a
    well-formed NmsgPayload (its field 5 cannot be found).

    This is the specification of :func:`encode_body`: nmsgdns/_nmsgbody.c transcribes it, and the tests
    hold the two to the same bytes and the same exceptions.
    """
    parts: list[bytes] = []
    for p in payloads:
        parts.append(b"\x0a")
        parts.append(encode_varint(len(p)))
        parts.append(p)
    if crcs:
        for p in payloads:
            parts.append(b"\x10")
            parts.append(encode_varint(payload_crc(p)))
    if sequence is not None:
        parts.append(b"\x18")
        parts.append(encode_varint(sequence & 0xFFFFFFFF))
    if sequence_id is not None:
        parts.append(b"\x20")
        parts.append(encode_varint(sequence_id))
    return b"".join(parts)


_body_ext = load_extension("_nmsgbody")
#: The C transcription of :func:`encode_body_py` (nmsgdns/_nmsgbody.c), when built. It encodes lists and
#: tuples of bytes itself and hands any other input, and the CRC of any payload not in libnmsg's usual
#: layout, back to the Python code, so results and exceptions are the same.
encode_body_c: Callable[..., bytes] | None = None
if _body_ext is not None:
    _body_ext.configure(encode_body_py, payload_crc)
    encode_body_c = _body_ext.encode_body
#: The body encoder in use: the C one when built (about 0.14 us a payload with CRCs against 1.7 us; it runs
#: for every record packed into a container, by the NMSG file and socket writers and by every stage that
#: writes containers), else :func:`encode_body_py`.
#: Same signature:
#: ``encode_body(payloads, *, crcs=True, sequence=None, sequence_id=None) -> bytes``.
encode_body: Callable[..., bytes] = encode_body_py if encode_body_c is None else encode_body_c


def encode_container(
    payloads: Sequence[bytes],
    *,
    compress: bool = False,
    crcs: bool = True,
    sequence: int | None = None,
    sequence_id: int | None = None,
) -> bytes:
    """One complete container (header + body) holding ``payloads``; never fragments."""
    body = encode_body(payloads, crcs=crcs, sequence=sequence, sequence_id=sequence_id)
    flags = 0
    if compress:
        body = deflate(body)
        flags = FLAG_ZLIB
    return encode_header(flags, len(body)) + body


def encode_fragment(frag: Fragment) -> bytes:
    """Serialize an ``NmsgFragment`` in field order (protobuf-c's layout)."""
    parts = [
        b"\x08",
        encode_varint(frag.id),
        b"\x10",
        encode_varint(frag.current),
        b"\x18",
        encode_varint(frag.last),
        b"\x22",
        encode_varint(len(frag.fragment)),
        frag.fragment,
    ]
    if frag.crc is not None:
        parts += [b"\x28", encode_varint(frag.crc)]
    return b"".join(parts)
