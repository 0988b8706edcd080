"""Recovery time of a worker that owns N name servers' state (issue #11: "processes again within 60 s").

Method:

1. **The state, as the aggregator writes it.** N distinct name servers (IPv4 and IPv6 text, one window;
   ``--kinds-share`` of them with a failure-kinds map, like the high-cardinality bench file) are counted
   as the filter agent counts them (``processors.deltas``: keyed by address bytes, encoded per ns-stats
   partition, the name server's murmur2 partition), applied to an ``NsState`` per ns-stats partition as
   the aggregator applies ``NsStatsBatch`` records, and each chunk's ``NsState.changelog()`` records are
   produced to the run's changelog topic (``{app id}-ns-state-changelog``, compacted, one partition per
   ns-stats partition), as the aggregator does on commit.
2. **New work.** One small ``NsStatsBatch`` per ns-stats partition (one known name server each), so every
   partition's state must be back before the group can commit it.
3. **One worker** (``dnsqr-pipeline worker``, as ``dnsqr_pipeline.job.worker_command`` starts it; log in
   bench/out/recovery-logs/), timed from its start: (a) its "ns-stats partitions ready in X s (N name
   servers)" log line, (b) the moment its group has committed the end of ns-stats, i.e. it processes
   again, and its RSS then (``/proc/PID/status`` VmRSS; VmHWM is the peak). ``/dnsqr/stats/`` must then
   count N name servers. With ``--baseline`` (the default) a worker of another app id (an empty
   changelog) is timed first on the same input: its RSS is the worker's with no state.

4. **With ``--state-dir DIR``** the worker of 3 runs with checkpoints: it is stopped cleanly (SIGTERM: it
   writes a checkpoint per partition), new input is added as in 2, and its restart is timed as in 3
   (the "ready" line also says how many changelog records were read after the checkpoints).

Prints one summary line; exits 1 if (b) exceeds ``--limit`` seconds. The run's topics (their names carry
the run id) and groups are deleted at the end.

    .venv/bin/python -m bench.recovery --name-servers 1000000 --bootstrap-servers 127.0.0.1:9092
    .venv/bin/python -m bench.recovery --name-servers 1000000 --no-baseline --state-dir bench/out/state

(``-m``, from the repository's root: it uses ``bench/latency.py``'s broker and clean-up.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer, TopicPartition

import processors.deltas
from bench.latency import broker, delete_run_topics
from dnsqr_kafka.key_partition import KeyPartitioner
from dnsqr_kafka.names import TopicNames
from dnsqr_kafka.topics import (
    CONTAINER_TOPIC_CONFIG,
    TopicSpec,
    admin_client,
    create_topics,
    wait_for_leaders,
)
from dnsqr_pipeline.completion import end_offsets, job_consumer
from dnsqr_pipeline.job import Stage, stage_kafka, worker_command, worker_settings
from nmsgdns.classify import KINDS, OBSERVATIONS
from processors.delta_batch import MAX_ROWS, encode_batch
from processors.settings import Settings
from processors.state import NsState
from processors.topology import internal_topic_specs

#: the workers' logs, one per worker named by its app id (bench/out is git-ignored)
LOG_DIR = Path(__file__).resolve().parent / "out" / "recovery-logs"
#: the one window of every name server (record time, seconds; any hour start will do)
WINDOW_START = 1_764_633_600
#: name servers counted, encoded and applied at a time (the aggregator commits its changelog as often)
CHUNK = 50_000
POLL_SECONDS = 0.1
#: the aggregator's line when assigned partitions are ready (processors/aggregator.py): seconds, name
#: servers, and (since checkpoints) the changelog records read
RESTORED = re.compile(
    r"ns-stats partitions ready in ([\d.]+) s \((\d+) name servers\)(?:.* \((\d+) changelog records read\))?"
)


def name_server_ips(n: int, ipv6_share: float, rng: random.Random) -> list[bytes]:
    """``n`` distinct addresses, ``ipv6_share`` of them IPv6 (in 2001:db8::/32), in random order."""
    v6 = round(n * ipv6_share)
    ips = [x.to_bytes(4, "big") for x in rng.sample(range(1 << 24, 0xE0000000), n - v6)]
    ips += [b"\x20\x01\x0d\xb8" + x.to_bytes(12, "big") for x in rng.sample(range(1 << 62), v6)]
    rng.shuffle(ips)
    return ips


def random_counts(rng: random.Random, kinds_share: float) -> list[Any]:
    """``[edns_answered, failures, timeouts, by_kind, observations]`` of one name server: ``kinds_share``
    of them failed (a kinds map), a few timed out or have an observation."""
    failures, by_kind, observations = 0, None, None
    if rng.random() < kinds_share:
        failures = rng.randint(1, 5)
        by_kind = {rng.choice(KINDS): failures}
    if rng.random() < 0.1:
        observations = {rng.choice(OBSERVATIONS): 1}
    timeouts = rng.randint(1, 3) if rng.random() < 0.2 else 0
    return [
        failures + rng.randint(0, 20) + (1 if observations else 0),
        failures,
        timeouts,
        by_kind,
        observations,
    ]


@dataclass(frozen=True)
class RunTopics:
    """A run's broker (``kafka``), id, and the settings of its worker on the run's topics."""

    kafka: dict[str, str]
    run_id: str
    settings: Settings

    def worker(self, app_id: str) -> Settings:
        """Settings of a worker of another app (its own group and changelog) on the same topics."""
        return self.settings.with_overrides(app_id=app_id)


def create_run(bootstrap: str, partitions: int, run_id: str | None = None) -> RunTopics:
    """Create a run's topics (raw and every internal topic of its worker) and wait for their leaders."""
    run_id = run_id or uuid.uuid4().hex[:8]
    topics = TopicNames.named(f".recovery-{run_id}")
    settings = worker_settings(topics, f"dnsqr-edns-recovery-{run_id}", bootstrap, partitions=partitions)
    kafka = {"bootstrap.servers": bootstrap}
    specs = [TopicSpec(topics.raw, config=CONTAINER_TOPIC_CONFIG), *internal_topic_specs(settings)]
    admin = admin_client(kafka)
    create_topics(admin, specs, bootstrap=bootstrap, partitions=partitions)
    wait_for_leaders(admin, [s.name for s in specs], timeout=30)
    return RunTopics(kafka, run_id, settings)


