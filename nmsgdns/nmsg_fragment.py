"""Reassembly of NMSG fragments (a container too large for one datagram, sent in pieces with the FRAGMENT
flag), keyed by (id, crc, sender) as libnmsg keys them. IP fragments are another matter:
``nmsgdns/ipreasm.py``.

libnmsg trusts its peers: it indexes an array by ``current`` without a bounds check, asserts that every
piece agrees on ``last``, never checks the blob CRC and keeps no total size limit. Input here may come
from any UDP sender, so every one of those cases is a counted drop instead, pending sets are bounded in
number and bytes, and incomplete sets expire after 30 s (libnmsg's NMSG_FRAG_GC_INTERVAL).

One libnmsg writer quirk is recovered rather than dropped: when the blob length is an exact multiple of
the chunk size, the writer announces ``last`` one too high and never sends that (empty) piece. A set
whose pieces 0..last-1 are present, all the same size, and whose joined bytes match the announced CRC
is complete in every way that matters, so it is reassembled and counted in ``recovered_short_last``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable

from nmsgdns.container import Fragment, nmsg_crc

#: Seconds an incomplete set may wait for its missing pieces (libnmsg: NMSG_FRAG_GC_INTERVAL).
FRAGMENT_TIMEOUT = 30.0
#: Most bytes one reassembled blob may hold.
MAX_REASSEMBLED_SIZE = 16 * 1048576
#: Most bytes all pending sets together may hold; the oldest sets are evicted beyond it.
MAX_PENDING_BYTES = 64 * 1048576
#: Most sets pending at once.
MAX_PENDING_SETS = 4096

# Drop reasons (keys of the drops Counter).
DROP_BOUNDS = "fragment_bounds"
DROP_DUPLICATE = "fragment_duplicate"
DROP_TOO_LARGE = "fragment_too_large"
DROP_CRC = "fragment_crc"
DROP_TIMEOUT = "fragment_timeout"
DROP_EVICTED = "fragment_evicted"
DROP_FLAGS = "fragment_flags"
DROP_INCOMPLETE = "fragment_incomplete"

_Key = tuple[int, int | None, Hashable]


class _PendingSet:
    """Pieces received so far of one fragmented blob."""

    __slots__ = ("created", "flags", "last", "pieces", "size")

    def __init__(self, last: int, flags: int, created: float) -> None:
        self.last = last
        self.flags = flags
        self.created = created
        self.pieces: dict[int, bytes] = {}
        self.size = 0


class NmsgFragmentReassembler:
    """Collects fragments and returns each blob once all of its pieces are in and verified.

    ``drops`` counts by reason; the unit is one fragment for per-piece problems (bounds, duplicate,
    flags) and one set for set-level ones (too large, CRC, timeout, evicted, incomplete).
    """

    def __init__(
        self,
        *,
        timeout: float = FRAGMENT_TIMEOUT,
        max_size: int = MAX_REASSEMBLED_SIZE,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_pending_sets: int = MAX_PENDING_SETS,
        clock: Callable[[], float] = time.monotonic,
        drops: Counter[str] | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_size = max_size
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_sets = max_pending_sets
        self.clock = clock
        self.drops: Counter[str] = drops if drops is not None else Counter()
        self.recovered_short_last = 0
        self.reassembled = 0
        self._sets: dict[_Key, _PendingSet] = {}  # insertion order == creation order == expiry order
        self._pending_bytes = 0

    @property
    def pending(self) -> int:
        """Number of incomplete sets held."""
        return len(self._sets)

    @property
    def pending_bytes(self) -> int:
        """Bytes held by incomplete sets."""
        return self._pending_bytes

    def add(self, frag: Fragment, flags: int, sender: Hashable = None) -> tuple[bytes, int] | None:
        """Add one fragment; returns (blob, flags) when it completes a set, else None.

        ``flags`` are the container header flags of this fragment (FLAG_ZLIB says the blob is
        compressed); all pieces of a set must agree. The blob is returned as sent, still compressed.
        """
        now = self.clock()
        self.expire(now)
        if frag.current > frag.last:
            self.drops[DROP_BOUNDS] += 1
            return None
        key = (frag.id, frag.crc, sender)
        entry = self._sets.get(key)
        if entry is None:
            if frag.last == 0:
                return self._finish({0: frag.fragment}, frag, flags)
            entry = _PendingSet(frag.last, flags, now)
            self._sets[key] = entry
        elif entry.last != frag.last:
            self.drops[DROP_BOUNDS] += 1
            return None
        elif entry.flags != flags:
            self.drops[DROP_FLAGS] += 1
            return None
        if frag.current in entry.pieces:
            self.drops[DROP_DUPLICATE] += 1
            return None
        size = len(frag.fragment)
        if entry.size + size > self.max_size:
            self._discard(key, entry)
            self.drops[DROP_TOO_LARGE] += 1
            return None
        entry.pieces[frag.current] = frag.fragment
        entry.size += size
        self._pending_bytes += size
        have = len(entry.pieces)
        if have == entry.last + 1:
            self._discard(key, entry)
            return self._finish(entry.pieces, frag, flags)
        if have == entry.last and entry.last not in entry.pieces and frag.crc is not None:
            result = self._try_short_last(key, entry, frag)
            if result is not None:
                return result
        self._evict()
        return None

    def _finish(self, pieces: dict[int, bytes], frag: Fragment, flags: int) -> tuple[bytes, int] | None:
        blob = b"".join(pieces[i] for i in range(frag.last + 1))
        if len(blob) > self.max_size:
            self.drops[DROP_TOO_LARGE] += 1
            return None
        if frag.crc is not None and nmsg_crc(blob) != frag.crc:
            self.drops[DROP_CRC] += 1
            return None
        self.reassembled += 1
        return blob, flags

    def _try_short_last(self, key: _Key, entry: _PendingSet, frag: Fragment) -> tuple[bytes, int] | None:
        sizes = {len(p) for p in entry.pieces.values()}
        if len(sizes) != 1:
            return None
        blob = b"".join(entry.pieces[i] for i in range(entry.last))
        if nmsg_crc(blob) != frag.crc:
            return None
        self._discard(key, entry)
        self.recovered_short_last += 1
        self.reassembled += 1
        return blob, entry.flags

    def _discard(self, key: _Key, entry: _PendingSet) -> None:
        del self._sets[key]
        self._pending_bytes -= entry.size

    def _evict(self) -> None:
        while self._sets and (
            len(self._sets) > self.max_pending_sets or self._pending_bytes > self.max_pending_bytes
        ):
            key = next(iter(self._sets))
            self._discard(key, self._sets[key])
            self.drops[DROP_EVICTED] += 1

    def expire(self, now: float | None = None) -> int:
        """Drop sets older than the timeout; returns how many were dropped."""
        if now is None:
            now = self.clock()
        dropped = 0
        while self._sets:
            key = next(iter(self._sets))
            entry = self._sets[key]
            if now - entry.created < self.timeout:
                break
            self._discard(key, entry)
            dropped += 1
        if dropped:
            self.drops[DROP_TIMEOUT] += dropped
        return dropped

    def drop_all(self) -> int:
        """Drop every pending set (end of input); counted as incomplete."""
        n = len(self._sets)
        self._sets.clear()
        self._pending_bytes = 0
        if n:
            self.drops[DROP_INCOMPLETE] += n
        return n
