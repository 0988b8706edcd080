"""The C extension ``nmsgdns._nmsgbody`` against the pure-Python ``encode_body_py`` it transcribes.

``encode_body_py`` is the specification (test_container and test_output pin it to nmsgtool's bytes); the C
``encode_body`` must give the same bytes for every input, or raise the same exception with the same
message. Checked on arbitrary lists of arbitrary bytes, on payloads in libnmsg's usual layout (the C fast
path) and just off it, on inputs the C code hands back to Python, and on the whole corpus, whose
container bodies it must reproduce byte for byte.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmsgdns import container, native
from nmsgdns.container import (
    FLAG_FRAGMENT,
    FLAG_ZLIB,
    decode_container,
    encode_body_c,
    encode_body_py,
    encode_header,
    inflate,
    parse_header,
    payload_crc,
    split_nmsg,
)
from nmsgdns.payload import make_payload
from tests import corpus
from tests.corpus import read_payloads

#: Set where a build without a C compiler is expected (the fallback is then what runs, and is tested).
ALLOW_PURE_PYTHON_ENV = "NMSGDNS_ALLOW_PURE_PYTHON"

needs_c = pytest.mark.skipif(encode_body_c is None, reason="nmsgdns._nmsgbody is not built or disabled")

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: time_sec values whose varint is 5 bytes, as every current timestamp's is: the layout the C code decides.
USUAL_TIME = st.integers(1 << 28, (1 << 35) - 1)


def outcome(
    encode: Callable[..., bytes], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, object]:
    """What an encoder did: ("ok", result with its exact type) or ("error", exception type and text)."""
    try:
        result = encode(*args, **kwargs)
    except Exception as exc:  # any exception at all: both must raise the same one
        return ("error", (type(exc), str(exc)))
    return ("ok", (type(result), result))


def same_body(payloads: object, **kwargs: object) -> tuple[str, object]:
    """Assert both encoders agree on ``payloads`` (a zero-argument factory when it is an iterator)."""
    make = payloads if callable(payloads) else (lambda: payloads)
    c_side = outcome(encode_body_c, (make(),), kwargs)  # type: ignore[arg-type]
    py_side = outcome(encode_body_py, (make(),), kwargs)
    assert c_side == py_side, (make(), kwargs)
    return c_side


# ------------------------------------------------------------------------------------------------------
# Payload strategies


def usual_payload(data: bytes, vid: int = 1, msgtype: int = 9, time_sec: int = 1_700_000_000) -> bytes:
    """A payload in libnmsg's usual layout (the C fast path when ``data`` is shorter than 16 KiB)."""
    return make_payload(vid, msgtype, time_sec, 123, data)


usual_payloads = st.builds(
    make_payload,
    st.integers(0, 127),
    st.integers(0, 127),
    USUAL_TIME,
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.binary(max_size=300), st.binary(min_size=1000, max_size=2100)),
)

#: Valid payloads of any shape: wide vid/msgtype, negative and short time_sec, no field 5, trailing fields.
general_payloads = st.builds(
    make_payload,
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.none(), st.binary(max_size=200)),
    source=st.none() | st.integers(0, 0xFFFFFFFF),
    operator=st.none() | st.integers(0, 0xFFFFFFFF),
    group=st.none() | st.integers(0, 0xFFFFFFFF),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid payload with one byte changed (mostly in the first 18, the ones the fast path reads),
    cut short, or extended: near misses of the fast path and malformed payloads."""
    p = bytearray(draw(st.one_of(usual_payloads, general_payloads)))
    how = draw(st.sampled_from(("set", "cut", "append")))
    if how == "set" and p:
        i = draw(st.integers(0, min(len(p), 19) - 1) | st.integers(0, len(p) - 1))
        p[i] = draw(st.integers(0, 255))
    elif how == "cut":
        del p[draw(st.integers(0, len(p))) :]
    else:
        p += draw(st.binary(min_size=1, max_size=8))
    return bytes(p)


class BytesSub(bytes):
    """A bytes subclass: taken by the Python code (it could override __len__)."""


class ListSub(list):  # type: ignore[type-arg]
    """A list subclass whose iteration differs from its items."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return reversed(list(super().__iter__()))


class IntSub(int):
    """An int subclass whose ``&`` is its own: only the Python code may call it."""

    def __and__(self, other: int) -> int:
        return 42


class BoolLike:
    """Not an int: ``sequence & 0xFFFFFFFF`` must fail as in Python."""


any_payload = st.one_of(st.binary(max_size=64), usual_payloads, general_payloads, mutated())
flags = {
    "crcs": st.booleans(),
    "sequence": st.none() | st.integers() | st.integers(-(1 << 70), 1 << 70) | st.booleans(),
    "sequence_id": st.none() | st.integers() | st.integers(-(1 << 70), 1 << 70) | st.booleans(),
}


# ------------------------------------------------------------------------------------------------------
# The extension is the one in use


def test_extension_is_built() -> None:
    """CI compiles the extension in ``pip install -e``; a silent fallback would cost the throughput."""
    if os.environ.get(native.PURE_PYTHON_ENV) or os.environ.get(ALLOW_PURE_PYTHON_ENV):
        pytest.skip("pure Python requested or allowed")
    from nmsgdns import _nmsgbody

    assert encode_body_c is _nmsgbody.encode_body
    assert container.encode_body is encode_body_c


def test_encode_body_is_c_when_built() -> None:
    assert container.encode_body is (encode_body_py if encode_body_c is None else encode_body_c)


# ------------------------------------------------------------------------------------------------------
# Same bytes, same exceptions


@needs_c
@FUZZ
@given(
    st.lists(any_payload, max_size=12), st.booleans(), flags["crcs"], flags["sequence"], flags["sequence_id"]
)
def test_arbitrary_payloads(
    payloads: list[bytes], as_tuple: bool, crcs: bool, sequence: int | None, sequence_id: int | None
) -> None:
    same_body(
        tuple(payloads) if as_tuple else payloads, crcs=crcs, sequence=sequence, sequence_id=sequence_id
    )


@needs_c
@FUZZ
@given(st.lists(usual_payloads, max_size=12), flags["sequence"], flags["sequence_id"])
def test_usual_layout(payloads: list[bytes], sequence: int | None, sequence_id: int | None) -> None:
    """Only fast-path payloads: the C code decides every CRC itself."""
    kind, _ = same_body(payloads, crcs=True, sequence=sequence, sequence_id=sequence_id)
    assert kind == "ok"


@needs_c
@FUZZ
@given(usual_payloads, st.lists(st.tuples(st.integers(0, 18), st.integers(0, 255)), min_size=1, max_size=3))
def test_fast_path_near_misses(payload: bytes, changes: list[tuple[int, int]]) -> None:
    """A usual-layout payload with some of the bytes the fast path reads changed: each of its conditions
    must hold exactly as in Python, or the walk (and its PayloadError) must decide."""
    p = bytearray(payload)
    for i, value in changes:
        if i < len(p):
            p[i] = value
    same_body([bytes(p)], crcs=True)


def crafted(length_bytes: bytes, size: int, fill: int = 0) -> bytes:
    """The usual 16-byte prefix, then ``length_bytes`` where the data length goes, padded to ``size``."""
    head = usual_payload(b"")[:16] + length_bytes
    return head + bytes([fill]) * (size - len(head))


