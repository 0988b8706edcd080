"""A frozen window: one window of an ns-stats partition's state, read-only, in a few flat buffers.

No Kafka. Why: a week of hourly windows holds millions of (name server, window) entries, and as Python
objects each costs ~250 bytes (a dict entry, its name's ``str``, a counts list, often a kinds map;
docs/design.md, "Aggregation"). Only the newest windows take deltas while a capture is replayed in record
order, so :class:`processors.state.NsState` freezes the others: a window no delta reached for a whole
commit interval, outside the newest few, becomes a :class:`FrozenWindow` (Kafka Streams' and Flink's answer
is the same split: hot entries as objects, the rest serialized, there in RocksDB, here in memory). A delta
for a frozen window thaws it back into a dict first (:meth:`FrozenWindow.thaw`).

Layout: the entries sorted by the UTF-8 bytes of their name server, then

- ``names``: those bytes, one after the other; ``name_ends[i]`` is where entry ``i``'s name ends;
- ``values``: each entry's counts as its changelog value (``processors.state.encode_value``: a version
  byte and orjson's JSON of the counts list), one after the other; ``value_ends[i]`` likewise.

About 50 bytes an entry on the high-cardinality bench files (a name of ~14 bytes, a value of ~25, two
4-byte offsets), against ~250 as objects. A lookup is a binary search over the names: :func:`find_py`, in
C when built (``processors/_frozen_window.c``, held to it by ``tests/processors/test_frozen_window.py``).
Reads give new counts lists each time: changing one changes nothing in the window.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate, chain, pairwise

from nmsgdns.native import implementation, load_extension
from processors.counts import Counts

#: the largest buffer an offset of ``name_ends`` or ``value_ends`` reaches ('I': 32 bits)
MAX_BUFFER = 2**32 - 1


def _item(buffer: bytes, ends: array, i: int) -> bytes:
    """Entry ``i`` of ``buffer``, whose entries end at ``ends``."""
    return buffer[ends[i - 1] if i else 0 : ends[i]]


class _Names:
    """Entry ``i``'s name server bytes, as a sequence for :mod:`bisect`."""

    def __init__(self, names: bytes, ends: array) -> None:
        self.names, self.ends = names, ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        return _item(self.names, self.ends, i)


def find_py(names: bytes, ends: array, key: bytes) -> int:
    """The index of the entry named ``key`` in the sorted ``names`` ending at ``ends``; -1 when absent."""
    seq = _Names(names, ends)
    i = bisect.bisect_left(seq, key)
    return i if i < len(seq) and seq[i] == key else -1


def _records(names: bytes, name_ends: array, values: bytes, value_ends: array) -> list[tuple[bytes, bytes]]:
    """Every (name, value) of a frozen window's buffers, in order."""
    name_spans, value_spans = pairwise(chain((0,), name_ends)), pairwise(chain((0,), value_ends))
    return [(names[a:b], values[c:d]) for (a, b), (c, d) in zip(name_spans, value_spans, strict=True)]


def merge_py(
    names: bytes,
    name_ends: array,
    values: bytes,
    value_ends: array,
    drop: list[bytes],
    add: list[tuple[bytes, bytes]],
) -> tuple[bytes, bytes, bytes, bytes]:
    """The buffers of a frozen window (``names`` .. ``value_ends``) without its entries named in ``drop``
    and with the (name, value) records of ``add``, in name order (an added record replaces an entry of its
    name): (names, name_ends, values, value_ends), the ends as the bytes of an ``array('I')``.
    ``drop`` and ``add`` are sorted by name, without repeats (ValueError else); OverflowError when the
    buffers would be too long for 32-bit offsets."""
    for sequence in (drop, [name for name, _ in add]):
        if any(a >= b for a, b in pairwise(sequence)):
            raise ValueError("merge: drop and add must be sorted, without repeats")
    dropped = set(drop).union(name for name, _ in add)
    records = [r for r in _records(names, name_ends, values, value_ends) if r[0] not in dropped] + add
    records.sort()
    keys = [key for key, _ in records]
    encoded = [value for _, value in records]
    if sum(map(len, keys)) > MAX_BUFFER or sum(map(len, encoded)) > MAX_BUFFER:
        raise OverflowError("merge: the buffers would pass 32-bit offsets")
    return (
        b"".join(keys),
        array("I", accumulate(map(len, keys))).tobytes(),
        b"".join(encoded),
        array("I", accumulate(map(len, encoded))).tobytes(),
    )


