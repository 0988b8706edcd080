"""The group grows and shrinks while records flow (issue #20): exact files and counts at the end.

``dnsqr-pipeline worker`` processes (:class:`tests.processors.test_worker_crash.CliRun`, exactly_once) on
8 raw and 8 ns-stats partitions. Containers of the live_resolver capture, repeated, are produced at a
steady pace from a thread while the test changes the group: a worker joins, a worker leaves (SIGTERM, a
clean leave), or one leaves while another is still reading its ns-stats states from the changelog. The
expected outputs are computed as in test_worker_crash.py (the filter rule checked there against the
reference filter's files); at the end the sink's files must hold exactly the expected failures (a
multiset of payloads) and the newest counts snapshot of every name server its exact totals.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from bench.recovery import RunTopics, write_state
from dnsqr_kafka.topics import admin_client, create_topics, wait_for_leaders
from dnsqr_pipeline.completion import CompletionError, Progress, wait_caught_up
from processors.settings import Settings
from processors.topology import changelog_spec
from tests import corpus
from tests.processors.helpers import read_payloads
from tests.processors.test_integration import stats_of
from tests.processors.test_worker_crash import (
    CASE,
    CliRun,
    Expected,
    crash_runs,  # noqa: F401  (the fixture that stops the workers)
    expected_outputs,
    run_sink,
    wait_for_totals,
)
from tests.sink.helpers import files_multiset

pytestmark = pytest.mark.integration

PARTITIONS = 8
#: seconds between containers (100 records each)
INTERVAL = 0.1
#: the whole of one test, from topic creation to the last assertion (pytest-timeout backs it up)
BUDGET = 150.0
#: synthetic name servers in the changelog before the workers start (test_a_rebalance_while_restoring): the
#: joiner's read of its partitions' share must outlast a worker's leave and the rebalance it starts
SEEDED = 800_000
#: the aggregator's lines when a read of the changelog starts, ends and is stopped (processors/aggregator.py)
RESTORING = re.compile(r"ns-stats partitions restoring: \[(\d+)")
READY = re.compile(r"ns-stats partitions ready in ([\d.]+) s")
#: ...with its sources: seconds, the partitions taken from standby states, the changelog records read
TAKEN_OVER = re.compile(
    r"ns-stats partitions ready in ([\d.]+) s \(\d+ name servers\): .* kept \(their state was current\), "
    r"(\[[\d, ]+\]|none) from standbys, .* \((\d+) changelog records read\)"
)
STOPPED = re.compile(r"ns-stats partitions restore stopped after ([\d.]+) s")
#: a partition paused while it restores (its waiting records reached --restore-buffer-mb), and resumed
PAUSED = re.compile(r"ns-stats partition (\d+) paused at offset (\d+)")
RESUMED = re.compile(r"ns-stats partition (\d+) resumed from offset (\d+)")
#: a worker whose warm-up standbys caught up asks for a rebalance (processors/warmup.py)
PROBE = re.compile(r"warm-up: standbys of ns-stats partitions .* caught up, asking for a rebalance")


class PacedProducer(threading.Thread):
    """Produces containers onto the raw topic one every ``interval`` seconds, while the test changes the
    group; :attr:`produced` counts them."""

    def __init__(self, run: CliRun, containers: list[bytes], interval: float) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.containers = containers
        self.interval = interval
        self.produced = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            producer = Producer(
                {**self.run_.kafka, "linger.ms": 5, "enable.idempotence": True, "compression.type": "lz4"}
            )
            for data in self.containers:
                if self.stop.wait(self.interval):
                    return
                producer.produce(self.run_.topics["raw"], data)
                producer.poll(0)
                self.produced += 1
            assert producer.flush(30) == 0, "containers left undelivered"
        except BaseException as exc:  # handed to the test by finish()
            self.error = exc

    def wait_for(self, n: int, deadline: float) -> None:
        """Until ``n`` containers were produced."""
        while self.produced < n:
            assert time.monotonic() < deadline, f"{self.produced} of {n} containers produced"
            assert self.is_alive() or self.produced >= n, f"producer ended: {self.error}"
            time.sleep(0.1)

    @property
    def flowing(self) -> bool:
        return self.produced < len(self.containers)

    @contextlib.contextmanager
    def stopped_on_failure(self) -> Iterator[None]:
        """Stop producing when the block fails (the test's failure is the one reported)."""
        try:
            yield
        except BaseException:
            self.stop.set()
            self.join(10)
            raise

    def finish(self, timeout: float) -> None:
        """Wait for the last container, re-raising the thread's error."""
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def start_run(
    runs: list[CliRun],
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    worker_args: tuple[str, ...] = (),
) -> CliRun:
    work_dir = tmp_path / "workers"
    work_dir.mkdir()
    run = CliRun(
        kafka_bootstrap,
        new_topic,
        PARTITIONS,
        "exactly_once",
        partitions=PARTITIONS,
        work_dir=work_dir,
        worker_args=worker_args,
    )
    runs.append(run)
    return run


def check_outputs(run: CliRun, expected: Expected, tmp_path: Path, deadline: float) -> None:
    """Every container processed, the sink's files exactly the expected failures, the newest counts
    exactly the expected totals."""
    try:
        wait_caught_up(run.kafka, [Progress(run.app_id, run.topics["raw"], "the filter agent")], [], deadline)
    except CompletionError as exc:
        raise AssertionError(f"{exc}; {run.task_dumps()}") from None
    run.check_alive()
    out = tmp_path / "out"
    run_sink(run, out, tmp_path / "sink.log", deadline)
    written = files_multiset(out)
    assert written == expected.failures, (
        f"files: {(expected.failures - written).total()} failures missing, "
        f"{(written - expected.failures).total()} extra"
    )
    totals = wait_for_totals(run, expected.totals, deadline, exact=True)
    assert totals == expected.totals, run.logs()


@pytest.mark.timeout(BUDGET + 15)
def test_three_workers_on_eight_partitions_add_one_then_remove_one(
    crash_runs: list[CliRun],  # noqa: F811
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Three workers; a fourth joins a fifth of the way through the input; once it owns partitions and at
    least half the input is in, one of the first three leaves (SIGTERM), still mid-stream. The fourth gets
    its ns-stats partitions warm (processors/warmup.py): standby first, then, once caught up, it asks for the
    rebalance that moves them, and takes them over from its standby states."""
    deadline = time.monotonic() + BUDGET
    expected = expected_outputs(read_payloads(corpus.path(f"{CASE}.nmsg")) * 12)  # 312 containers, ~31 s
    # every move waits for a warm-up, however short the changelog
    run = start_run(crash_runs, kafka_bootstrap, new_topic, tmp_path, ("--acceptable-recovery-lag", "0"))
    for _ in range(3):
        run.start_worker(tmp_path)
    run.wait_group_stable(3)

    total = len(expected.containers)
    producer = PacedProducer(run, expected.containers, INTERVAL)
    producer.start()
    with producer.stopped_on_failure():
        producer.wait_for(total // 5, deadline)
        first = [port for _, port, _ in run.workers]
        added = run.start_worker(tmp_path)
        added_log = run.workers[-1][2]
        run.wait_group_stable(4)
        wait_for_line(added_log, READY, deadline)
        joined_at = producer.produced
        producer.wait_for(total // 2, deadline)
        left_at = producer.produced
        assert run.stop_worker(0) == 0, "the leaving worker exits cleanly"
        run.wait_group_stable(3)
        settled_at = producer.produced
        assert producer.flowing, "the group must have settled before the input ends"
    producer.finish(max(1.0, deadline - time.monotonic()))
    print(
        f"\nof {total} containers: 4 workers stable after {joined_at}, SIGTERM to one at {left_at}, "
        f"3 stable after {settled_at}"
    )
    check_outputs(run, expected, tmp_path, deadline)
    # what stays, stays: the workers that stayed took some states back without reading them again
    stats = {port: stats_of(port) for port in [*first[1:], added]}
    print({port: (s["states_kept"], s["states_read"]) for port, s in stats.items()})
    assert sum(s["states_kept"] for s in stats.values()) > 0, stats
    log = added_log.read_text(errors="replace")
    assert PROBE.search(log), "the joiner asked for the rebalance once its warm-ups caught up"
    # a partition whose changelog is empty has nothing to warm up and moves at once
    taken = [m.group(2) for m in TAKEN_OVER.finditer(log)]
    assert any(p != "none" for p in taken), f"the joiner took partitions from standby states: {taken}"
    run.stop_all_cleanly()


def seed_changelog(run: CliRun, name_servers: int) -> set[str]:
    """The ns-stats state of ``name_servers`` synthetic name servers (bench/recovery.py's) in the run's
    changelog, as the aggregator writes it, before any worker starts; their names."""
    settings = Settings(
        app_id=run.app_id,
        bootstrap_servers=run.bootstrap,
        partitions=run.partitions,
        window_expires_seconds=0,
    )
    admin = admin_client(run.kafka)
    create_topics(admin, [changelog_spec(settings)], bootstrap=run.bootstrap, partitions=run.partitions)
    wait_for_leaders(admin, [settings.changelog_topic], timeout=30)
    states = write_state(RunTopics(run.kafka, run.app_id, settings), name_servers)
    names = {ns for state in states.values() for ns in state.totals}
    assert len(names) == name_servers
    return names


def wait_for_line(path: Path, pattern: re.Pattern[str], deadline: float, count: int = 1) -> list[float]:
    """Until the log at ``path`` has ``count`` lines matching ``pattern``; the first group of each."""
    while True:
        found = [float(m.group(1)) for m in pattern.finditer(path.read_text(errors="replace"))]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in {path}"
        time.sleep(0.1)


@pytest.mark.timeout(BUDGET + 15)
def test_a_rebalance_while_restoring(
    crash_runs: list[CliRun],  # noqa: F811
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Two workers hold a big state (``SEEDED`` name servers, read from the changelog as they start: the
    first alone, then the second its half) while records flow; a third joins and starts reading its
    partitions' states from the changelog; while its log shows that read in progress, the second leaves
    (SIGTERM). The joiner's read is stopped by the revocation and done again for its new assignment, and
    the first worker gets back partitions it once gave away (whose transactional producers Faust kept:
    processors/commit_guard.py); files and counts stay exact, and no state is lost (the workers left hold
    every name server). The workers keep no records while they restore (``--restore-buffer-mb 0``): a
    partition is paused at its first waiting record and fetched again from the next one once its state is
    ready, so the exact outputs also show that the pause loses and repeats nothing. Without warm-ups
    (``--no-warm-up``): the joiner is to read its partitions as their owner, not as a standby."""
    deadline = time.monotonic() + BUDGET
    expected = expected_outputs(read_payloads(corpus.path(f"{CASE}.nmsg")) * 6)  # 156 containers, ~16 s
    run = start_run(
        crash_runs, kafka_bootstrap, new_topic, tmp_path, ("--restore-buffer-mb", "0", "--no-warm-up")
    )
    seeded = seed_changelog(run, SEEDED)
    assert not seeded & set(expected.totals), "the synthetic name servers are not the capture's"
    # one worker first, then a second: the first gives half its partitions away (and is made their standby)
    for members in (1, 2):
        run.start_worker(tmp_path)
        run.wait_group_stable(members)
        wait_for_line(run.workers[-1][2], READY, deadline)

    producer = PacedProducer(run, expected.containers, INTERVAL)
    producer.start()
    with producer.stopped_on_failure():
        producer.wait_for(len(expected.containers) // 5, deadline)
        run.start_worker(tmp_path)
        joiner = run.workers[-1][2]
        wait_for_line(joiner, RESTORING, deadline)
        assert not READY.search(joiner.read_text(errors="replace")), "the read must still be going on"
        assert producer.flowing
        assert run.stop_worker(1) == 0, "the leaving worker exits cleanly"
        [stopped_after] = wait_for_line(joiner, STOPPED, deadline)
        run.wait_group_stable(2)
    producer.finish(max(1.0, deadline - time.monotonic()))
    ready_in = wait_for_line(joiner, READY, deadline)
    print(f"\nthe joiner's first read stopped after {stopped_after} s; its next one took {ready_in} s")
    check_outputs(run, expected, tmp_path, deadline)
    log = joiner.read_text(errors="replace")
    paused = {int(m[1]) for m in PAUSED.finditer(log)}
    resumed = {int(m[1]) for m in RESUMED.finditer(log)}
    assert paused, "records came while the joiner restored: it paused their partitions"
    assert resumed, "the joiner resumed the partitions it paused once their states were ready"
    held = sum(stats_of(port)["name_servers"] for _, port, _ in run.workers)
    assert held == SEEDED + len(expected.totals), "every name server's state is held by a worker"
    run.stop_all_cleanly()
