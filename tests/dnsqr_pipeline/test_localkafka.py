"""The local KRaft broker: layout and configuration (unit), and a real broker round trip (integration)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from dnsqr_pipeline import kafka_command, kafka_security, localkafka


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_single_node_properties_bind_loopback_and_replicate_internal_topics_once(tmp_path: Path) -> None:
    layout = localkafka.plan_layout(tmp_path, port=19092)
    props = _props(localkafka.server_properties(layout, 1))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19192"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19192"
    # exactly_once (transactions) must work on one node
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path.resolve() / "node-1" / "data")


def test_three_node_properties_form_a_quorum_on_consecutive_ports(tmp_path: Path) -> None:
    layout = localkafka.plan_layout(tmp_path, nodes=3, port=30000, controller_port=30003)
    props = [_props(localkafka.server_properties(layout, n)) for n in (1, 2, 3)]
    voters = "1@127.0.0.1:30003,2@127.0.0.1:30004,3@127.0.0.1:30005"
    assert [p["controller.quorum.voters"] for p in props] == [voters] * 3
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert props[2]["listeners"] == "PLAINTEXT://127.0.0.1:30002,CONTROLLER://127.0.0.1:30005"
    assert props[0]["transaction.state.log.min.isr"] == "2"
    assert props[0]["offsets.topic.replication.factor"] == "3"
    assert layout.bootstrap() == "127.0.0.1:30000,127.0.0.1:30001,127.0.0.1:30002"


def test_cluster_id_looks_like_a_kafka_uuid() -> None:
    for _ in range(50):
        cid = localkafka.random_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_stored_layout_wins_and_contradicting_flags_are_refused(tmp_path: Path) -> None:
    layout = localkafka.plan_layout(tmp_path, nodes=3, port=31000)
    localkafka._write_layout(layout)
    assert localkafka.plan_layout(tmp_path) == layout
    with pytest.raises(localkafka.LocalKafkaError, match="already holds a 3-node cluster"):
        localkafka.plan_layout(tmp_path, nodes=1)


def test_status_and_stop_without_a_cluster_or_with_a_stale_pid(tmp_path: Path) -> None:
    assert localkafka.status(tmp_path) == {}
    assert localkafka.stop(tmp_path) == []
    layout = localkafka.plan_layout(tmp_path)
    localkafka._write_layout(layout)
    # our own pid is alive but is not a broker of this directory: it must not count as running
    layout.pid_file(1).write_text(f"{os.getpid()}\n")
    assert localkafka.status(tmp_path) == {1: None}
    assert localkafka.stop(tmp_path) == []


def test_a_node_started_here_is_judged_by_its_own_process(tmp_path: Path) -> None:
    """A node this process spawned runs while its Popen says so, whatever /proc shows, and once it exits
    the reason names its exit status."""
    layout = localkafka.plan_layout(tmp_path)
    localkafka._write_layout(layout)
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(7)"])
    localkafka._children[child.pid] = child
    layout.pid_file(1).write_text(f"{child.pid}\n")
    try:
        # its command line does not name the node's server.properties, yet it is the node
        assert localkafka.node_pid(layout, 1) == child.pid
        child.wait()
        assert localkafka.node_pid(layout, 1) is None
        assert localkafka._why_not_running(layout, 1) == f"pid {child.pid} exited with status 7"
    finally:
        localkafka._children.pop(child.pid, None)
    layout.pid_file(1).unlink()
    assert localkafka._why_not_running(layout, 1).startswith("no readable pid file")


def test_cached_jars_need_no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNSQR_KAFKA_CACHE", str(tmp_path))
    monkeypatch.setenv("MVN", str(tmp_path / "no-such-mvn"))
    cached = localkafka.jar_dir("9.9.9")
    cached.mkdir(parents=True)
    (cached / ".complete").write_text("9.9.9\n")
    assert localkafka.resolve_jars("9.9.9") == cached
    with pytest.raises(localkafka.LocalKafkaError, match="Maven"):  # uncached: would need mvn
        localkafka.resolve_jars("9.9.8")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    kafka_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_status_command_without_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["kafka", "status", "--dir", str(tmp_path)]) == 3
    assert "no Kafka cluster" in capsys.readouterr().out
    assert _run_cli(["kafka", "start-node", "--dir", str(tmp_path), "1"]) == 1
    assert "run `kafka start` first" in capsys.readouterr().err


@pytest.mark.integration
def test_produce_consume_round_trip(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    sent = {f"key-{i}".encode(): os.urandom(300) for i in range(100)}
    for key, value in sent.items():
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"roundtrip-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                received[msg.key()] = msg.value()
    finally:
        consumer.close()
    assert received == sent


@pytest.mark.integration
def test_start_twice_is_harmless(local_kafka: localkafka.ClusterLayout | None) -> None:
    if local_kafka is None:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker")
    before = localkafka.status(local_kafka.directory)
    began = time.monotonic()
    again = localkafka.start(local_kafka.directory)
    assert time.monotonic() - began < 10
    assert again == local_kafka
    assert localkafka.status(local_kafka.directory) == before
    assert all(before.values())
    log = local_kafka.log_file(1).read_text()
    assert "Kafka Server started" in log


@pytest.mark.integration
def test_cli_status_of_running_broker(
    local_kafka: localkafka.ClusterLayout | None, capsys: pytest.CaptureFixture[str]
) -> None:
    if local_kafka is None:
        pytest.skip("KAFKA_BOOTSTRAP names an external broker")
    assert _run_cli(["kafka", "status", "--dir", str(local_kafka.directory)]) == 0
    assert f"127.0.0.1:{local_kafka.port} running" in capsys.readouterr().out


FAUST_RELAY = """
import os, faust
app = faust.App(os.environ["APP_ID"], broker="kafka://" + os.environ["BOOTSTRAP"],
                processing_guarantee=os.environ["GUARANTEE"], web_enabled=False, store="memory://",
                broker_session_timeout=6, topic_partitions=1, datadir=os.environ["DATADIR"])
