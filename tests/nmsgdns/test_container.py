"""Container framing and the Nmsg body walk, checked against nmsgtool's files and the protobuf parser."""

from __future__ import annotations

import struct
import zlib

import pytest

from nmsgdns.container import (
    FLAG_FRAGMENT,
    FLAG_ZLIB,
    HEADER_SIZE,
    MAGIC,
    Fragment,
    decode_body,
    decode_container,
    deflate,
    encode_container,
    encode_fragment,
    inflate,
    looks_like_headerless_zlib,
    nmsg_crc,
    parse_header,
    parse_ip_fragment,
    payload_crc,
    split_nmsg,
    swap32,
)
from nmsgdns.errors import ContainerError, TruncatedError
from nmsgdns.payload import make_payload
from nmsgdns.proto.nmsg_pb2 import Nmsg, NmsgFragment
from tests import corpus


def _payloads(n: int, size: int = 40) -> list[bytes]:
    return [make_payload(1, 9, 1700000000 + i, i, bytes([i % 256]) * size) for i in range(n)]


@pytest.mark.parametrize("name", ["live_resolver.nmsg", "edge_cases.nmsg", "incompressible.nmsg"])
def test_walk_slices_exactly_what_protobuf_parses(name: str) -> None:
    data = corpus.path(name).read_bytes()
    hdr = parse_header(data)
    assert (hdr.flags, hdr.version, hdr.size, hdr.size + hdr.length) == (0, 2, HEADER_SIZE, len(data))
    c = decode_container(data)
    ref = Nmsg.FromString(data[HEADER_SIZE:])
    assert c.payloads == [p.SerializeToString() for p in ref.payloads]
    assert c.crcs == list(ref.payload_crcs)
    assert (c.sequence, c.sequence_id) == (None, None)  # file output has no sequence fields
    # Stored CRCs are the byte-swapped CRC32C of each payload's field 5 (see nmsg-format.md).
    assert [payload_crc(p) for p in c.payloads] == c.crcs
    assert all(nmsg_crc(p.payload) == crc for p, crc in zip(ref.payloads, c.crcs, strict=True))


def test_zlib_body_matches_nmsgtool_level() -> None:
    """nmsgtool -z used zlib's default level: our deflate reproduces its container byte for byte."""
    plain = corpus.path("edge_cases.nmsg").read_bytes()
    packed = corpus.path("edge_cases.z.nmsg").read_bytes()
    hdr = parse_header(packed)
    assert hdr.flags == FLAG_ZLIB
    assert packed[HEADER_SIZE:] == deflate(plain[HEADER_SIZE:])
    assert decode_container(packed).payloads == decode_container(plain).payloads


def test_crc_byte_order() -> None:
    # CRC32C("123456789") = 0xE3069283; libnmsg stores htonl() of it on a little-endian host.
    assert nmsg_crc(b"123456789") == 0x839206E3
    assert swap32(nmsg_crc(b"123456789")) == 0xE3069283


def test_header_versions_and_errors() -> None:
    v1 = MAGIC + bytes((FLAG_ZLIB, 1)) + struct.pack(">H", 300)
    assert parse_header(v1) == (FLAG_ZLIB, 1, 300, 8)
    v2 = MAGIC + bytes((0, 2)) + struct.pack(">I", 70000)
    assert parse_header(b"xx" + v2, 2) == (0, 2, 70000, 10)
    with pytest.raises(TruncatedError):
        parse_header(v2[:9])
    with pytest.raises(TruncatedError):
        parse_header(b"NMS")
    with pytest.raises(ContainerError, match="magic"):
        parse_header(b"XMSG" + v2[4:])
    with pytest.raises(ContainerError, match="version 3"):
        parse_header(MAGIC + bytes((0, 3)) + bytes(6))


def test_version1_container_decodes() -> None:
    body = b"".join(b"\x0a" + bytes([len(p)]) + p for p in _payloads(2))
    data = MAGIC + bytes((0, 1)) + struct.pack(">H", len(body)) + body
    assert decode_container(data).payloads == _payloads(2)


def test_encode_roundtrip_with_sequence_and_zlib() -> None:
    pls = _payloads(5, 200)
    for compress in (False, True):
        data = encode_container(pls, compress=compress, sequence=7, sequence_id=2**64 - 1)
        c = decode_container(data)
        assert c.payloads == pls
        assert c.crcs == [payload_crc(p) for p in pls]
        assert (c.sequence, c.sequence_id) == (7, 2**64 - 1)
        ref = Nmsg.FromString(zlib.decompress(data[14:]) if compress else data[10:])
        assert [p.SerializeToString() for p in ref.payloads] == pls
    assert decode_container(encode_container(pls, crcs=False)).crcs == []


