"""The whole pipeline on a 3-node cluster loses the broker that leads most partitions mid-ingest.

The node is SIGKILLed while ingest is still replaying the capture, and started again a few seconds later.
The job's topics get the safe defaults (replication factor min(3, brokers) = 3, min.insync.replicas 2).
exactly_once must still give exact files and counts; at_least_once nothing missing (replays may add
duplicates).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from dnsqr_kafka.names import TopicNames
from dnsqr_pipeline import localkafka
from dnsqr_pipeline.completion import end_offsets
from dnsqr_pipeline.job import JobConfig, run_job
from ingest.bridge import IngestConfig
from nmsgdns.input import ContainerStreamReader
from tests import corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

CASE = "live_resolver"
#: the capture is replayed this many times at --speed 0.5: about 20 s of ingest
REPEATS = 2


def payloads(paths: list[Path]) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for path in paths:
        with path.open("rb") as fh:
            out.update(ContainerStreamReader(fh, name=str(path)))
    return out


class LeaderKiller(threading.Thread):
    """Waits until the raw topic holds records, SIGKILLs the node leading most of the job's partitions,
    and starts it again after ``down`` seconds."""

    def __init__(self, cluster: localkafka.ClusterLayout, run_id: str, down: float = 6.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.run_id, self.down = cluster, run_id, down
        self.topics = TopicNames.named(f".run-{run_id}")
        self.victim: int | None = None
        self.killed_at_records: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap()})
            consumer = Consumer({"bootstrap.servers": self.cluster.bootstrap(), "group.id": "leader-killer"})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                names = admin.list_topics(timeout=10).topics
                if self.topics.raw in names:
                    produced = sum(end_offsets(consumer, self.topics.raw).values())
                    if produced >= 3:
                        self.killed_at_records = produced
                        break
                time.sleep(0.1)
            consumer.close()
            leaders: Counter[int] = Counter()
            for name, topic in admin.list_topics(timeout=10).topics.items():
                if self.run_id in name:
                    leaders.update(p.leader for p in topic.partitions.values())
            self.victim = leaders.most_common(1)[0][0]
            localkafka.stop(self.cluster.directory, only=[self.victim], kill=True)
            time.sleep(self.down)
            localkafka.start(self.cluster.directory, only=[self.victim])
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_pipeline_survives_losing_the_busiest_broker(
    guarantee: str, kafka_cluster: localkafka.ClusterLayout, tmp_path: Path
) -> None:
    capture = str(corpus.path(f"{CASE}.nmsg"))
    cfg = JobConfig(
        ingest=IngestConfig(kafka={}, files=[capture] * REPEATS, progress_bar=False, speed=0.5),
        output_dir=tmp_path / "out",
        kafka={"bootstrap.servers": kafka_cluster.bootstrap()},
        workers=1,
        partitions=4,
        processing_guarantee=guarantee,
        timeout=360,
        done_timeout=240,
    )
    killer = LeaderKiller(kafka_cluster, cfg.run_id)
    killer.start()
    result = run_job(cfg)
    killer.join(60)
    assert killer.error is None, killer.error
    assert killer.victim is not None and killer.killed_at_records is not None

    expected = Counter({p: n * REPEATS for p, n in payloads([corpus.path(f"{CASE}.filtered.nmsg")]).items()})
    written = payloads(result.sink_files)
    assert expected - written == Counter(), "failures missing"
    want = {ns: n * REPEATS for ns, n in corpus.expected_counts(CASE).items()}
    if guarantee == "exactly_once":
        assert written == expected
        assert result.failures_by_ns == want
        assert result.duplicates == 0
    else:
        assert all(result.failures_by_ns.get(ns, 0) >= n for ns, n in want.items())
