"""``dnsqr-pipeline kafka secrets``: the files of the secured Docker Compose profile, made once.

The ``secured`` profile of ``docker-compose.yml`` runs the official Kafka image with the same security as
``kafka start --security sasl_ssl`` (:mod:`dnsqr_pipeline.kafka_security`): SASL_SSL with SCRAM-SHA-512,
one user per stage, the ``StandardAuthorizer``. A one-shot container of the project image runs this
command into one directory per reader, each a volume mounted only where it is needed::

    broker/server.properties   the broker's whole configuration (its key and certificate inline)   0600
    broker/client.properties   the broker user's client settings, for the health check             0600
    broker/format-args         cluster id and --add-scram arguments of kafka-storage format         0600
    USER/password, USER/ca.pem one per client user: admin, ingest, worker, sink                     0600

Nothing is overwritten: the broker's storage was formatted with these passwords, so a second run (every
``docker compose up``) keeps them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dnsqr_pipeline import certs, kafka_security
from dnsqr_pipeline.localkafka import random_cluster_id

#: the client listener inside the Compose network, and the controller's (loopback in the container)
CLIENT_PORT = 19093
CONTROLLER_ADDRESS = "127.0.0.1:9094"
DATA_DIR = "/var/lib/kafka/data"


def broker_properties(hostname: str, passwords: dict[str, str], tls: certs.BrokerTls) -> list[str]:
    """One combined broker+controller node with one replica of everything."""
    return [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers={CONTROLLER_ADDRESS}",
        *kafka_security.listener_properties(
            security="sasl_ssl",
            client=f"0.0.0.0:{CLIENT_PORT}",
            advertised=f"{hostname}:{CLIENT_PORT}",
            controller=CONTROLLER_ADDRESS,
            passwords=passwords,
            tls=tls,
        ),
        f"log.dirs={DATA_DIR}",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
    ]


def client_properties(user: str, password: str, tls: certs.BrokerTls) -> list[str]:
    """Java client settings (``--command-config``) for ``user``."""
    return [
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={kafka_security.MECHANISM}",
        "sasl.jaas.config=" + kafka_security.scram_jaas(user, password),
        *kafka_security.truststore_properties(tls.ca_file),
    ]


def write_compose_secrets(directory: Path, hostname: str) -> bool:
    """Write the profile's files under ``directory`` for a broker reached as ``hostname``; False when they
    are there already (then nothing changes)."""
    broker = directory / "broker"
    if (broker / "server.properties").exists():
        return False
    passwords = kafka_security.new_passwords()
    with tempfile.TemporaryDirectory() as tmp:
        tls = certs.make_broker_tls(Path(tmp), [hostname, "localhost", "127.0.0.1"])
        broker.mkdir(parents=True, exist_ok=True)
        for user in kafka_security.CLIENT_USERS:
            (directory / user).mkdir(parents=True, exist_ok=True)
            kafka_security.write_private(directory / user / "password", passwords[user])
            shutil.copyfile(tls.ca_file, directory / user / "ca.pem")
        args = ["--cluster-id", random_cluster_id(), "--standalone"]
        args += kafka_security.scram_format_args(passwords)
        kafka_security.write_private(broker / "format-args", "\n".join(args) + "\n")
        client = client_properties(kafka_security.BROKER, passwords[kafka_security.BROKER], tls)
        kafka_security.write_private(broker / "client.properties", "\n".join(client) + "\n")
        # last: its presence says the set is complete
        properties = broker_properties(hostname, passwords, tls)
        kafka_security.write_private(broker / "server.properties", "\n".join(properties) + "\n")
    return True
