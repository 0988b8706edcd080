"""How a topic's values are laid out: schemaless Avro, the Confluent wire format, or JSON (pure; no I/O).

The stages write their Avro values the one way they always have (``edns_failure.encode_failure``, the
snapshot encoder: the *body*); a :class:`ValueFormat` says what goes around that body on the topic and how
a reader gets the record back:

- **schemaless Avro** (the default, no flag): the body alone; the contract is the ``.avsc``. Writers do
  not touch the bytes at all.
- **Confluent wire format** (``--schema-registry``): byte 0 (the magic), the schema id as 4 bytes big
  endian, then the same body. Readers look the writer's schema up by id (a callable the registry code of
  ``dnsqr_kafka.value_formats`` supplies) and resolve it against their own, so a reader of one schema
  version reads records written with another (Avro schema resolution).
- **JSON** (the failures topic only, ``--failures-format json``): one UTF-8 JSON object per record, the
  schema's fields by name, bytes fields in base64 (:func:`record_json`, what ``dnsqr-pipeline tail
  --json`` prints).

Which format a topic has is configuration, never guessed from the bytes: a schemaless body may well start
with a 0 byte.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastavro import schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from dnsqr_schemas import avro_schema

__all__ = [
    "FAILURES_FORMATS",
    "MAGIC",
    "PREFIX_SIZE",
    "SchemaLookup",
    "UnknownSchemaId",
    "ValueFormat",
    "ValueFormatError",
    "confluent_prefix",
    "record_json",
    "split_confluent",
]

#: the choices of ``--failures-format`` (the counts topic is always Avro)
FAILURES_FORMATS = ("avro", "json")
#: the first byte of a value in the Confluent wire format
MAGIC = 0
#: magic byte and 4-byte schema id
PREFIX_SIZE = 5
_ID = struct.Struct(">bI")

#: schema id -> the writer's schema (parsed by fastavro), from a Schema Registry; raises
#: :class:`UnknownSchemaId` for an id the registry does not have
SchemaLookup = Callable[[int], dict[str, Any]]


class ValueFormatError(ValueError):
    """A value that is not laid out as its topic's format says (no magic byte, too short, not JSON...)."""


class UnknownSchemaId(ValueFormatError):
    """A framed value whose schema id the registry does not know."""


def confluent_prefix(schema_id: int) -> bytes:
    """The 5 bytes before the Avro body of a value written with ``schema_id``."""
    return _ID.pack(MAGIC, schema_id)


def split_confluent(value: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body) of a value in the Confluent wire format, else :class:`ValueFormatError`."""
    if len(value) < PREFIX_SIZE or value[0] != MAGIC:
        raise ValueFormatError(
            f"not the Confluent wire format: {len(value)} bytes"
            + (f" starting with byte {value[0]}, not {MAGIC}" if value else "")
        )
    return _ID.unpack_from(value)[1], value[PREFIX_SIZE:]


def record_json(record: dict[str, Any]) -> str:
    """A decoded Avro record as one JSON object: its fields by name, bytes in base64 (standard alphabet,
    padded). The failures topic's JSON values are exactly this text in UTF-8."""
    return json.dumps(
        {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in record.items()}
    )


