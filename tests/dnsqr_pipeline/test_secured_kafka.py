"""The pipeline over SASL_SSL with one SCRAM user per stage, on ``kafka start --security sasl_ssl``.

One secured broker serves the whole module (started on free ports in a temporary directory). It shows:
the three stages, each with its own user and only its ACLs, give the reference filter's files and counts;
a wrong password ends every command within seconds with exit status 3 and one line; the sink's user can
neither read the raw topic nor write the failures topic (refused by the broker itself, and named by the
commands); ``tail`` is refused the same way; and a client without TLS cannot connect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AclBindingFilter, AdminClient

from dnsqr_kafka.access import EXIT_REFUSED
from dnsqr_pipeline import kafka_security, localkafka
from dnsqr_pipeline.counts_reader import read_latest_counts
from dnsqr_pipeline.job import job_files
from nmsgdns.input import ContainerStreamReader
from tests import corpus
from tests.kafka_fixture import free_port_block

pytestmark = pytest.mark.integration

CASE = "edge_cases"
RAW, FAILURES, COUNTS = "dnsqr.raw", "dnsqr.edns.failures", "dnsqr.edns.ns-counts"
#: the most seconds a refused client may take to give up
REFUSAL_SECONDS = 10.0


@dataclass(frozen=True)
class Secured:
    """The module's secured broker and how each user reaches it."""

    layout: localkafka.ClusterLayout
    passwords: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return self.layout.bootstrap()

    def flags(self, user: str) -> list[str]:
        """The stage flags for ``user`` (its password goes in the environment)."""
        return [
            "--bootstrap-servers",
            self.bootstrap,
            *kafka_security.client_flags(self.layout.security, user, self.layout.ca_file),
        ]

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        return env | {"KAFKA_SASL_PASSWORD": password or self.passwords[user]}

    def command(self, user: str, *argv: str) -> list[str]:
        return [sys.executable, "-m", "dnsqr_pipeline.cli", *argv, *self.flags(user)]

    def conf(self, user: str) -> dict[str, str]:
        return self.layout.client_config(user)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = free_port_block(2)
    layout = localkafka.start(
        tmp_path_factory.mktemp("secured-kafka"),
        nodes=1,
        port=base,
        controller_port=base + 1,
        security="sasl_ssl",
        timeout=120,
    )
    try:
        broker = Secured(layout, kafka_security.load_credentials(layout.directory))
        created = subprocess.run(
            broker.command("admin", "topics", "create"),
            env=broker.env("admin"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        yield broker
    finally:
        localkafka.stop(layout.directory)


def run_refused(
    secured: Secured, user: str, argv: list[str], password: str | None = None
) -> tuple[str, float]:
    """Run a command that Kafka must refuse; return its stderr and how long it took."""
    started = time.monotonic()
    proc = subprocess.run(
        secured.command(user, *argv),
        env=secured.env(user, password),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == EXIT_REFUSED, (proc.returncode, proc.stderr)
    return proc.stderr, elapsed


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------------------ the pipeline


def payloads_in(paths: list[Path]) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for path in paths:
        with path.open("rb") as fh:
            out.update(ContainerStreamReader(fh, name=str(path)))
    return out


def failures_per_name_server(secured: Secured) -> dict[str, int]:
    totals = read_latest_counts(secured.conf("admin"), COUNTS)
    return {ns: total["failures"] for ns, total in totals.items() if total["failures"]}


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_stages_with_their_own_users_give_the_reference_files_and_counts(
    secured: Secured, tmp_path: Path
) -> None:
    expected_payloads = Counter(corpus.read_payloads(corpus.path(f"{CASE}.filtered.nmsg")))
    expected_counts = corpus.expected_counts(CASE)
    out = tmp_path / "out"
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("worker", "sink")}
    stages = {
        "worker": subprocess.Popen(
            secured.command("worker", "worker", "--no-web"),
            env=secured.env("worker"),
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
            text=True,
        ),
        "sink": subprocess.Popen(
            secured.command("sink", "sink", "--output-dir", str(out), "--rotate-idle", "1"),
            env=secured.env("sink"),
            stdout=logs["sink"],
            stderr=subprocess.STDOUT,
            text=True,
        ),
    }
    try:
        ingest = subprocess.run(
            secured.command("ingest", "ingest", "-r", str(corpus.path(f"{CASE}.nmsg")), "--no-progress-bar"),
            env=secured.env("ingest"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr
        deadline = time.monotonic() + 180
        while sum(payloads_in(job_files(out)).values()) < sum(expected_payloads.values()):
            for name, proc in stages.items():
                assert proc.poll() is None, (
                    f"{name} exited {proc.returncode}: {(tmp_path / f'{name}.log').read_text()}"
                )
            assert time.monotonic() < deadline, "the sink did not write every failure in time"
            time.sleep(0.5)
        while failures_per_name_server(secured) != expected_counts:
            assert time.monotonic() < deadline, (
                f"counts {failures_per_name_server(secured)} != {expected_counts}"
            )
            time.sleep(1)
    finally:
        for proc in stages.values():
            stop(proc)
        for log in logs.values():
            log.close()
    assert payloads_in(job_files(out)) == expected_payloads
    for name in stages:
        text = (tmp_path / f"{name}.log").read_text()
        assert "AUTHORIZATION_FAILED" not in text and "Authorization failed" not in text, text


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest", "-r", str(corpus.path(f"{CASE}.nmsg"))],
        ["sink", "--output-dir", "OUT"],
        ["worker", "--no-web"],
        ["topics", "list"],
        ["tail", "--from-beginning"],
    ],
    ids=["ingest", "sink", "worker", "topics-list", "tail"],
)
def test_a_wrong_password_ends_the_command_at_once_with_one_line(
    secured: Secured, argv: list[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    user = {"ingest": "ingest", "sink": "sink", "worker": "worker", "tail": "sink"}.get(argv[0], "admin")
    stderr, elapsed = run_refused(secured, user, argv, password="not-" + secured.passwords[user])
    line = one_line(stderr)
    assert elapsed < REFUSAL_SECONDS, line
    assert f"User:{user}" in line and secured.bootstrap in line and "authentication" in line, line
    assert "invalid credentials" in line, line


def test_the_sink_user_cannot_read_raw(secured: Secured, tmp_path: Path) -> None:
    stderr, _ = run_refused(secured, "sink", ["sink", "--output-dir", str(tmp_path), "--failures-topic", RAW])
    assert f"User:sink: READ on topic '{RAW}'" in one_line(stderr)
    # the broker refuses it, not only the command's check
    consumer = Consumer({**secured.conf("sink"), "group.id": "dnsqr-sink", "enable.auto.commit": False})
    try:
        consumer.subscribe([RAW])
        deadline = time.monotonic() + REFUSAL_SECONDS
        error = None
        while error is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            error = msg.error() if msg is not None else None
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    finally:
        consumer.close()


def test_tail_without_read_on_the_topic_or_its_group_is_refused(secured: Secured) -> None:
    # refused by the up-front check
    stderr, _ = run_refused(secured, "ingest", ["tail", "--from-beginning"])
    assert f"User:ingest: READ on topic '{FAILURES}'" in one_line(stderr)
    # refused while reading: the sink's user reads the topic, but no group outside its own (tail's is a
    # throw-away one, which librdkafka still looks up)
    stderr, elapsed = run_refused(secured, "sink", ["tail", "--from-beginning"])
    assert "User:sink: group access" in one_line(stderr) and elapsed < REFUSAL_SECONDS
    proc = subprocess.run(
        secured.command("admin", "tail", "--from-beginning", "--json"),
        env=secured.env("admin"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_top_without_read_on_the_counts_topic_is_refused(secured: Secured) -> None:
    stderr, _ = run_refused(secured, "ingest", ["top", "--counts-topic", COUNTS])
    assert f"User:ingest: READ on topic '{COUNTS}'" in one_line(stderr)


def test_the_sink_user_cannot_write_failures(secured: Secured) -> None:
    stderr, _ = run_refused(
        secured, "sink", ["ingest", "-r", str(corpus.path(f"{CASE}.nmsg")), "--raw-topic", FAILURES]
    )
    assert f"User:sink: WRITE on topic '{FAILURES}'" in one_line(stderr)
    outcomes: list[KafkaError | None] = []
    producer = Producer({**secured.conf("sink"), "message.timeout.ms": 5000})
    producer.produce(FAILURES, b"forged", on_delivery=lambda err, _msg: outcomes.append(err))
    producer.flush(REFUSAL_SECONDS)
    assert len(outcomes) == 1 and outcomes[0] is not None, outcomes
    assert outcomes[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, outcomes[0]


def test_a_client_without_tls_cannot_connect(secured: Secured) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnsqr_pipeline.cli",
            "topics",
            "list",
            "--bootstrap-servers",
            secured.bootstrap,
        ],
        env=secured.env("admin"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    line = one_line(proc.stderr)
    assert time.monotonic() - started < REFUSAL_SECONDS, line
    assert "refused User:ANONYMOUS" in line and "--security-protocol" in line, line
    assert "no Kafka broker answered" not in line
    admin = AdminClient({"bootstrap.servers": secured.bootstrap, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)


def test_credentials_are_readable_by_their_owner_only(secured: Secured) -> None:
    for path in (
        secured.layout.directory / kafka_security.CREDENTIALS_FILE,
        secured.layout.node_dir(1) / "server.properties",
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert json.loads((secured.layout.directory / kafka_security.CREDENTIALS_FILE).read_text()).keys() == set(
        kafka_security.USERS
    )


def test_a_sink_whose_acl_is_removed_while_it_runs_stops_instead_of_retrying(
    secured: Secured, tmp_path: Path
) -> None:
    log = tmp_path / "sink.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            secured.command("sink", "sink", "--output-dir", str(tmp_path / "out")),
            env=secured.env("sink"),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    admin = AdminClient(secured.conf("admin"))
    read_failures = [g for g in kafka_security.stage_acls() if g.user == "sink" and g.name == FAILURES]
    try:
        deadline = time.monotonic() + 60
        while "assigned partitions" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        filters = [
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, None, b.operation, b.permission_type
            )
            for g in read_failures
            for b in g.bindings()
        ]
        for future in admin.delete_acls(filters).values():
            future.result(timeout=30)
        assert proc.wait(timeout=30) == EXIT_REFUSED, log.read_text()
    finally:
        stop(proc)
        kafka_security.grant(admin, read_failures)
    last = log.read_text().splitlines()[-1]
    assert last.startswith("dnsqr-pipeline sink: Kafka at") and "refused User:sink: topic access" in last, (
        last
    )