@needs_c
@pytest.mark.parametrize(
    "payload",
    [
        crafted(b"\x80\x80", 18 + (0x80 << 7)),  # a third length byte: the fast path must not take it
        crafted(b"\x81\x80", 19 + (0x80 << 7)),
        crafted(b"\x80\x80", 18 + (0x80 << 7), 0x08),
        crafted(b"\x80\x01", 18 + 128),  # a two-byte length that is right
        crafted(b"\x80\x01", 18 + 127),  # one byte short
        crafted(b"\x80\x01", 18 + 129, 0x08),  # one byte over
        crafted(b"\x81\x02", 18 + 385),  # 128 over: the continuation bit must not count as length
        crafted(b"\x00", 17),  # empty data: 17 bytes, which the fast path leaves to the walk
        crafted(b"\x01", 17),  # a length with no data byte
        crafted(b"\x80", 17),  # a length cut short
    ],
)
def test_crafted_lengths(payload: bytes) -> None:
    same_body([payload], crcs=True)
    same_body([payload, payload], crcs=True, sequence=1)


@needs_c
@pytest.mark.parametrize(
    "size", [0, 1, 110, 111, 127, 128, 1023, 1024, 1025, 16366, 16367, 16383, 16384, 70000]
)
@pytest.mark.parametrize("time_sec", [0, (1 << 28) - 1, 1 << 28, 1_700_000_000, (1 << 35) - 1, 1 << 35, -1])
def test_layout_boundaries(size: int, time_sec: int) -> None:
    """Where the fast path starts and stops: 5-byte time_sec only, one- and two-byte data lengths only
    (16367 is the largest data whose payload length still takes two bytes), copies up to 1024 bytes."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    p = usual_payload(data, time_sec=time_sec)
    same_body([p], crcs=True)
    assert split_nmsg(encode_body_c([p]))[1] == [payload_crc(p)]  # type: ignore[misc]


@needs_c
@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no required field
        b"\x08",  # truncated varint
        b"\x08\x01\x10\x09\x18\x80\x80\x80\x80\x06\x25\x00\x00\x00\x00\x2a\x05abc",  # data cut short
        b"\x08\x01\x10\x09\x18\x80\x80\x80\x80\x06\x25\x00\x00\x00\x00\x2a\x80",  # usual prefix, 17 bytes
        b"\x0f\x00",  # wire type 7
        b"\x00\x00",  # field number 0
        b"\xff" * 11,  # overlong varint
    ],
)
def test_malformed_payload_raises_python_error(payload: bytes) -> None:
    """A payload the walk rejects raises the Python PayloadError with its message; without CRCs it is
    embedded as given."""
    kind, (exc_type, _) = same_body([usual_payload(b"ok"), payload], crcs=True)  # type: ignore[misc]
    assert kind == "error" and exc_type.__name__ == "PayloadError"
    assert same_body([payload], crcs=False)[0] == "ok"


@needs_c
@FUZZ
@given(
    st.lists(
        st.one_of(
            any_payload,
            any_payload.map(bytearray),
            any_payload.map(memoryview),
            any_payload.map(lambda p: BytesSub(p)),
            st.sampled_from([None, 0, "text", 1.5]),
        ),
        max_size=5,
    ),
    st.sampled_from(("list", "tuple", "iterator", "list-subclass", "bytes")),
    st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from([None, "", "x", [], [0], 1.0])),
    st.one_of(flags["sequence"], st.sampled_from([1.0, "1", BoolLike()])),
    st.one_of(flags["sequence_id"], st.sampled_from([1.0, "1", IntSub(5)])),
)
def test_odd_inputs(
    payloads: list[object], container_kind: str, crcs: object, sequence: object, sequence_id: object
) -> None:
    """Inputs the C code hands to the Python function (or decides as it would): the same outcome."""
    factories: dict[str, Callable[[], object]] = {
        "list": lambda: list(payloads),
        "tuple": lambda: tuple(payloads),
        "iterator": lambda: iter(payloads),
        "list-subclass": lambda: ListSub(payloads),
        "bytes": lambda: b"".join(p for p in payloads if isinstance(p, bytes)),
    }
    same_body(factories[container_kind], crcs=crcs, sequence=sequence, sequence_id=sequence_id)


@needs_c
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), (([], True), {}), (([],), {"crc": True}), ((), {"payloads": [b"x"], "crcs": False})],
)
def test_call_errors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A wrong call (or ``payloads`` by keyword) behaves as the Python function's."""
    assert outcome(encode_body_c, args, kwargs) == outcome(encode_body_py, args, kwargs)  # type: ignore[arg-type]


