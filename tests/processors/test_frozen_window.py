"""processors/frozen_window.py: the compact read-only window, and its C search held to the Python one."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import frozen_window
from processors.frozen_window import FrozenWindow, find_py, merge_py
from processors.state import counts_records, decode_counts, encode_value

FINDS = [find_py] + ([frozen_window._ext.find] if frozen_window._ext is not None else [])
COUNTS = st.tuples(
    st.integers(0, 2**40),
    st.integers(0, 9),
    st.integers(0, 9),
    st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["noopt", "formerr"]), st.integers(0, 5), min_size=1)
    ),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["badvers"]), st.integers(0, 5), min_size=1)),
).map(list)
WINDOWS = st.dictionaries(st.text(min_size=1, max_size=12), COUNTS, max_size=40)


def frozen(window: dict) -> FrozenWindow:
    made = FrozenWindow.freeze(counts_records(b"", window, encode_value), decode_counts)
    assert made is not None
    return made


@pytest.mark.parametrize("find", FINDS)
@given(st.sets(st.binary(max_size=6), max_size=30), st.binary(max_size=6))
def test_find_gives_the_index_of_a_name_or_minus_one(
    find: Callable[[bytes, array, bytes], int], names: set[bytes], key: bytes
) -> None:
    ordered = sorted(names)
    blob, ends = b"".join(ordered), array("I", accumulate(map(len, ordered)))
    expected = ordered.index(key) if key in names else -1
    assert find(blob, ends, key) == expected
    for i, name in enumerate(ordered):
        assert find(blob, ends, name) == i


@given(WINDOWS, st.text(min_size=1, max_size=12))
def test_a_frozen_window_reads_as_the_dict_it_was_frozen_from(window: dict, other: str) -> None:
    fw = frozen(window)
    assert len(fw) == len(window)
    assert fw.thaw() == window
    assert dict(fw) == window
    assert list(fw) == sorted(window, key=str.encode)
    for ns, counts in window.items():
        assert ns in fw and fw[ns] == counts and fw.get(ns) == counts
    if other not in window:
        assert other not in fw and fw.get(other) is None
        with pytest.raises(KeyError):
            fw[other]
    assert fw.nbytes == len(fw.names) + len(fw.values) + 8 * len(fw)


def test_reads_are_new_lists_each_time() -> None:
    fw = frozen({"192.0.2.1": [1, 1, 0, {"noopt": 1}, None]})
    fw["192.0.2.1"][0] = 99
    fw["192.0.2.1"][3]["noopt"] = 99
    assert fw["192.0.2.1"] == [1, 1, 0, {"noopt": 1}, None]


def test_a_window_too_big_for_32_bit_offsets_is_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frozen_window, "MAX_BUFFER", 8)
    assert (
        FrozenWindow.freeze(
            counts_records(b"", {"192.0.2.1": [1, 0, 0, None, None]}, encode_value), decode_counts
        )
        is None
    )


@pytest.mark.skipif(frozen_window._ext is None, reason="the C extension is not built")
def test_the_c_find_refuses_offsets_it_cannot_trust() -> None:
    find = frozen_window._ext.find
    with pytest.raises(TypeError, match="array"):
        find(b"ab", array("Q", [2]), b"ab")
    with pytest.raises(ValueError, match="past"):
        find(b"ab", array("I", [3]), b"ab")
    with pytest.raises(ValueError, match="decrease"):
        find(b"abcd", array("I", [3, 1, 4]), b"b")


MERGES = [merge_py] + ([frozen_window._ext.merge] if frozen_window._ext is not None else [])


@pytest.mark.parametrize("merge", MERGES)
@given(WINDOWS, st.sets(st.text(min_size=1, max_size=12), max_size=20), WINDOWS)
def test_a_merge_drops_and_adds_entries(
    merge: Callable[..., tuple[bytes, bytes, bytes, bytes]], window: dict, drop: set[str], add: dict
) -> None:
    """Both merges give the buffers of the window frozen from what the dicts say: the window's entries
    but those named in ``drop``, with those of ``add`` (replacing any of the same name)."""
    fw = frozen(window)
    records = sorted(counts_records(b"", add, encode_value))
    names, name_ends, values, value_ends = merge(
        fw.names, fw.name_ends, fw.values, fw.value_ends, sorted(ns.encode() for ns in drop), records
    )
    expected = frozen({**{ns: c for ns, c in window.items() if ns not in drop}, **add})
    assert (names, name_ends, values, value_ends) == (
        expected.names,
        expected.name_ends.tobytes(),
        expected.values,
        expected.value_ends.tobytes(),
    )
    merged = fw.merged(sorted(ns.encode() for ns in drop), records)
    assert merged is not None and dict(merged) == dict(expected)


@pytest.mark.parametrize("merge", MERGES)
def test_a_merge_refuses_unsorted_input(merge: Callable[..., tuple[bytes, bytes, bytes, bytes]]) -> None:
    fw = frozen({"192.0.2.1": [1, 0, 0, None, None]})
    buffers = (fw.names, fw.name_ends, fw.values, fw.value_ends)
    with pytest.raises(ValueError, match="sorted"):
        merge(*buffers, [b"b", b"a"], [])
    with pytest.raises(ValueError, match="sorted"):
        merge(*buffers, [], [(b"b", b"1"), (b"a", b"1")])
    with pytest.raises(ValueError, match="sorted"):
        merge(*buffers, [b"a", b"a"], [])


def test_a_merge_past_32_bit_offsets_gives_no_window(monkeypatch: pytest.MonkeyPatch) -> None:
    fw = frozen({"192.0.2.1": [1, 0, 0, None, None]})
    monkeypatch.setattr(frozen_window, "MAX_BUFFER", 8)
    monkeypatch.setattr(frozen_window, "merge", merge_py)  # C's limit is 2**32 itself
    with pytest.raises(OverflowError):
        merge_py(fw.names, fw.name_ends, fw.values, fw.value_ends, [], [(b"192.0.2.2", b"1")])
    assert fw.merged([], [(b"192.0.2.2", b"1")]) is None


@pytest.mark.skipif(frozen_window._ext is None, reason="the C extension is not built")
def test_the_c_merge_refuses_buffers_it_cannot_trust() -> None:
    merge = frozen_window._ext.merge
    with pytest.raises(TypeError, match="array"):
        merge(b"ab", array("Q", [2]), b"x", array("I", [1]), [], [])
    with pytest.raises(ValueError, match="length"):
        merge(b"ab", array("I", [2]), b"x", array("I", [1, 1]), [], [])
    with pytest.raises(ValueError, match="past"):
        merge(b"ab", array("I", [3]), b"x", array("I", [1]), [], [])
    with pytest.raises(ValueError, match="decrease"):
        merge(b"abcd", array("I", [3, 1]), b"xy", array("I", [1, 2]), [], [])
    with pytest.raises(TypeError, match="bytes"):
        merge(b"ab", array("I", [2]), b"x", array("I", [1]), ["a"], [])
    with pytest.raises(TypeError, match="records"):
        merge(b"ab", array("I", [2]), b"x", array("I", [1]), [], [(b"a",)])
