"""Corpus data as the raw topic carries it, and the expected outputs, for the processors' tests."""

from __future__ import annotations

from collections import Counter

from nmsgdns.container import encode_container
from processors.delta_batch import DeltaBatch
from tests import corpus
from tests.corpus import read_payloads


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


def row_kinds(batch: DeltaBatch) -> dict[int, tuple[dict[str, int], dict[str, int]]]:
    """row -> (by_kind, observations) of the rows with any, from the batch's (row, name, count) triples."""
    out: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    for i, flat in enumerate((batch.by_kind, batch.observations)):
        for at in range(0, len(flat), 3):
            row, name, n = flat[at : at + 3]
            maps = out.setdefault(row, ({}, {}))
            maps[i][batch.kind_names[name]] = maps[i].get(batch.kind_names[name], 0) + n
    return out