def test_walk_accepts_any_field_order_and_packed_crcs() -> None:
    """libnmsg writes payloads first; protobuf allows interleaving and packed repeated scalars."""
    p1, p2 = _payloads(2)
    body = (
        b"\x10\x05"  # a CRC before any payload
        + b"\x0a"
        + bytes([len(p1)])
        + p1
        + b"\x18\x03"  # sequence
        + b"\x12\x02\x06\x07"  # packed CRCs 6, 7
        + b"\x0a"
        + bytes([len(p2)])
        + p2
        + b"\x2d\x00\x00\x00\x00"  # unknown fixed32 field 5
    )
    payloads, crcs, seq, seq_id = split_nmsg(body)
    assert payloads == [p1, p2]
    assert crcs == [5, 6, 7]
    assert (seq, seq_id) == (3, None)
    ref = Nmsg.FromString(body)
    assert list(ref.payload_crcs) == crcs


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a",  # tag without length
        b"\x0a\x80",  # length varint cut short
        b"\x0a\x05abc",  # payload runs past the end
        b"\x0a\x03abc\x10",  # CRC tag without value
        b"\x0a\x03abc\x0f",  # wire type 7
        b"\x0a\x03abc\x00\x01",  # field number 0
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(ContainerError):
        split_nmsg(body)


def test_walk_respects_end_bound() -> None:
    """The stream reader walks bodies in place inside a larger buffer: nothing past ``end`` is read."""
    p = _payloads(1)[0]
    body = b"\x0a" + bytes([len(p)]) + p
    assert split_nmsg(b"junk" + body + b"\x0a\x7f", 4, 4 + len(body))[0] == [p]
    with pytest.raises(ContainerError):
        split_nmsg(b"junk" + body + b"\x0a\x7f", 4, 4 + len(body) - 1)


def test_decode_container_length_checks() -> None:
    data = encode_container(_payloads(3))
    with pytest.raises(TruncatedError):
        decode_container(data[:-1])
    with pytest.raises(ContainerError, match="follow"):
        decode_container(data + b"\x00")
    frag = MAGIC + bytes((FLAG_FRAGMENT, 2)) + bytes(4)
    with pytest.raises(ContainerError, match="fragment"):
        decode_container(frag)


def test_inflate_caps_and_errors() -> None:
    bomb = deflate(bytes(10_000_000))
    assert len(bomb) < 20_000
    with pytest.raises(ContainerError, match="declares"):
        inflate(bomb, max_size=1_000_000)
    lying = b"\x00\x00\x00\x10" + bomb[4:]  # declares 16 bytes, inflates to 10 MB
    with pytest.raises(ContainerError, match="cap"):
        inflate(lying, max_size=1_000_000)
    with pytest.raises(ContainerError, match="truncated"):
        inflate(bomb[:100])
    with pytest.raises(ContainerError):
        inflate(b"\x00\x00\x00\x05" + b"not zlib")
    with pytest.raises(ContainerError):
        inflate(b"\x00\x00")
    assert inflate(deflate(b"hello")) == b"hello"
    with pytest.raises(ContainerError):
        decode_body(b"\x00\x00\x00\x05garbage", FLAG_ZLIB)


def test_fragment_encoding_matches_protobuf() -> None:
    frag = Fragment(2**32 - 1, 3, 9, b"chunk" * 100, 0xDEADBEEF)
    data = encode_fragment(frag)
    ref = NmsgFragment(id=frag.id, current=3, last=9, fragment=frag.fragment, crc=frag.crc)
    assert data == ref.SerializeToString()
    assert parse_ip_fragment(data) == frag
    no_crc = encode_fragment(frag._replace(crc=None))
    assert parse_ip_fragment(no_crc).crc is None
    with pytest.raises(ContainerError, match="required"):
        parse_ip_fragment(b"\x08\x01\x10\x00")
    with pytest.raises(ContainerError):
        parse_ip_fragment(b"\x22\x09abc")


def test_headerless_zlib_detection() -> None:
    blob = deflate(b"payloads" * 100)
    assert blob[4:6] == b"\x78\x9c"
    assert looks_like_headerless_zlib(blob)
    assert not looks_like_headerless_zlib(encode_container(_payloads(1)))
    assert not looks_like_headerless_zlib(b"\x00\x00\x00\x01\x78")
