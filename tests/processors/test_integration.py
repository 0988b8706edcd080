"""The Faust workers against a real broker: corpus containers in, exact failures and counts out.

One run covers every corpus case: all their containers go into one raw topic (plus one undecodable
container), and the outputs must equal the sum of the reference filter's outputs. Workers run as
``faust -A processors.app worker`` subprocesses configured through ``DNSQR_*`` variables, the way a Faust
user runs them; ``dnsqr-pipeline worker`` builds the same app from flags (see test_command.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from dnsqr_pipeline.job import JobError, wait_for_assignment
from dnsqr_schemas.dead_letter import DeadLetterHeaders
from dnsqr_schemas.edns_failure import decode_failure
from nmsgdns.container import encode_container
from nmsgdns.payload import replace_time
from processors.snapshots import decode_snapshot
from tests import corpus
from tests.corpus import read_payloads
from tests.dead_letters import committed_offsets, log_end_offsets
from tests.processors.helpers import expected_failures, raw_containers

pytestmark = pytest.mark.integration

FAUST = Path(sys.executable).with_name("faust")
GARBAGE = b"NMSG\x00\x02\x00\x00\x00\x05hello"


def expected_total_failures() -> Counter[bytes]:
    total: Counter[bytes] = Counter()
    for case in corpus.CASES:
        total.update(expected_failures(case))
    return total


def expected_total_counts() -> dict[str, int]:
    total: Counter[str] = Counter()
    for case in corpus.CASES:
        total.update(corpus.expected_counts(case))
    return dict(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """Topic names, a consumer-group id and the workers of one test."""

    def __init__(
        self,
        bootstrap: str,
        new_topic: Callable[..., str],
        raw_partitions: int,
        guarantee: str = "at_least_once",
        *,
        partitions: int = 4,
        **settings: str,
    ) -> None:
        self.bootstrap = bootstrap
        self.raw_partitions = raw_partitions
        #: of the topics besides raw (ns-stats among them: the workers' ``partitions`` setting agrees)
        self.partitions = partitions
        #: worker settings besides the topics (``DNSQR_<NAME>`` variables)
        self.settings = {
            "snapshot_interval": "0.3",
            "window_expires_seconds": "0",
            "partitions": str(partitions),
            **settings,
        }
        self.app_id = f"dnsqr-test-{uuid.uuid4().hex[:8]}"
        self.topics = {
            key: new_topic(raw_partitions if key == "raw" else partitions, prefix=f"test-{key}")
            for key in ("raw", "failures", "stats", "counts", "dlq")
        }
        self.guarantee = guarantee
        self.workers: list[tuple[subprocess.Popen[bytes], int, Path]] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP=self.bootstrap,
            DNSQR_APP_ID=self.app_id,
            DNSQR_RAW_TOPIC=self.topics["raw"],
            DNSQR_FAILURES_TOPIC=self.topics["failures"],
            DNSQR_STATS_TOPIC=self.topics["stats"],
            DNSQR_COUNTS_TOPIC=self.topics["counts"],
            DNSQR_DLQ_TOPIC=self.topics["dlq"],
            DNSQR_PROCESSING_GUARANTEE=self.guarantee,
            **{f"DNSQR_{name.upper()}": value for name, value in self.settings.items()},
        )
        return env

    def start_worker(self, log_dir: Path) -> int:
        port = free_port()
        log_path = log_dir / f"worker-{len(self.workers)}.log"
        proc = subprocess.Popen(
            [str(FAUST), "-A", "processors.app", "worker", "-l", "info", "--web-port", str(port)],
            env=self.env(),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append((proc, port, log_path))
        return port

    def stop_workers(self) -> None:
        for proc, _, _ in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _, _ in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_worker(self, index: int, timeout: float = 15.0) -> int:
        """SIGTERM one worker (a clean leave: it commits and leaves the group), wait for it to exit and
        forget it, so liveness checks skip it; its exit status."""
        proc, _, log_path = self.workers.pop(index)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise AssertionError(
                f"worker did not exit within {timeout} s of SIGTERM; see {log_path}"
            ) from None

    def stop_all_cleanly(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker at once (before the test's topics are deleted under them); each must exit 0
        within ``timeout``."""
        for proc, _, _ in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc, _, log_path in self.workers:
            try:
                status = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"no exit within {timeout} s of SIGTERM; see {log_path}") from None
            assert status == 0, log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        """Stop the workers and delete the topics they created for their app id (the state changelog,
        Faust's assignor topic); ``new_topic`` deletes the others."""
        self.stop_workers()
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        created = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{self.app_id}-")]
        if created:
            for future in admin.delete_topics(created).values():
                future.result(timeout=30)

    def wait_group_stable(self, members: int, timeout: float = 60.0) -> None:
        """Until the workers' group is Stable with ``members`` members owning the raw partitions."""
        kafka = {"bootstrap.servers": self.bootstrap}
        deadline = time.monotonic() + timeout
        try:
            wait_for_assignment(kafka, self.app_id, self.topics["raw"], members, [self], deadline)
        except JobError as exc:
            raise AssertionError(f"{exc}; {self.logs()}") from None

    def check_alive(self) -> None:
        for proc, _, _ in self.workers:
            assert proc.poll() is None, f"worker exited {proc.returncode}: {self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-3000:] for _, _, p in self.workers)

    def produce_corpus(self) -> int:
        containers = [data for case in corpus.CASES for data in raw_containers(case, 150)]
        self.produce([*containers, GARBAGE])
        return len(containers)

    def produce(self, containers: list[bytes]) -> None:
        """``containers`` onto the raw topic (the garbage one keyed ``bad``)."""
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "compression.type": "lz4",
            }
        )
        for data in containers:
            producer.produce(self.topics["raw"], data, key=b"bad" if data == GARBAGE else None)
        assert producer.flush(30) == 0

    def read(self, topic: str, count: int, timeout: float = 90.0) -> list[tuple[bytes | None, bytes, list]]:
        """The first ``count`` committed records of ``topic``, then a short wait proving no more follow."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([topic])
        records: list[tuple[bytes | None, bytes, list]] = []
        deadline = time.monotonic() + timeout
        settle: float | None = None
        try:
            while True:
                now = time.monotonic()
                if len(records) >= count:
                    settle = settle or now + 2.0
                    if now > settle:
                        break
                assert now < deadline, f"{len(records)} of {count} records on {topic}; {self.logs()}"
                self.check_alive()
                for msg in consumer.consume(500, 0.5):
                    assert msg.error() is None, msg.error()
                    records.append((msg.key(), msg.value(), msg.headers() or []))
        finally:
            consumer.close()
        return records

    def latest_snapshots(self, expect: dict[str, int], timeout: float = 60.0) -> dict[str, int]:
        """Total failures per name server from the newest snapshot of each key on the counts topic."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.topics["counts"]])
        totals: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for msg in consumer.consume(500, 0.5):
                    snap = decode_snapshot(msg.value())
                    totals[snap["name_server"]] = snap["total"]["failures"]
                current = {ns: n for ns, n in totals.items() if n}
                if current == expect:
                    return current
        finally:
            consumer.close()
        return {ns: n for ns, n in totals.items() if n}


def web_totals(port: int, local: bool = False) -> dict[str, int]:
    """Failures per name server from one worker's ``/dnsqr/top/`` view: the cluster's, or with ``local``
    the worker's own partitions'."""
    url = f"http://127.0.0.1:{port}/dnsqr/top/?n=100000" + ("&local=1" if local else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        return {r["name_server"]: r["failures"] for r in json.load(resp)}


def wait_web_totals(port: int, expect: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while time.monotonic() < deadline and got != expect:
        with contextlib.suppress(OSError):
            got = web_totals(port)
        time.sleep(0.3)
    return got


@pytest.fixture
def runs(new_topic: Callable[..., str]) -> Iterator[list[Run]]:
    """The test's runs; their workers are stopped however the test ends, before ``new_topic`` deletes the
    topics under them (set up after it, so torn down first)."""
    runs: list[Run] = []
    yield runs
    for run in runs:
        run.close()


def check_outputs(run: Run) -> None:
    want = expected_total_failures()
    failures = run.read(run.topics["failures"], sum(want.values()))
    values = [decode_failure(v) for _, v, _ in failures]
    assert Counter(v["payload"] for v in values) == want
    assert all(k == v["name_server"].encode() for (k, _, _), v in zip(failures, values, strict=True))
    dlq = run.read(run.topics["dlq"], 1, timeout=30)
    assert [(k, v) for k, v, _ in dlq] == [(b"bad", GARBAGE)]
    letter = DeadLetterHeaders.decode(dlq[0][2])
    assert (letter.stage, letter.topic) == ("worker", run.topics["raw"])
    assert letter.error and letter.error_type == "container"
    assert run.latest_snapshots(expected_total_counts()) == expected_total_counts()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_one_worker_exact_failures_counts_and_dead_letter(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, guarantee: str
) -> None:
    run = Run(kafka_bootstrap, new_topic, raw_partitions=4, guarantee=guarantee)
    runs.append(run)
    port = run.start_worker(tmp_path)
    run.produce_corpus()
    check_outputs(run)
    assert wait_web_totals(port, expected_total_counts()) == expected_total_counts()
    for query in ("top/?n=abc", "top/?min_answered=-1", "top/?by=size", "worst/?n=1.5"):
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/dnsqr/{query}", timeout=5)
        assert bad.value.code == 400, query
        assert json.load(bad.value)["error"], query


def test_two_workers_one_group_same_result(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    run = Run(kafka_bootstrap, new_topic, raw_partitions=4)
    runs.append(run)
    ports = [run.start_worker(tmp_path), run.start_worker(tmp_path)]
    # Produce once both own partitions: a rebalance mid-stream may legitimately replay containers under
    # at-least-once, and this test is about the split of work, not about duplicates.
    run.wait_group_stable(2)
    run.produce_corpus()
    check_outputs(run)
    want = expected_total_counts()
    merged: Counter[str] = Counter()
    for port in ports:
        own = web_totals(port, local=True)
        assert own and set(own) < set(want), "each worker holds its own partitions' name servers"
        merged.update(own)
        # any worker answers for the cluster: it asks the other one for its part
        assert wait_web_totals(port, want) == want
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/dnsqr/worst/?n=1000&refresh=0", timeout=10
        ) as r:
            page = r.read().decode()
        assert "and 1 other worker" in page
        assert all(f">{ns}<" in page for ns in want), "the page lists the name servers of both workers"
    assert dict(merged) == want, "the workers' own parts are disjoint and together all"

    # A worker that does not answer is named, with its partitions, not left out silently.
    frozen, _, _ = run.workers[1]
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        with pytest.raises(urllib.error.HTTPError) as unanswered:
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/dnsqr/top/", timeout=10)
        assert unanswered.value.code == 503
        body = json.load(unanswered.value)
        assert f"127.0.0.1:{ports[1]}" in body["error"]
        assert body["missing_partitions"]
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)


def stats_of(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dnsqr/stats/", timeout=10) as resp:
        return json.load(resp)


def test_a_record_dated_2040_frees_no_window(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """One failure in the middle of a capture dated 2040 (a sensor with a bad clock), windows freed after a
    week: the record counts in the totals and as an early delta, and the capture's windows stay live."""
    run = Run(kafka_bootstrap, new_topic, raw_partitions=1, window_expires_seconds=str(7 * 86400))
    runs.append(run)
    port = run.start_worker(tmp_path)
    payloads = read_payloads(corpus.path("live_resolver.nmsg"))
    selected = set(expected_failures("live_resolver"))
    middle = next(i for i in range(len(payloads) // 2, len(payloads)) if payloads[i] in selected)
    payloads[middle] = replace_time(payloads[middle], 2_208_988_800)  # 2040-01-01
    run.produce([encode_container(payloads[i : i + 150]) for i in range(0, len(payloads), 150)])
    want = corpus.expected_counts("live_resolver")
    assert run.latest_snapshots(want) == want, run.logs()
    stats: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stats.get("early_deltas") != 1:
        stats = stats_of(port)
        time.sleep(0.3)
    assert (stats["early_deltas"], stats["late_deltas"]) == (1, 0), stats
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert "dnsqr_worker_early_deltas_total 1.0" in metrics
    # the capture's windows are live: no snapshot says they were freed, and none is of a 2040 window
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"r-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([run.topics["counts"]])
    snapshots: list[dict] = []
    try:
        while True:  # to the end: until a wait of 2 s brings nothing more
            msgs = consumer.consume(1000, 2.0)
            if not msgs and snapshots:
                break
            snapshots += [decode_snapshot(m.value()) for m in msgs if m.error() is None]
    finally:
        consumer.close()
    capture = {s["window_start"] for s in snapshots if s["window_start"] is not None}
    assert capture and max(capture) < 2_000_000_000
    assert all(s["expired_through"] < min(capture) for s in snapshots)
    early_ns = {s["name_server"] for s in snapshots if s["window_start"] is None}
    assert early_ns <= set(want)


def test_a_worker_added_keeps_the_states_that_stay(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """What stays, stays: one worker holds every ns-stats partition's state; a second one joins. The first
    takes back the states of the partitions it keeps without reading the changelog, the second reads the
    others' from it, and the counts stay exact through a second pass of the corpus."""
    run = Run(kafka_bootstrap, new_topic, raw_partitions=4)
    runs.append(run)
    first = run.start_worker(tmp_path)
    run.wait_group_stable(1)
    run.produce_corpus()
    want = expected_total_counts()
    assert run.latest_snapshots(want) == want, run.logs()
    before = stats_of(first)
    assert (before["states_read"], before["states_kept"]) == (4, 0)  # its first assignment: all read
    second = run.start_worker(tmp_path)
    run.wait_group_stable(2)
    moved: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = [stats_of(port) for port in (first, second)]
        moved = {
            "first kept": now[0]["states_kept"],
            "first read": now[0]["states_read"] - before["states_read"],
            "second read": now[1]["states_read"],
        }
        if moved["first kept"] + moved["first read"] + moved["second read"] >= 4:
            break
        time.sleep(0.5)
    # the first worker kept what it still owns, reading nothing; the second read the rest
    assert moved["first kept"] > 0 and moved["first read"] == 0, (moved, run.logs())
    assert moved["first kept"] + moved["second read"] == 4, (moved, run.logs())
    run.produce_corpus()
    twice = {ns: 2 * n for ns, n in want.items()}
    assert run.latest_snapshots(twice) == twice, run.logs()


def wait_restored(port: int, partitions: int = 4, timeout: float = 60.0) -> dict[str, int]:
    """The worker's stats once all its ``partitions`` ns-stats states are ready (however restored)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            stats = stats_of(port)
            if stats["states_kept"] + stats["states_from_checkpoint"] + stats["states_read"] >= partitions:
                break
        time.sleep(0.3)
    return stats


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_restart_with_a_state_dir_loads_the_checkpoints(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, guarantee: str
) -> None:
    """``--state-dir``: a worker stopped cleanly writes a checkpoint per ns-stats partition; started again it
    loads them and reads no changelog record, with exact counts through a second pass of the corpus. A
    damaged checkpoint is refused with its reason and that partition read from the changelog."""
    state_dir = tmp_path / "state"
    run = Run(kafka_bootstrap, new_topic, raw_partitions=4, guarantee=guarantee, state_dir=str(state_dir))
    runs.append(run)
    run.start_worker(tmp_path)
    run.wait_group_stable(1)
    run.produce_corpus()
    want = expected_total_counts()
    assert run.latest_snapshots(want) == want, run.logs()
    run.stop_workers()
    files = sorted(state_dir.glob("*.checkpoint"))
    assert files, run.logs()

    port = run.start_worker(tmp_path)
    stats = wait_restored(port)
    assert (stats["states_from_checkpoint"], stats["states_read"]) == (len(files), 4 - len(files)), run.logs()
    assert stats["changelog_records_read"] == 0, run.logs()
    assert wait_web_totals(port, want) == want
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    restored = {
        source: float(
            metrics.split(f'dnsqr_worker_state_restored_entries_total{{source="{source}"}} ')[1].split()[0]
        )
        for source in ("checkpoint", "changelog")
    }
    assert restored["checkpoint"] > 0 and sum(restored.values()) == stats["name_servers"], metrics
    assert "dnsqr_worker_state_restore_seconds_count 1.0" in metrics
    run.produce_corpus()
    twice = {ns: 2 * n for ns, n in want.items()}
    assert run.latest_snapshots(twice) == twice, run.logs()
    run.stop_workers()

    damaged = files[0]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    port = run.start_worker(tmp_path)
    stats = wait_restored(port)
    assert (stats["states_from_checkpoint"], stats["states_read"]) == (len(files) - 1, 5 - len(files))
    assert stats["changelog_records_read"] > 0
    log = run.workers[-1][2].read_text(errors="replace")
    assert f"checkpoint {damaged} not used, damaged: the body's checksum does not match" in log, log[-3000:]
    assert wait_web_totals(port, twice) == twice


def test_a_partition_back_from_a_dead_worker_loads_the_checkpoint_of_its_revocation(
    runs: list[Run], kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """``--state-dir`` on a rebalance: the first worker writes a checkpoint of every partition the second
    one's join revokes; the second one counts on, then dies (SIGKILL: no checkpoint). The first one gets its
    partitions back from those checkpoints plus the changelog records written after them, exactly."""
    run = Run(kafka_bootstrap, new_topic, raw_partitions=4, state_dir=str(tmp_path / "state"))
    runs.append(run)
    first = run.start_worker(tmp_path)
    run.wait_group_stable(1)
    run.produce_corpus()
    want = expected_total_counts()
    assert run.latest_snapshots(want) == want, run.logs()
    run.start_worker(tmp_path)
    run.wait_group_stable(2)
    run.produce_corpus()
    twice = {ns: 2 * n for ns, n in want.items()}
    assert run.latest_snapshots(twice) == twice, run.logs()
    deadline = time.monotonic() + 30  # the second worker's records are committed: none are replayed
    while sum(committed_offsets(run.bootstrap, run.app_id, run.topics["stats"]).values()) != log_end_offsets(
        run.bootstrap, run.topics["stats"]
    ):
        assert time.monotonic() < deadline, run.logs()
        time.sleep(0.3)
    before = stats_of(first)
    os.killpg(run.workers[1][0].pid, signal.SIGKILL)
    restored = ("states_kept", "states_from_checkpoint", "states_read")
    after = wait_restored(first, partitions=sum(before[k] for k in restored) + 4, timeout=60)
    kept, from_checkpoint, read = (after[k] - before[k] for k in restored)
    assert from_checkpoint > 0 and kept + from_checkpoint == 4 and read == 0, (after, before, run.logs())
    assert after["changelog_records_read"] > before["changelog_records_read"], "records after the checkpoint"
    assert wait_web_totals(first, twice) == twice
