"""The aggregator's state for one ns-stats partition: per-name-server counts in memory, with a record cache.

No Kafka: the aggregator agent (``processors/aggregator.py``) applies each ns-stats record
(:class:`processors.delta_batch.DeltaBatch`) here in one tight loop, writes what changed to its
changelog topic when it commits, and rebuilds a state from that changelog when it is assigned the partition.
The Python code is the specification; when built, ``processors/_state.c`` does the per-name-server loops
(apply straight from the encoded record, changelog and snapshot records, the restore of changelog records
and its totals) on the same objects.

What is kept:

- ``totals``: name server -> counts since the state began; never expires. A :class:`Totals` view of two
  parts: ``hot_totals``, a dict, and ``frozen_totals``, a :class:`processors.frozen_window.FrozenWindow`
  (~55 bytes a name server instead of ~300: on a feed of millions of name servers the totals are most of
  the state). A name server thawed into ``hot_totals`` hides its entry in ``frozen_totals``; a delta for a
  frozen name server thaws it first (:meth:`NsState._thaw_total`). With a budget (``hot_totals``, 0: none),
  :meth:`NsState.changelog` freezes hot totals once there are a quarter more than the budget, oldest
  first (by creation or thaw), down to three quarters of it (:meth:`NsState.merge_totals`, which merges
  them into new frozen buffers); never those of a name server in the newest ``hot_windows`` windows or
  waiting for a snapshot. Freezing and thawing cost CPU (~5 us a name server each time, most of it
  creating and freeing the Python objects), so the budget is a memory bound, not a goal.
- ``windows``: window start -> {name server -> counts}, tumbling windows of record time, freed by stream
  time (below). A delta outside the live windows counts in the totals only.
- ``frozen``: window start -> :class:`processors.frozen_window.FrozenWindow`, the same counts read-only in
  ~50 bytes an entry instead of ~250. :meth:`NsState.changelog` freezes every window outside the newest
  ``hot_windows`` that no delta reached since its previous call; a delta for a frozen window thaws it back
  into ``windows`` first. A window is in one of the two, never both; :meth:`NsState.all_windows` gives
  them together, for readers. Replaying a capture in record order keeps a few windows hot and all others
  frozen; records shuffled over weeks keep thawing windows and hold them as dicts, which is correct but
  costs today's memory (``thaws`` counts them).
- the mark (exactly_once only): which records of this ns-stats partition were applied, by offset: every
  offset below ``base``, and the offsets in ``applied_offsets`` (at or above it). A record the mark holds
  is skipped. At each commit of offset C (every record below C processed) ``base`` moves up to C and the
  set keeps only what lies above: a few hundred offsets at most. Exact membership, not a high-water mark:
  Faust can deliver a record after later ones of its partition (``processors/commit_guard.py`` fetches it
  again), and a "last applied" mark would then skip it as applied, losing its counts (seen in the
  exactly_once crash test on a high-cardinality input).

Counts are the lists of ``processors/counts.py``, ``[edns_answered, failures, timeouts, by_kind,
observations]`` with ``None`` for empty maps: a name server with one window costs about 470 bytes when a
quarter of them have a kinds map, ~800 bytes of RSS on the high-cardinality bench file where most do
(docs/design.md).

The record cache: applying marks keys dirty instead of writing anything. :meth:`NsState.changelog` turns
every key changed since its previous call into ONE changelog record, however often it changed (Kafka
Streams' record cache), and :meth:`NsState.snapshots` does the same for the counts snapshots, on its own
interval. Changelog records (key, value):

- ``W<window start> <name server>`` -> counts of one window; ``None`` (a tombstone) once it expired
- ``R<name server>`` -> the retired counts: what the totals hold that no live window holds any more (windows
  freed by expiry, deltas for windows already expired when they arrived), ``totals - sum(live windows)``;
  ``None`` when the live windows hold all of it
- ``M`` -> the mark, ``[base, *applied_offsets]``

The totals are not written: a restore computes them, ``R + sum(W)`` per name server. Writing them too
doubles the changelog (one ``T`` and one ``W`` record per changed name server and commit: 1.2M records for
the 1M-record high-cardinality bench file), its CPU and the reads of a recovery. ``R`` changes only when a
window is freed or a delta comes for a freed one, so it is written rarely; it is computed when written, not
kept in memory (the totals and windows are the state readers use; a retired map would cost as much again).

Stream time and the records outside it. Record time is not arrival time: captures are replayed in any
order, from any year, merged from several sensors, and clocks are wrong. So:

- **Stream time** (``newest``) is the start of the newest window created. Windows starting ``expires``
  seconds or more before it are freed (0 keeps every window): Kafka Streams' stream time, with the expiry
  as its grace period. A delta for a freed window is *late*: it counts in the totals, not in a window.
- **A wrong clock cannot move it far.** A window starting more than ``max_ahead`` seconds after the
  worker's clock is *early*: no record can truly come from the future, so it is a sensor with a bad clock
  or a corrupt timestamp. Its delta counts in the totals and creates no window, so one record dated 2040
  cannot free every live window. (Not Flink's minimum over input partitions: every ns-stats partition
  receives deltas from every filter partition, an idle one would hold stream time back for ever, and a
  single-partition input would get no protection at all.)
- Late and early deltas are counted (``late_deltas``, ``early_deltas``: rows of ns-stats records) and their
  name servers' new totals are published like any change (:meth:`NsState.take_snapshot_changes`): the
  newest totals on the counts topic always equal ``totals``.

Values are a version byte (1) and the JSON of the counts list or of the mark: orjson
writes one in about 0.3 us, several times faster than Avro in Python, and these records are internal.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from sys import intern
from typing import Any

import orjson

from nmsgdns.native import load_extension
from processors.counts import (
    ANSWERED,
    BY_KIND,
    FAILURES,
    OBSERVATIONS,
    SLOTS,
    TIMEOUTS,
    Counts,
    add_counts,
    add_kind,
    zero,
)
from processors.delta_batch import DeltaBatch, decode_batch
from processors.frozen_window import FrozenWindow

#: (key, value) of a changelog or counts-topic record; a None value is a tombstone
Record = tuple[bytes, bytes | None]
#: name server -> its counts, of the name servers changed since some moment, in the order they changed
Changed = dict[str, Counts]

CHANGELOG_VERSION = b"\x01"
WINDOW_TAG, RETIRED_TAG, MARK_TAG = b"W", b"R", b"M"
#: the end of every message about a changelog this version cannot read
START_AFRESH = "delete the changelog topic or use a new app id to start afresh"


def encode_value(value: list[Any]) -> bytes:
    """A changelog value: the version byte and the JSON of a counts list or a mark."""
    return CHANGELOG_VERSION + orjson.dumps(value)


def decode_value(data: bytes) -> list[Any]:
    """Inverse of :func:`encode_value`; ValueError for another version or a damaged value."""
    if data[:1] != CHANGELOG_VERSION:
        raise ValueError(
            f"changelog value of version {data[:1]!r}, this worker reads {CHANGELOG_VERSION!r}: "
            + START_AFRESH
        )
    try:
        value = orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"damaged changelog value: {exc}") from exc
    if not isinstance(value, list):
        raise ValueError("damaged changelog value: not a list")
    return value


def _counts(value: list[Any]) -> Counts:
    if len(value) != SLOTS or not all(isinstance(n, int) for n in value[:BY_KIND]):
        raise ValueError(f"damaged counts in the changelog: {value!r}")
    for i in (BY_KIND, OBSERVATIONS):
        kinds = value[i]
        if kinds is not None:
            if not isinstance(kinds, dict):
                raise ValueError(f"damaged counts in the changelog: {value!r}")
            value[i] = {intern(kind): n for kind, n in kinds.items()} if kinds else None
    return value


def decode_counts(data: bytes) -> Counts:
    """A counts list from its changelog value (:func:`encode_value` of one); ValueError when damaged."""
    return _counts(decode_value(data))


def thaw_counts(data: bytes) -> Counts:
    """A counts list from a value :func:`encode_value` wrote in this process (a frozen entry's): orjson
    alone, ~0.4 us instead of :func:`decode_counts`' ~2 us of checks meant for values read from Kafka
    (orjson's own key cache shares the kind names, as interning does)."""
    value: Counts = orjson.loads(data[1:])
    return value


def window_key(start: int, name_server: str) -> bytes:
    return WINDOW_TAG + b"%d " % start + name_server.encode()


def retired_counts(total: Counts, live: list[Counts]) -> Counts | None:
    """``total`` less the ``live`` windows' counts of one name server: its ``R`` value, None (a tombstone)
    when the live windows hold all of it. A kind stays in the maps when its rest is not 0 or when no live
    window has it (a count of 0 too), so that ``R + sum(W)`` gives back ``total`` exactly."""
    out: Counts = [total[i] - sum(c[i] for c in live) for i in (ANSWERED, FAILURES, TIMEOUTS)] + [None, None]
    for i in (BY_KIND, OBSERVATIONS):
        maps = [c[i] for c in live if c[i]]
        kept = {}
        for kind, n in (total[i] or {}).items():
            rest = n - sum(m.get(kind, 0) for m in maps)
            if rest or not any(kind in m for m in maps):
                kept[kind] = rest
        out[i] = kept or None
    if live and not any(out[:3]) and out[BY_KIND] is None and out[OBSERVATIONS] is None:
        return None
    return out


def counts_records_py(
    prefix: bytes, changed: Changed, encode: Callable[[list[Any]], bytes] = encode_value
) -> list[Record]:
    """The changelog records (``prefix`` + name server, ``encode`` of its counts) of ``changed``."""
    return [(prefix + ns.encode(), encode(counts)) for ns, counts in changed.items()]


def add_table_py(totals: dict[str, Counts], table: Mapping[str, Counts]) -> None:
    """``totals[ns]`` += ``counts`` for every ``ns, counts`` of ``table``; a name server new to ``totals``
    gets its own lists and maps (:func:`processors.counts.add_counts` onto :func:`processors.counts.zero`),
    never the table's."""
    for ns, counts in table.items():
        total = totals.get(ns)
        if total is None:
            total = totals[ns] = zero()
        add_counts(total, counts)


#: the C transcriptions of :meth:`NsState.apply_record`, :meth:`NsState.load`, :func:`counts_records_py` and
#: :func:`add_table_py`, when built
_ext = load_extension("_state", "processors")
#: :func:`counts_records_py`, in C when built (same bytes: tests/processors/test_state_c.py)
counts_records: Callable[[bytes, Changed, Callable[[list[Any]], bytes]], list[Record]] = (
    counts_records_py if _ext is None else _ext.counts_records
)
#: :func:`add_table_py`, in C when built (same totals: tests/processors/test_state_c.py); the C version
#: takes dicts only
add_table: Callable[[dict[str, Counts], Mapping[str, Counts]], None] = (
    add_table_py if _ext is None else _ext.add_table
)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the garbage collector: building a restored state creates millions of lists and dicts, none of
    them garbage, and the collections they set off more than double the time (0.7 s instead of 0.3 s for
    :meth:`NsState.loaded` of 250k name servers, measured on the 2-core dev box). For the whole process,
    for as long as the load takes."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class NsState:
    """Totals, windows and marks of one ns-stats partition, and what changed since they were last written.

    ``expires``: windows starting this many seconds or more before stream time are freed (0: never).
    ``max_ahead``: a window starting more than this many seconds after ``clock()`` is early (None: no bound).
    ``hot_windows``: the newest this many windows are never frozen (0: no window is). ``hot_totals``: the
    budget of totals kept as Python objects (0: no bound; module doc).
    """

    def __init__(
        self,
        expires: int = 0,
        max_ahead: int | None = None,
        clock: Callable[[], float] = time.time,
        hot_windows: int = 0,
        hot_totals: int = 0,
    ) -> None:
        self.expires = expires
        self.max_ahead = max_ahead
        self.clock = clock
        self.hot_windows = hot_windows
        self.hot_totals_budget = hot_totals
        #: the totals (module doc): read them through :attr:`totals`
        self.hot_totals: dict[str, Counts] = {}
        self.frozen_totals: FrozenWindow | None = None
        #: name servers of ``hot_totals`` that ``frozen_totals`` holds too (thawed from it)
        self._shadowed: set[str] = set()
        #: a merge is tried at the next changelog() once ``len(hot_totals)`` reaches this
        self._next_merge = hot_totals + hot_totals // 4
        #: frozen totals thawed by a delta, and merges of hot totals into the frozen ones, since it began
        self.total_thaws = 0
        self.merges = 0
        self.windows: dict[int, dict[str, Counts]] = {}
        self.frozen: dict[int, FrozenWindow] = {}
        #: frozen windows thawed by a delta for them, and windows frozen, since the state began
        self.thaws = 0
        self.freezes = 0
        #: the mark: offsets below ``base`` and those in ``applied_offsets`` were applied (exactly_once)
        self.base = 0
        self.applied_offsets: set[int] = set()
        #: stream time: start of the newest window created (record time); expiry counts back from it
        self.newest: int | None = None
        #: rows applied to the totals only: for a freed window (late), or too far ahead of the clock (early)
        self.late_deltas = 0
        self.early_deltas = 0
        # the record cache: keys changed since the last changelog() ... (name server -> its counts list,
        # the very list in totals or the window: written without looking the name server up again, in the
        # order they changed, which is about the order their counts were allocated in; at 100k name servers
        # and more, cache misses are most of the cost, and a set's hash order or a lookup doubles them)
        self._dirty_windows: dict[int, Changed] = {}
        #: name servers whose retired counts changed (a window of theirs was freed, or a delta came outside
        #: the live windows): their R records are computed by changelog(); a dict, for a stable order
        self._dirty_retired: dict[str, None] = {}
        self._dirty_mark = False
        #: windows freed since the last changelog(): their keys get tombstones
        self._freed: dict[int, list[str]] = {}
        # ... and since the last take_snapshot_changes(): (name server, window) changed, windows freed
        # since included (their last counts are published before they are forgotten) ...
        self._changed: dict[int, Changed] = {}
        #: ... and name servers whose totals changed outside the live windows (name server -> its totals)
        self._outside: Changed = {}
        #: the R records read by load(), until loaded() adds them to the totals
        self._loaded_retired: dict[str, Counts] = {}

    def applied(self, offset: int) -> bool:
        """Whether the ns-stats record at ``offset`` was applied already (the mark holds it)."""
        return offset < self.base or offset in self.applied_offsets

    def _mark(self, offset: int) -> bool:
        """False if the record at ``offset`` was applied already, else True with ``offset`` added to the
        mark (the record is being applied)."""
        if self.applied(offset):
            return False
        self.applied_offsets.add(offset)
        self._dirty_mark = True
        return True

    def committed(self, offset: int) -> None:
        """Every record below ``offset`` was processed (Faust is committing it): the mark's ``base`` moves
        up and forgets the offsets below. That alone writes nothing: the mark last written still says only
        what is true, and the next one goes out with the next record applied (a commit with nothing
        applied since the last one sends nothing, also while Faust stops with its transactions closed)."""
        if offset > self.base:
            self.base = offset
            self.applied_offsets = {o for o in self.applied_offsets if o >= offset}

    def apply_record(self, data: bytes, offset: int | None = None) -> bool:
        """:meth:`apply` of the encoded ``NsStatsBatch`` ``data``: in C when built (without building the
        decoded batch), else (and for any record the C code leaves to it) through :func:`decode_batch`.
        ValueError, with nothing applied, when ``data`` does not decode."""
        if _ext is not None:
            applied = _ext.apply(self, data, offset)
            if applied is not None:
                return bool(applied)
        return self.apply(decode_batch(data), offset)

    def apply(self, batch: DeltaBatch, offset: int | None = None) -> bool:
        """Add every row of ``batch``; with its ns-stats ``offset`` (exactly_once) only once: False if the
        mark holds it (applied already)."""
        if offset is not None and not self._mark(offset):
            return False
        totals = self.hot_totals
        frozen_totals = self.frozen_totals
        dirty_retired = self._dirty_retired
        outside = self._outside
        current: int | None = None
        window: dict[str, Counts] | None = None
        dirty: Changed = {}
        changed: Changed = {}
        refused = 0  # rows of the current window start that count in the totals only
        for ns, start, answered, failures, timeouts in zip(
            batch.name_servers,
            batch.window_starts,
            batch.edns_answered,
            batch.failures,
            batch.timeouts,
            strict=True,
        ):
            # the slots ANSWERED, FAILURES, TIMEOUTS by their numbers: this loop runs per row
            total = totals.get(ns)
            if total is None and frozen_totals is not None:
                total = self._thaw_total(ns)
            if total is None:
                total = totals[ns] = [answered, failures, timeouts, None, None]
            else:
                total[0] += answered
                total[1] += failures
                total[2] += timeouts
            if start != current:
                if refused:
                    self._count_outside(current, refused)
                    refused = 0
                current = start
                window = self._window(start)
                if window is not None:
                    dirty = self._dirty_windows.setdefault(start, {})
                    changed = self._changed.setdefault(start, {})
            if window is not None:
                c = window.get(ns)
                if c is None:
                    c = window[ns] = [answered, failures, timeouts, None, None]
                else:
                    c[0] += answered
                    c[1] += failures
                    c[2] += timeouts
                dirty[ns] = changed[ns] = c
            else:  # counts in the totals only: its retired part grew, its totals must be published
                dirty_retired[ns] = None
                outside[ns] = total
                refused += 1
        if refused:
            self._count_outside(current, refused)
        names, starts, windows = batch.name_servers, batch.window_starts, self.windows
        # kind names are interned: a few names recur in hundreds of thousands of maps
        kind_names = [intern(kind) for kind in batch.kind_names]
        for index, flat in ((BY_KIND, batch.by_kind), (OBSERVATIONS, batch.observations)):
            it = iter(flat)
            for row, name, n in zip(it, it, it, strict=True):
                ns, kind = names[row], kind_names[name]
                add_kind(totals[ns], index, kind, n)
                window = windows.get(starts[row])
                if window is not None:
                    add_kind(window[ns], index, kind, n)
        return True

    @property
    def totals(self) -> Totals:
        """Every name server's totals, hot or frozen (module doc)."""
        return Totals(self)

    def total_of(self, ns: str) -> Counts:
        """The totals of ``ns`` (KeyError if none): the hot list itself, or a frozen entry's new list."""
        total = self.hot_totals.get(ns)
        if total is not None:
            return total
        if self.frozen_totals is None:
            raise KeyError(ns)
        return self.frozen_totals[ns]

    def _thaw_total(self, ns: str) -> Counts | None:
        """The frozen totals of ``ns`` put in ``hot_totals`` (where a delta can add to them) and given;
        None when none are frozen. The C apply calls it for a name server missing from ``hot_totals``."""
        if self.frozen_totals is None:
            return None
        total = self.frozen_totals.get(ns)
        if total is not None:
            self.hot_totals[ns] = total
            self._shadowed.add(ns)
            self.total_thaws += 1
        return total

    def _window(self, start: int) -> dict[str, Counts] | None:
        """The window starting at ``start``, created if new; None when it is freed (late) or too far ahead of
        the clock (early). A window created after the newest moves stream time and frees what became old."""
        window = self.windows.get(start)
        if window is not None:
            return window
        frozen = self.frozen.pop(start, None)
        if frozen is not None:
            self.thaws += 1
            window = self.windows[start] = frozen.thaw()
            return window
        if self._expired(start) or (self.max_ahead is not None and start > self.clock() + self.max_ahead):
            return None
        window = self.windows[start] = {}
        if self.newest is None or start > self.newest:
            self.newest = start
            self.expire()
        return window

    def _count_outside(self, start: int, rows: int) -> None:
        """Count ``rows`` deltas of window ``start`` that :meth:`_window` refused: early when the window lies
        after stream time (it was not created, so it was ahead of the clock), else late (it was freed)."""
        if self.newest is None or start > self.newest:
            self.early_deltas += rows
        else:
            self.late_deltas += rows

    def _expired(self, start: int) -> bool:
        return bool(self.expires) and self.newest is not None and start <= self.newest - self.expires

    def expired_through(self) -> int | None:
        """Windows starting at or before this were freed (stream time less the expiry); None while none can
        have been."""
        if not self.expires or self.newest is None:
            return None
        return self.newest - self.expires

    def expire(self) -> None:
        """Free the windows that are too old (their changelog keys get tombstones; their last changes are
        still published by the next :meth:`take_snapshot_changes`)."""
        for held in (self.windows, self.frozen):
            for start in [s for s in held if self._expired(s)]:
                names = self._freed[start] = list(held.pop(start))
                self._dirty_retired.update(dict.fromkeys(names))
                self._dirty_windows.pop(start, None)

    def all_windows(self) -> dict[int, Mapping[str, Counts]]:
        """Every live window, frozen or not: window start -> {name server -> counts}. A frozen window's
        counts are new lists at each read: readers must not change them."""
        return {**self.frozen, **self.windows}

    def freeze(self, idle: Iterable[int]) -> None:
        """Freeze the windows of ``idle`` (starts) that are not among the newest :attr:`hot_windows`
        (module doc); a window too big for a :class:`FrozenWindow` stays as it is."""
        if not self.hot_windows or len(self.windows) <= self.hot_windows:
            return
        hot = set(sorted(self.windows)[-self.hot_windows :])
        for start in idle:
            window = self.windows.get(start)
            if window is None or start in hot:
                continue
            frozen = FrozenWindow.freeze(counts_records(b"", window, encode_value), thaw_counts)
            if frozen is not None:
                del self.windows[start]
                self.frozen[start] = frozen
                self.freezes += 1

    def changelog(self) -> list[Record]:
        """One changelog record per key changed since the previous call, then forget that they changed and
        freeze the windows no delta reached since the previous call (:meth:`freeze`)."""
        records: list[Record] = []
        idle = [start for start in self.windows if start not in self._dirty_windows]
        for start, changed in self._dirty_windows.items():
            records += counts_records(WINDOW_TAG + b"%d " % start, changed, encode_value)
        for start, names in self._freed.items():
            records += [(window_key(start, ns), None) for ns in names]
        records += self._retired_records()
        if self._dirty_mark:
            records.append((MARK_TAG, encode_value([self.base, *sorted(self.applied_offsets)])))
        self._dirty_windows = {}
        self._dirty_retired = {}
        self._dirty_mark = False
        self._freed = {}
        self.freeze(idle)
        if self.hot_totals_budget and len(self.hot_totals) >= self._next_merge:
            self.merge_totals()
        return records

    def merge_totals(self) -> None:
        """Freeze the oldest hot totals (by creation or thaw; module doc) down to three quarters of the
        budget, but none of a name server in the newest :attr:`hot_windows` windows or waiting for a
        snapshot: merge them into :attr:`frozen_totals`. When fewer than a quarter of the budget may
        freeze, none is, and the next try waits for that many more hot totals."""
        budget = self.hot_totals_budget
        hot = self.hot_totals
        newest = sorted(self.windows)[-self.hot_windows :] if self.hot_windows else []
        # every name server of the newest windows is hot (a delta thawed it): when one of them alone holds
        # nearly all hot ones, none may freeze, which a restored one-window state sees at once
        if len(hot) - max((len(self.windows[start]) for start in newest), default=0) < max(budget // 4, 1):
            self._next_merge = len(hot) + max(budget // 4, 1)
            return
        # the maps of the name servers that stay: looked up, not copied into a set (a try that finds
        # nothing to freeze walks every hot name server, millions on a restored one-window state)
        held = [*(self.windows[start] for start in newest), self._outside, *self._changed.values()]
        wanted = len(hot) - (budget - budget // 4)
        names: list[str] = []
        for ns in hot:
            for names_held in held:
                if ns in names_held:
                    break
            else:
                names.append(ns)
                if len(names) == wanted:
                    break
        if len(names) < budget // 4 or not names:
            self._next_merge = len(hot) + max(budget // 4, 1)
            return
        names.sort()  # str order is their UTF-8 bytes' order: the records come out sorted
        records = counts_records(b"", {ns: hot[ns] for ns in names}, encode_value)
        frozen = self.frozen_totals
        if frozen is None:
            merged = FrozenWindow.freeze(records, thaw_counts)
        else:
            # the frozen entries of name servers thawed and staying hot are stale; the records replace
            # those of the others
            hidden = sorted(ns.encode() for ns in self._shadowed.difference(names))
            merged = frozen.merged(hidden, records)
        if merged is None:  # too big for 32-bit offsets: stays as it is
            self._next_merge = len(hot) + max(budget // 4, 1)
            return
        for ns in names:
            del hot[ns]
        self.frozen_totals = merged
        self._shadowed = set()  # every hot name server's frozen entry was left out
        self._next_merge = budget + budget // 4
        self.merges += 1

    def unwritten(self) -> bool:
        """Whether keys changed since the last :meth:`changelog` (a checkpoint is an image of the changelog:
        ``processors/checkpoint.py`` takes one only from a state without)."""
        return bool(self._dirty_windows or self._freed or self._dirty_retired or self._dirty_mark)

    def _retired_records(self) -> list[Record]:
        """The R records of the name servers whose retired counts changed: values, then tombstones."""
        retired: Changed = {}
        held: list[Record] = []
        windows = list(self.all_windows().values())
        for ns in self._dirty_retired:
            counts = retired_counts(self.total_of(ns), [c for w in windows if (c := w.get(ns)) is not None])
            if counts is None:
                held.append((RETIRED_TAG + ns.encode(), None))
            else:
                retired[ns] = counts
        return counts_records(RETIRED_TAG, retired, encode_value) + held

    def snapshots(self) -> list[tuple[str, int | None, Counts | None, Counts]]:
        """(name server, window start, window counts, total counts) of every window changed since the
        previous call, then (name server, None, None, total counts) of the name servers whose totals changed
        outside the live windows only; then forget that they changed. The specification of what the counts
        topic receives (``processors/snapshots.py`` encodes it)."""
        changed, outside = self.take_snapshot_changes()
        totals = self.hot_totals  # they were changed, so they are hot
        out: list[tuple[str, int | None, Counts | None, Counts]] = []
        for start, names in changed.items():
            out += [(ns, start, window, totals[ns]) for ns, window in names.items()]
        out += [(ns, None, None, total) for ns, total in outside.items()]
        return out

    def take_snapshot_changes(self) -> tuple[dict[int, Changed], Changed]:
        """What changed since the previous call, then forget it: window start -> {name server: its counts in
        that window} (windows freed since included), and {name server: its totals} of those whose totals
        changed in no window of the first (deltas outside the live windows only)."""
        changed, self._changed = self._changed, {}
        outside, self._outside = self._outside, {}
        if outside and changed:
            outside = {
                ns: total for ns, total in outside.items() if not any(ns in c for c in changed.values())
            }
        return changed, outside

    def load(self, key: bytes, value: bytes | None) -> None:
        """Restore one changelog record (recovery, in changelog order: a later record of a key replaces an
        earlier one, a tombstone deletes it). ValueError for a record this version did not write (an older
        version's ``T`` record too): its message says to start afresh. In C when built, for the W and R
        records written as :func:`encode_value` writes a plain counts list (``_ext.load``); everything
        else, and any record the C code leaves to it (returning None, the state untouched), here."""
        # not while restoring, but load() on top of a state that froze must find its windows and totals
        if self.frozen or self.frozen_totals is not None:
            self.thaw_all()
        if _ext is not None and _ext.load(self, key, value) is not None:
            return
        tag = key[:1]
        if tag == RETIRED_TAG:
            ns = key[1:].decode()
            if value is None:
                self._loaded_retired.pop(ns, None)
            else:
                self._loaded_retired[ns] = _counts(decode_value(value))
        elif tag == WINDOW_TAG:
            start_text, sep, ns_bytes = key[1:].partition(b" ")
            if not sep:
                raise ValueError(f"damaged window key in the changelog: {key!r}")
            start, ns = int(start_text), ns_bytes.decode()
            if value is None:
                window = self.windows.get(start)
                if window is not None:
                    window.pop(ns, None)
            else:
                self.windows.setdefault(start, {})[ns] = _counts(decode_value(value))
        elif tag == MARK_TAG:
            if key != MARK_TAG:
                raise ValueError(f"mark {key[:40]!r} of an earlier version in the changelog: {START_AFRESH}")
            if value is not None:
                mark = decode_value(value)
                if not mark or not all(isinstance(n, int) and n >= 0 for n in mark):
                    raise ValueError(f"damaged mark in the changelog: {mark!r}")
                self.base, self.applied_offsets = mark[0], set(mark[1:])
        else:
            raise ValueError(
                f"unknown changelog key {key[:40]!r}, not written by this version: {START_AFRESH}"
            )

    def thaw_all(self) -> None:
        """Thaw every frozen window back into :attr:`windows`, and the frozen totals into ``hot_totals``."""
        for start, frozen in self.frozen.items():
            self.windows[start] = frozen.thaw()
        self.thaws += len(self.frozen)
        self.frozen = {}
        if self.frozen_totals is not None:
            for ns, total in self.frozen_totals.items():
                self.hot_totals.setdefault(ns, total)
            self.frozen_totals, self._shadowed = None, set()

    def loaded(self) -> None:
        """After the last :meth:`load`: drop emptied windows, compute the totals (R + the sum of the windows,
        per name server) and expire the old windows."""
        for start in [s for s, w in self.windows.items() if not w]:
            del self.windows[start]
        add_table(self.hot_totals, self._loaded_retired)
        self._loaded_retired = {}
        for window in self.windows.values():
            add_table(self.hot_totals, window)
        if self.windows:
            self.newest = max(self.windows)
        self.expire()


class Totals(Mapping[str, Counts]):
    """The totals of an :class:`NsState`, hot and frozen, as one read-only mapping (module doc). It reads the
    state's parts at each call, so it stays true across merges. Hot counts are the state's own lists, frozen
    ones new lists at each read: readers must not change them."""

    __slots__ = ("state",)

    def __init__(self, state: NsState) -> None:
        self.state = state

    def __len__(self) -> int:
        s = self.state
        frozen = 0 if s.frozen_totals is None else len(s.frozen_totals) - len(s._shadowed)
        return len(s.hot_totals) + frozen

    def __getitem__(self, ns: str) -> Counts:
        return self.state.total_of(ns)

    def __contains__(self, ns: object) -> bool:
        s = self.state
        return ns in s.hot_totals or (s.frozen_totals is not None and ns in s.frozen_totals)

    def __iter__(self) -> Iterator[str]:
        hot, frozen = self.state.hot_totals, self.state.frozen_totals
        yield from list(hot)
        if frozen is not None:
            yield from (ns for ns in frozen if ns not in hot)

    def items(self) -> Iterator[tuple[str, Counts]]:  # type: ignore[override]
        """The hot totals, then the frozen ones they do not hide."""
        hot, frozen = self.state.hot_totals, self.state.frozen_totals
        yield from list(hot.items())
        if frozen is not None:
            yield from ((ns, total) for ns, total in frozen.items() if ns not in hot)