_ext = load_extension("_frozen_window", "processors")
#: :func:`find_py`, in C when built
find: Callable[[bytes, array, bytes], int] = find_py if _ext is None else _ext.find
#: :func:`merge_py`, in C when built (same buffers: tests/processors/test_frozen_window.py)
merge: Callable[
    [bytes, array, bytes, array, list[bytes], list[tuple[bytes, bytes]]], tuple[bytes, bytes, bytes, bytes]
] = merge_py if _ext is None else _ext.merge
#: which :func:`find` runs
IMPLEMENTATION = implementation(_ext)


def _ends(data: bytes) -> array:
    ends = array("I")
    ends.frombytes(data)
    return ends


class FrozenWindow(Mapping[str, Counts]):
    """One window's counts by name server, read-only and compact (module doc). Build it with
    :meth:`freeze`; ``decode`` reads one value (``processors.state.thaw_counts``)."""

    __slots__ = ("decode", "name_ends", "names", "value_ends", "values")

    def __init__(
        self,
        names: bytes,
        name_ends: array,
        values: bytes,
        value_ends: array,
        decode: Callable[[bytes], Counts],
    ) -> None:
        self.names, self.name_ends = names, name_ends
        self.values, self.value_ends = values, value_ends
        self.decode = decode

    @classmethod
    def freeze(
        cls,
        records: list[tuple[bytes, bytes | None]],
        decode: Callable[[bytes], Counts],
    ) -> FrozenWindow | None:
        """The frozen window of ``records``, (name server bytes, encoded counts) of one window's entries
        (``processors.state.counts_records`` with an empty prefix gives them); None when its buffers would
        be too long for 32-bit offsets (the window then stays a dict)."""
        records.sort()
        keys = [key for key, _ in records]
        values = [value for _, value in records]
        names, encoded = b"".join(keys), b"".join(values)  # type: ignore[arg-type]
        if len(names) > MAX_BUFFER or len(encoded) > MAX_BUFFER:
            return None
        return cls(
            names,
            array("I", accumulate(map(len, keys))),
            encoded,
            array("I", accumulate(map(len, values))),  # type: ignore[arg-type]
            decode,
        )

    def __len__(self) -> int:
        return len(self.name_ends)

    def _name(self, i: int) -> bytes:
        return _item(self.names, self.name_ends, i)

    def _value(self, i: int) -> Counts:
        return self.decode(_item(self.values, self.value_ends, i))

    def __iter__(self) -> Iterator[str]:
        return (self._name(i).decode() for i in range(len(self)))

    def __getitem__(self, ns: str) -> Counts:
        i = find(self.names, self.name_ends, ns.encode())
        if i < 0:
            raise KeyError(ns)
        return self._value(i)

    def __contains__(self, ns: object) -> bool:
        return isinstance(ns, str) and find(self.names, self.name_ends, ns.encode()) >= 0

    def get(self, ns: str, default: Counts | None = None) -> Counts | None:  # type: ignore[override]
        i = find(self.names, self.name_ends, ns.encode())
        return default if i < 0 else self._value(i)

    def items(self) -> Iterator[tuple[str, Counts]]:  # type: ignore[override]
        """Every (name server, counts), in name order; new lists each time."""
        return ((self._name(i).decode(), self._value(i)) for i in range(len(self)))

    def merged(self, drop: list[bytes], add: list[tuple[bytes, bytes]]) -> FrozenWindow | None:
        """A new frozen window: this one without the entries named in ``drop`` and with the (name server
        bytes, encoded counts) records of ``add`` (:func:`merge`; both sorted, without repeats); None when
        its buffers would be too long for 32-bit offsets."""
        try:
            names, name_ends, values, value_ends = merge(
                self.names, self.name_ends, self.values, self.value_ends, drop, add
            )
        except OverflowError:
            return None
        return FrozenWindow(names, _ends(name_ends), values, _ends(value_ends), self.decode)

    def thaw(self) -> dict[str, Counts]:
        """The window as the dict it was frozen from (new lists)."""
        return dict(self.items())

    @property
    def nbytes(self) -> int:
        """Bytes of its four buffers."""
        return (
            len(self.names)
            + len(self.values)
            + self.name_ends.itemsize * len(self.name_ends)
            + self.value_ends.itemsize * len(self.value_ends)
        )
