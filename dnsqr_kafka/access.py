"""Authentication and authorization failures: recognised, checked before a stage starts, said in one line.

A wrong password or a missing ACL is permanent: retrying does not fix it, and librdkafka, which retries
everything, turns it into an endless stream of log lines (the sink), a timeout that blames the network
("no Kafka broker answered", "is the broker running?"), or, in aiokafka, ``Unable to bootstrap``. So every
command that talks to Kafka first runs :func:`check_access` and stops with :data:`EXIT_REFUSED` and one
line (:func:`report`) naming the principal, the broker and what was refused:

- nothing answers on the bootstrap port (TCP): not ours to say; the command reports an unreachable
  broker as before, with its own status;
- the port answers but the broker ends the connection: SASL authentication failed, the TLS handshake
  failed (e.g. the CA does not match), or the listener speaks another security protocol (a client without
  TLS on a TLS port): :class:`KafkaAccessError`;
- the broker answers: each operation the stage needs (:class:`Need`) on its topics and group is looked up
  in the authorized operations the broker reports for this principal; a missing one is refused.

:func:`access_error` recognises the same failures in exceptions raised later (librdkafka's
``KafkaError`` codes, aiokafka's error classes), so a command can report them the same way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import errors as aioerrors
from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

#: Exit status of a command whose credentials or permissions Kafka refused (1 and 2 are bad input and
#: usage; an unreachable broker keeps each command's own status).
EXIT_REFUSED = 3
#: How long :func:`check_access` waits for the broker's first answer.
DEFAULT_TIMEOUT = 10.0
_TCP_TIMEOUT = 3.0

_AUTHORIZATION_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
_AUTHENTICATION_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_AIOKAFKA_AUTHORIZATION = {
    aioerrors.TopicAuthorizationFailedError: "topic",
    aioerrors.GroupAuthorizationFailedError: "group",
    aioerrors.ClusterAuthorizationFailedError: "cluster",
    aioerrors.TransactionalIdAuthorizationFailed: "transactional id",
}
_AIOKAFKA_AUTHENTICATION = (aioerrors.SaslAuthenticationFailed, aioerrors.AuthenticationFailedError)


class KafkaAccessError(RuntimeError):
    """Kafka refused this client: its credentials, its TLS handshake, or an operation it needs."""

    def __init__(self, principal: str, broker: str, refused: str) -> None:
        super().__init__(f"Kafka at {broker} refused {principal}: {refused}")
        self.principal = principal
        self.broker = broker
        self.refused = refused


@dataclasses.dataclass(frozen=True)
class Need:
    """An operation a stage needs on a topic or a consumer group."""

    resource: str  # "topic" or "group"
    name: str
    operation: AclOperation

    def __str__(self) -> str:
        return f"{self.operation.name} on {self.resource} {self.name!r}"


def topic_needs(operation: AclOperation, names: Iterable[str | None]) -> list[Need]:
    return [Need("topic", name, operation) for name in names if name]


def principal_of(conf: Mapping[str, object]) -> str:
    """The principal the broker will see: ``User:NAME`` with SASL, else the anonymous one."""
    user = conf.get("sasl.username")
    if str(conf.get("security.protocol", "PLAINTEXT")).upper().startswith("SASL") and user:
        return f"User:{user}"
    return "User:ANONYMOUS"


def report(command: str, exc: KafkaAccessError) -> int:
    """Print the one line and return :data:`EXIT_REFUSED`."""
    print(f"dnsqr-pipeline {command}: {exc}", file=sys.stderr)
    return EXIT_REFUSED


# ------------------------------------------------------------------------------------ classification


def access_error(exc: BaseException, conf: Mapping[str, object]) -> KafkaAccessError | None:
    """The :class:`KafkaAccessError` behind ``exc`` (or its causes), or None when it is another failure.

    Knows librdkafka's errors (a ``KafkaException`` or ``KafkaError``; ``_AUTHENTICATION``,
    ``*_AUTHORIZATION_FAILED``) and aiokafka's (``TopicAuthorizationFailedError``, ``SaslAuthentication
    Failed``, ...). The message of the outermost exception says what was being done (e.g. ``creating
    topic 'x' failed: ...``), so it is kept as the refused operation.
    """
    principal, broker = principal_of(conf), str(conf.get("bootstrap.servers", "?"))
    seen: BaseException | None = exc
    while seen is not None:
        what = _refused(seen)
        if what is not None:
            detail = str(exc) if exc is not seen and str(exc) else what
            return seen if isinstance(seen, KafkaAccessError) else KafkaAccessError(principal, broker, detail)
        seen = seen.__cause__ or seen.__context__
    return None


def is_refusal(error: KafkaError) -> bool:
    """True for librdkafka errors that retrying cannot fix: authentication or authorization refused."""
    return _refused_code(error) is not None


def _refused(exc: BaseException) -> str | None:
    if isinstance(exc, KafkaAccessError):
        return exc.refused
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(error, KafkaError):
        return _refused_code(error)
    for cls, resource in _AIOKAFKA_AUTHORIZATION.items():
        if isinstance(exc, cls):
            return f"{resource} access ({exc})"
    if isinstance(exc, _AIOKAFKA_AUTHENTICATION):
        return f"authentication ({exc})"
    return None


def _refused_code(error: KafkaError) -> str | None:
    if error.code() in _AUTHENTICATION_CODES:
        return f"authentication ({_reason(error.str())})"
    resource = _AUTHORIZATION_CODES.get(error.code())
    return f"{resource} access ({_shortened(error.str())})" if resource else None


def _shortened(text: str, limit: int = 160) -> str:
    """The broker's message, cut: some carry a whole request dump."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(text: str) -> str:
    """librdkafka's text without the broker prefix and the state suffix."""
    for marker in ("SASL authentication error: ", "SSL handshake failed: ", "Disconnected: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.rsplit(" (after ", 1)[0]


def _refusal_in_log(line: str) -> str | None:
    """What a librdkafka log line says the broker refused, if it ends a connection for good."""
    if "SASL authentication error" in line or "Authentication failed" in line:
        return f"authentication ({_reason(line)})"
    if "SSL handshake failed" in line:
        return f"the TLS handshake ({_reason(line)})"
    if "Disconnected" in line and ("APIVERSION_QUERY" in line or "in state UP" in line or "SSL" in line):
        return (
            f"the connection before answering any request ({_reason(line)}); the listener may expect "
            "another --security-protocol"
        )
    return None


# ------------------------------------------------------------------------------------ up-front check


class _Evidence:
    """The admin client's ``error_cb`` and ``logger``: keeps what librdkafka says, prints nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[KafkaError] = []

    def on_error(self, error: KafkaError) -> None:
        self.errors.append(error)
        self.lines.append(error.str())

    def log(self, level: int, msg: str, *args: object) -> None:
        self.lines.append(msg % args if args else msg)

    def refusal(self) -> str | None:
        for error in self.errors:
            if error.code() in _AUTHENTICATION_CODES:
                return f"authentication ({_reason(error.str())})"
        found = [r for r in map(_refusal_in_log, self.lines) if r]
        # a single disconnect may be a broker restarting; the same refusal twice is the listener's answer
        certain = [r for r in found if not r.startswith("the connection")]
        return (certain or found)[0] if certain or len(found) > 1 else None


def _answers_tcp(bootstrap: str, timeout: float = _TCP_TIMEOUT) -> bool:
    """True when something accepts a TCP connection at one of the bootstrap addresses."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
            return True
    return False


def check_access(
    conf: Mapping[str, object], needs: Sequence[Need] = (), *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Raise :class:`KafkaAccessError` when the broker refuses this client or one of ``needs``.

    Returns quietly when nothing answers on the bootstrap port (the caller reports an unreachable broker
    as it always did) and when a topic or group does not exist yet (the stage decides what that means),
    and when the broker keeps no ACLs (no authorizer: every operation is allowed).
    """
    principal = principal_of(conf)
    broker = str(conf.get("bootstrap.servers", "?"))
    if not _answers_tcp(broker):
        return
    evidence = _Evidence()
    client_conf = {
        k: v for k, v in conf.items() if k not in ("error_cb", "logger", "on_delivery", "stats_cb")
    }
    admin = AdminClient({**client_conf, "error_cb": evidence.on_error, "logger": evidence})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=0.5)
            break
        except KafkaException:
            admin.poll(0)
        refusal = evidence.refusal()
        if refusal:
            raise KafkaAccessError(principal, broker, refusal)
        if time.monotonic() > deadline:
            return  # it answers TCP but not Kafka: the command's own wait says so
    for need in needs:
        denied = _denied(admin, need, timeout)
        if denied:
            raise KafkaAccessError(principal, broker, denied)


def _denied(admin: AdminClient, need: Need, timeout: float) -> str | None:
    """Why ``need`` is refused, or None when it is allowed or cannot be told (missing, no authorizer)."""
    try:
        if need.resource == "topic":
            futures = admin.describe_topics(
                TopicCollection([need.name]), include_authorized_operations=True, request_timeout=timeout
            )
        else:
            futures = admin.describe_consumer_groups(
                [need.name], include_authorized_operations=True, request_timeout=timeout
            )
        description = futures[need.name].result(timeout=timeout + 1)
    except KafkaException as exc:
        return str(need) if exc.args[0].code() in _AUTHORIZATION_CODES else None
    except concurrent.futures.TimeoutError:
        return None
    allowed = description.authorized_operations
    if allowed is None or need.operation in allowed or AclOperation.ALL in allowed:
        return None
    return str(need)
