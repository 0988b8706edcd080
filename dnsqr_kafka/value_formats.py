"""The value format of the failures and counts topics, chosen once for writers and readers alike.

Every command that writes or reads those topics (``worker``, ``sink``, ``tail``, ``top``, ``run``,
``demo``) takes the same flags (:func:`add_format_arguments`) and gets its :class:`TopicFormats` from
:func:`topic_formats`: the one place that turns configuration into a
:class:`dnsqr_schemas.value_format.ValueFormat` per topic. Nothing is ever guessed from the bytes.

- No ``--schema-registry``: schemaless Avro, byte for byte what the topics always held.
- ``--schema-registry URL``: the Confluent wire format. The subject of a topic's values is
  ``<topic>-value`` (the topic-name strategy). A writer sets the subject's compatibility to BACKWARD and
  registers its schema at start-up (the registry returns the id it already has for a schema it knows),
  then frames every value with that id; a schema the subject's versions refuse is
  :class:`IncompatibleSchema`. A reader looks a writer's schema up by id, once per id.
- ``--failures-format json``: the failures topic holds JSON (``dnsqr_schemas.value_format.record_json``);
  the counts topic stays Avro. JSON values carry no schema id, so JSON with a registry is refused
  (:class:`FormatChoiceError`) rather than half applied.

Registry problems at start-up (unreachable, refused, incompatible) are :class:`RegistryError`, whose
message names the URL or the subject; the commands print it as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    ServerConfig,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema

from dnsqr_schemas import schema_text
from dnsqr_schemas.value_format import FAILURES_FORMATS, SchemaLookup, UnknownSchemaId, ValueFormat

#: the Avro schema (``.avsc`` name) of each topic whose format is chosen here
FAILURES_SCHEMA = "edns_failure"
COUNTS_SCHEMA = "ns_counts"
#: each flag's environment variable (the worker's ``Settings.from_env`` reads the same names)
URL_VARIABLE = "DNSQR_SCHEMA_REGISTRY"
USER_VARIABLE = "DNSQR_SCHEMA_REGISTRY_USER"
PASSWORD_VARIABLE = "DNSQR_SCHEMA_REGISTRY_PASSWORD"
FORMAT_VARIABLE = "DNSQR_FAILURES_FORMAT"
#: exit status of a command whose registry (or format choice) fails at start-up
EXIT_REGISTRY = 2
#: seconds for each request to the registry
REQUEST_TIMEOUT = 10


class RegistryError(RuntimeError):
    """The Schema Registry could not be used: unreachable, refused, or it refused the schema."""


class IncompatibleSchema(RegistryError):
    """The subject's compatibility refuses this process's schema (the message names the subject)."""


class FormatChoiceError(ValueError):
    """Flags that do not make one format (JSON failures with a registry)."""


class RegistryUnavailable(OSError):
    """The registry did not answer a reader's lookup after start-up (an OSError: a stage stops as on a
    failed disk or network, and resumes from its committed offsets when started again)."""


@dataclass(frozen=True)
class RegistryOptions:
    """Where the Schema Registry is and how to authenticate (HTTP basic auth; empty: none)."""

    url: str
    user: str = ""
    password: str = ""

    def client_config(self) -> dict[str, Any]:
        """What confluent-kafka's ``SchemaRegistryClient`` takes (``basic.auth.user.info`` is its
        USER:PASSWORD form)."""
        conf: dict[str, Any] = {"url": self.url, "timeout": REQUEST_TIMEOUT}
        if self.user:
            conf["basic.auth.user.info"] = f"{self.user}:{self.password}"
        return conf


@dataclass(frozen=True)
class TopicFormats:
    """The value format of each topic a command writes or reads."""

    failures: ValueFormat
    counts: ValueFormat

    def by_topic(self, failures_topic: str, counts_topic: str) -> dict[str, ValueFormat]:
        """{topic: format} of the topics whose values are not schemaless Avro (writers frame those)."""
        pairs = ((failures_topic, self.failures), (counts_topic, self.counts))
        return {topic: fmt for topic, fmt in pairs if not fmt.schemaless}


def add_format_arguments(
    parser: argparse.ArgumentParser, *, failures: bool = True, embedded: bool = False
) -> None:
    """Add ``--schema-registry`` and its credentials, and (``failures``) ``--failures-format``;
    ``embedded`` (``run``, ``demo``): ``--schema-registry embedded`` starts a local registry for the job."""
    group = parser.add_argument_group("topic value format")
    group.add_argument(
        "--schema-registry",
        metavar="embedded|URL" if embedded else "URL",
        default=os.environ.get(URL_VARIABLE) or None,
        help="a Schema Registry's Confluent-compatible API: the failures and counts values are then in "
        "the Confluent wire format (magic byte 0, 4-byte schema id, Avro), subjects <topic>-value "
        + ("; 'embedded' starts a local registry for the job and stops it at the end " if embedded else "")
        + f"(default: ${URL_VARIABLE}, else schemaless Avro)",
    )
    group.add_argument(
        "--schema-registry-user",
        metavar="USER",
        default=os.environ.get(USER_VARIABLE) or None,
        help=f"HTTP basic auth user of the registry (default: ${USER_VARIABLE})",
    )
    group.add_argument(
        "--schema-registry-password",
        metavar="PASSWORD",
        default=os.environ.get(PASSWORD_VARIABLE) or None,
        help=f"its password (default: ${PASSWORD_VARIABLE}; prefer the variable to keep it out of ps)",
    )
    if failures:
        group.add_argument(
            "--failures-format",
            choices=FAILURES_FORMATS,
            default=os.environ.get(FORMAT_VARIABLE) or "avro",
            help="values of the failures topic: Avro, or one JSON object per record as `tail --json` "
            f"prints it; the counts topic stays Avro (default: ${FORMAT_VARIABLE}, else %(default)s)",
        )


def registry_options(args: argparse.Namespace) -> RegistryOptions | None:
    """The registry of the flags :func:`add_format_arguments` added; None without ``--schema-registry``."""
    if not args.schema_registry:
        return None
    return RegistryOptions(
        args.schema_registry, args.schema_registry_user or "", args.schema_registry_password or ""
    )


def subject(topic: str) -> str:
    """The subject of ``topic``'s values (the topic-name strategy)."""
    return f"{topic}-value"


