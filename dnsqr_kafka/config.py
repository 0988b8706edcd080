"""Connection flags shared by every subcommand that talks to Kafka, and their client configuration.

One place decides what ``--bootstrap-servers`` defaults to and how the security settings
(:class:`Credentials`) map onto librdkafka (confluent-kafka) properties, so every stage connects the same
way (the Faust workers turn the same credentials into aiokafka's: ``processors.app.faust_credentials``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def default_bootstrap() -> str:
    """``$KAFKA_BOOTSTRAP`` when set, else the local broker's default address."""
    return os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP


#: each credential's environment variable, the default of its flag
CREDENTIAL_VARIABLES = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
}


@dataclass(frozen=True)
class Credentials:
    """How a client authenticates and verifies the brokers (the security flags); empty: not set."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Credentials:
        """The credentials of the flags :func:`add_kafka_arguments` added."""
        return cls(**{name: getattr(args, name) or "" for name in CREDENTIAL_VARIABLES})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """The credentials of the ``KAFKA_*`` variables (:data:`CREDENTIAL_VARIABLES`)."""
        return cls(**{name: environ[var] for name, var in CREDENTIAL_VARIABLES.items() if environ.get(var)})

    def librdkafka(self, bootstrap: str) -> dict[str, str]:
        """librdkafka properties for ``bootstrap`` with these credentials."""
        conf = {"bootstrap.servers": bootstrap, "security.protocol": self.security_protocol}
        for name in ("sasl_mechanism", "sasl_username", "sasl_password", "ssl_ca_location"):
            value = getattr(self, name)
            if value:
                conf[name.replace("_", ".")] = value
        return conf


def add_kafka_arguments(parser: argparse.ArgumentParser, *, embedded_default: bool = False) -> None:
    """Add ``--bootstrap-servers`` and the security flags to ``parser``.

    The default is ``$KAFKA_BOOTSTRAP``, else 127.0.0.1:9092; with ``embedded_default`` (``run``, ``demo``)
    it is ``$KAFKA_BOOTSTRAP``, else None, which the command takes as "start a local broker for the job".
    """
    group = parser.add_argument_group("Kafka connection")
    if embedded_default:
        default = os.environ.get("KAFKA_BOOTSTRAP") or None
        fallback = "start a local broker for the job"
    else:
        default, fallback = default_bootstrap(), DEFAULT_BOOTSTRAP
    group.add_argument(
        "--bootstrap-servers",
        default=default,
        metavar="HOST:PORT[,...]",
        help=f"Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP, else {fallback})",
    )
    group.add_argument(
        "--security-protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        default=os.environ.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
    )
    group.add_argument(
        "--sasl-mechanism",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        default=os.environ.get("KAFKA_SASL_MECHANISM"),
        help="(default: $KAFKA_SASL_MECHANISM)",
    )
    group.add_argument("--sasl-username", default=os.environ.get("KAFKA_SASL_USERNAME"))
    group.add_argument(
        "--sasl-password",
        default=os.environ.get("KAFKA_SASL_PASSWORD"),
        help="(default: $KAFKA_SASL_PASSWORD; prefer the variable to keep it out of ps)",
    )
    group.add_argument(
        "--ssl-ca-location",
        metavar="PEM",
        default=os.environ.get("KAFKA_SSL_CA_LOCATION"),
        help="CA bundle to verify the brokers (default: $KAFKA_SSL_CA_LOCATION)",
    )
    group.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka property, repeatable (e.g. --kafka-config socket.timeout.ms=10000)",
    )


def client_config(args: argparse.Namespace) -> dict[str, str]:
    """librdkafka properties for confluent-kafka clients from the parsed flags."""
    conf = Credentials.from_args(args).librdkafka(args.bootstrap_servers)
    for item in args.kafka_config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kafka-config expects KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf
