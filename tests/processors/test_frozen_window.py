"""processors/frozen_window.py: the compact read-only window, and its C search held to the Python one."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import frozen_window
from processors.frozen_window import FrozenWindow, find_py
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