def delete_run(run: RunTopics, groups: list[str]) -> None:
    """Delete the run's topics (those the workers made too: all carry the run id) and its groups."""
    delete_run_topics(run.kafka, run.run_id)
    admin = admin_client(run.kafka)
    for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort: a leftover group is no wrong result
            future.result()


def produce(
    producer: Producer, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
) -> None:
    """Queue ``records`` (key, value) to ``partition``, waiting for room when the queue is full."""
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
    producer.poll(0)


def write_state(
    run: RunTopics, n: int, *, ipv6_share: float = 0.2, kinds_share: float = 0.6, seed: int = 11
) -> dict[int, NsState]:
    """The states of ``n`` name servers per ns-stats partition, their changelog records on the run's
    changelog topic (flushed)."""
    settings = run.settings
    rng = random.Random(seed)
    partition_of = KeyPartitioner(settings.partitions)
    states = {p: NsState(settings.window_expires_seconds) for p in range(settings.partitions)}
    producer = Producer(
        {**run.kafka, "linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000}
    )
    ips = name_server_ips(n, ipv6_share, rng)
    for i in range(0, n, CHUNK):
        counts = {(ip, WINDOW_START): random_counts(rng, kinds_share) for ip in ips[i : i + CHUNK]}
        for p, records in processors.deltas.encode(counts, partition_of, MAX_ROWS).items():
            for value in records:
                states[p].apply_record(value)
        for p, state in states.items():
            produce(producer, settings.changelog_topic, p, state.changelog())
    if producer.flush(120):
        raise SystemExit("the changelog records were not all delivered within 120 s")
    return states


def add_input(run: RunTopics, states: Mapping[int, NsState]) -> None:
    """New work for the worker: one ``NsStatsBatch`` per ns-stats partition adding an answer and a failure
    to one of its name servers (applied to ``states`` too, which then hold what the worker should)."""
    producer = Producer(run.kafka)
    for p, state in states.items():
        ns = next(iter(state.totals), f"192.0.2.{p}")
        value = encode_batch(0, [(ns, WINDOW_START, 1, 1, 0, {"noopt": 1}, {})])
        state.apply_record(value)
        producer.produce(run.settings.stats_topic, value, partition=p)
    if producer.flush(30):
        raise SystemExit("the new input was not delivered within 30 s")


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of process ``pid``; empty once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines) if k in ("VmRSS", "VmHWM")
    }


