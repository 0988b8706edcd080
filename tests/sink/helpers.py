"""Shared by the sink tests: corpus payloads, failures-topic records built from them, reading files back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dnsqr_schemas.edns_failure import encode_failure
from nmsgdns.edns import judge
from processors.failure_record import failure_dict
from sink.files import final_files
from tests import corpus
from tests.corpus import read_payloads


def corpus_payloads(case: str) -> list[bytes]:
    """The payloads the reference filter selected for ``case`` (``NAME.filtered.nmsg``)."""
    return read_payloads(corpus.path(f"{case}.filtered.nmsg"))


def failure_value(payload: bytes) -> tuple[bytes, bytes]:
    """The failures-topic (key, value) of a selected ``payload``, built as the filter agent builds them.

    The failure kind is fixed: classifying is the processors' job and the sink only reads ``payload``.
    """
    judgement = judge(payload, detail=True)
    assert judgement.selected, "corpus *.filtered.nmsg payloads are all selected"
    key = (judgement.ns_ip or "").encode()
    return key, encode_failure(failure_dict(payload, judgement, "noopt"))


def files_multiset(directory: Path, prefix: str = "failures") -> Counter[bytes]:
    """The multiset of payload bytes over every final file in ``directory`` (temporary files ignored)."""
    found: Counter[bytes] = Counter()
    for path in final_files(directory, prefix):
        found.update(read_payloads(path))
    return found
