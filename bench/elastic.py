"""Failure latency and counts staleness while the cluster changes (issue #20), every scenario in one run.

Each scenario runs on its own topics and group:

1. **The state.** ``--preload`` records of CAPTURE are ingested at full speed and processed to the end, so
   the workers hold the state of their name servers before anything is measured (1M records of the
   high-cardinality bench file name ~450k name servers).
2. **A paced replay** of ``--seconds`` at ``--rate`` records/s (``bench/latency.py``'s method: new
   envelope times, arrival at ``--speed 1``), during which the scenario changes the cluster at
   ``--change-at`` seconds:

   - ``steady``: nothing (the reference for the others);
   - ``add``: one more worker starts (it gets its partitions after a warm-up: ``processors/warmup.py``);
   - ``add-cold``: the same with ``--no-warm-up`` (it gets them at once and reads their changelogs);
   - ``restart``: worker 1 gets SIGTERM and is started again at once;
   - ``kill``: two workers from the start, worker 2 gets SIGKILL (no restart).

   With ``--standby-replicas 0,1`` every scenario runs once per value (the workers' ``--standby-replicas``:
   with 1, in ``kill`` the survivor takes the victim's partitions over from its warm standby states).

3. **Measured from outside.** Failure latency: record arrival to the failures topic's append time
   (p50/p99/max). Counts staleness, sampled every ``--sample`` seconds during the replay: for each
   ns-stats partition the age of the newest ns-stats record that the group's committed offset reflects
   (the record just below it; the aggregator publishes a partition's counts when it commits it), the worst
   partition per sample; p50/p99/max over the samples. ``restart`` also reports the seconds from the
   SIGTERM until every ns-stats partition's committed offset moved again ("counts moving"), and from the
   new process's start (the old one commits on its way out, which moves offsets too).

Workers are ``dnsqr-pipeline worker`` subprocesses (logs in bench/out/elastic-logs/).

    .venv/bin/python -m bench.elastic bench/out/big-hc.nmsg --bootstrap-servers 127.0.0.1:9092

(``-m``, from the repository's root: it uses ``bench/latency.py``.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench.latency import (
    PacedCapture,
    broker,
    create_run_topics,
    delete_run_topics,
    failure_latencies,
    percentile,
    write_paced,
)
from dnsqr_kafka.names import TopicNames
from dnsqr_kafka.topics import admin_client, wait_for_leaders
from dnsqr_pipeline.completion import Progress, end_offsets, job_consumer, wait_caught_up
from dnsqr_pipeline.job import Stage, stage_kafka, wait_for_assignment, worker_command, worker_settings
from ingest.bridge import Bridge, IngestConfig
from processors.settings import Settings

SCENARIOS = ("steady", "add", "add-cold", "restart", "kill")
LOG_DIR = Path(__file__).resolve().parent / "out" / "elastic-logs"


class StalenessSampler(threading.Thread):
    """Samples the counts staleness of ``group`` on the ns-stats ``topic`` until stopped (module doc)."""

    def __init__(self, kafka: Mapping[str, str], group: str, topic: str, every: float) -> None:
        super().__init__(daemon=True)
        self.kafka, self.group, self.topic, self.every = kafka, group, topic, every
        self.halt = threading.Event()
        #: (sample time, worst partition's staleness in seconds)
        self.samples: list[tuple[float, float]] = []
        #: (sample time, {partition: committed offset})
        self.commits: list[tuple[float, dict[int, int]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _run(self) -> None:
        reader = Consumer({**self.kafka, "group.id": f"elastic-reader-{uuid.uuid4().hex[:8]}"})
        asker = Consumer({**self.kafka, "group.id": self.group, "enable.auto.commit": False})
        try:
            partitions = sorted(reader.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
            reader.assign([TopicPartition(self.topic, p, 0) for p in partitions])
            stamps: dict[tuple[int, int], float] = {}
            while not self.halt.is_set():
                due = time.monotonic() + self.every
                while time.monotonic() < due:  # keep up with the topic between samples
                    for msg in reader.consume(10_000, 0.05):
                        if msg.error() is None:
                            stamps[(msg.partition(), msg.offset())] = msg.timestamp()[1] / 1000
                        elif msg.error().code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(f"reading {self.topic}: {msg.error().str()}")
                asked = [TopicPartition(self.topic, p) for p in partitions]
                committed = {tp.partition: tp.offset for tp in asker.committed(asked, timeout=10)}
                now = time.time()
                self.commits.append((now, committed))
                ages = [now - stamps[(p, c - 1)] for p, c in committed.items() if (p, c - 1) in stamps]
                if len(ages) == len(partitions):
                    self.samples.append((now, max(ages)))
        finally:
            reader.close()
            asker.close()

    def staleness(self, since: float, until: float) -> list[float]:
        """The samples taken between ``since`` and ``until`` (wall clock), ascending."""
        return sorted(age for at, age in self.samples if since <= at <= until)

    def all_moved_after(self, at: float) -> float | None:
        """Seconds from ``at`` until every partition's committed offset was above its value at ``at``."""
        before = next((c for t, c in reversed(self.commits) if t <= at), None)
        if before is None:
            return None
        for t, committed in self.commits:
            if t > at and all(committed.get(p, -1) > offset for p, offset in before.items()):
                return t - at
        return None