@dataclass(frozen=True)
class ValueFormat:
    """One topic's values as this process writes and reads them, for the Avro schema ``schema`` (the
    name of a ``.avsc`` beside this module: the writer's schema and the reader's).

    ``schema_id`` is the id a writer frames its values with (the registry gave it at start-up); ``lookup``
    turns a framed value's id into its writer's schema (readers; required with the Confluent format).
    """

    schema: str
    #: "avro" (schemaless), "confluent" or "json"
    layout: str = "avro"
    schema_id: int | None = None
    lookup: SchemaLookup | None = field(default=None, compare=False)
    #: schema id -> None when the writer's schema is this one (the body is read as is), else the writer's
    _writers: dict[int, dict[str, Any] | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.layout not in ("avro", "confluent", "json"):
            raise ValueError(f"unknown value layout {self.layout!r}")
        if self.layout == "confluent" and self.lookup is None and self.schema_id is None:
            raise ValueError("the Confluent wire format needs a schema id (writers) or a lookup (readers)")

    @property
    def schemaless(self) -> bool:
        """Whether values are the Avro body alone (writers then leave their bytes untouched)."""
        return self.layout == "avro"

    def describe(self) -> str:
        """A few words for logs: the layout and, framed, the schema id."""
        if self.layout == "confluent" and self.schema_id is not None:
            return f"Confluent wire format, schema id {self.schema_id}"
        return {"avro": "schemaless Avro", "confluent": "Confluent wire format", "json": "JSON"}[self.layout]

    def encode(self, body: bytes) -> bytes:
        """The topic value of ``body``, an Avro record written with :attr:`schema` (writers)."""
        if self.layout == "avro":
            return body
        if self.layout == "json":
            return record_json(self._read(body, None)).encode()
        if self.schema_id is None:
            raise ValueError("a writer of the Confluent wire format needs its schema id")
        return confluent_prefix(self.schema_id) + body

    def own_body(self, value: bytes) -> bytes | None:
        """The Avro body of ``value`` when it was written with this very schema (a reader can then read it
        with its fast paths, as a schemaless value), else None: JSON, or another writer's schema.

        Raises :class:`ValueFormatError` for a value not in the Confluent wire format, or whose id is unknown.
        """
        if self.layout == "avro":
            return value
        if self.layout == "json":
            return None
        schema_id, body = split_confluent(value)
        return body if self._writer(schema_id) is None else None

    def decode(self, value: bytes) -> dict[str, Any]:
        """The record of a topic value, as :attr:`schema` reads it (readers).

        Raises :class:`ValueFormatError` for a value not laid out as the format says, and fastavro's
        errors for an Avro body that does not decode.
        """
        if self.layout == "avro":
            return self._read(value, None)
        if self.layout == "json":
            return self._from_json(value)
        schema_id, body = split_confluent(value)
        return self._read(body, self._writer(schema_id))

    def _read(self, body: bytes, writer: dict[str, Any] | None) -> dict[str, Any]:
        reader = avro_schema(self.schema)
        if writer is None:
            return schemaless_reader(io.BytesIO(body), reader, None)
        return schemaless_reader(io.BytesIO(body), writer, reader)

    def _writer(self, schema_id: int) -> dict[str, Any] | None:
        """The writer's schema of ``schema_id``, None when it is :attr:`schema` itself; looked up once."""
        try:
            return self._writers[schema_id]
        except KeyError:
            pass
        if schema_id == self.schema_id:
            writer = None
        elif self.lookup is None:
            raise UnknownSchemaId(f"schema id {schema_id}: this writer knows only its own ({self.schema_id})")
        else:
            found = self.lookup(schema_id)
            same = to_parsing_canonical_form(found) == to_parsing_canonical_form(avro_schema(self.schema))
            writer = None if same else found
        self._writers[schema_id] = writer
        return writer

    def _from_json(self, value: bytes) -> dict[str, Any]:
        """A JSON value back to the record (:func:`record_json`'s inverse): bytes fields from base64, fields
        the JSON lacks from the schema's defaults."""
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueFormatError(f"not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueFormatError(f"not a JSON object but {type(obj).__name__}")
        record: dict[str, Any] = {}
        for f in avro_schema(self.schema)["fields"]:
            name = f["name"]
            if name not in obj:
                if "default" not in f:
                    raise ValueFormatError(f"no field {name!r}")
                record[name] = f["default"]
            elif f["type"] == "bytes":
                try:
                    record[name] = base64.b64decode(obj[name], validate=True)
                except (TypeError, binascii.Error) as exc:
                    raise ValueFormatError(f"field {name!r} is not base64: {exc}") from exc
            else:
                record[name] = obj[name]
        return record
