"""The filter side of the counting: counted events folded into per-(name server, window) deltas over a batch
of containers, and their ``NsStatsBatch`` records per ns-stats partition.

The filter agent counts every EDNS query answered or timed out, per name server and window, sums the counts
over a batch of containers and sends them as a few ``NsStatsBatch`` records (``delta_batch.py``). At
real name-server cardinality (~480k distinct name servers per million records) most counted records start
a new (name server, window), so everything done per key is paid almost per record. Hence cheap data:

- a container's counted records are a flat list, four items per record: ``(response_ip, window_start,
  event, kind)`` (``EVENT_ANSWERED`` with an observation or None, ``EVENT_FAILURE`` with its kind,
  ``EVENT_TIMEOUT`` with None: ``processors/counts.py``), appended in the filter's per-record loop and
  folded into the batch only once the whole container succeeded (:func:`fold`), so a container that
  raises half way leaves nothing behind;
- a batch's counts are keyed by the raw address bytes and the window start (``b""`` for a selected record
  without a usable address, whose failure names the name server ``""``); the address becomes text
  (``inet_ntop``, :func:`nmsgdns.ippacket.ip_to_text`) only when the batch is encoded;
- a key's counts are a counts list (``processors/counts.py``), ``[edns_answered, failures, timeouts,
  by_kind | None, observations | None]``.

:func:`fold_py` and :func:`encode_py` are the specification; ``processors/_deltas.c`` transcribes them
(the same dicts, the same bytes; tests/processors/test_deltas.py) and :func:`fold` and :func:`encode`
are the C versions when built, unless ``$NMSGDNS_PURE_PYTHON`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

from dnsqr_kafka.key_partition import KeyPartitioner
from nmsgdns.ippacket import ip_to_text
from nmsgdns.native import implementation, load_extension
from processors.counts import (
    ANSWERED,
    BY_KIND,
    EVENT_ANSWERED,
    EVENT_FAILURE,
    EVENT_TIMEOUT,
    FAILURES,
    OBSERVATIONS,
    TIMEOUTS,
    Counts,
    add_kind,
    zero,
)
from processors.delta_batch import VERSION, DeltaRow, encode_batch

#: (response_ip bytes, window start)
CountsKey = tuple[bytes, int]


def fold_py(counts: dict[CountsKey, Counts], counted: list[object]) -> None:
    """Add the counted records ``counted`` (flat quadruples, see the module doc) to ``counts``."""
    if len(counted) % 4:
        raise ValueError(f"{len(counted)} items are not whole (ip, start, what, kind) quadruples")
    it = iter(counted)
    for ip, start, event, kind in zip(it, it, it, it, strict=True):
        key = (ip, start)
        c = counts.get(key)
        if c is None:
            c = counts[key] = zero()
        if event == EVENT_TIMEOUT:
            c[TIMEOUTS] += 1
            continue
        if event == EVENT_FAILURE:
            c[FAILURES] += 1
            slot = BY_KIND
        elif event == EVENT_ANSWERED:
            if kind is None:
                c[ANSWERED] += 1
                continue
            slot = OBSERVATIONS
        else:
            raise ValueError(f"counted record of unknown kind {event!r}")
        c[ANSWERED] += 1
        add_kind(c, slot, kind, 1)  # type: ignore[arg-type]


def name_server(ip: bytes) -> str:
    """A key's name server as text: the address as nmsgtool prints it, ``""`` for ``b""``."""
    return ip_to_text(ip) if ip else ""


def rows(counts: dict[CountsKey, Counts]) -> list[DeltaRow]:
    """``counts`` as ``NsStatsBatch`` rows, in the order of the dict."""
    return [
        (
            name_server(ip),
            start,
            c[ANSWERED],
            c[FAILURES],
            c[TIMEOUTS],
            c[BY_KIND] or {},
            c[OBSERVATIONS] or {},
        )
        for (ip, start), c in counts.items()
    ]


def encode_py(
    counts: dict[CountsKey, Counts], partition_of: KeyPartitioner, max_rows: int
) -> dict[int, list[bytes]]:
    """``counts`` as ``NsStatsBatch`` records (``schemas/ns_stats.avsc``) by ns-stats partition: one record
    per partition its name servers fall in (``partition_of`` their text), split into parts of at most
    ``max_rows`` rows numbered from 0. Partitions come in the order of their first row, rows in the order
    of ``counts``."""
    by_partition: dict[int, list[DeltaRow]] = {}
    for row in rows(counts):
        p = partition_of(row[0].encode())
        mine = by_partition.get(p)
        if mine is None:
            mine = by_partition[p] = []
        mine.append(row)
    return {
        p: [
            encode_batch(part, mine[i : i + max_rows]) for part, i in enumerate(range(0, len(mine), max_rows))
        ]
        for p, mine in by_partition.items()
    }


_ext = load_extension("_deltas", "processors")
#: Which :func:`fold` and :func:`encode` run: ``"c"`` (processors/_deltas.c) or ``"python"``.
IMPLEMENTATION = implementation(_ext)
#: :func:`fold_py`, in C when built.
fold: Callable[[dict[CountsKey, Counts], list[object]], None] = fold_py if _ext is None else _ext.fold


def encode(
    counts: dict[CountsKey, Counts], partition_of: KeyPartitioner, max_rows: int
) -> dict[int, list[bytes]]:
    """:func:`encode_py`, in C when built (murmur2 of each name server in C rather than ``partition_of``'s
    cache: the same partitions, tests compare them)."""
    if _ext is None:
        return encode_py(counts, partition_of, max_rows)
    return _ext.encode(counts, partition_of.count, max_rows, VERSION)  # type: ignore[no-any-return]
