"""Our partition of a key is Kafka's default partitioner's (aiokafka's, murmur2 as the Java client)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from processors.key_partition import KeyPartitioner, murmur2


def test_key_partitioner_is_kafkas_default_partitioner() -> None:
    """The ns-stats record of a name server goes where a record keyed by it would (aiokafka's partitioner,
    murmur2 as the Java client), also once the cache has started over."""
    reference = DefaultPartitioner()
    partitioner = KeyPartitioner(5)
    partitioner.CACHE_SIZE = 10
    keys = [f"192.0.2.{i}".encode() for i in range(40)] + [f"2001:db8::{i:x}".encode() for i in range(40)]
    for key in keys * 2:
        assert partitioner(key) == reference(key, list(range(5)), list(range(5)))


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data) & 0xFFFFFFFF