def topic_formats(
    registry: RegistryOptions | None,
    *,
    failures_topic: str,
    counts_topic: str,
    failures_format: str = "avro",
    register: bool = False,
    client: SchemaRegistryClient | None = None,
) -> TopicFormats:
    """The formats of the failures and counts topics for a writer (``register``: the worker) or a reader.

    With a registry, a writer registers each topic's schema (compatibility BACKWARD on the subject) and
    frames with the id it gets; every process looks writers' schemas up by id. The registry is asked once
    here, so a wrong URL or refused credentials fail at start-up (:class:`RegistryError`). ``client``
    replaces the one made from ``registry`` (tests pass confluent-kafka's mock).
    """
    if failures_format not in FAILURES_FORMATS:
        raise FormatChoiceError(f"unknown failures format {failures_format!r}: one of {FAILURES_FORMATS}")
    if registry is None:
        layout = "json" if failures_format == "json" else "avro"
        return TopicFormats(ValueFormat(FAILURES_SCHEMA, layout), ValueFormat(COUNTS_SCHEMA))
    if failures_format == "json":
        raise FormatChoiceError(
            "--failures-format json takes no --schema-registry: JSON values carry no schema id "
            "(the counts topic is Avro either way)"
        )
    client = client or SchemaRegistryClient(registry.client_config())
    lookup = _lookup(client, registry.url)
    if not register:
        _check_reachable(client, registry.url, subject(failures_topic))
    formats = []
    for topic, schema in ((failures_topic, FAILURES_SCHEMA), (counts_topic, COUNTS_SCHEMA)):
        schema_id = _register(client, registry.url, subject(topic), schema) if register else None
        formats.append(ValueFormat(schema, "confluent", schema_id, lookup))
    return TopicFormats(*formats)


def _register(client: SchemaRegistryClient, url: str, name: str, schema: str) -> int:
    """Set ``name``'s compatibility to BACKWARD and register ``schema`` under it; its id."""
    try:
        client.set_config(name, ServerConfig(compatibility=ConfigCompatibilityLevel.BACKWARD))
        return client.register_schema(name, Schema(schema_text(schema), "AVRO"))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise IncompatibleSchema(
                f"subject {name}: the registry refuses this version of {schema}.avsc as incompatible "
                f"(BACKWARD) with the subject's latest version ({url}: {exc.error_message})"
            ) from exc
        raise RegistryError(f"schema registry {url}: subject {name}: {exc.error_message}") from exc
    except Exception as exc:  # the HTTP client's connection errors (httpx) share no base class with ours
        raise RegistryError(f"schema registry {url} unreachable: {exc}") from exc


def _check_reachable(client: SchemaRegistryClient, url: str, name: str) -> None:
    """Ask the registry about ``name``, so a reader with a wrong URL or credentials stops at start-up."""
    try:
        client.get_latest_version(name)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:  # no writer registered yet: fine for a reader
            raise RegistryError(f"schema registry {url}: subject {name}: {exc.error_message}") from exc
    except Exception as exc:
        raise RegistryError(f"schema registry {url} unreachable: {exc}") from exc


def _lookup(client: SchemaRegistryClient, url: str) -> SchemaLookup:
    """The writer's schema (parsed) of a schema id: ``ValueFormat``'s lookup."""

    def lookup(schema_id: int) -> dict[str, Any]:
        try:
            found = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaId(f"schema id {schema_id} is not in the registry {url}") from exc
            raise RegistryUnavailable(f"schema registry {url}: schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema registry {url} unreachable: {exc}") from exc
        return parse_schema(json.loads(found.schema_str))

    return lookup


def stage_flags(
    registry: RegistryOptions | None, failures_format: str
) -> tuple[list[str], Mapping[str, str]]:
    """The flags and environment that give a stage subprocess (a job's worker and sink) these formats;
    the password goes through the environment, which ``ps`` does not show."""
    flags = ["--failures-format", failures_format]
    env: dict[str, str] = {}
    if registry is not None:
        flags += ["--schema-registry", registry.url]
        if registry.user:
            flags += ["--schema-registry-user", registry.user]
            env[PASSWORD_VARIABLE] = registry.password
    return flags, env