src = app.topic(os.environ["SRC"], value_serializer="raw")
dst = app.topic(os.environ["DST"], value_serializer="raw")

@app.agent(src)
async def relay(stream):
    async for value in stream:
        await dst.send(value=b"seen:" + value)

if __name__ == "__main__":
    app.main()
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_consumes_and_produces_through_this_broker(
    kafka_bootstrap: str, new_topic, tmp_path: Path, guarantee: str
) -> None:
    """Kafka 4 dropped old protocol versions (KIP-896): Faust's aiokafka must still consume, produce,
    commit and (exactly_once) run transactions against the broker version localkafka runs."""
    src, dst = new_topic(), new_topic()
    app_id = f"faust-compat-{uuid.uuid4().hex[:8]}"
    (tmp_path / "relay.py").write_text(FAUST_RELAY)
    env = {
        **os.environ,
        "APP_ID": app_id,
        "BOOTSTRAP": kafka_bootstrap,
        "GUARANTEE": guarantee,
        "SRC": src,
        "DST": dst,
        "DATADIR": str(tmp_path / "data"),
    }
    worker = subprocess.Popen(
        [sys.executable, "relay.py", "worker", "-l", "warn"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"check-{app_id}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(src, b"hello")
        assert producer.flush(10) == 0
        consumer.subscribe([dst])
        value = None
        deadline = time.monotonic() + 60
        while value is None and time.monotonic() < deadline and worker.poll() is None:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                value = msg.value()
        assert value == b"seen:hello", "the Faust worker relayed nothing"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        request = [ConsumerGroupTopicPartitions(app_id, [TopicPartition(src, 0)])]
        deadline = time.monotonic() + 30  # Faust commits on an interval (2.8 s by default)
        committed = -1
        while committed < 1 and time.monotonic() < deadline:
            result = admin.list_consumer_group_offsets(request)[app_id].result(timeout=10)
            committed = result.topic_partitions[0].offset
            time.sleep(0.5)
        assert committed == 1, "the Faust worker did not commit its input offset"
    finally:
        consumer.close()
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    assert b"Traceback" not in output, output.decode(errors="replace")[-3000:]


def test_secured_cluster_listens_on_loopback_with_sasl_only(tmp_path: Path) -> None:
    layout = localkafka.plan_layout(tmp_path, nodes=3, port=30000, controller_port=30003, security="sasl_ssl")
    localkafka._write_layout(layout)
    props = _props((tmp_path / "node-3" / "server.properties").read_text())
    assert props["listeners"] == "CLIENT://127.0.0.1:30002,CONTROLLER://127.0.0.1:30005"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    # replication between brokers is authenticated and encrypted like client traffic
    assert props["inter.broker.listener.name"] == "CLIENT"
    assert props["super.users"] == "User:admin;User:broker"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    passwords = kafka_security.load_credentials(tmp_path)
    assert f'password="{passwords["broker"]}"' in props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    for private in (tmp_path / "credentials.json", tmp_path / "node-1" / "server.properties"):
        assert private.stat().st_mode & 0o777 == 0o600
    assert layout.ca_file == tmp_path.resolve() / "tls" / "ca.pem" and layout.ca_file.exists()
    assert layout.client_config("sink") == {
        "bootstrap.servers": layout.bootstrap(),
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "sink",
        "sasl.password": passwords["sink"],
        "ssl.ca.location": str(layout.ca_file),
    }
    with pytest.raises(localkafka.LocalKafkaError, match="security=plaintext"):
        localkafka.plan_layout(tmp_path, security="plaintext")


def test_a_cluster_from_before_security_stays_plaintext(tmp_path: Path) -> None:
    layout = localkafka.plan_layout(tmp_path, port=19092)
    localkafka._write_layout(layout)
    meta = tmp_path / "cluster.json"
    data = json.loads(meta.read_text())
    del data["security"]
    meta.write_text(json.dumps(data))
    assert localkafka.load_layout(tmp_path.resolve()) == layout
    assert layout.client_config() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "PLAINTEXT",
    }
