"""``processors._state`` (C) does exactly what its Python specification does: the state after applying
encoded ns-stats batches (totals, windows, marks, expiry, what is dirty), the changelog records and the
counts snapshots, byte for byte; the state restored from changelog records and its totals; and it leaves every
damaged batch and every record it does not read to the Python path, untouched."""

from __future__ import annotations

import copy
import gc
import sys
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import processors.state
from nmsgdns.native import load_extension
from processors.delta_batch import decode_batch, encode_batch
from processors.filter_agent import KeyPartitioner, PartitionBatch, WindowClock, filter_container
from processors.snapshots import SnapshotEncoder, snapshot_records_py
from processors.state import NsState, add_table_py, counts_records_py, encode_value
from tests.mutations import mutated
from tests.processors.helpers import raw_containers

ext = load_extension("_state", "processors")
pytestmark = pytest.mark.skipif(ext is None, reason="processors._state is not built")

NAMES = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["192.0.2.1", "2001:db8::53", "fe80::1%eth0"]),
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=8),
)
KIND_NAMES = st.sampled_from(["noopt", "formerr", "badvers", "notimp", "é", 'q"x', "tab\t", "\x7f", ""])
SMALL = st.integers(0, 20)
INT64 = st.one_of(SMALL, st.integers(-(2**63), 2**63 - 1))
KINDS = st.dictionaries(KIND_NAMES, st.one_of(SMALL, INT64), max_size=3)
#: window starts, with some far in the past and far ahead of the clock (early: see run_both)
STARTS = st.sampled_from([0, 60, 120, 180, 3600, 7200, -(2**40), 2**40])
ROW = st.tuples(NAMES, STARTS, INT64, INT64, SMALL, KINDS, KINDS)
#: (input partition, last input offset, sequence, part)
ORIGIN = st.one_of(st.none(), st.tuples(*(st.integers(0, n) for n in (1, 4, 2, 1))))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), st.lists(ROW, min_size=1, max_size=12), ORIGIN),
        st.tuples(st.just("changelog")),
        st.tuples(st.just("snapshots")),
    ),
    max_size=10,
)


def state_of(state: NsState) -> dict[str, Any]:
    """Everything a state holds (dirty sets included), to compare two states."""
    return {k: copy.deepcopy(v) for k, v in vars(state).items()}


def outcome(f: Any, *args: Any) -> Any:
    """f(*args), or the type of what it raised (both implementations must raise alike)."""
    try:
        return f(*args)
    except Exception as exc:
        return type(exc)


def changelog_py(state: NsState) -> Any:
    with mock.patch.object(processors.state, "counts_records", counts_records_py):
        return outcome(state.changelog)


def changelog_c(state: NsState) -> Any:
    with mock.patch.object(processors.state, "counts_records", ext.counts_records):
        return outcome(state.changelog)


def snapshots(state: NsState, implementation: Any) -> Any:
    """The encoded snapshots of the windows changed, and the totals changed outside them."""
    encode = SnapshotEncoder(60, 1_700_000_000_000, state.expired_through())
    changed, outside = state.take_snapshot_changes()
    return outcome(implementation, changed, state.hot_totals, encode), outside


def fixed_clock() -> float:
    """The worker's clock in these tests: the epoch (window 2**40 is ahead of it, beyond the bound)."""
    return 0.0


def run_both(ops: list[tuple[Any, ...]], expires: int, hot_windows: int = 0) -> None:
    """Each op on a Python state and a C state; after each, the same state and the same records. With
    ``hot_windows``, each changelog freezes what it can, totals too (a budget of 1)."""
    py, c = (
        NsState(expires, 10**6, clock=fixed_clock, hot_windows=hot_windows, hot_totals=hot_windows)
        for _ in "pc"
    )
    for op in ops:
        if op[0] == "apply":
            data = encode_batch(0, op[1])
            assert outcome(py.apply, decode_batch(data), op[2]) == outcome(ext.apply, c, data, op[2])
        elif op[0] == "changelog":
            assert changelog_py(py) == changelog_c(c)
        else:
            assert snapshots(py, snapshot_records_py) == snapshots(c, ext.snapshot_records)
        assert state_of(py) == state_of(c)
    assert changelog_py(py) == changelog_c(c)
    assert snapshots(py, snapshot_records_py) == snapshots(c, ext.snapshot_records)


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([0, 60, 3600]), st.sampled_from([0, 1]))
def test_same_state_changelog_and_snapshots_as_python(
    ops: list[tuple[Any, ...]], expires: int, hot_windows: int
) -> None:
    run_both(ops, expires, hot_windows)


def test_realistic_batches() -> None:
    """The filter's own ns-stats records of a corpus capture (several windows, kinds, IPv6 name servers),
    applied twice over so that counts add up, with a changelog and snapshots between."""
    clock = WindowClock(1)
    batch = PartitionBatch()
    for offset, data in enumerate(raw_containers("live_resolver", 300)):
        batch.add(offset, filter_container(data, clock))
    records = [v for values in batch.deltas(KeyPartitioner(2)).values() for v in values]
    py, c = NsState(2), NsState(2)
    for round_ in range(2):
        for i, value in enumerate(records):
            offset = round_ * len(records) + i
            assert py.apply(decode_batch(value), offset) is True
            assert ext.apply(c, value, offset) is True
            assert ext.apply(c, value, offset) is False  # replayed: skipped
        assert state_of(py) == state_of(c)
        assert changelog_py(py) == changelog_c(c)
        assert snapshots(py, snapshot_records_py) == snapshots(c, ext.snapshot_records)
    assert len(py.totals) == 8 and len(py.windows) >= 2
    # the C path's counts lists are left out of the cycle collector: they hold no tracked object
    for counts in [*c.totals.values(), *(n for w in c.windows.values() for n in w.values())]:
        assert not gc.is_tracked(counts) and not any(gc.is_tracked(item) for item in counts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(ROW, min_size=1, max_size=6), st.booleans())
def test_damaged_batches_are_left_to_python(data: st.DataObject, rows: list[Any], marks: bool) -> None:
    """A damaged batch: C either applies it as Python does, or returns None with the state untouched; and
    NsState.apply_record gives the Python path's result or its ValueError, with nothing applied."""
    base = NsState(60)
    base.apply(decode_batch(encode_batch(0, rows[:1])))
    damaged = data.draw(mutated(encode_batch(1, rows)))
    offset = 1 if marks else None
    py, c = copy.deepcopy(base), copy.deepcopy(base)
    try:
        decoded = decode_batch(damaged)
    except ValueError:
        decoded = None
    else:
        py.apply(decoded, offset)
    applied = ext.apply(c, damaged, offset)
    if applied is None:
        assert state_of(c) == state_of(base)
    else:
        assert decoded is not None and applied is True
        assert state_of(c) == state_of(py)
    c = copy.deepcopy(base)
    if decoded is None:
        with pytest.raises(ValueError):
            c.apply_record(damaged, offset)
        assert state_of(c) == state_of(base)
    else:
        assert c.apply_record(damaged, offset) is True
        assert state_of(c) == state_of(py)


ODD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3))
ODD_KINDS = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=6), st.one_of(st.integers(), ODD), max_size=3)
)
ODD_COUNTS = st.one_of(
    st.tuples(st.integers(), st.integers(), st.integers(), ODD_KINDS, ODD_KINDS).map(list),
    st.lists(ODD, max_size=6),
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=6), ODD_COUNTS, max_size=4))
def test_changelog_values_of_any_counts(counts: dict[str, Any]) -> None:
    """Any counts list (big ints, escaped or non-ASCII kinds, odd types) gets orjson's bytes or error."""
    for name in counts:
        one = {name: counts[name]}
        assert outcome(ext.counts_records, b"R", one, encode_value) == outcome(
            counts_records_py, b"R", one, encode_value
        )


@settings(max_examples=300)
@given(st.text(max_size=10), st.integers(-(2**70), 2**70), ODD_COUNTS, ODD_COUNTS, st.integers(1, 2**31))
def test_snapshot_values_of_any_counts(ns: str, start: int, window: Any, total: Any, seconds: int) -> None:
    """Any counts lists get the Python encoder's bytes or error."""
    encode = SnapshotEncoder(seconds, 1_700_000_000_000)
    args = ({start: {ns: window}}, {ns: total}, encode)
    assert outcome(ext.snapshot_records, *args) == outcome(snapshot_records_py, *args)


