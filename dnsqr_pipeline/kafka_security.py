"""The secured local Kafka: SCRAM users per stage, listener settings, and least-privilege ACLs.

``dnsqr-pipeline kafka start --security sasl_ssl`` (or ``sasl_plaintext``) runs the local cluster the way
production clusters that carry passive DNS run: clients authenticate with SCRAM-SHA-512 over TLS, and the
``StandardAuthorizer`` lets each stage do only what it needs (:func:`stage_acls`).

Users (:data:`USERS`), one password each, in ``credentials.json`` (0600) in the cluster directory:

- ``admin``: super user, for ``topics``, ``run`` and operators;
- ``ingest``, ``worker``, ``sink``: one per stage, with only their ACLs;
- ``broker``: the nodes' own principal (super user) between brokers and towards the controllers.

They are seeded when storage is formatted (``kafka-storage format --add-scram``), so the first broker start
already knows them, with no window in which a listener accepts anyone.

Listeners (every one on 127.0.0.1):

- ``CLIENT``: SASL_SSL (or SASL_PLAINTEXT) with SCRAM-SHA-512, for clients and between brokers (as
  ``broker``), so a 3-node cluster's replication is authenticated and encrypted like client traffic;
- ``CONTROLLER``: SASL_PLAINTEXT with PLAIN, the ``broker`` user defined in the node's JAAS settings, since
  controllers must authenticate before the SCRAM credentials (kept in the metadata log they serve) are
  readable. It carries only KRaft traffic on loopback; a controller listener without authentication would
  have to make the anonymous principal a super user, and with it anyone able to reach the port.

The node's ``server.properties`` holds the ``broker`` password, so it is written 0600 too.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from dnsqr_kafka.config import Credentials
from dnsqr_kafka.names import DEFAULT_APP_ID, DEFAULT_NAMES, DEFAULT_SINK_GROUP, TopicNames
from dnsqr_pipeline.certs import BrokerTls

#: ``--security`` values of ``kafka start``, and the client listener's security protocol for each
SECURITY_PROTOCOLS = {"plaintext": "PLAINTEXT", "sasl_plaintext": "SASL_PLAINTEXT", "sasl_ssl": "SASL_SSL"}
MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
BROKER = "broker"
STAGES = ("ingest", "worker", "sink")
#: the users clients connect as; BROKER is the nodes' own
CLIENT_USERS = (ADMIN, *STAGES)
USERS = (*CLIENT_USERS, BROKER)
SUPER_USERS = (ADMIN, BROKER)
CREDENTIALS_FILE = "credentials.json"
TLS_DIR = "tls"
#: names the broker certificate is valid for on this machine (clients connect to 127.0.0.1)
LOCAL_HOSTS = ("127.0.0.1", "localhost")
_STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"


def is_secured(security: str) -> bool:
    """True for the SASL modes (users, ACLs, credentials file)."""
    return security != "plaintext"


def uses_tls(security: str) -> bool:
    return security == "sasl_ssl"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the file's creation on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


# ------------------------------------------------------------------------------------ credentials


def create_credentials(directory: Path) -> dict[str, str]:
    """New random passwords for :data:`USERS`, written to ``credentials.json`` (0600); returned too.

    URL-safe base64 text: it needs no quoting in the ``--add-scram`` syntax, JAAS settings or a shell.
    """
    passwords = new_passwords()
    write_private(directory / CREDENTIALS_FILE, json.dumps(passwords, indent=2) + "\n")
    return passwords


def new_passwords() -> dict[str, str]:
    """A random password for each of :data:`USERS`."""
    return {user: secrets.token_urlsafe(24) for user in USERS}


def load_credentials(directory: Path) -> dict[str, str]:
    """The passwords of the cluster in ``directory`` (``{user: password}``)."""
    return json.loads((directory / CREDENTIALS_FILE).read_text(encoding="utf-8"))


def scram_format_args(passwords: Mapping[str, str]) -> list[str]:
    """``kafka-storage format`` arguments that seed every user's SCRAM credential."""
    args: list[str] = []
    for user in USERS:
        args += ["--add-scram", f"{MECHANISM}=[name={user},password={passwords[user]}]"]
    return args


# ------------------------------------------------------------------------------------ broker side


def _jaas(module: str, user: str, password: str, *, plain_users: bool = False) -> str:
    extra = f' user_{user}="{password}"' if plain_users else ""
    return f'{module} required username="{user}" password="{password}"{extra};'


def scram_jaas(user: str, password: str) -> str:
    """A Java client's SCRAM login (``sasl.jaas.config``)."""
    return _jaas(_SCRAM_LOGIN, user, password)


def listener_properties(
    *,
    security: str,
    client: str,
    controller: str,
    passwords: Mapping[str, str],
    tls: BrokerTls | None = None,
    advertised: str | None = None,
) -> list[str]:
    """The ``server.properties`` lines of a secured node's listeners, SASL, TLS and authorizer.

    ``client`` and ``controller`` are ``host:port`` to bind; ``advertised`` (default ``client``) is the
    client listener's address as clients reach it. The PEM texts go inline: Kafka reads a PEM key store
    file only with an encrypted key and its password, and inline settings need no paths, so the same
    text serves a node here and a broker in a container.
    """
    protocol = SECURITY_PROTOCOLS[security]
    broker_password = passwords[BROKER]
    lines = [
        f"listeners=CLIENT://{client},CONTROLLER://{controller}",
        f"advertised.listeners=CLIENT://{advertised or client}",
        f"listener.security.protocol.map=CLIENT:{protocol},CONTROLLER:SASL_PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=CLIENT",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        f"listener.name.client.sasl.enabled.mechanisms={MECHANISM}",
        f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config=" + scram_jaas(BROKER, broker_password),
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        + _jaas(_PLAIN_LOGIN, BROKER, broker_password, plain_users=True),
        f"authorizer.class.name={_STANDARD_AUTHORIZER}",
        "super.users=" + ";".join(f"User:{u}" for u in SUPER_USERS),
        "allow.everyone.if.no.acl.found=false",
    ]
    if uses_tls(security):
        if tls is None:
            raise ValueError("sasl_ssl needs the CA, the broker key and its certificate")
        lines += [
            "ssl.keystore.type=PEM",
            "ssl.keystore.key=" + _escape(tls.key_file.read_text()),
            "ssl.keystore.certificate.chain=" + _escape(tls.cert_file.read_text()),
            *truststore_properties(tls.ca_file),
            "ssl.client.auth=none",
        ]
    return lines


def truststore_properties(ca_file: Path) -> list[str]:
    """A Java client's or broker's trust in the CA (inline PEM)."""
    return ["ssl.truststore.type=PEM", "ssl.truststore.certificates=" + _escape(ca_file.read_text())]


def _escape(pem: str) -> str:
    """A multi-line PEM text as one ``.properties`` value (``\\n`` escapes)."""
    return pem.strip().replace("\n", "\\n")


# ------------------------------------------------------------------------------------ client side


def client_config(
    bootstrap: str, security: str, user: str, password: str, ca_file: Path | None
) -> dict[str, str]:
    """librdkafka properties for ``user`` on a cluster run with ``security``."""
    secured = is_secured(security)
    return Credentials(
        security_protocol=SECURITY_PROTOCOLS[security],
        sasl_mechanism=MECHANISM if secured else "",
        sasl_username=user if secured else "",
        sasl_password=password if secured else "",
        ssl_ca_location=str(ca_file) if uses_tls(security) and ca_file is not None else "",
    ).librdkafka(bootstrap)


def client_flags(security: str, user: str, ca_file: Path | None) -> list[str]:
    """The ``dnsqr-pipeline`` flags for ``user`` (the password goes in ``$KAFKA_SASL_PASSWORD``)."""
    flags = [
        "--security-protocol",
        SECURITY_PROTOCOLS[security],
        "--sasl-mechanism",
        MECHANISM,
        "--sasl-username",
        user,
    ]
    if uses_tls(security) and ca_file is not None:
        flags += ["--ssl-ca-location", str(ca_file)]
    return flags


