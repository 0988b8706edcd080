"""The sink against a real broker: exact payload multisets, dead letters, SIGTERM, SIGKILL and replay.

Records are the reference filter's selections of every corpus case (``NAME.filtered.nmsg``), sent as the
filter agent sends them (keyed by name server, Avro ``EdnsFailure``) to a 4-partition topic. Two cases
share their payloads (``sock_m512`` was made from ``edge_cases``), so the expected multiset has
duplicates: the sink must keep each record once per occurrence, not once per distinct payload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from base64 import b64decode
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dnsqr_kafka.topics import delete_topics
from sink.consumer import FailureSink, SinkConfig
from sink.files import final_files
from tests import corpus
from tests.dead_letters import read_letters, rewind_group
from tests.kafka_fixture import TopicFactory, wait_for_leaders
from tests.sink.helpers import corpus_payloads, failure_value, files_multiset

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: a group join takes seconds with the default session timeout; tests lower it as the architecture notes
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
REPO = Path(__file__).resolve().parents[2]
GONMSG_DIR = REPO / "tests" / "interop" / "gonmsg"


@pytest.fixture(scope="module")
def records() -> list[tuple[bytes, bytes, bytes]]:
    """(key, value, payload) of every selected payload of every corpus case, in case order."""
    out = []
    for case in corpus.CASES:
        for payload in corpus_payloads(case):
            key, value = failure_value(payload)
            out.append((key, value, payload))
    return out


@pytest.fixture(scope="module")
def corpus_topic(
    kafka_bootstrap: str, kafka_admin: AdminClient, records: list[tuple[bytes, bytes, bytes]]
) -> Iterator[str]:
    """A 4-partition topic holding every record of :func:`records`, spread by key; shared by the module.

    Module-scoped (the session's topic factory is per test) so the plain and zlib runs read one topic.
    """
    name = f"sink-corpus-{uuid.uuid4().hex[:10]}"
    kafka_admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(timeout=30)
    wait_for_leaders(kafka_admin, name)
    produce(kafka_bootstrap, name, [(key, value) for key, value, _ in records])
    assert partitions_used(kafka_bootstrap, name) >= 3
    yield name
    delete_topics(kafka_admin, [name], timeout=30)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "zlib"])
def sink_run(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    corpus_topic: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, FailureSink]:
    """The sink run once over :func:`corpus_topic` (uncompressed and zlib files), in its own group."""
    out = tmp_path_factory.mktemp("sink-zlib" if request.param else "sink-plain")
    return out, run_in_process(
        kafka_bootstrap, corpus_topic, out, rotate_bytes=24 * 1024, compress=request.param
    )


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def partitions_used(bootstrap: str, topic: str) -> int:
    """How many partitions hold records (the test means to spread them)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe-" + uuid.uuid4().hex})
    try:
        used = 0
        for partition in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            used += high > low
        return used
    finally:
        consumer.close()


def run_in_process(
    bootstrap: str, topic: str, out: Path, *, group: str | None = None, **kwargs: object
) -> FailureSink:
    """Run the sink in this process, in ``group`` (default: a new one), until the topic has been idle
    for 2 s."""
    config = SinkConfig(
        output_dir=out,
        kafka={"bootstrap.servers": bootstrap},
        topic=topic,
        group=group or "sink-" + uuid.uuid4().hex[:8],
        rotate_seconds=None,
        idle_exit=2.0,
        consumer_overrides=FAST_GROUP,
        **kwargs,  # type: ignore[arg-type]
    )
    sink = FailureSink(config)
    sink.run()
    return sink


@pytest.fixture(scope="module")
def gonmsg_reader(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], list[bytes]]:
    """Reads an NMSG file with go-nmsg (tests/interop/gonmsg), returning the raw NmsgPayload bytes."""
    go = shutil.which("go")
    if go is None or not (GONMSG_DIR / "main.go").exists():
        pytest.skip("go or the go-nmsg interop program is not available")
    binary = tmp_path_factory.mktemp("gonmsg") / "gonmsg-interop"
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GONMSG_DIR, env=env, check=True, timeout=120)

    def read(path: Path) -> list[bytes]:
        out = subprocess.run([str(binary), "read", str(path)], capture_output=True, check=True, timeout=60)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        assert not any(row.get("crc_error") for row in rows), path
        return [b64decode(row["raw"]) for row in rows]

    return read