#: counts of a restore's tables: negative, beyond int64, now and then a bool or a float (Python's + decides)
NUMBER = st.one_of(
    SMALL,
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 2**63 - 1, 2**63, -(2**63) - 1]),
    st.booleans(),
    st.floats(-1e20, 1e20),
)
#: a kinds map: None, empty or not
MAP = st.one_of(st.none(), st.dictionaries(KIND_NAMES, NUMBER, max_size=3))
COUNTS = st.tuples(NUMBER, NUMBER, NUMBER, MAP, MAP).map(list)
#: few names, so that a table's name servers are often in the totals already, and often not
TABLE = st.dictionaries(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::53", "é", ""]), COUNTS, max_size=5
)


def maps_of(totals: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for counts in totals.values() for m in counts[3:] if m is not None]


@settings(max_examples=300, deadline=None)
@given(TABLE, st.lists(TABLE, max_size=3))
def test_add_table_as_python(totals: dict[str, Any], tables: list[dict[str, Any]]) -> None:
    """The same totals, value for value and type for type, in the same order; a name server new to the
    totals gets lists and maps of its own (changing the tables afterwards changes no total); the kind
    names are the tables' own str objects; the new lists are left out of the cycle collector."""
    py, c = copy.deepcopy(totals), copy.deepcopy(totals)
    for table in tables:
        add_table_py(py, table)
        ext.add_table(c, table)
        assert c == py and repr(c) == repr(py)
    kinds = {id(kind) for t in [totals, *tables] for m in maps_of(t) for kind in m}
    assert all(id(kind) in kinds for m in maps_of(c) for kind in m)
    for ns in {ns for table in tables for ns in table} - set(totals):
        assert not gc.is_tracked(c[ns])
    tables_maps = {id(m) for table in tables for m in maps_of(table)}
    assert not any(id(m) in tables_maps for m in maps_of(c))
    before = copy.deepcopy(c)
    for table in tables:
        for counts in table.values():
            counts[0] = 10**30
            for m in counts[3:]:
                if m is not None:
                    m.update(dict.fromkeys(m, -7), added=1)
    assert c == before


def test_add_table_refuses_what_is_not_counts() -> None:
    """A value that is not a counts list (a list of 5, its kinds maps dicts or None) is a TypeError, as for
    apply; so is a totals or a table that is not a dict."""
    good = [1, 0, 0, None, None]
    for totals, table in [
        ({}, {"a": (1, 0, 0, None, None)}),
        ({}, {"a": [1, 0, 0, None]}),
        ({}, {"a": [1, 0, 0, ["noopt"], None]}),
        ({"a": [1, 0]}, {"a": good}),
        ({"a": [1, 0, 0, None, 3]}, {"a": [1, 0, 0, None, {"noopt": 1}]}),
        ([], {"a": good}),
        ({}, [("a", good)]),
    ]:
        with pytest.raises(TypeError):
            ext.add_table(totals, table)


#: batches of a few name servers over a few windows, so that expiry leaves retired counts
RESTORED_ROW = st.tuples(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::53"]),
    st.sampled_from([0, 60, 120, 3600, 7200]),
    SMALL,
    SMALL,
    SMALL,
    st.dictionaries(KIND_NAMES, SMALL, max_size=2),
    st.dictionaries(KIND_NAMES, SMALL, max_size=2),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(RESTORED_ROW, min_size=1, max_size=6), max_size=5), st.sampled_from([0, 60, 3600]))
def test_loaded_as_python(batches: list[list[Any]], expires: int) -> None:
    """A state restored from the changelog of applied batches (retired counts, several windows): the same
    state after loaded() with either add_table, and the totals of the state that wrote the changelog."""
    state = NsState(expires)
    records: list[Any] = []
    for rows in batches:
        state.apply(decode_batch(encode_batch(0, rows)))
        records += state.changelog()
    restored = []
    for implementation in (add_table_py, ext.add_table):
        again = NsState(expires)
        for key, value in records:
            again.load(key, value)
        with mock.patch.object(processors.state, "add_table", implementation):
            again.loaded()
        restored.append(state_of(again))
    assert restored[0] == restored[1]
    assert restored[0]["hot_totals"] == state.totals


# --- NsState.load: restoring changelog records ---------------------------------------------------------

#: ints orjson writes (beyond int64 up to 2**64 - 1, which C leaves to Python)
JSON_INTS = st.one_of(SMALL, INT64, st.integers(-(2**63), 2**64 - 1))
COUNTS = st.tuples(
    JSON_INTS, JSON_INTS, JSON_INTS, st.one_of(st.none(), KINDS), st.one_of(st.none(), KINDS)
).map(list)
LOAD_STARTS = st.one_of(STARTS, STARTS, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70))