@dataclass
class Recovery:
    """What one worker's start took, in seconds from its start (None: not seen)."""

    app_id: str
    web_port: int
    #: (a) the last "restored" log line appeared; the restore time that line reports; name servers restored
    restored_at: float | None = None
    restore_seconds: float = 0.0
    restored_name_servers: int = 0
    changelog_records: int = 0
    #: (b) its group had committed the end of ns-stats
    processing_at: float | None = None
    #: kB at (b): resident, and the peak so far
    rss_kb: int = 0
    hwm_kb: int = 0

    def view(self, path: str) -> Any:
        """JSON of one of the worker's views, e.g. ``/dnsqr/stats/``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=60) as response:
            return json.load(response)

    def describe(self) -> str:
        def at(t: float | None) -> str:
            return "never" if t is None else f"{t:.1f} s"

        return (
            f"restored {self.restored_name_servers} name servers at {at(self.restored_at)} "
            f"(read in {self.restore_seconds:.1f} s, {self.changelog_records} changelog records), "
            f"processing at {at(self.processing_at)}, "
            f"RSS {self.rss_kb / 1024:.0f} MB (peak {self.hwm_kb / 1024:.0f} MB)"
        )


def committed_end(consumer: Any, topic: str, ends: Mapping[int, int]) -> bool:
    """Whether ``consumer``'s group has committed ``ends`` of ``topic`` (at_least_once: no transaction
    markers, so the committed offset reaches the end offset)."""
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    except KafkaException:  # e.g. the coordinator is still loading the group: ask again
        return False
    return all(c.offset >= ends[c.partition] for c in committed)


class LogLines:
    """The whole lines appended to a log file since the last call."""

    def __init__(self, path: Path) -> None:
        self._file = path.open()
        self._partial = ""

    def new(self) -> list[str]:
        text = self._partial + self._file.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def recovered_worker(
    run: RunTopics,
    app_id: str,
    timeout: float,
    log_dir: Path = LOG_DIR,
    state_dir: Path | None = None,
    log_name: str | None = None,
) -> Iterator[Recovery]:
    """Start one worker of ``app_id`` on the run's topics (its log in ``log_dir``, named ``log_name`` or by
    the app id, its checkpoints in ``state_dir``), wait until its group has committed the end of ns-stats
    (at most ``timeout`` s), and yield what it took with the worker still running (its views answer); it
    is stopped on exit (SIGTERM: with ``state_dir``, it writes its checkpoints)."""
    settings = run.worker(app_id).with_overrides(state_dir=state_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{log_name or app_id}.log"
    log_path.unlink(missing_ok=True)
    argv = worker_command(settings, stage_kafka(run.kafka))
    recovery = Recovery(app_id, int(argv[argv.index("--web-port") + 1]))  # worker_command picks a free port
    offsets = job_consumer(run.kafka, "recovery", group=app_id)  # asks for the group's commits only
    ends = end_offsets(offsets, settings.stats_topic)
    with tempfile.TemporaryDirectory(prefix="recovery-faust-") as datadir, contextlib.ExitStack() as stack:
        stack.callback(offsets.close)
        started = time.monotonic()
        stage = Stage(log_path.stem, argv, log_dir, {"DNSQR_FAUST_DATADIR": datadir}, restarts=0)
        stack.callback(stage.stop)
        log = LogLines(log_path)
        stack.callback(log.close)
        while recovery.processing_at is None:
            stage.check_alive()
            now = time.monotonic() - started
            for found in filter(None, map(RESTORED.search, log.new())):
                recovery.restored_at = now
                recovery.restore_seconds = float(found[1])
                recovery.restored_name_servers += int(found[2])
                recovery.changelog_records += int(found[3] or 0)
            if committed_end(offsets, settings.stats_topic, ends):
                recovery.processing_at = now
                status = proc_status_kb(stage.proc.pid)
                recovery.rss_kb, recovery.hwm_kb = status["VmRSS"], status["VmHWM"]
            elif now > timeout:
                raise SystemExit(f"worker {app_id} not processing after {timeout:.0f} s; see {log_path}")
            else:
                time.sleep(POLL_SECONDS)
        yield recovery


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name-servers", type=int, default=1_000_000, help="N (default %(default)s)")
    p.add_argument("--partitions", type=int, default=4, help="ns-stats (and changelog) partitions")
    p.add_argument("--ipv6-share", type=float, default=0.2)
    p.add_argument("--kinds-share", type=float, default=0.6, help="name servers with a failure-kinds map")
    p.add_argument("--limit", type=float, default=60.0, help="seconds to processing again (exit 1 beyond)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a worker")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the no-state worker")
    p.add_argument("--bootstrap-servers", help="default: start a throw-away local broker")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="run the worker with --state-dir DIR, stop it once it processes (it writes its checkpoints), "
        "add new input and time its restart from the checkpoints too",
    )
    args = p.parse_args(argv)
    with broker(args.bootstrap_servers) as bootstrap:
        run = create_run(bootstrap, args.partitions)
        app_id = run.settings.app_id
        empty_app = f"{app_id}-empty"
        try:
            before_kb = proc_status_kb(os.getpid())["VmRSS"]
            t0 = time.monotonic()
            states = write_state(
                run, args.name_servers, ipv6_share=args.ipv6_share, kinds_share=args.kinds_share
            )
            live_mb = (proc_status_kb(os.getpid())["VmRSS"] - before_kb) / 1024
            print(
                f"wrote the state of {args.name_servers} name servers to {run.settings.changelog_topic} "
                f"in {time.monotonic() - t0:.1f} s (the writer's RSS grew {live_mb:.0f} MB holding it)",
                file=sys.stderr,
            )
            add_input(run, states)
            held = sum(len(s.totals) for s in states.values())
            if not args.state_dir:
                del states  # kept for the restart's new input otherwise
            baseline = None
            if args.baseline:
                with recovered_worker(run, empty_app, args.timeout) as baseline:
                    print(f"no state: {baseline.describe()}", file=sys.stderr)
            with recovered_worker(run, app_id, args.timeout, state_dir=args.state_dir) as recovery:
                counted = recovery.view("/dnsqr/stats/")["name_servers"]
            restart = None
            if args.state_dir:
                add_input(run, states)
                with recovered_worker(
                    run, app_id, args.timeout, state_dir=args.state_dir, log_name=f"{app_id}-restart"
                ) as restart:
                    counted = restart.view("/dnsqr/stats/")["name_servers"]
        finally:
            delete_run(run, [app_id, empty_app])
    slow = recovery.processing_at is None or recovery.processing_at > args.limit
    no_state = (
        f"; no state: processing at {baseline.processing_at:.1f} s, RSS {baseline.rss_kb / 1024:.0f} MB"
        if baseline
        else ""
    )
    restarted = f"; restart from checkpoints: {restart.describe()}" if restart else ""
    print(
        f"recovery of {args.name_servers} name servers ({args.partitions} partitions): "
        f"{recovery.describe()}{restarted}; "
        f"its /dnsqr/stats/ counts {counted} name servers (written {held}; the writer held them in "
        f"{live_mb:.0f} MB){no_state}; limit {args.limit:.0f} s: {'EXCEEDED' if slow else 'met'}"
    )
    if counted != held:
        print(f"the restored worker counts {counted} name servers, {held} were written", file=sys.stderr)
    return 1 if slow or counted != held else 0


if __name__ == "__main__":
    sys.exit(main())
