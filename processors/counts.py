"""The counts vocabulary: one name server's counts list, its slots, the events counted into it, and the
arithmetic every stage of the counting shares.

Counts are a small list, ``[edns_answered, failures, timeouts, by_kind, observations]``, with ``None`` for
an empty map (most name servers have no kinds: a list of five is the cheapest object that holds them, and
hundreds of thousands of name servers are kept at once). The same list, indexed by the same slots, is:

- a delta of the filter agent: one (name server, window)'s counts over a batch of containers
  (``processors/deltas.py``), sent in ``NsStatsBatch`` records (``processors/delta_batch.py``);
- a total or a window of the aggregator's state (``processors/state.py``) and its changelog values;
- what the snapshots on the counts topic carry, as ``NsCountValues`` (``processors/snapshots.py``,
  :func:`count_values`), and the rows of the views (``processors/views.py``).

The slots (indexes into a counts list):

- :data:`ANSWERED`: EDNS queries answered (those the rule selected too);
- :data:`FAILURES`: answered queries the rule selected (the EDNS0 failures);
- :data:`TIMEOUTS`: EDNS queries never answered;
- :data:`BY_KIND`: failure kind -> count (``nmsgdns.classify.KINDS``), or None;
- :data:`OBSERVATIONS`: answers with OPT that mishandle it, by kind (``nmsgdns.classify.observe``; not
  failures) -> count, or None.

The events a counted record is, in the filter's flat lists of counted records (``processors/deltas.py``):
:data:`EVENT_ANSWERED` (with its observation or None), :data:`EVENT_FAILURE` (with its kind: it counts as
answered too) and :data:`EVENT_TIMEOUT`. They are not slots: an :data:`EVENT_FAILURE` adds to the slots
:data:`ANSWERED`, :data:`FAILURES` and :data:`BY_KIND`.

The C extensions (``processors/_deltas.c``, ``processors/_state.c``) use the same numbers, named in
``processors/counts.h``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: [edns_answered, failures, timeouts, by_kind or None, observations or None]
Counts = list[Any]

#: the slots of a counts list
ANSWERED, FAILURES, TIMEOUTS, BY_KIND, OBSERVATIONS = range(5)
#: the length of a counts list
SLOTS = 5

#: a counted record: an EDNS query answered (its kind is an observation or None)...
EVENT_ANSWERED = 0
#: ...one the rule selected (its kind is the failure's kind; it was answered too)...
EVENT_FAILURE = 1
#: ...or one never answered (its kind is None)
EVENT_TIMEOUT = 2


def zero() -> Counts:
    """New counts of nothing."""
    return [0, 0, 0, None, None]


def add_kind(counts: Counts, index: int, kind: str, n: int) -> None:
    """Add ``n`` to ``kind`` in the map at ``counts[index]`` (None stands for an empty map)."""
    current = counts[index]
    if current is None:
        counts[index] = {kind: n}
    elif kind in current:
        current[kind] += n
    else:
        current[kind] = n


def add_counts(into: Counts, counts: Counts) -> None:
    """``into`` += ``counts``, slot by slot (``into`` keeps its own kinds maps, never shares them)."""
    for i in (ANSWERED, FAILURES, TIMEOUTS):
        into[i] += counts[i]
    for i in (BY_KIND, OBSERVATIONS):
        for kind, n in (counts[i] or {}).items():
            add_kind(into, i, kind, n)


def failure_rate(counts: Counts) -> float:
    """Failures per EDNS query answered; 0.0 when none was answered. Only the first two slots are read."""
    answered = counts[ANSWERED]
    return counts[FAILURES] / answered if answered else 0.0


def count_values(counts: Counts) -> dict[str, Any]:
    """``NsCountValues`` (``schemas/ns_counts.avsc``: the counts of a snapshot, with the failure rate) of a
    counts list."""
    return {
        "edns_answered": counts[ANSWERED],
        "failures": counts[FAILURES],
        "failure_rate": failure_rate(counts),
        "by_kind": dict(counts[BY_KIND] or {}),
        "timeouts": counts[TIMEOUTS],
        "observations": dict(counts[OBSERVATIONS] or {}),
    }


def counts_of(values: Mapping[str, Any]) -> Counts:
    """The counts list of an ``NsCountValues``: the inverse of :func:`count_values`."""
    return [
        values["edns_answered"],
        values["failures"],
        values["timeouts"],
        dict(values["by_kind"]) or None,
        dict(values["observations"]) or None,
    ]
