"""Property tests for nmsgdns.wire: no input makes scan_opt raise anything but DnsWireError or hang, and
its verdict equals a deliberately plain model of the libwdns rules (no caches, no fast paths), so the
scanner's shortcuts (name-length cache, inline owner names, compiled field runs) cannot change a result.
"""

from __future__ import annotations

import base64
import struct
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmsgdns.errors import DnsWireError
from nmsgdns.wire import Opt, scan_opt
from tests import corpus

# The field table of edns-rule.md, written out independently of nmsgdns.wire's compiled form.
N, STR, STRS, BYTES, PFX, BMP, SVC = (
    "name",
    "string",
    "strings",
    "bytes",
    "ipv6prefix",
    "bitmap",
    "svcparams",
)
U8, U16, U32, IPV4, IPV6, EUI48, EUI64 = ("u8", "u16", "u32", "ipv4", "ipv6", "eui48", "eui64")
SIZES = {U8: 1, U16: 2, U32: 4, IPV4: 4, IPV6: 16, EUI48: 6, EUI64: 8}
TABLE: dict[int, tuple[bool, tuple[str, ...]]] = {
    **{t: (False, (N,)) for t in (2, 3, 4, 5, 7, 8, 9, 12, 39)},
    6: (False, (N, N, U32, U32, U32, U32, U32)),
    13: (False, (STR, STR)),
    20: (False, (STR, STR)),
    14: (False, (N, N)),
    17: (False, (N, N)),
    15: (False, (U16, N)),
    18: (False, (U16, N)),
    21: (False, (U16, N)),
    10: (False, (BYTES,)),
    16: (False, (STRS,)),
    99: (False, (STRS,)),
    19: (False, (STR,)),
    30: (False, (N, BYTES)),
    24: (False, (U16, U8, U8, U32, U32, U32, U16, N, BYTES)),
    46: (False, (U16, U8, U8, U32, U32, U32, U16, N, BYTES)),
    1: (True, (IPV4,)),
    11: (True, (U32, U8, BYTES)),
    28: (True, (IPV6,)),
    38: (True, (PFX, N)),
    36: (True, (U16, N)),
    26: (True, (U16, N, N)),
    35: (True, (U16, U16, STR, STR, STR, N)),
    33: (True, (U16, U16, U16, N)),
    48: (False, (U16, U8, U8, BYTES)),
    60: (False, (U16, U8, U8, BYTES)),
    47: (False, (N, BMP)),
    43: (False, (U16, U8, U8, BYTES)),
    59: (False, (U16, U8, U8, BYTES)),
    50: (False, (U8, U8, U16, STR, STR, BMP)),
    51: (False, (U8, U8, U16, STR)),
    52: (False, (U8, U8, U8, BYTES)),
    61: (False, (BYTES,)),
    62: (False, (U32, U16, BMP)),
    108: (False, (EUI48,)),
    109: (False, (EUI64,)),
    256: (False, (U16, U16, BYTES)),
    64: (True, (U16, N, SVC)),
    65: (True, (U16, N, SVC)),
    257: (True, (U8, STR, BYTES)),
    41: (False, (BYTES,)),
}


class Bad(Exception):
    pass


def model_name(w: bytes, pos: int) -> int:
    """unpack_name + skip_name, literally: returns the in-place end."""
    total, src, end = 0, pos, None
    while True:
        if src >= len(w):
            raise Bad
        c = w[src]
        if c == 0:
            return end if end is not None else src + 1
        if c >= 192:
            if src + 1 >= len(w):
                raise Bad
            target = ((c & 63) << 8) | w[src + 1]
            if target > src - 1:
                raise Bad
            if end is None:
                end = src + 2
            src = target
        elif c <= 63:
            total += 1 + c
            if total >= 255 or src + 1 + c > len(w):
                raise Bad
            src += 1 + c
        else:
            raise Bad


def model_svc_ok(key: int, v: bytes) -> bool:
    if key == 0:
        return len(v) % 2 == 0
    if key == 1:
        i = 0
        while i < len(v):
            i += 1 + v[i]
        return len(v) > 0 and i == len(v)
    return {2: len(v) == 0, 3: len(v) == 2, 4: len(v) % 4 == 0, 6: len(v) % 16 == 0}.get(key, key != 65535)


