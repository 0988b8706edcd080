"""Readers over nmsgtool's own files: same payloads from plain, zlib and socket-fragmented variants."""

from __future__ import annotations

import io
import random
from datetime import datetime, timezone

import pytest

from nmsgdns.container import (
    FLAG_FRAGMENT,
    MAGIC,
    decode_container,
    deflate,
    encode_container,
    encode_header,
    parse_header,
)
from nmsgdns.errors import ContainerError, TruncatedError
from nmsgdns.input import ContainerStreamReader, DatagramDecoder
from nmsgdns.output import ContainerPacker
from nmsgdns.payload import make_payload, payload_time, payload_type
from tests import corpus


def _read(name: str, **kwargs: object) -> tuple[list[bytes], ContainerStreamReader]:
    with corpus.path(name).open("rb") as fh:
        reader = ContainerStreamReader(fh, name=name, **kwargs)  # type: ignore[arg-type]
        return list(reader), reader


def _datagrams(data: bytes) -> list[bytes]:
    """Split a concatenation of containers (the sock_* captures) back into datagrams."""
    out, off = [], 0
    while off < len(data):
        hdr = parse_header(data, off)
        out.append(data[off : off + hdr.size + hdr.length])
        off += hdr.size + hdr.length
    return out


def _epoch(text: str) -> tuple[int, int]:
    whole, frac = text.split(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()), int(frac)


#: The socket captures were sent from these files, so they must carry the same payloads.
SOCKET_SOURCE = {"sock_m512": "edge_cases", "sock_incomp_z": "incompressible"}


@pytest.mark.parametrize("case", corpus.CASES)
def test_corpus_cases_decode_completely(case: str) -> None:
    payloads, reader = _read(f"{case}.nmsg")
    objs = corpus.json_lines(f"{case}.json")
    assert len(payloads) == len(objs)
    for p, obj in zip(payloads, objs, strict=True):
        assert payload_type(p) == (1, 9)
        assert payload_time(p) == _epoch(obj["time"])
    stats = reader.stats
    assert stats.payloads == len(payloads)
    assert not stats.drops  # every CRC verified, every fragment set complete
    assert stats.bytes == corpus.path(f"{case}.nmsg").stat().st_size
    if case in corpus.ZLIB_CASES:
        zpayloads, _ = _read(f"{case}.z.nmsg")
        assert zpayloads == payloads
    if case in SOCKET_SOURCE:
        assert stats.fragments > 0
        assert payloads == _read(f"{SOCKET_SOURCE[case]}.nmsg")[0]
    filtered, freader = _read(f"{case}.filtered.nmsg")
    assert freader.stats.containers == 1
    assert len(filtered) == len(corpus.json_lines(f"{case}.filtered.json"))


def test_socket_capture_counts() -> None:
    _, reader = _read("sock_m512.nmsg")
    assert (reader.stats.containers, reader.stats.fragments) == (58, 15)
    _, reader = _read("sock_incomp_z.nmsg")
    assert (reader.stats.containers, reader.stats.fragments) == (6, 27)


@pytest.mark.parametrize("case", corpus.SOCKET_CASES)
def test_datagram_decoder_on_captured_datagrams(case: str) -> None:
    dec = DatagramDecoder()
    got: list[bytes] = []
    for dg in _datagrams(corpus.path(f"{case}.nmsg").read_bytes()):
        got.extend(dec.feed(dg, ("127.0.0.1", 9430)))
    assert got == _read(f"{SOCKET_SOURCE[case]}.nmsg")[0]
    assert not dec.stats.drops
    assert dec.reassembler.pending == 0


class SameId(random.Random):
    """Two senders that happen to pick the same fragment id."""

    def getrandbits(self, k: int) -> int:
        return 12345


def test_datagram_fragments_from_two_senders_do_not_mix() -> None:
    pls = [make_payload(1, 9, 1, 0, bytes([i]) * 3000) for i in range(2)]
    a = ContainerPacker(512, rng=SameId()).add(pls[0])
    b = ContainerPacker(512, rng=SameId()).add(pls[1])
    assert len(a) == len(b) > 2
    dec = DatagramDecoder()
    got = []
    for x, y in zip(a, b, strict=True):
        got += dec.feed(x, "s1") + dec.feed(y, "s2")
    assert got == pls
    assert not dec.stats.drops


def _flip_data_byte(container: bytes) -> bytes:
    """Corrupt the last byte of the first payload's field 5, leaving the structure intact."""
    c = decode_container(container)
    first = c.payloads[0]
    pos = container.index(first) + len(first) - 1
    return container[:pos] + bytes([container[pos] ^ 0xFF]) + container[pos + 1 :]


def test_crc_mismatch_is_dropped_and_counted() -> None:
    pls = [make_payload(1, 9, 1, i, b"record %d" % i) for i in range(3)]
    bad = _flip_data_byte(encode_container(pls))
    reader = ContainerStreamReader(io.BytesIO(bad), name="mem")
    assert list(reader) == pls[1:]
    assert reader.stats.drops == {"crc_mismatch": 1}
    dec = DatagramDecoder()
    assert dec.feed(bad) == pls[1:]
    assert dec.stats.drops == {"crc_mismatch": 1}
    assert ContainerStreamReader(io.BytesIO(bad), verify_crcs=False).batches().__next__() == [
        decode_container(bad).payloads[0],
        *pls[1:],
    ]


