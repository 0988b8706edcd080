"""The agents' output with each topic's values in the format configured for it.

The agents and their C paths write every failure and snapshot as a schemaless Avro body, as they always
have; :class:`FramedOutput` turns a batch's bodies into the topic's values on the way out (the Confluent
wire format: a 5-byte prefix; JSON failures: the record as JSON) through
:meth:`dnsqr_schemas.value_format.ValueFormat.encode`. Both ways out are covered, the agents' sends and
Faust's commit path (the aggregator's snapshots), so neither agent knows about formats. A worker with
schemaless topics gets no wrapper at all: its bytes are untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from faust.types import TP

from dnsqr_schemas.value_format import ValueFormat
from processors.filter_agent import Output, Record


class FramedOutput:
    """``output`` with the values sent to the topics of ``formats`` encoded by their format; every other
    topic's records, and every other attribute, are ``output``'s."""

    def __init__(self, output: Output, formats: Mapping[str, ValueFormat]) -> None:
        self.inner = output
        self.formats = dict(formats)

    def _values(self, topic: str, records: Sequence[Record]) -> Sequence[Record]:
        fmt = self.formats.get(topic)
        if fmt is None:
            return records
        encode = fmt.encode
        return [(key, encode(value)) for key, value in records]

    async def send(self, topic: str, records: Sequence[Record], **kwargs: Any) -> None:
        await self.inner.send(topic, self._values(topic, records), **kwargs)

    async def send_for_commit(
        self, tp: TP, topic: str, records: Sequence[Record], **kwargs: Any
    ) -> list[Awaitable[Any]]:
        return await self.inner.send_for_commit(tp, topic, self._values(topic, records), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
