"""Fragment reassembly: libnmsg's keying and ordering, plus the bounds, caps, CRC and timeout it lacks."""

from __future__ import annotations

from nmsgdns.container import FLAG_FRAGMENT, FLAG_ZLIB, Fragment, nmsg_crc
from nmsgdns.nmsg_fragment import (
    DROP_BOUNDS,
    DROP_CRC,
    DROP_DUPLICATE,
    DROP_EVICTED,
    DROP_FLAGS,
    DROP_INCOMPLETE,
    DROP_TIMEOUT,
    DROP_TOO_LARGE,
    NmsgFragmentReassembler,
)

F = FLAG_FRAGMENT


class Clock:
    """A settable clock so timeouts are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _split(blob: bytes, chunk: int, frag_id: int = 42, *, last: int | None = None) -> list[Fragment]:
    crc = nmsg_crc(blob)
    n = (len(blob) + chunk - 1) // chunk
    last = n - 1 if last is None else last
    return [Fragment(frag_id, i, last, blob[i * chunk : (i + 1) * chunk], crc) for i in range(n)]


def test_in_order_and_out_of_order() -> None:
    blob = bytes(range(256)) * 10
    for order in (list(range(6)), [5, 0, 3, 1, 4, 2]):
        r = NmsgFragmentReassembler()
        frags = _split(blob, 480)
        results = [r.add(frags[i], F) for i in order]
        assert results[:-1] == [None] * 5
        assert results[-1] == (blob, F)
        assert r.pending == 0 and r.pending_bytes == 0 and not r.drops


def test_single_piece_set_and_crc_absent() -> None:
    r = NmsgFragmentReassembler()
    assert r.add(Fragment(1, 0, 0, b"abc", None), F | FLAG_ZLIB) == (b"abc", F | FLAG_ZLIB)


def test_keyed_by_sender_and_crc() -> None:
    blob_a, blob_b = b"a" * 1000, b"b" * 1000
    fa, fb = _split(blob_a, 480, 7), _split(blob_b, 480, 7)  # same id, different blobs
    r = NmsgFragmentReassembler()
    assert r.add(fa[0], F, "s1") is None
    assert r.add(fb[0], F, "s2") is None
    assert r.add(fa[1], F, "s1") is None
    assert r.add(fb[1], F, "s2") is None
    assert r.add(fb[2], F, "s2") == (blob_b, F)
    assert r.add(fa[2], F, "s1") == (blob_a, F)


def test_bounds_duplicates_and_disagreements_are_counted() -> None:
    r = NmsgFragmentReassembler()
    blob = b"x" * 1000
    frags = _split(blob, 480)
    assert r.add(Fragment(42, 5, 2, b"zz", frags[0].crc), F) is None  # current > last
    assert r.add(frags[0], F) is None
    assert r.add(frags[0], F) is None  # duplicate
    assert r.add(frags[1]._replace(last=7), F) is None  # disagrees on last
    assert r.add(frags[1], F | FLAG_ZLIB) is None  # disagrees on compression
    assert r.drops == {DROP_BOUNDS: 2, DROP_DUPLICATE: 1, DROP_FLAGS: 1}
    assert r.add(frags[1], F) is None
    assert r.add(frags[2], F) == (blob, F)


def test_crc_mismatch_drops_the_set() -> None:
    r = NmsgFragmentReassembler()
    frags = _split(b"y" * 1000, 480)
    frags[1] = frags[1]._replace(fragment=b"Y" * 480)
    assert [r.add(f, F) for f in frags] == [None, None, None]
    assert r.drops == {DROP_CRC: 1}
    assert r.pending == 0


def test_total_size_cap() -> None:
    r = NmsgFragmentReassembler(max_size=1000)
    frags = _split(b"z" * 1500, 480)
    assert [r.add(f, F) for f in frags[:3]] == [None, None, None]
    assert r.drops[DROP_TOO_LARGE] == 1
    assert r.pending_bytes <= 1000


def test_timeout_after_30_seconds() -> None:
    clock = Clock()
    r = NmsgFragmentReassembler(clock=clock)
    frags = _split(b"q" * 1000, 480)
    r.add(frags[0], F)
    clock.now += 29.9
    assert r.expire() == 0
    clock.now += 0.2
    assert r.add(frags[1], F) is None  # the old set expired first; this starts a new one
    assert r.drops[DROP_TIMEOUT] == 1
    assert r.pending == 1
    assert r.drop_all() == 1
    assert r.drops[DROP_INCOMPLETE] == 1


def test_pending_limits_evict_oldest() -> None:
    r = NmsgFragmentReassembler(max_pending_sets=2)
    for i in range(4):
        r.add(Fragment(i, 0, 1, b"p" * 10, 1), F)
    assert r.pending == 2
    assert r.drops[DROP_EVICTED] == 2
    r = NmsgFragmentReassembler(max_pending_bytes=100)
    for i in range(3):
        r.add(Fragment(i, 0, 1, b"p" * 60, 1), F)
    assert r.pending_bytes <= 100
    assert r.drops[DROP_EVICTED] == 2


def test_recovers_libnmsgs_last_off_by_one() -> None:
    """libnmsg announces last = len // chunk: one too high for an exact multiple; the empty final piece
    is never sent. The set is still complete and CRC-verified, so it is delivered."""
    blob = b"m" * 960
    frags = _split(blob, 480, last=2)
    assert len(frags) == 2
    r = NmsgFragmentReassembler()
    assert r.add(frags[1], F) is None
    assert r.add(frags[0], F) == (blob, F)
    assert r.recovered_short_last == 1 and not r.drops


def test_short_last_guess_does_not_fire_on_partial_sets() -> None:
    blob = b"n" * 1000
    frags = _split(blob, 400)  # 400, 400, 200
    r = NmsgFragmentReassembler()
    assert r.add(frags[0], F) is None
    assert r.add(frags[1], F) is None  # pieces 0..last-1 are equal but the CRC does not match yet
    assert r.add(frags[2], F) == (blob, F)
    assert r.recovered_short_last == 0
