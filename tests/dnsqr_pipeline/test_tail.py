"""``dnsqr-pipeline tail`` against a real broker: EdnsFailure records produced to a new topic come back
decoded, as JSON lines and as a table; where it starts and stops (``--from-beginning``, ``-n``, the end of
the partitions, ``--follow``); values that are not EdnsFailure records; a missing topic; Ctrl-C ends
``--follow`` within seconds whenever it comes, also when tail was started with SIGINT ignored."""

from __future__ import annotations

import base64
import io
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from dnsqr_pipeline.cli import build_parser
from dnsqr_schemas.edns_failure import encode_failure
from tests import corpus

pytestmark = pytest.mark.integration

PAYLOAD = corpus.read_payloads(corpus.path("edge_cases.filtered.nmsg"))[0]
#: How soon tail must exit after Ctrl-C: its longest wait (0.5 s), the consumer's close and Python's exit,
#: with room for a loaded machine.
EXIT_SECONDS = 5.0


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
        "source": 0,
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


def follow(bootstrap: str, topic: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dnsqr_pipeline.cli", "tail", "--failures-topic", topic, "--json", "--follow",
         "--from-beginning", "--bootstrap-servers", bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def interrupted(proc: subprocess.Popen[str], where: str, *, twice: bool = False) -> list[str]:
    """Send Ctrl-C (twice: a second one 50 ms later); the lines tail printed, once it exited in time as
    Ctrl-C ends a program: 130, killed by SIGINT before Python installed its handler, or CPython's own
    "Fatal Python error: init_import_site" (status 1) when the KeyboardInterrupt hits its import of the
    ``site`` module (the .pth files of the venv), before any code of ours runs."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"tail --follow still ran {EXIT_SECONDS} s after Ctrl-C {where}")
    during_site = proc.returncode == 1 and "init_import_site" in stderr and "KeyboardInterrupt" in stderr
    assert proc.returncode in (130, -signal.SIGINT) or during_site, (where, proc.returncode, stderr)
    assert time.monotonic() - sent < EXIT_SECONDS, where
    return stdout.splitlines()


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Children start with SIGINT at its default, as from a terminal, even when this test run ignores
    it (a background job of a non-interactive shell): before tail installs its handler, only Python's
    start-up can take a Ctrl-C, and an ignored one is gone. Ignored is tested on its own below."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_at_any_moment_ends_follow_within_seconds(
    kafka_bootstrap: str, new_topic, sigint_default: None
) -> None:
    """Ctrl-C during Python's start-up, the access check, the set-up (metadata, watermarks), printing
    and the idle waits of the read loop, and a second Ctrl-C during the exit: every time tail is gone
    within seconds and its output is whole lines. At most 10 runs of at most a few seconds each (random
    moments in ten slices of the first 2.4 s, another seed each time)."""
    topic = new_topic(partitions=3)
    produce(kafka_bootstrap, topic, [(i % 3, encode_failure(failure(i))) for i in range(60)])
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for run in range(10):
        delay = run * 0.24 + rng.uniform(0, 0.24)  # 0 to 2.4 s after the start
        where = f"{delay:.3f} s after the start (seed {seed})"
        proc = follow(kafka_bootstrap, topic)
        time.sleep(delay)
        lines = interrupted(proc, where, twice=run % 4 == 3)
        assert all(json.loads(line)["kind"] == "servfail" for line in lines), where
    # and while it waits for more, having printed every record
    proc = follow(kafka_bootstrap, topic)
    assert proc.stdout is not None
    printed = [json.loads(proc.stdout.readline())["name_server"] for _ in range(60)]
    assert sorted(printed) == sorted(failure(i)["name_server"] for i in range(60))
    assert interrupted(proc, "while it waits for records") == []


def test_ctrl_c_ends_follow_started_with_sigint_ignored(kafka_bootstrap: str, new_topic) -> None:
    """A program started with SIGINT ignored (by a non-interactive shell's ``&``) gets no KeyboardInterrupt
    from Python; tail takes SIGINT itself, so ``kill -INT`` still ends it."""
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, [(0, encode_failure(failure(1)))])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child, as from such a shell
    try:
        proc = follow(kafka_bootstrap, topic)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["name_server"] == "192.0.2.1"
    assert interrupted(proc, "with SIGINT ignored at start") == []
