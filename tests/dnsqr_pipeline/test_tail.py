"""``dnsqr-pipeline tail`` against a real broker: EdnsFailure records produced to a new topic come back
decoded, as JSON lines and as a table; where it starts and stops (``--from-beginning``, ``-n``, the end of
the partitions, ``--follow``); values that are not EdnsFailure records; a missing topic."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
from typing import Any

import pytest
from confluent_kafka import Producer

from dnsqr_pipeline.cli import build_parser
from dnsqr_schemas.edns_failure import encode_failure
from tests import corpus

pytestmark = pytest.mark.integration

PAYLOAD = corpus.read_payloads(corpus.path("edge_cases.filtered.nmsg"))[0]


def failure(i: int, **fields: Any) -> dict[str, Any]:
    """An EdnsFailure value (every field of schemas/edns_failure.avsc)."""
    return {
        "time_sec": 1700011000 + i,
        "time_nsec": 210999000,
        "name_server": f"192.0.2.{i}",
        "resolver": "10.1.0.2",
        "query_port": 5810,
        "response_port": 53,
        "proto": 17,
        "qname": f"q{i}.example.",
        "qtype": 28,
        "qclass": 1,
        "rcode": 2,
        "kind": "servfail",
        "query_edns_udp_size": 1232,
        "query_edns_version": 0,
        "query_edns_do": True,
        "payload": PAYLOAD,
        **fields,
    }


def produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, value in values:
        producer.produce(topic, value=value, key=b"ns", partition=partition)
    assert producer.flush(30) == 0


def tail(bootstrap: str, topic: str, *flags: str) -> tuple[int, list[str]]:
    args = build_parser().parse_args(
        ["tail", "--failures-topic", topic, "--bootstrap-servers", bootstrap, *flags]
    )
    out = io.StringIO()
    status = args.func(args, out)
    return status, out.getvalue().splitlines()


def test_json_and_table(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=3)  # partition 2 stays empty: its end must still be noticed
    values = [failure(i) for i in range(5)]
    produce(kafka_bootstrap, topic, [(i % 2, encode_failure(v)) for i, v in enumerate(values)])

    status, lines = tail(kafka_bootstrap, topic, "--from-beginning", "--json")
    assert status == 0
    got = sorted((json.loads(line) for line in lines), key=lambda r: r["time_sec"])
    assert got == [{**v, "payload": base64.b64encode(PAYLOAD).decode()} for v in values]

    status, lines = tail(kafka_bootstrap, topic, "--from-beginning")
    assert status == 0 and len(lines) == 6
    assert lines[0].split() == ["time", "name", "server", "kind", "qname", "qtype", "rcode", "resolver"]
    row = next(line for line in lines if "192.0.2.3 " in line)
    assert row.split() == ["2023-11-15", "01:16:43.210", "192.0.2.3", "servfail", "q3.example.", "AAAA",
                           "SERVFAIL", "10.1.0.2"]  # fmt: skip


def test_where_it_starts_and_stops(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, [(0, encode_failure(failure(i))) for i in range(12)])

    def servers(*flags: str) -> list[str]:
        status, lines = tail(kafka_bootstrap, topic, "--json", *flags)
        assert status == 0
        return [json.loads(line)["name_server"] for line in lines]

    assert servers() == [f"192.0.2.{i}" for i in range(2, 12)]  # the last 10, then the end
    assert servers("-n", "3") == [f"192.0.2.{i}" for i in range(9, 12)]
    assert servers("--from-beginning", "-n", "2") == ["192.0.2.0", "192.0.2.1"]
    assert len(servers("--from-beginning")) == 12


def test_values_that_are_not_failures(kafka_bootstrap: str, new_topic, capsys) -> None:
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, [(0, b"\x01"), (0, encode_failure(failure(1)))])
    status, lines = tail(kafka_bootstrap, topic, "--from-beginning", "--json")
    assert status == 1
    assert [json.loads(line)["name_server"] for line in lines] == ["192.0.2.1"]
    assert "partition 0 offset 0: not an EdnsFailure" in capsys.readouterr().err


def test_missing_topic(kafka_bootstrap: str) -> None:
    status, lines = tail(kafka_bootstrap, "no-such-topic-for-tail", "--from-beginning")
    assert status == 1 and lines == []


def test_follow_prints_new_records(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [(0, encode_failure(failure(1)))])
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsqr_pipeline.cli", "tail", "--failures-topic", topic, "--json", "--follow",
         "--bootstrap-servers", kafka_bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["name_server"] == "192.0.2.1"
        produce(kafka_bootstrap, topic, [(1, encode_failure(failure(2)))])
        assert json.loads(proc.stdout.readline())["name_server"] == "192.0.2.2"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
