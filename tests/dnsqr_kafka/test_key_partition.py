"""Our partition of a key is Kafka's default partitioner's (aiokafka's, murmur2 as the Java client), in
Python and in C (``dnsqr_kafka/_key_partition.c``, whose murmur2 ``dnsqr_kafka/murmur2.h`` the ns-stats
encoder shares)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from dnsqr_kafka.key_partition import KeyPartitioner, murmur2
from nmsgdns.native import load_extension

_ext = load_extension("_key_partition", "dnsqr_kafka")
needs_c = pytest.mark.skipif(_ext is None, reason="dnsqr_kafka._key_partition is not built (or pure Python)")


def test_key_partitioner_is_kafkas_default_partitioner() -> None:
    """The ns-stats record of a name server goes where a record keyed by it would (aiokafka's partitioner,
    murmur2 as the Java client), also once the Python path's cache has started over."""
    reference = DefaultPartitioner()
    partitioner = KeyPartitioner(5)
    partitioner.CACHE_SIZE = 10
    keys = [f"192.0.2.{i}".encode() for i in range(40)] + [f"2001:db8::{i:x}".encode() for i in range(40)]
    for key in keys * 2:
        want = reference(key, list(range(5)), list(range(5)))
        assert partitioner(key) == partitioner.partition_py(key) == want


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF


@needs_c
@given(st.binary(max_size=64), st.integers(1, 1000))
def test_c_is_the_python_specification(data: bytes, count: int) -> None:
    assert _ext.murmur2(data) == murmur2(data)
    assert _ext.partition(data, count) == KeyPartitioner(count).partition_py(data)


@needs_c
def test_c_refuses_what_python_refuses() -> None:
    with pytest.raises(ValueError):
        _ext.partition(b"k", 0)
    with pytest.raises(ValueError):
        KeyPartitioner(0)
    with pytest.raises(TypeError):
        _ext.partition("text", 3)