#: JSON's short escapes
SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


@st.composite
def json_string(draw: st.DrawFn, text: str) -> str:
    """``text`` as a JSON string, each character written raw (when JSON allows), as a short escape or as
    \\uXXXX (surrogate pairs beyond the BMP: C leaves those to Python)."""
    out = []
    for ch in text:
        ways = []
        if ch >= " " and ch not in '"\\':
            ways.append(ch)
        if ch in SHORT_ESCAPES:
            ways.append(SHORT_ESCAPES[ch])
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            ways.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}")
        else:
            ways += [f"\\u{code:04x}", f"\\u{code:04X}"]
        out.append(draw(st.sampled_from(ways)))
    return '"' + "".join(out) + '"'


#: numbers as JSON text: as orjson writes them (PLAIN), or of any size, with leading zeros, and spellings
#: orjson reads otherwise or not at all (ODD: C leaves all of those to Python)
PLAIN_NUMBER = JSON_INTS.map(str)
ODD_NUMBER = st.one_of(
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(["01", "-01", "00", "007"]),
    st.sampled_from(["-0", "1.0", "1e2", "-", "+1", "true", "false", "null", '"1"', "[]"]),
)
ODD_KIND_NAMES = st.one_of(KIND_NAMES, st.text(max_size=4), st.sampled_from(["\x00", "\U0001f600", "a/b"]))
#: the one place a hand-written value differs from what encode_value writes, if any
FLAWS = st.sampled_from(
    [None] * 5 + ["version", "trailing", "whitespace", "length", "number", "number", "kind number", "kinds"]
)


@st.composite
def json_kinds(draw: st.DrawFn, odd: bool) -> str:
    """A kinds map as JSON text: names escaped any way JSON allows, repeated names; ``odd``: with one odd
    number."""
    if odd and draw(st.booleans()):
        return draw(st.sampled_from(["[]", "0", "{,}", '{"a":1,}', '{"a"}']))
    pairs = draw(st.lists(st.tuples(ODD_KIND_NAMES, PLAIN_NUMBER), min_size=0 if not odd else 1, max_size=3))
    if odd:
        pairs[-1] = (pairs[-1][0], draw(ODD_NUMBER))
    if not pairs and draw(st.booleans()):
        return "null"
    return "{" + ",".join(draw(json_string(k)) + ":" + n for k, n in pairs) + "}"


@st.composite
def json_value(draw: st.DrawFn) -> bytes:
    """A changelog value written by hand: as encode_value writes it but with names escaped otherwise, or
    with one flaw (another version, whitespace, trailing bytes, another length, an odd number)."""
    flaw = draw(FLAWS)
    items = [draw(PLAIN_NUMBER) for _ in range(3)] + [draw(json_kinds(False)) for _ in range(2)]
    if flaw == "number":
        items[draw(st.integers(0, 2))] = draw(ODD_NUMBER)
    elif flaw in ("kind number", "kinds"):
        items[draw(st.integers(3, 4))] = draw(json_kinds(True))
    elif flaw == "length":
        items = items[:4] if draw(st.booleans()) else [*items, "1"]
    text = "[" + ",".join(items) + "]"
    if flaw == "whitespace":
        at = draw(st.integers(1, len(text)))
        text = text[:at] + draw(st.sampled_from([" ", "\t", "\n", "\r"])) + text[at:]
    if flaw == "trailing":
        text += draw(st.sampled_from([" ", "\n", "x", "]", ",1"]))
    return (draw(st.sampled_from([b"\x02", b"", b"\x00"])) if flaw == "version" else b"\x01") + text.encode()


#: window starts int() reads but C leaves to it, or that int() refuses (the last: an Arabic-Indic 1)
ODD_START_TEXTS = st.sampled_from([b"+5", b" 5", b"5 ", b"5_0", b"007", b"-0", b"", b"x", b"\xd9\xa1"])