def client_settings_text(bootstrap: str, security: str, directory: Path, ca_file: Path | None) -> str:
    """What ``kafka start`` prints for a secured cluster: each user's flags and how to get its password."""
    lines = [f"credentials (mode 0600): {directory / CREDENTIALS_FILE}; client settings per user:"]
    for user in (*STAGES, ADMIN):
        flags = " ".join(client_flags(security, user, ca_file))
        lines.append(
            f"  {user}: KAFKA_SASL_PASSWORD=$(dnsqr-pipeline kafka password --dir {directory} {user}) "
            f"dnsqr-pipeline ... --bootstrap-servers {bootstrap} {flags}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ ACLs


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: ``operations`` on a resource (by literal name or name prefix) for a user."""

    user: str
    resource: ResourceType
    name: str
    operations: tuple[AclOperation, ...]
    prefixed: bool = False

    def bindings(self) -> list[AclBinding]:
        pattern = ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL
        return [
            AclBinding(
                self.resource, self.name, pattern, f"User:{self.user}", "*", op, AclPermissionType.ALLOW
            )
            for op in self.operations
        ]


_TOPIC, _GROUP, _TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
_READ, _WRITE, _DESCRIBE, _CREATE = (
    AclOperation.READ,
    AclOperation.WRITE,
    AclOperation.DESCRIBE,
    AclOperation.CREATE,
)


def stage_acls(names: TopicNames = DEFAULT_NAMES, app_id: str = DEFAULT_APP_ID) -> list[Grant]:
    """The ACLs of the three stage users for the topics ``names`` and the workers' ``app_id``.

    - ingest: write (and describe) the raw topic and its DLQ;
    - worker: read raw; write failures, ns-stats, counts, progress and the DLQ; read ns-stats (the
      aggregator consumes it); create those topics when missing; its group (the app id); and, by the app
      id as a prefix, the aggregator's state changelog, Faust's own topics and the transactional ids of
      exactly_once;
    - sink: read the failures topic, its groups (the default one and the job's ``APP_ID-sink``), write
      (and create) its DLQ.

    Each topic is named (LITERAL), so no stage can touch the others' topics; only names derived from the
    app id are prefixes. Idempotent producers need no cluster ACL since Kafka 3 (WRITE on a topic is
    enough).
    """
    worker_topics = [names.failures, names.stats, names.counts, names.raw_dlq, names.progress]
    rw = (_WRITE, _DESCRIBE)
    return [
        Grant("ingest", _TOPIC, names.raw, rw),
        Grant("ingest", _TOPIC, names.raw_dlq, rw),
        Grant("worker", _TOPIC, names.raw, (_READ, _DESCRIBE)),
        *(Grant("worker", _TOPIC, name, (*rw, _CREATE)) for name in worker_topics),
        Grant("worker", _TOPIC, names.stats, (_READ,)),
        Grant("worker", _TOPIC, f"{app_id}-", (_READ, *rw, _CREATE), prefixed=True),
        Grant("worker", _GROUP, app_id, (_READ, _DESCRIBE)),
        Grant("worker", _TXN, f"{app_id}-", rw, prefixed=True),
        Grant("sink", _TOPIC, names.failures, (_READ, _DESCRIBE)),
        # created on first use (the broker auto-creates it for a client allowed to)
        Grant("sink", _TOPIC, names.failures_dlq, (*rw, _CREATE)),
        Grant("sink", _GROUP, DEFAULT_SINK_GROUP, (_READ, _DESCRIBE)),
        Grant("sink", _GROUP, f"{app_id}-sink", (_READ, _DESCRIBE)),
    ]


def grant(admin: AdminClient, grants: list[Grant], timeout: float = 30.0) -> int:
    """Create the ACLs of ``grants`` (existing ones are kept as they are); return how many bindings."""
    bindings = [b for g in grants for b in g.bindings()]
    futures = admin.create_acls(bindings, request_timeout=timeout)
    for future in futures.values():
        future.result(timeout=timeout)
    return len(bindings)
