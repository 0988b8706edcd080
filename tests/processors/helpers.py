"""Corpus data as the raw topic carries it, and the expected outputs, for the processors' tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from nmsgdns.container import encode_container
from nmsgdns.input import ContainerStreamReader
from tests import corpus


def read_payloads(path: Path) -> list[bytes]:
    """Every payload of an NMSG file (fragments reassembled); any drop fails the test."""
    with path.open("rb") as fh:
        reader = ContainerStreamReader(fh, name=str(path))
        payloads = list(reader)
    assert reader.stats.total_drops == 0, (path, reader.stats.as_dict())
    return payloads


def raw_containers(case: str, per_container: int = 200, *, compress: bool = False) -> list[bytes]:
    """The payloads of ``NAME.nmsg`` re-packed into containers, as ingest puts them on the raw topic."""
    payloads = read_payloads(corpus.path(f"{case}.nmsg"))
    return [
        encode_container(payloads[i : i + per_container], compress=compress)
        for i in range(0, len(payloads), per_container)
    ]


def expected_failures(case: str) -> Counter[bytes]:
    """Multiset of the payloads the reference filter selected."""
    return Counter(read_payloads(corpus.path(f"{case}.filtered.nmsg")))
