"""The data contracts of the pipeline's topics, installed as the package ``dnsqr_schemas``.

The ``.avsc`` files beside this module are the published Avro schemas (downstream consumers read them);
the ``.proto`` files define NMSG and base:dnsqr (code generated into ``nmsgdns/proto``). Where a value
has a writer and a reader in different stages, its codec lives here too (``edns_failure``, the failures
topic's value; ``dead_letter``, the dead letters' headers), so no stage imports another for it, and so
does the framing every topic value can have (``value_format``: schemaless, Confluent wire format, JSON).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema


def schema_text(name: str) -> str:
    """The text of ``NAME.avsc`` as shipped, for publishing the contract."""
    return resources.files(__name__).joinpath(f"{name}.avsc").read_text(encoding="utf-8")


@cache
def avro_schema(name: str) -> dict[str, Any]:
    """The parsed (fastavro) schema ``NAME.avsc``; parsed once per process."""
    return parse_schema(json.loads(schema_text(name)))