@st.composite
def changelog_record(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """A changelog record: mostly W and R records as NsState.changelog writes them, some M records, keys
    and values written otherwise, and any of them damaged."""
    ns = draw(NAMES).encode()
    kind = draw(st.sampled_from(["W", "W", "W", "R", "R", "M", "other"]))
    if kind == "W":
        start = draw(st.one_of(LOAD_STARTS.map(lambda n: b"%d" % n), ODD_START_TEXTS))
        key = b"W" + start + draw(st.sampled_from([b" ", b" ", b" ", b""])) + ns
    elif kind == "R":
        key = b"R" + ns
    elif kind == "M":
        key = draw(st.sampled_from([b"M", b"M", b"M1"]))
    else:
        key = draw(st.sampled_from([b"", b"T", b"X1 a"])) + ns
    if kind == "M":
        value = encode_value(draw(st.lists(st.integers(-1, 2**64 - 1), max_size=4)))
    else:
        value = draw(st.one_of(COUNTS.map(encode_value), json_value()))
    value = draw(st.one_of(st.just(value), st.just(value), st.none(), mutated(value)))
    if draw(st.integers(0, 9)) == 0:
        key = draw(mutated(key))
    return key, value


@st.composite
def changelog_records(draw: st.DrawFn) -> list[tuple[bytes, bytes | None]]:
    """Changelog records, a third of them of a key written before (a new value, or a tombstone)."""
    records = draw(st.lists(changelog_record(), max_size=10))
    for i in range(1, len(records)):
        if draw(st.integers(0, 2)) == 0:
            records[i] = (records[draw(st.integers(0, i - 1))][0], records[i][1])
    return records


def typed(obj: Any) -> Any:
    """obj with the type of every item beside it: 1, 1.0 and True are told apart, so are dicts and None."""
    if isinstance(obj, dict):
        return type(obj), {typed(k): typed(v) for k, v in obj.items()}
    if isinstance(obj, set):
        return type(obj), sorted(map(repr, map(typed, obj)))
    if isinstance(obj, list | tuple):
        return type(obj), [typed(v) for v in obj]
    return type(obj), obj


def load_outcome(state: NsState, key: bytes, value: bytes | None) -> Any:
    """None once loaded, or the type and message of what load raised."""
    try:
        state.load(key, value)
    except Exception as exc:
        return type(exc), str(exc)
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changelog_records(), st.sampled_from([0, 60]))
def test_load_as_python(records: list[tuple[bytes, bytes | None]], expires: int) -> None:
    """Restoring any changelog records (well-formed, written otherwise, damaged) gives the same state and
    the same errors with the C path as with the Python one; C either loads a record as Python does or
    leaves it to Python with the state untouched; and loaded() then gives the same totals."""
    py, c = NsState(expires), NsState(expires)
    for key, value in records:
        before = state_of(c)
        handled = ext.load(c, key, value)
        if handled is None:
            assert state_of(c) == before
        else:
            assert handled is True
            c = NsState(expires)
            vars(c).update(before)  # undone: NsState.load must take the same path
        with mock.patch.object(processors.state, "_ext", None):
            expected = load_outcome(py, key, value)
        assert load_outcome(c, key, value) == expected
        assert typed(state_of(c)) == typed(state_of(py))
    with mock.patch.object(processors.state, "_ext", None):
        expected = outcome(py.loaded)
    assert outcome(c.loaded) == expected
    assert typed(state_of(c)) == typed(state_of(py))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), NAMES, LOAD_STARTS, st.one_of(st.none(), COUNTS)), max_size=8))
def test_load_reads_what_changelog_writes(records: list[tuple[bool, str, int, Any]]) -> None:
    """The records NsState writes are read in C (the plain ones: ints within int64), into what Python
    builds: interned kind names, None for empty maps; and lists left out of the cycle collector."""
    py, c = NsState(), NsState()
    for window, ns, start, counts in records:
        key = processors.state.window_key(start, ns) if window else b"R" + ns.encode()
        value = None if counts is None else encode_value(counts)
        plain = (not window or -(2**63) <= start < 2**63) and (
            counts is None or all(-(2**63) <= n < 2**63 for n in counts[:3])
        )
        with mock.patch.object(processors.state, "_ext", None):
            py.load(key, value)
        assert (ext.load(c, key, value) is True) == plain
        if not plain:
            c.load(key, value)
        elif counts is not None:
            loaded = c.windows[start][ns] if window else c._loaded_retired[ns]
            assert not gc.is_tracked(loaded) and not any(gc.is_tracked(item) for item in loaded)
        assert typed(state_of(c)) == typed(state_of(py))
    for counts in [*c._loaded_retired.values(), *(n for w in c.windows.values() for n in w.values())]:
        for kinds in counts[3:]:
            assert kinds is None or (kinds and all(k is sys.intern(k) for k in kinds))
