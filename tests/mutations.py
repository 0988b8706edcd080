"""A hypothesis strategy shared by tests that hold a fast decoder to its specification on damaged input."""

from __future__ import annotations

from hypothesis import strategies as st

#: bytes that sit on varint, boolean and UTF-8 boundaries
EDGE_BYTES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xC0, 0xED, 0xF4, 0xFF)


@st.composite
def mutated(draw: st.DrawFn, value: bytes, min_edits: int = 1) -> bytes:
    """``value`` truncated, extended, or with bytes flipped, set to edge values, inserted or deleted."""
    out = bytearray(value)
    for _ in range(draw(st.integers(min_edits, 3))):
        op = draw(st.sampled_from(("cut", "append", "flip", "set", "insert", "delete")))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "cut":
            del out[at:]
        elif op == "append":
            out += draw(st.binary(min_size=1, max_size=4))
        elif op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[at] = draw(st.sampled_from(EDGE_BYTES))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif out:
            del out[at : at + draw(st.integers(1, 4))]
    return bytes(out)
