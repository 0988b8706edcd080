"""Filter receipts: the Avro round trip and the ledger a job proves completeness with."""

from __future__ import annotations

import pytest

from processors.receipts import Ledger, Receipt, decode_progress, encode_progress, progress_key


def progress(topic: str, partition: int, *receipts: Receipt) -> dict:
    return decode_progress(encode_progress("host:1", topic, partition, receipts))


def test_round_trip_keeps_every_field() -> None:
    receipts = [Receipt(7, 1000, 23), Receipt(8, 0, 0, dead_lettered=True)]
    value = decode_progress(encode_progress("h:42", "raw", 3, receipts))
    assert value == {"version": 1, "worker": "h:42", "topic": "raw", "partition": 3, "entries": receipts}
    assert progress_key("raw", 3) == b"raw:3"


def test_shortfall_names_each_partition_and_its_first_missing_offset() -> None:
    ledger = Ledger("raw")
    ledger.add(progress("raw", 0, Receipt(0, 10, 1), Receipt(1, 10, 2)))
    ledger.add(progress("raw", 1, Receipt(5, 10, 0), Receipt(7, 10, 0)))
    produced = {0: (0, 2), 1: (5, 9), 2: (0, 0)}
    short = ledger.shortfall(produced)
    assert [(s.partition, s.missing, s.expected, s.first) for s in short] == [(1, 2, 4, 6)]
    ledger.add(progress("raw", 1, Receipt(6, 10, 0), Receipt(8, 10, 4)))
    assert ledger.shortfall(produced) == []


def test_offsets_outside_the_job_and_other_topics_do_not_count() -> None:
    ledger = Ledger("raw")
    ledger.add(progress("raw", 0, Receipt(3, 10, 1), Receipt(4, 10, 1)))
    ledger.add(progress("other", 0, Receipt(5, 10, 1)))
    totals = ledger.totals({0: (4, 6)})
    assert (totals.containers, totals.records, totals.failures) == (1, 10, 1)
    assert [(s.missing, s.first) for s in ledger.shortfall({0: (4, 6)})] == [(1, 5)]


def test_a_replayed_receipt_counts_once_and_is_reported() -> None:
    ledger = Ledger("raw")
    ledger.add(progress("raw", 0, Receipt(0, 10, 3), Receipt(1, 10, 2)))
    # at-least-once replay, cut differently: offset 1 again with offset 2
    ledger.add(progress("raw", 0, Receipt(1, 10, 2), Receipt(2, 10, 1)))
    totals = ledger.totals({0: (0, 3)})
    assert (totals.records, totals.failures) == (30, 6)
    assert (ledger.replayed, ledger.replayed_failures) == (1, 2)


def test_dead_lettered_containers_are_accounted_for_and_listed() -> None:
    ledger = Ledger("raw")
    ledger.add(progress("raw", 2, Receipt(0, 10, 1), Receipt(1, 0, 0, dead_lettered=True)))
    assert ledger.shortfall({2: (0, 2)}) == []
    assert ledger.totals({2: (0, 2)}).dead_lettered == [(2, 1)]


@pytest.mark.parametrize("data", [b"", b"\x02\x00", b"garbage that is not avro"])
def test_a_damaged_record_raises(data: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises several types; the reader catches all
        decode_progress(data)