# ------------------------------------------------------------------------------ in-process runs


def test_files_hold_exactly_the_failures(
    sink_run: tuple[Path, FailureSink], records: list[tuple[bytes, bytes, bytes]]
) -> None:
    out, sink = sink_run
    expected = Counter(payload for _, _, payload in records)
    assert max(expected.values()) == 2  # the shared cases: duplicates must survive
    assert files_multiset(out) == expected
    paths = final_files(out, "failures")
    assert len({p.name.split("-")[1] for p in paths}) >= 3  # files from several partitions
    assert not list(out.glob(".*.tmp"))
    stats = sink.stats
    assert (stats.records, stats.payloads, stats.undecodable) == (len(records), len(records), 0)
    assert stats.files == len(paths) > 4


@pytest.mark.interop
def test_go_nmsg_reads_the_files(
    sink_run: tuple[Path, FailureSink],
    records: list[tuple[bytes, bytes, bytes]],
    gonmsg_reader: Callable[[Path], list[bytes]],
) -> None:
    out, _ = sink_run
    go_read: Counter[bytes] = Counter()
    for path in final_files(out, "failures"):
        go_read.update(gonmsg_reader(path))
    assert go_read == Counter(payload for _, _, payload in records)


def test_undecodable_values_are_dead_lettered(
    kafka_bootstrap: str, new_topic: TopicFactory, records: list[tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    topic, dlq = new_topic(PARTITIONS, prefix="sink"), new_topic(1, prefix="sink-dlq")
    good = records[:200]
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"k1", b"not avro"),
        (b"k2", None),
        (b"k3", good[0][1] + b"!"),
    ]
    items: list[tuple[bytes | None, bytes | None]] = [(key, value) for key, value, _ in good]
    for i, item in enumerate(bad):
        items.insert(50 * (i + 1), item)
    produce(kafka_bootstrap, topic, items)
    sink = run_in_process(kafka_bootstrap, topic, tmp_path, dlq_topic=dlq)
    assert files_multiset(tmp_path) == Counter(payload for _, _, payload in good)
    assert (sink.stats.undecodable, sink.stats.dead_lettered, sink.stats.dead_letter_failed) == (3, 3, 0)

    letters = read_letters(kafka_bootstrap, dlq)
    assert sorted((m.key, m.value) for m in letters) == sorted(bad, key=lambda kv: kv[0] or b"")
    # the contract's coordinates lead back to the very record that was dead-lettered
    source = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe-" + uuid.uuid4().hex})
    try:
        for letter in letters:
            headers = letter.headers
            reason = {b"k1": "avro", b"k2": "null", b"k3": "avro"}[letter.key]
            assert (headers.stage, headers.topic, headers.error_type) == ("sink", topic, reason)
            assert headers.error and headers.sender is None and headers.unsampled is None
            source.assign([TopicPartition(topic, headers.partition, headers.offset)])
            [original] = source.consume(1, timeout=10)
            assert (original.key(), original.value()) == (letter.key, letter.value)
    finally:
        source.close()