@needs_c
def test_no_reference_leaks() -> None:
    """Payloads, the list and the result are released on success and on every error path."""
    good = usual_payload(b"data" * 10)
    odd = make_payload(1, 9, 5, 0, b"walked")  # short time_sec: the CRC comes from payload_crc
    bad = b"\x08"
    lst = [good, odd]
    objs = (good, odd, bad, lst)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(2000):
        encode_body_c(lst, crcs=True, sequence=3, sequence_id=1 << 80)  # type: ignore[misc]
        encode_body_c((good, odd), crcs=False)  # type: ignore[misc]
        with pytest.raises(Exception, match="NmsgPayload"):
            encode_body_c([good, bad], crcs=True)  # type: ignore[misc]
        encode_body_c([bytearray(good), odd])  # type: ignore[misc]
    assert [sys.getrefcount(o) for o in objs] == before


@needs_c
def test_configure_checks_its_arguments() -> None:
    from nmsgdns import _nmsgbody

    with pytest.raises(TypeError):
        _nmsgbody.configure(1, 2)
    assert encode_body_c([usual_payload(b"x")]) == encode_body_py([usual_payload(b"x")])  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------------
# The corpus


def corpus_files() -> list[str]:
    names = [f"{case}.nmsg" for case in corpus.CASES]
    names += [f"{case}.filtered.nmsg" for case in corpus.CASES]
    names += [f"{case}.z.nmsg" for case in corpus.ZLIB_CASES]
    return names


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_payloads(name: str) -> None:
    """Every corpus payload: both encoders agree, and the body reads back to the payloads and CRCs."""
    payloads = read_payloads(corpus.path(name))
    assert payloads
    for crcs in (True, False):
        body = container.encode_body(payloads, crcs=crcs, sequence=0xFFFFFFFF, sequence_id=(1 << 64) - 1)
        if encode_body_c is not None:
            assert body == encode_body_py(payloads, crcs=crcs, sequence=0xFFFFFFFF, sequence_id=(1 << 64) - 1)
        got = split_nmsg(body)
        assert got == (
            payloads,
            [payload_crc(p) for p in payloads] if crcs else [],
            0xFFFFFFFF,
            (1 << 64) - 1,
        )
        decoded = decode_container(encode_header(0, len(body)) + body)
        assert decoded.payloads == payloads
        assert decoded.crcs == got[1]


def nmsgtool_bodies(data: bytes) -> list[bytes]:
    """The (inflated) body of every non-fragment container in ``data``, as nmsgtool wrote it."""
    bodies = []
    pos = 0
    while pos < len(data):
        hdr = parse_header(data, pos)
        body = data[pos + hdr.size : pos + hdr.size + hdr.length]
        pos += hdr.size + hdr.length
        if not hdr.flags & FLAG_FRAGMENT:
            bodies.append(inflate(body) if hdr.flags & FLAG_ZLIB else body)
    return bodies


def test_corpus_bodies_are_reproduced() -> None:
    """Re-encoding each container's payloads with its own flags gives nmsgtool's body, byte for byte
    (files and the socket captures, which carry sequence numbers)."""
    bodies = [b for name in corpus_files() for b in nmsgtool_bodies(corpus.path(name).read_bytes())]
    for case in corpus.SOCKET_CASES:
        bodies += [b for d in corpus.udp_datagrams(case) for b in nmsgtool_bodies(d)]
    assert len(bodies) > 50
    for body in bodies:
        payloads, crcs, sequence, sequence_id = split_nmsg(body)
        assert (
            container.encode_body(payloads, crcs=bool(crcs), sequence=sequence, sequence_id=sequence_id)
            == body
        )
        if encode_body_c is not None:
            assert (
                encode_body_py(payloads, crcs=bool(crcs), sequence=sequence, sequence_id=sequence_id) == body
            )
