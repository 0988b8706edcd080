"""``dnsqr-pipeline top``: the ranking of name servers' newest counts (no Kafka), and the command against a
real broker reading NsCounts snapshots that two workers published to a two-partition counts topic."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from dnsqr_pipeline.cli import build_parser
from dnsqr_pipeline.counts_reader import LatestCounts
from dnsqr_pipeline.top_command import rank
from processors.snapshots import SnapshotEncoder

WINDOW = 300
W1, W2 = 1_700_000_100, 1_700_000_400


def values(answered: int, failures: int) -> dict[str, Any]:
    """An ``NsCountValues`` with every failure a servfail."""
    return {
        "edns_answered": answered,
        "failures": failures,
        "failure_rate": failures / answered if answered else 0.0,
        "by_kind": {"servfail": failures} if failures else {},
        "timeouts": 0,
        "observations": {},
    }


def test_rank_orders_ties_and_filters() -> None:
    latest = {
        "a": values(100, 10),
        "b": values(10, 5),
        "c": values(1000, 10),
        "d": values(5, 0),  # no failure: never ranked
        "e": values(2, 1),
    }

    def names(**kw: Any) -> list[str]:
        return [r["name_server"] for r in rank(latest, window_start=None, **kw)]

    assert names(by="failures", min_answered=1) == ["a", "c", "b", "e"]  # a and c tie on 10: a's rate
    assert names(by="rate", min_answered=1) == ["b", "e", "a", "c"]  # b and e tie on 0.5: b's failures
    assert names(by="failures", min_answered=10) == ["a", "c", "b"]
    rows = rank(latest, by="failures", min_answered=1, window_start=W1)
    assert rows[0] == {"name_server": "a", "window_start": W1, **values(100, 10)}
    assert "window_start" not in rank(latest, by="failures", min_answered=1, window_start=None)[0]


#: (partition, snapshot time in ms, name server, window start, window (answered, failures), total (...)),
#: in the order produced: worker 0 owns partition 0 (192.0.2.1 and .2), worker 1 partition 1.
SNAPSHOTS = [
    (0, 1000, "192.0.2.1", W1, (100, 50), (100, 50)),  # older: its total is replaced below
    (0, 2000, "192.0.2.2", W2, (40, 20), (40, 20)),
    (0, 2000, "192.0.2.1", W2, (100, 10), (200, 60)),
    (0, 1500, "192.0.2.2", W1, (30, 30), (30, 30)),  # later on the topic but older: its total loses
    (1, 1800, "192.0.2.3", W1, (1000, 30), (1000, 30)),
    (1, 1900, "192.0.2.4", W2, (10, 5), (10, 5)),
    (1, 1900, "192.0.2.5", W2, (50, 0), (50, 0)),  # no failure: never ranked
]
#: the newest totals of the name servers above
TOTALS = {
    "192.0.2.1": values(200, 60),
    "192.0.2.2": values(40, 20),
    "192.0.2.3": values(1000, 30),
    "192.0.2.4": values(10, 5),
}


def produce_snapshots(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, time_ms, ns, start, window, total in SNAPSHOTS:
        encode = SnapshotEncoder(WINDOW, snapshot_time_ms=time_ms)

        def counts(answered_failures: tuple[int, int]) -> list[Any]:
            answered, failures = answered_failures
            return [answered, failures, 0, {"servfail": failures} if failures else None, None]

        producer.produce(
            topic,
            key=ns.encode(),
            value=encode(ns, start, counts(window), counts(total)),
            partition=partition,
        )
    assert producer.flush(30) == 0


def top(bootstrap: str, topic: str, *flags: str) -> list[str]:
    args = build_parser().parse_args(
        ["top", "--counts-topic", topic, "--bootstrap-servers", bootstrap, *flags]
    )
    out = io.StringIO()
    assert args.func(args, out) == 0
    return out.getvalue().splitlines()


@pytest.mark.integration
def test_top_across_partitions(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=2, config={"cleanup.policy": "compact"})
    produce_snapshots(kafka_bootstrap, topic)

    rows = [json.loads(line) for line in top(kafka_bootstrap, topic, "--json")]
    assert rows == [
        {"name_server": ns, **TOTALS[ns]} for ns in ("192.0.2.1", "192.0.2.3", "192.0.2.2", "192.0.2.4")
    ]

    rows = [json.loads(line) for line in top(kafka_bootstrap, topic, "--json", "--by", "rate")]
    assert [r["name_server"] for r in rows] == ["192.0.2.2", "192.0.2.4", "192.0.2.1", "192.0.2.3"]

    rows = [
        json.loads(line)
        for line in top(kafka_bootstrap, topic, "--json", "--by", "rate", "--min-answered", "20")
    ]
    assert [r["name_server"] for r in rows] == ["192.0.2.2", "192.0.2.1", "192.0.2.3"]

    lines = top(kafka_bootstrap, topic, "-n", "2")
    assert lines[0].split() == ["name", "server", "failures", "answered", "rate", "kinds"]
    assert [line.split() for line in lines[1:3]] == [
        ["192.0.2.1", "60", "200", "30.0%", "servfail", "60"],
        ["192.0.2.3", "30", "1000", "3.0%", "servfail", "30"],
    ]
    assert lines[3:] == ["... and 2 more name servers"]

    rows = [json.loads(line) for line in top(kafka_bootstrap, topic, "--json", "--window", str(W1))]
    assert rows == [
        {"name_server": "192.0.2.1", "window_start": W1, **values(100, 50)},
        {"name_server": "192.0.2.2", "window_start": W1, **values(30, 30)},  # ties on 30 with .3: rate
        {"name_server": "192.0.2.3", "window_start": W1, **values(1000, 30)},
    ]
    rows = [
        json.loads(line) for line in top(kafka_bootstrap, topic, "--json", "--window", str(W2), "-n", "1")
    ]
    assert rows == [{"name_server": "192.0.2.2", "window_start": W2, **values(40, 20)}]

    assert top(kafka_bootstrap, topic, "--window", "1") == ["no name servers seen"]


@pytest.mark.integration
def test_latest_counts_reads_each_snapshot_once(kafka_bootstrap: str, new_topic) -> None:
    """A job asks the counts topic again every few seconds: each read takes only what was added since the
    previous one, and a read with nothing new returns at once."""
    topic = new_topic(partitions=2, config={"cleanup.policy": "compact"})
    produce_snapshots(kafka_bootstrap, topic)
    view = LatestCounts({"bootstrap.servers": kafka_bootstrap}, topic)
    taken: list[str] = []
    original = view._take
    view._take = lambda snapshot: (taken.append(snapshot["name_server"]), original(snapshot))  # type: ignore[method-assign]
    try:
        assert view.read() == {**TOTALS, "192.0.2.5": values(50, 0)}
        assert len(taken) == len(SNAPSHOTS)
        started = time.monotonic()
        assert view.read() == {**TOTALS, "192.0.2.5": values(50, 0)}
        assert time.monotonic() - started < 5
        assert len(taken) == len(SNAPSHOTS)  # nothing read twice

        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        encode = SnapshotEncoder(WINDOW, snapshot_time_ms=3000)
        newer = [300, 70, 0, {"servfail": 70}, None]
        producer.produce(topic, key=b"192.0.2.1", value=encode("192.0.2.1", W2, newer, newer), partition=0)
        assert producer.flush(30) == 0
        assert view.read()["192.0.2.1"] == values(300, 70)
        assert taken[len(SNAPSHOTS) :] == ["192.0.2.1"]
    finally:
        view.close()


@pytest.mark.integration
def test_totals_without_a_window_and_a_freed_window(
    kafka_bootstrap: str, new_topic, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot without a window (a late delta's totals) is a name server's newest totals like any other;
    ``--window`` for a window the workers freed says so on stderr, and still shows its last counts."""
    topic = new_topic(partitions=1, config={"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    before = [10, 4, 0, {"servfail": 4}, None]
    after = [11, 5, 0, {"servfail": 5}, None]
    # W1's last counts, published as W2's arrival freed it (the expiry is W2 - W1: W1 <= W2 - expiry)
    freed = SnapshotEncoder(WINDOW, 1000, expired_through=W1)
    producer.produce(topic, key=b"192.0.2.9", value=freed("192.0.2.9", W1, before, before))
    # a late delta for W1: the totals alone
    late = SnapshotEncoder(WINDOW, 2000, expired_through=W1)
    producer.produce(topic, key=b"192.0.2.9", value=late("192.0.2.9", None, None, after))
    assert producer.flush(30) == 0

    assert [json.loads(line) for line in top(kafka_bootstrap, topic, "--json")] == [
        {"name_server": "192.0.2.9", **values(11, 5)}
    ]
    assert "freed" not in capsys.readouterr().err
    rows = [json.loads(line) for line in top(kafka_bootstrap, topic, "--json", "--window", str(W1))]
    assert rows == [{"name_server": "192.0.2.9", "window_start": W1, **values(10, 4)}]
    err = capsys.readouterr().err
    assert f"window {W1} was freed" in err and "count in the totals only" in err
    top(kafka_bootstrap, topic, "--json", "--window", str(W2))
    assert "freed" not in capsys.readouterr().err