def test_dead_letter_sent_again_after_a_replay_carries_the_same_coordinates(
    kafka_bootstrap: str, new_topic: TopicFactory, records: list[tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    """A crash after a dead letter was acknowledged but before its offset was committed redelivers the
    record, and the sink dead-letters it again: what a rewound group replays, here on purpose. The copy
    carries the same source coordinates, by which a DLQ consumer keeps one (schemas/dead_letter.md)."""
    topic, dlq = new_topic(1, prefix="sink"), new_topic(1, prefix="sink-dlq")
    items: list[tuple[bytes | None, bytes | None]] = [(key, value) for key, value, _ in records[:20]]
    items.insert(10, (b"bad", b"not avro"))
    produce(kafka_bootstrap, topic, items)
    group = "sink-" + uuid.uuid4().hex[:8]
    first = run_in_process(kafka_bootstrap, topic, tmp_path / "first", group=group, dlq_topic=dlq)
    rewind_group(kafka_bootstrap, group, topic)
    second = run_in_process(kafka_bootstrap, topic, tmp_path / "second", group=group, dlq_topic=dlq)
    assert first.stats.dead_lettered == second.stats.dead_lettered == 1
    letters = read_letters(kafka_bootstrap, dlq)
    assert [letter.value for letter in letters] == [b"not avro", b"not avro"]
    assert {letter.headers.origin() for letter in letters} == {("sink", topic, 0, 10)}


# ------------------------------------------------------------------------------ the command, as a process

#: registers only ``sink`` so these tests run the command without depending on other stages' modules
LAUNCHER = """
import argparse, logging, sys
from sink import command
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
parser = argparse.ArgumentParser(prog="dnsqr-pipeline")
command.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def sink_process(bootstrap: str, topic: str, out: Path, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-c", LAUNCHER, "sink",
        "--output-dir", str(out), "--failures-topic", topic, "--bootstrap-servers", bootstrap,
        "--kafka-config", "session.timeout.ms=6000", "--kafka-config", "heartbeat.interval.ms=500",
        *extra,
    ]  # fmt: skip
    with log.open("ab") as fh:
        return subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 40) -> str:
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    return text


def test_sigterm_finalizes_commits_and_exits_zero(
    kafka_bootstrap: str, new_topic: TopicFactory, records: list[tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    topic, out, log = new_topic(PARTITIONS, prefix="sink"), tmp_path / "out", tmp_path / "sink.log"
    produce(kafka_bootstrap, topic, [(key, value) for key, value, _ in records])
    group = "sigterm-" + uuid.uuid4().hex[:8]
    proc = sink_process(kafka_bootstrap, topic, out, "--group", group, log=log)
    deadline = time.monotonic() + 30
    while "sink: " not in log.read_text() and time.monotonic() < deadline:
        if len(list(out.glob(".*.tmp"))) >= 3:  # records are in (open) files: now stop it
            break
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, log)
    assert f"sink: {len(records)} records, {len(records)} payloads" in text
    assert not list(out.glob(".*.tmp"))
    assert files_multiset(out) == Counter(payload for _, _, payload in records)
    # everything was committed: the same group finds nothing more to do
    proc = sink_process(kafka_bootstrap, topic, out, "--group", group, "--idle-exit", "1.5", log=log)
    assert "sink: 0 records" in finish(proc, log)


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap: str, new_topic: TopicFactory, records: list[tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    topic, out, log = new_topic(PARTITIONS, prefix="sink"), tmp_path / "out", tmp_path / "sink.log"
    items = [(key, value) for key, value, _ in records]
    group = "crash-" + uuid.uuid4().hex[:8]
    small = ("--rotate-bytes", "6K", "--rotate-seconds", "0.3")
    proc = sink_process(kafka_bootstrap, topic, out, "--group", group, *small, log=log)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent = 0
    killed_with: tuple[int, int] | None = None
    deadline = time.monotonic() + 40
    while sent < len(items) and time.monotonic() < deadline:
        for key, value in items[sent : sent + 20]:
            producer.produce(topic, key=key, value=value)
        sent = min(sent + 20, len(items))
        producer.flush(10)
        if killed_with is None and out.is_dir() and len(final_files(out, "failures")) >= 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed_with = (sent, len(final_files(out, "failures")))
        time.sleep(0.05)
    assert producer.flush(30) == 0 and sent == len(items)
    assert killed_with is not None and killed_with[0] < len(items), "the sink never got going"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    leftovers = list(out.glob(".*.tmp"))
    # restart in the same group: resumes from the last commit, rewrites or skips what is on disk
    proc = sink_process(kafka_bootstrap, topic, out, "--group", group, *small, "--idle-exit", "2", log=log)
    finish(proc, log)
    assert not list(out.glob(".*.tmp")), leftovers
    assert files_multiset(out) == Counter(payload for _, _, payload in records)
    names = sorted(p.name for p in final_files(out, "failures"))

    # a new group replaying the whole topic into the same directory, with different rotation: nothing new
    other = ("--group", "replay-" + uuid.uuid4().hex[:8], "--rotate-bytes", "1K", "--idle-exit", "2")
    proc = sink_process(kafka_bootstrap, topic, out, *other, log=log)
    text = finish(proc, log)
    assert f"{len(records)} already in existing files" in text
    assert sorted(p.name for p in final_files(out, "failures")) == names
    assert files_multiset(out) == Counter(payload for _, _, payload in records)
