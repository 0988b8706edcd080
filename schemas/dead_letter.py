"""The dead-letter contract: the header names every stage gives its dead letters, and their codec.

A dead letter is an input record (or input bytes) a stage could not use, copied unchanged to a
dead-letter topic. What went wrong and where the input came from travel in Kafka headers, under the same
names whichever stage wrote the letter (ingest, worker or sink), so one consumer can read, count and
de-duplicate the dead letters of the whole pipeline. ``schemas/dead_letter.md`` is the published
contract; this module is its one implementation, imported by the three stages.

It lives with the topic contracts (``dnsqr_schemas``) because it is one: stages and downstream consumers
share it the way they share the Avro schemas. It imports no Kafka client: headers are plain
``(name, bytes)`` pairs, which confluent-kafka, aiokafka and Faust all take as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Every contract header starts with this; a stage that copies an input's own headers into its dead
#: letter leaves out the ones with this prefix (they would describe another dead letter).
PREFIX = "dlq."

STAGE = "dlq.stage"
ERROR = "dlq.error"
ERROR_TYPE = "dlq.error.type"
SOURCE = "dlq.source"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
SOURCE_SENDER = "dlq.source.sender"
SOURCE_FILE = "dlq.source.file"
SOURCE_FILE_OFFSET = "dlq.source.file.offset"
UNSAMPLED = "dlq.unsampled"

#: The stages that write dead letters (the values of ``dlq.stage``).
STAGES = ("ingest", "worker", "sink")
#: ``dlq.error`` is cut to at most this many bytes (at a character boundary).
ERROR_MAX_BYTES = 4096

#: The worker's values of ``dlq.error.type``, also the ``reason`` labels of
#: ``dnsqr_worker_dead_letters_total``: why a raw record was not judged (``schemas/dead_letter.md`` says
#: what each means). Stable names, not exception class names: a consumer or an alert can rely on them
#: whatever the code's classes are called.
WORKER_REASONS = ("container", "truncated", "payload", "not_bytes", "other")
#: The sink's values of ``dlq.error.type``, also the ``reason`` labels of ``dnsqr_sink_dead_letters_total``:
#: why a failures-topic record is not an ``EdnsFailure`` the files can hold.
SINK_REASONS = ("null", "format", "avro", "not_nmsg_payload", "not_dnsqr")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetterHeaders:
    """What the contract's headers say about one dead letter; ``None`` fields are headers left out.

    ``stage``, ``error`` and ``error_type`` are always present; which source fields are depends on where
    the input came from (a Kafka record, a datagram, a file region: see ``schemas/dead_letter.md``).
    """

    stage: str
    error: str
    error_type: str
    #: the ingest source as its summary names it (``udp:ADDR/PORT``, ``channel:NAME``, ``nmsg:PATH``, ...)
    source: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    #: ``ADDR/PORT`` of the datagram's sender
    sender: str | None = None
    file: str | None = None
    #: byte offset in ``file`` where the dead letter's bytes start
    file_offset: int | None = None
    #: undecodable inputs of this source counted but not dead-lettered since its previous dead letter
    unsampled: int | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"dead-letter stage {self.stage!r} is not one of {', '.join(STAGES)}")

    def encode(self) -> Headers:
        """The headers, in the contract's order, present fields only; values are UTF-8 text."""
        out: Headers = []
        for attribute, name in _HEADER_OF.items():
            value = getattr(self, attribute)
            if value is None:
                continue
            data = str(value).encode("utf-8", "replace")
            if name == ERROR and len(data) > ERROR_MAX_BYTES:
                data = data[:ERROR_MAX_BYTES].decode("utf-8", "ignore").encode()
            out.append((name, data))
        return out

    @classmethod
    def decode(cls, headers: Iterable[tuple[str, bytes | None]]) -> DeadLetterHeaders:
        """Read the contract's headers of a record (others are ignored); ValueError when it has none of
        the required ones or a number does not parse."""
        values: dict[str, object] = {}
        for name, raw in headers:
            attribute = _ATTRIBUTE_OF.get(name)
            if attribute is None or raw is None:
                continue
            text = raw.decode("utf-8", "replace")
            if attribute in _INTEGERS:
                if not text.lstrip("-").isdigit():
                    raise ValueError(f"dead-letter header {name}: {text!r} is not a number")
                values[attribute] = int(text)
            else:
                values[attribute] = text
        missing = [_HEADER_OF[a] for a in ("stage", "error", "error_type") if a not in values]
        if missing:
            raise ValueError(f"not a dead letter: no {', '.join(missing)} header")
        return cls(**values)  # type: ignore[arg-type]

    def origin(self) -> tuple[object, ...] | None:
        """The coordinates that identify the input record this letter copies, or None for a datagram.

        Two dead letters with the same origin are copies of one letter, written again after a replay
        (``schemas/dead_letter.md`` says when that happens); a consumer keeps one. A datagram has no
        coordinates: it is never replayed, so its letter is never written twice.
        """
        if self.topic is not None and self.partition is not None and self.offset is not None:
            return (self.stage, self.topic, self.partition, self.offset)
        if self.file is not None and self.file_offset is not None:
            return (self.stage, self.file, self.file_offset)
        return None


def with_input_headers(
    contract: Headers, original: Iterable[tuple[str, bytes | None]] | None
) -> list[tuple[str, bytes | None]]:
    """The contract's headers followed by the input record's own, minus any in the contract's namespace."""
    return [*contract, *((k, v) for k, v in original or () if not k.startswith(PREFIX))]


_HEADER_OF = {
    "stage": STAGE,
    "error": ERROR,
    "error_type": ERROR_TYPE,
    "source": SOURCE,
    "topic": SOURCE_TOPIC,
    "partition": SOURCE_PARTITION,
    "offset": SOURCE_OFFSET,
    "sender": SOURCE_SENDER,
    "file": SOURCE_FILE,
    "file_offset": SOURCE_FILE_OFFSET,
    "unsampled": UNSAMPLED,
}
_ATTRIBUTE_OF = {name: attribute for attribute, name in _HEADER_OF.items()}
_INTEGERS = frozenset({"partition", "offset", "file_offset", "unsampled"})
