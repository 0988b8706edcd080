"""Recognising refused credentials and operations, the up-front check's verdicts, and ``tail``'s exit
status on a refusal, without a broker."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aiokafka import errors as aioerrors
from confluent_kafka import KafkaError, KafkaException

from dnsqr_kafka import access
from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, is_refusal
from dnsqr_kafka.topics import TopicAdminError
from dnsqr_pipeline import tail_command
from dnsqr_pipeline.cli import build_parser

SINK = {
    "bootstrap.servers": "127.0.0.1:1",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "sink",
    "sasl.password": "secret",
}


def test_principal_is_the_sasl_user_or_anonymous() -> None:
    assert access.principal_of(SINK) == "User:sink"
    assert access.principal_of({**SINK, "security.protocol": "SSL"}) == "User:ANONYMOUS"
    assert access.principal_of({}) == "User:ANONYMOUS"


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (KafkaError._AUTHENTICATION, "authentication"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "topic access"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "group access"),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, "cluster access"),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "transactional id access"),
    ],
)
def test_librdkafka_refusals_name_principal_broker_and_what(code: int, said: str) -> None:
    error = KafkaError(code)
    assert is_refusal(error)
    found = access_error(KafkaException(error), SINK)
    assert found is not None
    assert str(found).startswith("Kafka at 127.0.0.1:1 refused User:sink: " + said)


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (aioerrors.TopicAuthorizationFailedError(), "topic access"),
        (aioerrors.GroupAuthorizationFailedError(), "group access"),
        (aioerrors.TransactionalIdAuthorizationFailed(), "transactional id access"),
        (aioerrors.SaslAuthenticationFailed(), "authentication"),
    ],
)
def test_aiokafka_refusals_are_recognised_too(exc: Exception, said: str) -> None:
    found = access_error(exc, SINK)
    assert found is not None and found.refused.startswith(said)


def test_the_outer_message_says_what_was_being_done() -> None:
    try:
        try:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
        except KafkaException as inner:
            raise TopicAdminError("creating topic 'dnsqr.raw' failed: Authorization failed.") from inner
    except TopicAdminError as exc:
        found = access_error(exc, SINK)
    assert found is not None
    assert found.refused == "creating topic 'dnsqr.raw' failed: Authorization failed."


@pytest.mark.parametrize(
    "exc",
    [KafkaException(KafkaError(KafkaError._TRANSPORT)), ValueError("x"), aioerrors.KafkaConnectionError()],
)
def test_other_failures_are_not_refusals(exc: Exception) -> None:
    assert access_error(exc, SINK) is None


def test_evidence_trusts_a_disconnect_only_when_it_repeats() -> None:
    evidence = access._Evidence()
    line = "FAIL [rdkafka#producer-1] [thrd:x]: x: Disconnected: connection closed by peer"
    evidence.log(6, "%s", line + " (after 1ms in state APIVERSION_QUERY)")
    assert evidence.refusal() is None
    evidence.log(6, "%s", line + " (after 2ms in state APIVERSION_QUERY)")
    assert "--security-protocol" in (evidence.refusal() or "")
    tls = access._Evidence()
    tls.log(3, "x: SSL handshake failed: certificate verify failed (after 7ms in state SSL_HANDSHAKE)")
    assert tls.refusal() == "the TLS handshake (certificate verify failed)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_left_to_the_command() -> None:
    started = time.monotonic()
    check_access({**SINK, "bootstrap.servers": f"127.0.0.1:{free_port()}"})
    assert time.monotonic() - started < 5


@pytest.fixture
def slamming_port() -> Iterator[int]:
    """A TCP port that accepts connections and closes them at once, like a TLS listener to a plain client."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join()
    server.close()


def test_a_port_that_answers_but_hangs_up_is_a_refused_connection(slamming_port: int) -> None:
    conf = {"bootstrap.servers": f"127.0.0.1:{slamming_port}", "security.protocol": "PLAINTEXT"}
    started = time.monotonic()
    with pytest.raises(
        KafkaAccessError, match=r"refused User:ANONYMOUS: the connection .*--security-protocol"
    ):
        check_access(conf)
    assert time.monotonic() - started < 10


class ScriptedConsumer:
    """Stands in for ``tail``'s consumer: the broker answers the topic's metadata with ``metadata_error``,
    or describes one empty partition and then answers a read with ``read_error``."""

    metadata_error: int | None = None
    read_error: int | None = None

    def __init__(self, conf: dict[str, object]) -> None:
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        code = self.metadata_error
        error = KafkaError(code) if code is not None else None
        return SimpleNamespace(topics={topic: SimpleNamespace(error=error, partitions={0: None})})

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        return 0, 0

    def assign(self, partitions: list[object]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[SimpleNamespace]:
        return [SimpleNamespace(error=lambda: KafkaError(self.read_error), partition=lambda: 0)]

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("metadata_error", "read_error", "status", "said"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, None, 3, "refused User:sink: topic access"),
        (None, KafkaError.TOPIC_AUTHORIZATION_FAILED, 3, "refused User:sink: topic access"),  # --follow
        (KafkaError._UNKNOWN_TOPIC, None, 1, "dnsqr-pipeline tail: dnsqr.edns.failures: "),
    ],
    ids=["metadata", "while-reading", "missing-topic"],
)
def test_tail_exits_3_when_kafka_refuses_the_read(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    metadata_error: int | None,
    read_error: int | None,
    status: int,
    said: str,
) -> None:
    """Like every command: a refusal is exit status 3 and one line; another Kafka error stays 1. Nothing
    listens on the bootstrap port, so the up-front check leaves the verdict to the reads."""
    monkeypatch.setattr(ScriptedConsumer, "metadata_error", metadata_error)
    monkeypatch.setattr(ScriptedConsumer, "read_error", read_error)
    monkeypatch.setattr(tail_command, "Consumer", ScriptedConsumer)
    flags = [
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "sink",
    ]
    args = build_parser().parse_args(
        ["tail", "--follow", "--bootstrap-servers", f"127.0.0.1:{free_port()}", *flags]
    )
    assert args.func(args, io.StringIO()) == status
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("dnsqr-pipeline tail: ") and said in line, line
