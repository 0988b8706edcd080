"""A worker's dead letter across a replay: sent again only with the same origin, and under exactly_once
in the transaction of its raw offset.

A crash after a dead letter is acknowledged but before its raw offset is committed replays the container
(at_least_once). Killing a worker inside that window is not controllable in a short test, so the test
makes the replay happen on purpose: once the first worker has committed past the undecodable container
and stopped, the group's offsets are rewound to 0 (what a crash before any commit leaves, and what
``kafka-consumer-groups --reset-offsets --to-earliest`` does) and a new worker of the same group processes
the raw topic again. Both copies of the dead letter must carry the same source coordinates, by which a
DLQ consumer keeps one (``schemas/dead_letter.md``).

Under exactly_once the dead letter must also be part of the transaction that commits its offset, so that
an aborted attempt is invisible to read_committed consumers: a transactional write leaves a commit marker
after the record in the DLQ partition, which a plain write does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.dead_letters import committed_offsets, log_end_offsets, read_letters, rewind_group
from tests.processors.helpers import raw_containers
from tests.processors.test_integration import GARBAGE, Run

pytestmark = pytest.mark.integration


def produce_raw(run: Run) -> tuple[int, int]:
    """Good containers around one undecodable one, on the raw topic's one partition: (records, its offset)."""
    good = raw_containers("live_resolver", 500)
    values = [*good[:2], GARBAGE, *good[2:]]
    producer = Producer({"bootstrap.servers": run.bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(run.topics["raw"], value, key=b"bad" if value is GARBAGE else None, partition=0)
    assert producer.flush(30) == 0
    return len(values), values.index(GARBAGE)


def wait_committed(run: Run, end: int, timeout: float = 90.0) -> None:
    """Until the workers' group has committed the whole raw partition."""
    deadline = time.monotonic() + timeout
    while committed_offsets(run.bootstrap, run.app_id, run.topics["raw"]).get(0) != end:
        run.check_alive()
        assert time.monotonic() < deadline, f"raw offset {end} not committed; {run.logs()}"
        time.sleep(0.5)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_dead_letter_sent_again_by_a_replay_has_the_same_origin(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, guarantee: str
) -> None:
    run = Run(kafka_bootstrap, new_topic, raw_partitions=1, guarantee=guarantee)
    dlq = run.topics["dlq"]
    try:
        end, bad_offset = produce_raw(run)
        run.start_worker(tmp_path)
        wait_committed(run, end)
        [first] = read_letters(kafka_bootstrap, dlq)
        assert (first.key, first.value) == (b"bad", GARBAGE)
        assert first.headers.origin() == ("worker", run.topics["raw"], 0, bad_offset)
        if guarantee == "exactly_once":
            # one record and, after it, its transaction's commit marker
            assert log_end_offsets(kafka_bootstrap, dlq) == 2
            assert len(read_letters(kafka_bootstrap, dlq, committed=False)) == 1
        run.stop_workers()
        run.workers.clear()  # stopped cleanly; the next one's liveness is what counts

        rewind_group(kafka_bootstrap, run.app_id, run.topics["raw"])
        (tmp_path / "replay").mkdir()
        run.start_worker(tmp_path / "replay")
        wait_committed(run, end)
        letters = read_letters(kafka_bootstrap, dlq)
        assert [(m.key, m.value) for m in letters] == [(b"bad", GARBAGE)] * 2
        assert [m.headers for m in letters] == [first.headers] * 2
    finally:
        run.stop_workers()
