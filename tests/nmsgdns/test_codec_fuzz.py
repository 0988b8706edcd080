"""Arbitrary bytes into the readers: only nmsgdns.errors types may come out, and nothing may hang."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmsgdns.container import FLAG_FRAGMENT, FLAG_ZLIB, deflate, encode_container, encode_header
from nmsgdns.errors import NmsgDnsError
from nmsgdns.input import ContainerStreamReader, DatagramDecoder
from nmsgdns.output import ContainerPacker
from nmsgdns.payload import make_payload

FUZZ = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])

_GOOD = encode_container([make_payload(1, 9, 1700000000, 5, b"record %d" % i) for i in range(3)])
_FRAGS = ContainerPacker(512, compress=True).add(make_payload(1, 9, 1, 0, bytes(range(256)) * 40))


def _nmsg_like() -> st.SearchStrategy[bytes]:
    """Bytes that get past the magic check often, so the deeper paths are exercised too."""
    header = st.builds(
        lambda flags, length: encode_header(flags, length),
        st.sampled_from([0, FLAG_ZLIB, FLAG_FRAGMENT, FLAG_ZLIB | FLAG_FRAGMENT, 0x80]),
        st.integers(0, 300),
    )
    tail = st.binary(max_size=300)
    mutated = st.builds(
        lambda base, pos, val: base[:pos] + bytes([val]) + base[pos + 1 :],
        st.sampled_from([_GOOD, *_FRAGS]),
        st.integers(0, 600),
        st.integers(0, 255),
    )
    zlibbed = st.builds(lambda b: deflate(b), st.binary(max_size=100))
    return st.one_of(
        st.binary(max_size=600),
        st.builds(lambda h, t: h + t, header, tail),
        mutated,
        st.builds(lambda a, b: a[: len(a) // 2] + b, st.sampled_from([_GOOD, *_FRAGS]), tail),
        zlibbed,
    )


@FUZZ
@given(st.lists(_nmsg_like(), max_size=6))
def test_stream_reader_raises_only_domain_errors(chunks: list[bytes]) -> None:
    reader = ContainerStreamReader(io.BytesIO(b"".join(chunks)), name="fuzz")
    try:
        for payload in reader:
            assert isinstance(payload, bytes)
    except NmsgDnsError as exc:
        assert str(exc).startswith("fuzz: offset ")


@FUZZ
@given(st.lists(_nmsg_like(), max_size=8), st.sampled_from([None, "a", ("127.0.0.1", 1)]))
def test_datagram_decoder_never_raises(datagrams: list[bytes], sender: object) -> None:
    dec = DatagramDecoder()
    for dg in [*datagrams, *_FRAGS]:
        for payload in dec.feed(dg, sender):
            assert isinstance(payload, bytes)
    assert dec.stats.datagrams == len(datagrams) + len(_FRAGS)
