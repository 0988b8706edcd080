"""The sink's Prometheus metrics: its totals, histograms and lag as a scrape shows them (scripted Kafka, as
in test_consumer.py; the real scrape is tests/deploy/test_prometheus_scrape.py)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dnsqr_schemas.dead_letter import SINK_REASONS
from sink import consumer as sink_consumer
from sink.consumer import FailureSink
from sink.files import final_files
from sink.metrics import SinkMetrics, partition_lag
from tests.sink.helpers import corpus_payloads
from tests.sink.test_consumer import (
    TOPIC,
    FakeConsumer,
    FakeMessage,
    config,
    fake_kafka,  # noqa: F401 - the scripted Kafka, a fixture
    messages,
)


def scrape(metrics: SinkMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.usefixtures("fake_kafka")
def test_a_run_shows_in_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = corpus_payloads("edge_cases")[:20]
    served: list[bytes] = []

    class ScrapingConsumer(FakeConsumer):
        """Scrapes the sink's HTTP endpoint once, mid-run."""

        def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
            if not self.script and not served:
                port = sink.metrics._server.server_port  # type: ignore[union-attr]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    served.append(response.read())
            return super().consume(num_messages, timeout)

    FakeConsumer.script = [
        ("assign", [0]),
        [*messages(0, payloads), FakeMessage(0, 20, None), FakeMessage(0, 21, b"\xff" * 8)],
    ]
    sink = FailureSink(config(tmp_path, rotate_bytes=2048, metrics_port=0))
    conf = sink._consumer_config()
    assert conf["stats_cb"] == sink.metrics.on_statistics  # type: ignore[union-attr]
    monkeypatch.setattr(sink_consumer, "Consumer", ScrapingConsumer)
    stats = sink.run()
    assert sink.metrics is not None
    got = scrape(sink.metrics)
    files = final_files(tmp_path, "failures")
    assert len(files) > 2
    assert got[("dnsqr_sink_records_in_total", ())] == stats.records == len(payloads) + 2
    assert got[("dnsqr_sink_files_written_total", ())] == len(files)
    assert got[("dnsqr_sink_written_bytes_total", ())] == sum(p.stat().st_size for p in files)
    assert got[("dnsqr_sink_payloads_written_total", ())] == len(payloads)
    assert got[("dnsqr_sink_fsync_duration_seconds_count", ())] == len(files)
    assert got[("dnsqr_sink_commit_duration_seconds_count", ())] == len(FakeConsumer.commits) > 0
    dead = {
        dict(labels)["reason"]: v
        for (name, labels), v in got.items()
        if name == "dnsqr_sink_dead_letters_total"
    }
    assert dead == {**dict.fromkeys(SINK_REASONS, 0), "null": 1, "avro": 1}
    # mid-run, the endpoint served the same families
    assert served and b"dnsqr_sink_records_in_total" in served[0]


def test_lag_of_the_assigned_partitions_from_librdkafka_statistics(tmp_path: Path) -> None:
    def partition(**fields: int | bool) -> dict[str, int | bool]:
        return {"desired": True, "hi_offset": -1, "lo_offset": -1, "committed_offset": -1001, **fields}

    document = {
        "topics": {
            TOPIC: {
                "partitions": {
                    "0": partition(consumer_lag=7, hi_offset=107, committed_offset=100),
                    "1": partition(consumer_lag=-1, hi_offset=50, lo_offset=20),  # nothing committed yet
                    "2": partition(consumer_lag=3, desired=False),  # not ours
                    "-1": partition(consumer_lag=0),  # librdkafka's internal partition
                    "3": partition(consumer_lag=-1),  # nothing known yet
                }
            }
        }
    }
    assert partition_lag(document) == {(TOPIC, 0): 7, (TOPIC, 1): 30}
    metrics = FailureSink(config(tmp_path, metrics_port=0)).metrics
    assert metrics is not None
    metrics.on_statistics(json.dumps(document))
    lag = {
        dict(labels)["partition"]: v
        for (name, labels), v in scrape(metrics).items()
        if name == "dnsqr_sink_consumer_lag"
    }
    assert lag == {"0": 7, "1": 30}
    metrics.on_statistics("not json")  # kept as it was
    assert metrics.lag == {(TOPIC, 0): 7, (TOPIC, 1): 30}