def model_rdata(w: bytes, p: int, end: int, fields: tuple[str, ...]) -> None:
    for f in fields:
        if p == end:
            return
        if f in SIZES:
            p += SIZES[f]
        elif f == N:
            p = model_name(w, p)
        elif f == STR:
            p += 1 + w[p]
        elif f == STRS:
            while p < end:
                p += 1 + w[p]
        elif f == BYTES:
            p = end
        elif f == PFX:
            if w[p] > 128:
                raise Bad
            p += 1 + -(-(128 - w[p]) // 8)
        elif f == BMP:
            while end - p >= 2:
                if not 1 <= w[p + 1] <= 32 or w[p + 1] > end - p - 2:
                    raise Bad
                p += 2 + w[p + 1]
        else:
            while p < end:
                if end - p < 4:
                    raise Bad
                key, vlen = struct.unpack_from(">HH", w, p)
                if 4 + vlen > end - p or not model_svc_ok(key, w[p + 4 : p + 4 + vlen]):
                    raise Bad
                p += 4 + vlen
        if p > end:
            raise Bad
    if p != end:
        raise Bad


def model(w: bytes) -> Opt | None:
    if len(w) < 12:
        raise Bad
    counts = struct.unpack_from(">4H", w, 4)
    pos, opt = 12, None
    for sec, count in enumerate(counts):
        for _ in range(count):
            if pos == len(w):
                return opt
            pos = model_name(w, pos)
            if pos + (4 if sec == 0 else 10) > len(w):
                raise Bad
            rtype, rclass = struct.unpack_from(">HH", w, pos)
            if sec == 0:
                if rtype == 41 and opt is None:
                    opt = Opt(rclass, 0, 0, 0, b"")
                pos += 4
                continue
            ttl, rdlen = struct.unpack_from(">IH", w, pos + 4)
            pos += 10
            if pos + rdlen > len(w):
                raise Bad
            spec = TABLE.get(rtype)
            if spec is not None and (not spec[0] or rclass == 1):
                model_rdata(w, pos, pos + rdlen, spec[1])
            if rtype == 41 and opt is None:
                opt = Opt(rclass, ttl >> 24, (ttl >> 16) & 0xFF, ttl & 0xFFFF, w[pos : pos + rdlen])
            pos += rdlen
    return opt


def same_verdict(wire: bytes) -> None:
    try:
        expected: object = model(wire)
    except (Bad, IndexError):
        expected = DnsWireError
    try:
        got: object = scan_opt(wire)
    except DnsWireError:
        got = DnsWireError
    assert got == expected, wire.hex()


@cache
def corpus_messages() -> tuple[bytes, ...]:
    out = []
    for obj in corpus.json_lines("edge_cases.json") + corpus.json_lines("live_resolver.json")[:600]:
        for field in ("query", "response"):
            if field in obj["message"]:
                out.append(base64.b64decode(obj["message"][field]))
    return tuple(out)


def test_model_agrees_on_the_corpus() -> None:
    for wire in corpus_messages():
        same_verdict(wire)


# Bounded so the file runs in well under 20 s even on a loaded 2-vCPU box; a hang would blow the deadline.
FUZZ = settings(max_examples=800, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(wire: bytes) -> None:
    same_verdict(wire)


@FUZZ
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=200))
def test_small_counts_then_anything(head: bytes, body: bytes) -> None:
    # keep the counts small so the walk goes through records instead of stopping at the end
    head = head[:4] + bytes([0, head[5] % 3, 0, head[7] % 4, 0, head[9] % 3, 0, head[11] % 3])
    same_verdict(head + body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    msgs = corpus_messages()
    wire = bytearray(msgs[draw(st.integers(0, len(msgs) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "cut", "insert")))
        at = draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and wire:
            wire[at] = draw(st.sampled_from((0, 1, 0x3F, 0x40, 0xC0, 0xC0 | (at >> 8), 0xFF, 41)))
        elif op == "cut":
            del wire[at:]
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(wire)


@FUZZ
@given(mutated())
def test_mutated_corpus_messages(wire: bytes) -> None:
    same_verdict(wire)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """Messages built record by record from the listed types, with compression pointers anywhere."""
    label = st.binary(min_size=1, max_size=8).map(lambda b: bytes([len(b)]) + b)

    def name() -> bytes:
        labels = b"".join(draw(st.lists(label, max_size=3)))
        if draw(st.booleans()):
            return labels + bytes([0xC0, draw(st.integers(0, 80))])
        return labels + b"\x00"

    def field(f: str) -> bytes:
        if f in SIZES:
            return bytes(SIZES[f])
        if f == N:
            return name()
        if f in (STR, STRS, BYTES):
            return draw(label)
        if f == PFX:
            return bytes([draw(st.sampled_from((0, 64, 65, 128, 129)))]) + bytes(draw(st.integers(0, 16)))
        if f == BMP:
            return bytes([0, draw(st.sampled_from((0, 1, 32, 33)))]) + bytes(draw(st.integers(0, 3)))
        return struct.pack(">HH", draw(st.sampled_from((0, 1, 2, 3, 4, 6, 9, 65535))), 2) + draw(label)[:2]

    records = []
    for _ in range(draw(st.integers(0, 4))):
        rtype = draw(st.sampled_from(sorted(TABLE)))
        fields = TABLE[rtype][1]
        rdata = b"".join(field(f) for f in fields[: draw(st.integers(0, len(fields)))])
        rdata = (
            rdata[: draw(st.integers(max(len(rdata) - 2, 0), len(rdata) + 1))]
            if draw(st.booleans())
            else rdata
        )
        rclass = draw(st.sampled_from((1, 1, 3, 4096)))
        records.append(name() + struct.pack(">HHIH", rtype, rclass, 0, len(rdata)) + rdata)
    question = name() + struct.pack(">HH", draw(st.sampled_from((1, 41))), 1)
    count = len(records) + draw(st.integers(0, 1))
    return struct.pack(">6H", 1, 0, 1, count, 0, 0) + question + b"".join(records)


@FUZZ
@given(structured())
def test_structured_messages(wire: bytes) -> None:
    same_verdict(wire)
