"""Warm standbys (``--standby-replicas``, ``processors/standby.py``; issue #20).

Pure: which ns-stats partitions the assignor's standbys name; that Faust's co-partitioned assignor gives a
partition whose owner left to its standby (what the failover relies on); the tailing thread's hand-over
of a state and its offset, on a stand-in consumer.

Integration (``dnsqr-pipeline worker`` processes, exactly_once, the helpers of test_worker_crash.py and
test_elastic.py): a worker SIGKILLed mid-stream, whose partitions the survivor takes over from its standby
states, reading only the changelog's tail; a worker killed while it holds standbys only. Files and counts
stay exact.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import OFFSET_BEGINNING
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.types import TP

from processors.delta_batch import decode_batch, encode_batch
from processors.standby import Standbys, standby_partitions
from processors.state import NsState, encode_value
from tests import corpus
from tests.processors.helpers import read_payloads
from tests.processors.test_elastic import (
    INTERVAL,
    READY,
    TAKEN_OVER,
    PacedProducer,
    check_outputs,
    seed_changelog,
    wait_for_line,
)
from tests.processors.test_integration import stats_of
from tests.processors.test_worker_crash import (
    CASE,
    CliRun,
    crash_runs,  # noqa: F401  (the fixture that stops the workers)
    expected_outputs,
)

STANDBY = ("--standby-replicas", "1")
#: synthetic name servers in the changelog before the workers start: a full read of a partition is then
#: thousands of records, a standby's tail a few dozen
SEEDED = 40_000
BUDGET = 80.0
#: the standbys log line naming the partitions started from the states the worker gave away
SEEDED_STANDBY = re.compile(
    r"standby for ns-stats partitions .*; \[([\d, ]+)\] from the states this worker gave"
)


def test_standby_partitions_are_the_ns_stats_ones() -> None:
    standbys = {TP("raw", 0), TP("ns-stats", 1), TP("ns-stats", 3), TP("other", 2)}
    assert standby_partitions(standbys, "ns-stats") == {1, 3}
    assert standby_partitions(set(), "ns-stats") == set()


def test_faust_gives_a_partition_whose_owner_left_to_its_standby() -> None:
    """Two members with one standby each for the other's partitions; one leaves: the other takes its
    partitions over (standby promoted) and is standby of nothing (no one else is left). Promotion stays
    within the balanced capacity, ceil(partitions / members)."""
    topics = {"raw", "ns-stats"}
    first = CopartitionedAssignment(actives={0, 1}, standbys={2, 3}, topics=topics)
    second = CopartitionedAssignment(actives={2, 3}, standbys={0, 1}, topics=topics)
    both = CopartitionedAssignor(topics, {"a": first, "b": second}, num_partitions=4, replicas=1)
    assert {c: (a.actives, a.standbys) for c, a in both.get_assignment().items()} == {
        "a": ({0, 1}, {2, 3}),
        "b": ({2, 3}, {0, 1}),
    }, "a stable group keeps its actives and standbys"
    alone = CopartitionedAssignor(topics, {"a": first}, num_partitions=4, replicas=1)
    assert {c: (a.actives, a.standbys) for c, a in alone.get_assignment().items()} == {
        "a": ({0, 1, 2, 3}, set())
    }
    # three members, one of them holds standbys only: its leaving changes no active partition
    owners = {
        "a": CopartitionedAssignment(actives={0}, standbys=set(), topics=topics),
        "b": CopartitionedAssignment(actives={1}, standbys=set(), topics=topics),
        "c": CopartitionedAssignment(actives=set(), standbys={0, 1}, topics=topics),
    }
    del owners["c"]
    left = CopartitionedAssignor(topics, owners, num_partitions=2, replicas=1).get_assignment()
    assert {c: (a.actives, a.standbys) for c, a in left.items()} == {"a": ({0}, {1}), "b": ({1}, {0})}
    # balance first: a standby at capacity is not promoted, an idle member takes the partition (and reads
    # its changelog)
    owners = {
        "b": CopartitionedAssignment(actives={1}, standbys={0}, topics=topics),
        "c": CopartitionedAssignment(actives=set(), standbys=set(), topics=topics),
    }
    left = CopartitionedAssignor(topics, owners, num_partitions=2, replicas=1).get_assignment()
    assert {c: (a.actives, a.standbys) for c, a in left.items()} == {"b": ({1}, {0}), "c": ({0}, {1})}


class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes, value: bytes | None) -> None:
        self._partition, self._offset, self._key, self._value = partition, offset, key, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class FakeConsumer:
    """A consumer of queued changelog messages: each ``consume`` hands over what is queued for the
    partitions assigned."""

    def __init__(self) -> None:
        self.queued: list[FakeMessage] = []
        self.assigned: dict[int, int] = {}
        self.lock = threading.Lock()

    def assign(self, tps: list[Any]) -> None:
        with self.lock:
            self.assigned = {tp.partition: tp.offset for tp in tps}

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        time.sleep(0.01)
        with self.lock:
            out = [m for m in self.queued if m.partition() in self.assigned][:n]
            self.queued = [m for m in self.queued if m not in out]
        return out

    def position(self, tps: list[Any]) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def window_record(ns: str, failures: int) -> tuple[bytes, bytes]:
    return b"W0 " + ns.encode(), encode_value([failures, failures, 0, None, None])


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_standbys_tail_their_partitions_and_hand_over_state_and_offset() -> None:
    consumer = FakeConsumer()
    standbys = Standbys(lambda: consumer, "changelog", NsState)
    standbys.update([0, 1])
    until(lambda: set(consumer.assigned) == {0, 1})
    assert consumer.assigned == {0: OFFSET_BEGINNING, 1: OFFSET_BEGINNING}
    with consumer.lock:
        consumer.queued += [
            FakeMessage(0, 0, *window_record("a", 1)),
            FakeMessage(0, 1, *window_record("a", 2)),  # a later record of a key replaces the earlier
            FakeMessage(1, 0, *window_record("b", 5)),
        ]
    until(lambda: standbys.records == 3)
    taken = standbys.take([0, 2])
    assert list(taken) == [0] and standbys.partitions == [1]
    state, offset = taken[0]
    assert offset == 2, "read on after the last record applied"
    state.loaded()
    assert state.totals == {"a": [2, 2, 0, None, None]}
    until(lambda: set(consumer.assigned) == {1})
    # a partition standby again starts afresh; one no longer standby is dropped
    standbys.update([0])
    until(lambda: set(consumer.assigned) == {0})
    assert standbys.take([0])[0][1] == OFFSET_BEGINNING
    standbys.close()


def given_away() -> NsState:
    """A state as a worker gives it away: applied, committed, its changes written (window 0 and totals
    of "a": 3 failures, of "old": 4 retired ones, its window long freed)."""
    state = NsState(expires=3600)
    state.apply(decode_batch(encode_batch(0, [("old", -7200, 4, 4, 0, {}, {})])), 0)
    state.apply(decode_batch(encode_batch(0, [("a", 0, 3, 3, 0, {"noopt": 3}, {})])), 1)
    state.committed(2)
    state.changelog()
    return state


@pytest.mark.parametrize("taken_at_once", [False, True])
def test_a_standby_of_a_partition_given_away_starts_from_its_state(taken_at_once: bool) -> None:
    """The state given away, with the changelog's end at the revocation, is where its standby starts: the
    tail is read from that offset on top of it; a take before the thread turned it into a standby state
    turns it itself."""
    consumer = FakeConsumer()
    standbys = Standbys(lambda: consumer, "changelog", lambda: NsState(expires=3600))
    seed = given_away()
    if taken_at_once:
        with mock.patch.object(Standbys, "_run"):  # no thread: the take finds the seed as it came
            standbys.update([0], {0: (seed, 40)})
            [(state, offset)] = standbys.take([0]).values()
        assert offset == 40
    else:
        standbys.update([0], {0: (seed, 40)})
        until(lambda: consumer.assigned == {0: 40})
        with consumer.lock:
            consumer.queued.append(FakeMessage(0, 40, *window_record("b", 1)))
        until(lambda: standbys.records == 1)
        [(state, offset)] = standbys.take([0]).values()
        assert offset == 41
    state.loaded()
    expected = dict(seed.totals)
    if not taken_at_once:
        expected["b"] = [1, 1, 0, None, None]
    assert state.totals == expected
    assert state.windows[0] is not seed.windows[0], "loading on top leaves the state given away as it was"
    assert -7200 not in state.windows and state.totals["old"] == [4, 4, 0, None, None]
    assert (state.base, state.applied_offsets) == (2, set())
    standbys.close()


def start_workers(run: CliRun, n: int, tmp_path: Path, deadline: float) -> None:
    """Start ``n`` workers one after the other, each once the group is stable and the previous one's
    states are ready (Faust's sticky assignor then moves as little as it can)."""
    for _ in range(n):
        run.start_worker(tmp_path)
        run.wait_group_stable(len(run.workers))
        wait_for_line(run.workers[-1][2], READY, deadline)


def wait_for_roles(run: CliRun, want: list[tuple[list[int], list[int]]], deadline: float) -> None:
    """Until each worker's (ns-stats partitions owned, standby partitions) is ``want``'s, in order."""
    while True:
        stats = [stats_of(port) for _, port, _ in run.workers]
        roles = [(s["partitions"], s["standby_partitions"]) for s in stats]
        if roles == want:
            return
        assert time.monotonic() < deadline, f"roles {roles}, not {want}"
        time.sleep(0.2)


def settled_roles(run: CliRun, deadline: float) -> list[tuple[list[int], list[int]]]:
    """Each worker's (ns-stats partitions owned, standby partitions), once every partition is owned and
    has a standby."""
    every = list(range(run.partitions))
    while True:
        stats = [stats_of(port) for _, port, _ in run.workers]
        roles = [(s["partitions"], s["standby_partitions"]) for s in stats]
        if all(sorted(p for role in roles for p in role[i]) == every for i in (0, 1)):
            return roles
        assert time.monotonic() < deadline, f"roles {roles}"
        time.sleep(0.2)


def kill(run: CliRun, index: int) -> tuple[float, dict[int, int]]:
    """SIGKILL worker ``index``; the time and every remaining worker's log size (by its new index)."""
    run.kill_worker(index)
    return time.monotonic(), {i: log.stat().st_size for i, (_, _, log) in enumerate(run.workers)}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(BUDGET + 15)
def test_sigkill_of_one_of_two_workers_fails_over_to_the_standby(
    crash_runs: list[CliRun],  # noqa: F811
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Two workers, one standby replica: each tails the changelog of the other's partitions. The second
    joins mid-stream: the first gives it half its partitions and becomes their standby, starting from the
    states it gave away (not the changelog's beginning). Then the second is SIGKILLed mid-stream; the
    survivor takes its partitions over from its standby states, reading a few changelog records instead
    of the thousands of a full read, and files and counts stay exact."""
    deadline = time.monotonic() + BUDGET
    expected = expected_outputs(read_payloads(corpus.path(f"{CASE}.nmsg")) * 8)  # 208 containers, ~21 s
    work_dir = tmp_path / "workers"
    work_dir.mkdir()
    run = CliRun(kafka_bootstrap, new_topic, 4, "exactly_once", work_dir=work_dir, worker_args=STANDBY)
    crash_runs.append(run)
    seeded = seed_changelog(run, SEEDED)
    start_workers(run, 1, tmp_path, deadline)

    producer = PacedProducer(run, expected.containers, INTERVAL)
    producer.start()
    with producer.stopped_on_failure():
        producer.wait_for(len(expected.containers) // 8, deadline)
        while not all(run.committed("stats")):  # the states the first worker gives away have a commit
            assert time.monotonic() < deadline, "nothing committed"
            time.sleep(0.1)
        start_workers(run, 1, tmp_path, deadline)
        [(first, _), (second, _)] = settled_roles(run, deadline)
        wait_for_roles(run, [(first, second), (second, first)], deadline)
        seeded_from = SEEDED_STANDBY.findall(run.workers[0][2].read_text(errors="replace"))
        assert seeded_from == [str(second)[1:-1]], seeded_from
        producer.wait_for(len(expected.containers) * 2 // 5, deadline)
        killed, sizes = kill(run, 1)
        survivor = run.workers[0][2]
        while not (found := TAKEN_OVER.search(survivor.read_text(errors="replace")[sizes[0] :])):
            assert time.monotonic() < deadline, f"no take-over in {survivor}"
            time.sleep(0.1)
        after = time.monotonic() - killed
        assert producer.flowing, "the take-over must happen mid-stream"
    producer.finish(max(1.0, deadline - time.monotonic()))
    ready_in, from_standbys, records = float(found[1]), found[2], int(found[3])
    print(
        f"\ntaken over {after:.1f} s after the SIGKILL (restore {ready_in} s): {from_standbys} from "
        f"standbys, {records} changelog records read (a full read: ~{SEEDED // 2})"
    )
    assert from_standbys == str(second), "the victim's partitions came from the survivor's standbys"
    assert records < SEEDED // 20, "only the changelog's tail was read"
    check_outputs(run, expected, tmp_path, deadline)
    [(_, port, _)] = run.workers
    assert stats_of(port)["name_servers"] == len(seeded) + len(expected.totals), "no state was lost"
    run.stop_all_cleanly()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(BUDGET + 15)
def test_a_worker_killed_while_it_holds_standbys_only(
    crash_runs: list[CliRun],  # noqa: F811
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Three workers on two partitions with two standby replicas: two own a partition each and are the
    other's standby, the third is the standby of both and owns nothing. It is SIGKILLed mid-stream: the
    owners keep their partitions and states, and files and counts stay exact."""
    deadline = time.monotonic() + BUDGET
    expected = expected_outputs(read_payloads(corpus.path(f"{CASE}.nmsg")) * 6)  # 156 containers, ~16 s
    work_dir = tmp_path / "workers"
    work_dir.mkdir()
    run = CliRun(
        kafka_bootstrap,
        new_topic,
        2,
        "exactly_once",
        partitions=2,
        work_dir=work_dir,
        worker_args=("--standby-replicas", "2"),
    )
    crash_runs.append(run)
    start_workers(run, 2, tmp_path, deadline)
    [(first, _), (second, _)] = settled_roles(run, deadline)
    run.start_worker(tmp_path)
    run.wait_group_stable(3)
    # Faust's sticky assignor keeps the owners (at capacity) and makes the third the second standby of both
    wait_for_roles(run, [(first, second), (second, first), ([], [0, 1])], deadline)

    producer = PacedProducer(run, expected.containers, INTERVAL)
    producer.start()
    with producer.stopped_on_failure():
        producer.wait_for(len(expected.containers) * 2 // 5, deadline)
        kill(run, 2)
        run.wait_group_stable(2)
        wait_for_roles(run, [(first, second), (second, first)], deadline)
        assert producer.flowing, "the kill must land mid-stream"
    producer.finish(max(1.0, deadline - time.monotonic()))
    check_outputs(run, expected, tmp_path, deadline)
    run.stop_all_cleanly()
