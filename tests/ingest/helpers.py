"""Shared helpers of the ingest tests: ground truth from corpus files and read-back of topics."""

from __future__ import annotations

import io
import random
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from ingest.bridge import IngestConfig
from nmsgdns.container import decode_container, encode_header
from nmsgdns.input import ContainerStreamReader
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE, payload_type
from tests import corpus

#: ``dnsqr-pipeline`` in a subprocess, with this interpreter.
CLI = [sys.executable, "-c", "import sys; from dnsqr_pipeline.cli import main; sys.exit(main())"]


def file_payloads(path: Path) -> list[bytes]:
    """Every payload of an NMSG file, through the shared codec (fragments reassembled, CRCs checked)."""
    reader = ContainerStreamReader(io.BytesIO(path.read_bytes()), name=str(path))
    return [p for batch in reader.batches() for p in batch]


def dnsqr_multiset(payloads: list[bytes]) -> Counter[bytes]:
    return Counter(p for p in payloads if payload_type(p) == (VID_BASE, MSGTYPE_DNSQR))


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[bytes, dict[str, bytes]]]:
    """Every record (value, headers) of every partition, read from the start to the current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ingest-test-{uuid.uuid4().hex[:8]}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        at_eof: set[int] = set()
        out: list[tuple[bytes, dict[str, bytes]]] = []
        deadline = time.monotonic() + timeout
        while len(at_eof) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_eof.add(msg.partition())
                    continue
                out.append((msg.value(), dict(msg.headers() or [])))
        assert len(at_eof) == len(parts), "topic not read to its end in time"
        return out
    finally:
        consumer.close()


def topic_payloads(bootstrap: str, topic: str) -> Counter[bytes]:
    """Multiset of the payloads in a raw topic (each record value is one container)."""
    got: Counter[bytes] = Counter()
    for value, _headers in read_topic(bootstrap, topic):
        got.update(decode_container(value).payloads)
    return got


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(bootstrap: str, raw: str, dlq: str | None, **kw: object) -> IngestConfig:
    """An IngestConfig for tests: quiet progress, short timeouts."""
    kw.setdefault("progress_bar", False)
    kw.setdefault("progress_interval", 3600.0)
    kw.setdefault("startup_timeout", 20.0)
    kw.setdefault("flush_timeout", 30.0)
    return IngestConfig(kafka={"bootstrap.servers": bootstrap}, raw_topic=raw, dlq_topic=dlq, **kw)


#: The ways a capture file is damaged in the tests, each made by :func:`damaged_capture`.
DAMAGE_CASES = ("truncated", "random_bytes", "huge_length", "trailing_garbage")


@dataclass(frozen=True)
class DamagedCapture:
    """A damaged NMSG file, where its damage starts, what the report must say, and what precedes it."""

    path: Path
    offset: int
    reason: str
    #: the base:dnsqr payloads before the damage (from the corpus file the capture starts with)
    intact: Counter[bytes]


def damaged_capture(case: str, directory: Path) -> DamagedCapture:
    """Write the capture of ``case`` (one of DAMAGE_CASES) to ``directory``.

    Each but the random one is a whole corpus file (edge_cases.nmsg, one container) followed by the
    damage: half of another corpus file (cut mid-container), a header declaring 4 GiB, or text.
    """
    first = corpus.path("edge_cases.nmsg")
    good, intact = first.read_bytes(), dnsqr_multiset(file_payloads(first))
    if case == "truncated":
        cut = corpus.path("live_resolver.nmsg").read_bytes()
        data, offset, reason = good + cut[: len(cut) // 2], len(good), "truncated: container declares"
    elif case == "random_bytes":
        data, offset, reason, intact = (
            random.Random(10).randbytes(4096),
            0,
            "bad container: bad magic",
            Counter(),
        )
    elif case == "huge_length":
        data, offset, reason = good + encode_header(0, 0xFFFFFFF0) + bytes(64), len(good), "above the cap"
    elif case == "trailing_garbage":
        data, offset, reason = good + b"trailing garbage " * 8, len(good), "bad container: bad magic"
    else:
        raise ValueError(case)
    path = directory / f"{case}.nmsg"
    path.write_bytes(data)
    return DamagedCapture(path, offset, reason, intact)