def test_payload_without_crc_is_kept_like_libnmsg() -> None:
    pls = [make_payload(1, 9, 1, i, b"r") for i in range(3)]
    body = encode_container(pls, crcs=False)
    assert list(ContainerStreamReader(io.BytesIO(body))) == pls


def test_unusual_payload_layout_still_verifies() -> None:
    """CRC check first guesses libnmsg's layout, then walks: a reordered payload must pass too."""
    odd = b"\x2a\x03abc\x08\x01\x10\x09\x18\x01\x25\x00\x00\x00\x00"
    long_data = make_payload(1, 9, 1, 0, b"d" * 20000)  # 3-byte length varint
    data = encode_container([odd, long_data])
    assert list(ContainerStreamReader(io.BytesIO(data))) == [odd, long_data]


def test_truncation_and_garbage_name_file_and_offset() -> None:
    good = encode_container([make_payload(1, 9, 1, 0, b"x")])
    with pytest.raises(TruncatedError, match=r"f\.nmsg: offset 0: "):
        list(ContainerStreamReader(io.BytesIO(good[:-1]), name="f.nmsg"))
    with pytest.raises(TruncatedError, match=rf"offset {len(good)}"):
        list(ContainerStreamReader(io.BytesIO(good + good[:7]), name="f.nmsg"))
    reader = ContainerStreamReader(io.BytesIO(good + b"GARBAGE!!!!!" + good), name="f.nmsg")
    with pytest.raises(ContainerError, match=rf"f\.nmsg: offset {len(good)}: bad magic"):
        list(reader)
    assert reader.stats.bytes == len(good)  # where the good data ended
    bad_body = encode_header(0, 3) + b"\x0a\x05a"
    with pytest.raises(ContainerError, match="offset 0"):
        list(ContainerStreamReader(io.BytesIO(bad_body), name="f.nmsg"))


def test_oversized_container_is_refused_before_reading() -> None:
    header = encode_header(0, 0xFFFFFFF0)
    reader = ContainerStreamReader(io.BytesIO(header + bytes(100)), name="big")
    with pytest.raises(ContainerError, match=r"big: offset 0: .*above the cap"):
        list(reader)
    assert reader.stats.drops == {"oversized": 1}
    one = encode_container([make_payload(1, 9, 1, 0, b"x" * 600)])
    with pytest.raises(ContainerError, match="above the cap"):
        list(ContainerStreamReader(io.BytesIO(one), max_container_size=512))
    dec = DatagramDecoder()
    assert dec.feed(header + bytes(100)) == []
    assert dec.stats.drops == {"oversized": 1}


def test_headerless_zlib_blob_is_skipped_and_counted() -> None:
    pls = [make_payload(1, 9, 1, i, b"v" * 50) for i in range(2)]
    blob = deflate(encode_container(pls)[10:])
    good = encode_container(pls)
    reader = ContainerStreamReader(io.BytesIO(good + blob + good), name="mixed")
    assert list(reader) == pls + pls
    assert reader.stats.drops == {"headerless_zlib": 1}
    dec = DatagramDecoder()
    assert dec.feed(blob) == []
    assert dec.stats.drops == {"headerless_zlib": 1}


def test_datagram_decoder_counts_every_kind_of_bad_input() -> None:
    good = encode_container([make_payload(1, 9, 1, 0, b"x")])
    dec = DatagramDecoder()
    cases = {
        "short": b"NMSG",
        "garbage": b"hello world, not nmsg",
        "bad_version": MAGIC + b"\x00\x09" + bytes(4),
        "bad_length": good + b"\x00",
        "bad_flags": encode_header(0x10, 0),
        "bad_zlib": encode_header(0x01, 8) + b"\x00\x00\x00\x04junk",
        "bad_body": encode_header(0, 2) + b"\x0a\x05",
        "bad_fragment": encode_header(FLAG_FRAGMENT, 2) + b"\x08\x01",
    }
    for dg in cases.values():
        assert dec.feed(dg, "peer") == []
    assert dec.stats.drops == dict.fromkeys(cases, 1)
    assert dec.feed(good) == decode_container(good).payloads
    assert dec.stats.datagrams == len(cases) + 1
    assert dec.stats.total_drops == len(cases)
    assert dec.stats.as_dict()["payloads"] == 1


def test_stream_counts_incomplete_fragment_sets_at_eof() -> None:
    frags = ContainerPacker(512).add(make_payload(1, 9, 1, 0, b"w" * 3000))
    reader = ContainerStreamReader(io.BytesIO(b"".join(frags[:-1])))
    assert list(reader) == []
    assert reader.stats.drops == {"fragment_incomplete": 1}


def test_live_stream_is_read_without_waiting_for_a_full_buffer() -> None:
    """read1 returns what is there: a reader on a pipe yields each container as it arrives."""
    c1 = encode_container([make_payload(1, 9, 1, 0, b"one")])

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.chunks = [c1[:5], c1[5:]]

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            if not self.chunks:
                raise AssertionError("reader asked for more before yielding")
            chunk = self.chunks.pop(0)
            b[: len(chunk)] = chunk
            return len(chunk)

    batches = ContainerStreamReader(io.BufferedReader(Trickle()), name="pipe").batches()
    assert next(batches) == decode_container(c1).payloads