@dataclass
class Outcome:
    """What one scenario measured."""

    scenario: str
    latencies: list[float]
    staleness: list[float]
    expected: int
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        lat = self.latencies
        sta = self.staleness
        parts = [f"{self.scenario:8}"]
        if lat:
            parts.append(
                f"latency p50 {percentile(lat, 50):.3f} p99 {percentile(lat, 99):.3f} max {lat[-1]:.3f} s"
            )
        if sta:
            parts.append(
                f"staleness p50 {percentile(sta, 50):.2f} p99 {percentile(sta, 99):.2f} max {sta[-1]:.2f} s"
            )
        missing = self.expected - len(lat)
        parts.append(f"{len(lat)} failures" + (f" ({missing} MISSING)" if missing > 0 else ""))
        return "; ".join(parts + self.notes)


class Run:
    """One scenario's topics, workers and sampler."""

    def __init__(
        self, args: argparse.Namespace, bootstrap: str, scenario: str, standby_replicas: int
    ) -> None:
        self.args, self.bootstrap, self.scenario = args, bootstrap, scenario
        self.standby_replicas = standby_replicas
        #: the scenario, and the standby replicas when any (its lines and its workers' logs)
        self.name = scenario + (f"+{standby_replicas}sb" if standby_replicas else "")
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = TopicNames.named(f".elastic-{self.run_id}")
        self.app_id = f"dnsqr-edns-elastic-{self.run_id}"
        self.kafka = {"bootstrap.servers": bootstrap}
        self.stages: list[Stage] = []
        #: wall time of the change (None until it happened)
        self.changed_at: float | None = None
        #: restart: wall time worker 1 was started again, after its old process had exited
        self.restarted_at: float | None = None

    def worker(self, number: int) -> Stage:
        state_dir = self.args.state_dir
        settings = worker_settings(
            self.topics,
            self.app_id,
            self.bootstrap,
            partitions=self.args.partitions,
            processing_guarantee=self.args.processing_guarantee,
            state_dir=None if state_dir is None else state_dir / self.run_id / f"worker-{number}",
            standby_replicas=self.standby_replicas,
            warm_up=self.scenario != "add-cold",
        )
        argv = worker_command(settings, stage_kafka(self.kafka))
        stage = Stage(f"{self.name}-worker-{number}", argv, LOG_DIR, restarts=0)
        self.stages.append(stage)
        return stage

    def ingest(self, path: Path, speed: float | None) -> float:
        """Send ``path`` to the raw topic (paced at ``speed``, or at once); the wall time it began."""
        config = IngestConfig(
            kafka=self.kafka,
            files=[str(path)],
            raw_topic=self.topics.raw,
            dlq_topic=self.topics.raw_dlq,
            speed=speed,
            progress_bar=False,
        )
        start = time.time()
        summary = Bridge(config).run()
        if not summary.ok:
            raise SystemExit(f"{self.scenario}: ingest failed:\n{summary.format()}")
        return start

    def caught_up(self, timeout: float) -> None:
        progress = [
            Progress(self.app_id, self.topics.raw, "the filter agent"),
            Progress(self.app_id, self.topics.stats, "the aggregator"),
        ]
        wait_caught_up(self.kafka, progress, self.stages, time.monotonic() + timeout)

    def measure(self, preload: Path, paced: PacedCapture) -> Outcome:
        args = self.args
        create_run_topics(self.kafka, self.topics, args.partitions)
        wait_for_leaders(admin_client(self.kafka), [self.topics.raw, self.topics.stats, self.topics.failures])
        workers = 2 if self.scenario == "kill" else args.workers
        for number in range(1, workers + 1):
            self.worker(number)
        wait_for_assignment(
            self.kafka, self.app_id, self.topics.raw, workers, self.stages, time.monotonic() + 120
        )
        started = time.monotonic()
        self.ingest(preload, None)
        self.caught_up(600)
        ends = job_consumer(self.kafka, "elastic-ends")
        try:
            before = end_offsets(ends, self.topics.failures)
        finally:
            ends.close()
        notes = [f"state built in {time.monotonic() - started:.1f} s"]
        sampler = StalenessSampler(self.kafka, self.app_id, self.topics.stats, args.sample)
        sampler.start()
        change = threading.Timer(args.change_at, self.change, (notes,))
        change.start()
        try:
            start = self.ingest(paced.path, 1.0)
            end = time.time()
            change.join()
            self.caught_up(120 + args.seconds)
        finally:
            change.cancel()
            sampler.halt.set()
            sampler.join()
        if sampler.error is not None:
            raise sampler.error
        if self.changed_at is not None and self.restarted_at is not None:
            moved = sampler.all_moved_after(self.restarted_at)
            stopping = self.restarted_at - self.changed_at
            if moved is None:
                notes.append("counts never moved again after the restart")
            else:
                notes.append(
                    f"counts moving again {moved:.1f} s after the new start, "
                    f"{moved + stopping:.1f} s after SIGTERM"
                )
        latencies = sorted(failure_latencies(self.kafka, self.topics.failures, start, paced.first_ns, before))
        return Outcome(self.name, latencies, sampler.staleness(start, end), paced.selected, notes)

    def change(self, notes: list[str]) -> None:
        """The scenario's change of the cluster, ``--change-at`` seconds into the replay."""
        self.changed_at = time.time()
        if self.scenario in ("add", "add-cold"):
            self.worker(len(self.stages) + 1)
        elif self.scenario == "restart":
            first = self.stages.pop(0)
            stopped = time.monotonic()
            first.stop()
            notes.append(f"worker 1 stopped in {time.monotonic() - stopped:.1f} s")
            self.restarted_at = time.time()
            self.worker(1)
        elif self.scenario == "kill":
            victim = self.stages.pop()
            victim.proc.kill()
            victim.proc.wait()

    def close(self) -> None:
        for stage in self.stages:
            stage.stop()
        delete_run_topics(self.kafka, self.run_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capture", type=Path, help="NMSG file: the state is built from it, the replay cycles it")
    p.add_argument("--preload", type=int, default=1_000_000, help="records that build the state first")
    p.add_argument("--rate", type=float, default=40_000, help="replay records per second")
    p.add_argument("--seconds", type=float, default=25, help="length of the replay")
    p.add_argument("--change-at", type=float, default=8, help="seconds into the replay of the change")
    p.add_argument("--sample", type=float, default=0.25, help="seconds between staleness samples")
    p.add_argument("--workers", type=int, default=1, help="workers at the start (kill: always 2)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, in this order")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="worker N gets the --state-dir DIR/<run id>/worker-N (a restarted worker keeps its own)",
    )
    p.add_argument(
        "--standby-replicas",
        default="0",
        help="comma-separated values of the workers' --standby-replicas: every scenario runs once per value",
    )
    p.add_argument("--bootstrap-servers", help="default: start a throw-away local broker")
    p.add_argument(
        "--processing-guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    args = p.parse_args(argv)
    scenarios = args.scenarios.split(",")
    standby_replicas = [int(n) for n in args.standby_replicas.split(",")]
    if unknown := set(scenarios) - set(SCENARIOS):
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="elastic-") as tmp, broker(args.bootstrap_servers) as bootstrap:
        preload = Path(tmp) / "preload.nmsg"
        write_paced(args.capture, preload, 1e9, args.preload)  # the capture's payloads, cycled to --preload
        paced = write_paced(args.capture, Path(tmp) / "paced.nmsg", args.rate, int(args.rate * args.seconds))
        for scenario in scenarios:
            for replicas in standby_replicas:
                run = Run(args, bootstrap, scenario, replicas)
                try:
                    outcome = run.measure(preload, paced)
                finally:
                    run.close()
                print(outcome.line(), flush=True)
                outcomes.append(outcome)
    print(
        f"{args.preload} records of state, then {args.rate:,.0f} records/s for {args.seconds:g} s, change at "
        f"{args.change_at:g} s, {args.partitions} partitions, {args.processing_guarantee}"
        + ("" if args.state_dir is None else f", checkpoints in {args.state_dir}")
        + f", session timeout {Settings().session_timeout:g} s"
    )
    return 1 if any(len(o.latencies) < o.expected for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
