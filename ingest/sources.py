"""Ingest sources: nmsg files and pcaps (replayed), UDP sockets and SIE channels, and Kafka topics.

Every source runs in its own thread and hands the bridge *batches* of payload bytes through an
:class:`Outbox` (a bounded queue). Batches, not single payloads, cross the thread boundary, so the
queue costs microseconds per thousand records; the bound gives finite sources back-pressure when Kafka is
slower than the disk. Anything a source cannot turn into payloads is counted in ``drops`` by reason and,
when there are bytes worth keeping, sent on as a :class:`DeadLetter` for the DLQ topic, with the headers of
the dead-letter contract (``schemas/dead_letter.md``): one for one from files and Kafka, a rate-limited
sample from UDP (``ingest.sampling``).

UDP is split in two threads: one only receives (into a user-space backlog), the other decodes. A receiver
that also decodes stops reading while it decodes, and an unthrottled ``nmsgtool -s`` overruns the kernel
buffer in that time; a receive-only loop drains the socket at several hundred thousand datagrams/s.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from dnsqr_schemas.dead_letter import DeadLetterHeaders
from ingest.replay import Pacer, TimeWindow, record_time
from ingest.sampling import DEFAULT_DLQ_RATE, DeadLetterSampler
from nmsgdns.errors import NmsgDnsError, TruncatedError
from nmsgdns.input import ContainerStreamReader, DatagramDecoder
from nmsgdns.udp import UdpReceiver

log = logging.getLogger(__name__)

#: Payloads per batch handed to the bridge by file and pcap sources.
BATCH_RECORDS = 2048
#: Most bytes of undecoded datagrams the UDP receiver thread may hold before it drops (counted).
UDP_BACKLOG_BYTES = 256 * 1024 * 1024
#: The UDP decoding thread yields to the receiving thread every this many datagrams while traffic flows
#: (traffic "flows" when a datagram arrived within _RX_ACTIVE seconds); the sleep hands over the GIL.
_YIELD_EVERY = 8
_RX_ACTIVE = 0.005
_YIELD_SLEEP = 0.0002
#: Receive buffer asked for UDP sockets: four times nmsgtool's 16 MiB, so a burst of 8 KiB containers
#: from an unthrottled sender waits in the kernel instead of being dropped (root may exceed rmem_max).
UDP_RCVBUF = 64 * 1024 * 1024
#: Most bytes of a bad file region sent to the DLQ (the rest of a corrupt file is not worth a record).
DLQ_MAX_BYTES = 900_000


# ------------------------------------------------------------------------------------------ hand-over


@dataclass(slots=True)
class Batch:
    """Payloads from one source, in arrival order. ``flush`` asks the bridge to cut a container now."""

    source: str
    payloads: list[bytes]
    flush: bool = False


@dataclass(slots=True)
class DeadLetter:
    """Input bytes that hold no usable container, with the contract's headers: why, and where from."""

    data: bytes
    headers: DeadLetterHeaders


@dataclass(slots=True)
class Finished:
    """The source's thread has ended (end of input, stop request or error)."""

    source: Source
    error: str | None = None


class Outbox:
    """The bounded queue from source threads to the bridge, plus the shared stop request.

    ``handler``, when set, takes items directly in the putting thread instead: the bridge runs a lone
    finite source in its own thread that way.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self.queue: queue.Queue[Batch | DeadLetter | Finished] = queue.Queue(maxsize)
        self.stop = threading.Event()
        self.handler: Callable[[Batch | DeadLetter | Finished], None] | None = None

    def put(self, item: Batch | DeadLetter | Finished) -> None:
        """Block until the bridge takes it: the bridge drains the queue until every source has finished."""
        if self.handler is not None:
            self.handler(item)
        else:
            self.queue.put(item)


# --------------------------------------------------------------------------------------------- base


class Source:
    """A thread-run producer of batches. Subclasses implement :meth:`run`.

    ``live`` sources run until stopped; the others end by themselves. ``drops`` holds counts of input
    lost inside the source, by reason; the bridge reads it (plain int reads are safe across threads). A
    source that samples its dead letters also reports, by reason, the dropped inputs it did not
    dead-letter (:meth:`unsampled_counts`).
    ``damaged`` lists the inputs that could not be read whole, one message each naming the input, the
    byte offset and what was wrong; the bridge reads it once the source has finished.
    """

    live = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.drops: Counter[str] = Counter()
        self.damaged: list[str] = []

    def run(self, out: Outbox) -> None:
        raise NotImplementedError

    def drop_counts(self) -> dict[str, int]:
        """Drops so far, by reason; safe to call from the bridge thread while the source runs."""
        return dict(self.drops)  # one C-level copy: no "changed size during iteration" from another thread

    def unsampled_counts(self) -> dict[str, int]:
        """Undecodable inputs counted but not dead-lettered (rate limit), by reason; none by default."""
        return {}

    def progress(self) -> tuple[int, int] | None:
        """(bytes done, bytes total) for an ETA, when the source knows its size."""
        return None

    def close(self, delivered: bool) -> None:
        """Release resources after the bridge flushed; ``delivered`` says every record reached Kafka."""


class DropTracker:
    """Names the drop reason of the datagram just fed to a :class:`DatagramDecoder`.

    The decoder only counts (``stats.drops``); to send a dropped datagram to the DLQ with its reason, the
    source compares the counters with a snapshot taken at the previous change. The snapshot is refreshed
    only when the total moves, so the common case costs one sum over a handful of keys.
    """

    def __init__(self, decoder: DatagramDecoder) -> None:
        self.drops = decoder.stats.drops
        self._snapshot: Counter[str] = Counter(self.drops)
        self._total = 0

    def changed(self) -> str | None:
        """The reason whose count grew since the last call (None when nothing was dropped)."""
        total = sum(self.drops.values())
        if total == self._total:
            return None
        grown = self.drops - self._snapshot
        self._snapshot = Counter(self.drops)
        self._total = total
        return max(grown, key=grown.__getitem__) if grown else "undecodable"


# ------------------------------------------------------------------------------------ replay (files)


@dataclass(frozen=True)
class ReplayInput:
    """One finite input: ``kind`` is "nmsg" (-r) or "pcap" (-p)."""

    kind: str
    path: str


class ReplaySource(Source):
    """Every -r / -p input, one after the other in command-line order, windowed and paced.

    One thread for all of them keeps the capture's time order across consecutive files, which pacing
    needs; files are read far faster than Kafka takes them, so parallel reading would gain nothing.
    """

    def __init__(
        self,
        inputs: list[ReplayInput],
        *,
        window: TimeWindow | None = None,
        pacer: Pacer | None = None,
        capture_environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("replay")
        self.inputs = inputs
        self.window = window or TimeWindow()
        self.pacer = pacer or Pacer()
        self.capture_environ = dict(os.environ if capture_environ is None else capture_environ)
        self._total = sum(_size(i.path) for i in inputs)
        self._done_before = 0
        self._current: object | None = None
        #: per input: the number of payloads read, for the summary
        self.inputs_read: dict[str, int] = {}

    def progress(self) -> tuple[int, int] | None:
        current = self._current
        pos = 0
        if current is not None:
            try:
                pos = current.tell()  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pos = 0
        return self._done_before + pos, self._total

    def run(self, out: Outbox) -> None:
        for item in self.inputs:
            if out.stop.is_set():
                return
            name = f"{item.kind}:{item.path}"
            if item.kind == "nmsg":
                self._replay(out, name, self._nmsg_batches(out, item.path, name))
            else:
                self._replay(out, name, self._pcap_batches(item.path))
            self._done_before += _size(item.path)

    def _nmsg_batches(self, out: Outbox, path: str, name: str) -> Iterator[list[bytes]]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally; the generator outlives a with block
        except OSError as exc:
            self._damage("unreadable_file", f"{path}: cannot open: {exc.strerror}")
            return
        self._current = fh
        reader = ContainerStreamReader(fh, name=path)
        try:
            yield from reader.batches()
        except NmsgDnsError as exc:
            # The reader has counted the drop under its own reason (short, garbage, bad_body, ...).
            offset, message = _container_damage(exc, reader)
            self._damage(None, message)
            reason = "truncated_file" if isinstance(exc, TruncatedError) else "bad_container"
            self._dead_letter_rest(out, fh, name, offset, message, reason)
        except OSError as exc:
            self._damage(
                "unreadable_file", f"{path}: offset {reader.stats.bytes}: cannot read: {exc.strerror}"
            )
        finally:
            self.drops.update(reader.stats.drops)
            self._current = None
            fh.close()

    def _damage(self, drop: str | None, message: str) -> None:
        """Record an input that could not be read whole (and count it under ``drop`` when given)."""
        if drop is not None:
            self.drops[drop] += 1
        self.damaged.append(message)
        log.error("%s; the file is read no further (the records before this point are kept)", message)

    def _dead_letter_rest(
        self, out: Outbox, fh: BinaryIO, name: str, start: int, message: str, reason: str
    ) -> None:
        """Send the bytes from ``start`` (the bad container) on, at most DLQ_MAX_BYTES, to the DLQ."""
        try:
            fh.seek(start)
            data = fh.read(DLQ_MAX_BYTES)
        except OSError:
            return
        if data:
            headers = DeadLetterHeaders(
                stage="ingest", error=message, error_type=reason, source=name, file=fh.name, file_offset=start
            )
            out.put(DeadLetter(data, headers))

    def _pcap_batches(self, path: str) -> Iterator[list[bytes]]:
        from nmsgdns.capture import CaptureOptions, iter_pcap_payloads

        batch: list[bytes] = []
        try:
            for payload in iter_pcap_payloads(path, CaptureOptions.from_env(self.capture_environ)):
                batch.append(payload)
                if len(batch) >= BATCH_RECORDS:
                    yield batch
                    batch = []
        except NmsgDnsError as exc:
            self._damage("bad_pcap", str(exc))  # the capture reader names the file (and the offset)
        except OSError as exc:
            self._damage("unreadable_file", f"{path}: cannot read: {exc.strerror or exc}")
        if batch:
            yield batch

    def _replay(self, out: Outbox, name: str, batches: Iterator[list[bytes]]) -> None:
        window, pacer = self.window, self.pacer
        count = 0
        pending: list[bytes] = []
        if not window.active and not pacer.active:
            for batch in batches:
                pending.extend(batch)
                if len(pending) >= BATCH_RECORDS:
                    count += len(pending)
                    out.put(Batch(name, pending))
                    pending = []
                    if out.stop.is_set():
                        break
        else:
            stopped = False
            for batch in batches:
                for payload in batch:
                    when = record_time(payload)
                    if not window.contains(when):
                        self.drops["outside_window"] += 1
                        continue
                    wait = pacer.delay(when)
                    if wait > 0.001:
                        # Hand over what is due before sleeping, and have it sent now rather than later.
                        count += len(pending)
                        out.put(Batch(name, pending, flush=True))
                        pending = []
                        if out.stop.wait(wait):
                            stopped = True
                            break
                    pending.append(payload)
                if stopped:
                    break
                if len(pending) >= BATCH_RECORDS:
                    count += len(pending)
                    out.put(Batch(name, pending))
                    pending = []
        if pending:
            count += len(pending)
            out.put(Batch(name, pending))
        self.inputs_read[name] = self.inputs_read.get(name, 0) + count


def _container_damage(exc: NmsgDnsError, reader: ContainerStreamReader) -> tuple[int, str]:
    """Where a container stream's damage starts, and its one-line message ``NAME: offset N: KIND: ...``.

    The reader names the bad container's offset in its message (``NAME: offset N: DETAIL``); when that
    cannot be read, the end of the last good container (``stats.bytes``) is the next best start.
    """
    offset, detail = reader.stats.bytes, str(exc)
    prefix = f"{reader.name}: offset "
    if detail.startswith(prefix):
        number, _, rest = detail[len(prefix) :].partition(": ")
        if number.isdigit():
            offset, detail = int(number), rest
    kind = "truncated" if isinstance(exc, TruncatedError) else "bad container"
    return offset, f"{reader.name}: offset {offset}: {kind}: {detail}"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------- UDP


class UdpSource(Source):
    """Datagrams from ``-l ADDR/PORT[..PORT2]`` or a ``-C`` channel: one container per datagram.

    Undecodable datagrams are all counted by reason; at most ``dlq_rate`` per second (token bucket,
    :class:`~ingest.sampling.DeadLetterSampler`) go to the DLQ, each saying how many were not sampled
    since the previous one.
    """

    live = True

    def __init__(
        self,
        name: str,
        endpoints: list[tuple[str, int]],
        *,
        rcvbuf: int = UDP_RCVBUF,
        backlog_bytes: int = UDP_BACKLOG_BYTES,
        dlq_rate: float = DEFAULT_DLQ_RATE,
    ) -> None:
        super().__init__(name)
        self.sampler = DeadLetterSampler(dlq_rate)
        # Open now, not in the thread: a port in use must fail the command before anything else starts.
        self.receiver = UdpReceiver(list(endpoints), rcvbuf=rcvbuf)
        self.backlog_bytes = backlog_bytes
        self.decoder = DatagramDecoder()
        self.datagrams = 0
        self._backlog: deque[tuple[bytes, tuple]] = deque()
        self._backlog_size = 0
        self._receiving_done = threading.Event()
        self._last_rx = 0.0

    def addresses(self) -> list[tuple[str, int]]:
        """Bound (addr, port) of every socket."""
        return self.receiver.addresses()

    def _receive(self, stop: threading.Event) -> None:
        """Receive-only loop: drain the sockets into the backlog as fast as the kernel hands datagrams."""
        backlog = self._backlog
        receive = self.receiver.receive
        try:
            while not stop.is_set():
                got = receive(0.2)
                if not got:
                    continue
                self._last_rx = time.monotonic()
                size = sum(len(d) for d, _ in got)
                if self._backlog_size + size > self.backlog_bytes:
                    self.drops["udp_backlog_full"] += len(got)
                    continue
                self._backlog_size += size
                backlog.extend(got)
        finally:
            self._receiving_done.set()

    def run(self, out: Outbox) -> None:
        thread = threading.Thread(
            target=self._receive, args=(out.stop,), name=f"{self.name}-recv", daemon=True
        )
        thread.start()
        backlog = self._backlog
        feed = self.decoder.feed
        sample = self.sampler.sample
        tracker = DropTracker(self.decoder)
        idle_since = time.monotonic()
        while backlog or not self._receiving_done.is_set():
            if not backlog:
                if time.monotonic() - idle_since > 1.0:
                    self.decoder.expire()
                    tracker.changed()
                    idle_since = time.monotonic()
                time.sleep(0.002)
                continue
            payloads: list[bytes] = []
            while backlog and len(payloads) < BATCH_RECORDS:
                if self.datagrams % _YIELD_EVERY == 0 and time.monotonic() - self._last_rx < _RX_ACTIVE:
                    # Datagrams are arriving: let the receive thread have the GIL now instead of after
                    # the 5 ms switch interval, in which a fast sender overruns the kernel buffer.
                    time.sleep(_YIELD_SLEEP)
                datagram, sender = backlog.popleft()
                self._backlog_size -= len(datagram)
                self.datagrams += 1
                got = feed(datagram, sender)
                reason = tracker.changed()
                if got:
                    payloads.extend(got)
                elif reason is not None and (unsampled := sample(reason)) is not None:
                    headers = DeadLetterHeaders(
                        stage="ingest",
                        error=f"undecodable datagram ({reason})",
                        error_type=reason,
                        source=self.name,
                        sender=_fmt(sender),
                        unsampled=unsampled,
                    )
                    out.put(DeadLetter(datagram, headers))
            if payloads:
                out.put(Batch(self.name, payloads))
        thread.join()
        self.decoder.reassembler.drop_all()

    def drop_counts(self) -> dict[str, int]:
        counts = Counter(dict(self.drops))
        counts.update(dict(self.decoder.stats.drops))
        counts["kernel_rcvbuf"] = self.receiver.kernel_drops
        return dict(counts)

    def unsampled_counts(self) -> dict[str, int]:
        return dict(self.sampler.unsampled)

    def close(self, delivered: bool) -> None:
        self.receiver.close()


def _fmt(sender: object) -> str:
    if isinstance(sender, tuple) and len(sender) >= 2:
        return f"{sender[0]}/{sender[1]}"
    return str(sender)


# -------------------------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class KafkaEndpoint:
    """A topic written by ``nmsgtool --writekafka``: ``nmsg:TOPIC[#PARTITION|%GROUP]@BROKER[,OFFSET]``."""

    topic: str
    partition: int | None = None
    group: str | None = None
    broker: str | None = None
    #: "oldest", "newest" or an absolute offset
    offset: str = "oldest"

    @classmethod
    def parse(cls, text: str) -> KafkaEndpoint:
        """Either nmsgtool's endpoint syntax or a bare topic name (brokers then come from the flags)."""
        if not text.startswith("nmsg:"):
            if not text or any(c in text for c in "#%@,"):
                raise ValueError(f"{text!r}: expected TOPIC or nmsg:TOPIC[#PARTITION|%GROUP]@BROKER[,OFFSET]")
            return cls(topic=text)
        spec = text[len("nmsg:") :]
        spec, _, broker = spec.partition("@")
        broker, _, offset = broker.partition(",")
        partition = group = None
        if "#" in spec:
            spec, _, part = spec.partition("#")
            if not part.isdigit():
                raise ValueError(f"{text!r}: partition {part!r} is not a number")
            partition = int(part)
        elif "%" in spec:
            spec, _, group = spec.partition("%")
        if not spec or not broker:
            raise ValueError(f"{text!r}: expected nmsg:TOPIC[#PARTITION|%GROUP]@BROKER[,OFFSET]")
        offset = offset or "oldest"
        if offset not in ("oldest", "newest") and not offset.lstrip("-").isdigit():
            raise ValueError(f"{text!r}: offset must be oldest, newest or a number")
        return cls(topic=spec, partition=partition, group=group or None, broker=broker, offset=offset)


class KafkaSource(Source):
    """Containers from a Kafka topic in nmsgtool's format: each record value is one NMSG container.

    With a group (``%GROUP``) offsets are committed only after the bridge has flushed its producer with
    every record delivered (at-least-once); without one, partitions are assigned directly and nothing is
    committed. ``stop_at_eof`` makes the source finite: it ends once every partition reached its end.
    """

    def __init__(self, endpoint: KafkaEndpoint, client_conf: Mapping[str, str], *, stop_at_eof: bool) -> None:
        super().__init__(f"kafka:{endpoint.topic}")
        self.endpoint = endpoint
        self.live = not stop_at_eof
        self.stop_at_eof = stop_at_eof
        conf = dict(client_conf)
        if endpoint.broker:
            conf["bootstrap.servers"] = endpoint.broker
        conf.update(
            {
                "group.id": endpoint.group or f"dnsqr-ingest-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "latest" if endpoint.offset == "newest" else "earliest",
                "session.timeout.ms": 6000,
            }
        )
        self.consumer = Consumer(conf)
        self.decoder = DatagramDecoder()
        self.records = 0
        self._assigned: set[tuple[str, int]] = set()
        self._at_eof: set[tuple[str, int]] = set()

    def _start_offset(self) -> int:
        offset = self.endpoint.offset
        if offset == "oldest":
            return OFFSET_BEGINNING
        if offset == "newest":
            return OFFSET_END
        return int(offset)

    def _subscribe(self) -> None:
        ep = self.endpoint
        if ep.group:

            def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
                self._assigned.update((p.topic, p.partition) for p in partitions)

            def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
                for p in partitions:
                    self._assigned.discard((p.topic, p.partition))
                    self._at_eof.discard((p.topic, p.partition))

            self.consumer.subscribe([ep.topic], on_assign=on_assign, on_revoke=on_revoke)
            return
        if ep.partition is not None:
            partitions = [ep.partition]
        else:
            meta = self.consumer.list_topics(ep.topic, timeout=15)
            tmeta = meta.topics.get(ep.topic)
            if tmeta is None or tmeta.error is not None:
                raise KafkaException(
                    tmeta.error if tmeta is not None else KafkaError(KafkaError._UNKNOWN_TOPIC)
                )
            partitions = sorted(tmeta.partitions)
        start = self._start_offset()
        tps = [TopicPartition(ep.topic, p, start) for p in partitions]
        self._assigned.update((ep.topic, p) for p in partitions)
        self.consumer.assign(tps)

    def run(self, out: Outbox) -> None:
        self._subscribe()
        feed = self.decoder.feed
        tracker = DropTracker(self.decoder)
        while not out.stop.is_set():
            msgs = self.consumer.consume(1000, timeout=0.2)
            payloads: list[bytes] = []
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._at_eof.add((msg.topic(), msg.partition()))
                    elif err.fatal():
                        raise KafkaException(err)
                    else:
                        log.warning("%s: %s", self.name, err.str())
                    continue
                self._at_eof.discard((msg.topic(), msg.partition()))
                self.records += 1
                value = msg.value() or b""
                got = feed(value, (msg.topic(), msg.partition()))
                reason = tracker.changed()
                if got:
                    payloads.extend(got)
                elif reason is not None:
                    headers = DeadLetterHeaders(
                        stage="ingest",
                        error=f"undecodable record ({reason})",
                        error_type=reason,
                        source=self.name,
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                    )
                    out.put(DeadLetter(value, headers))
            if payloads:
                out.put(Batch(self.name, payloads))
            if self.stop_at_eof and self._assigned and self._at_eof >= self._assigned:
                break
        self.decoder.reassembler.drop_all()

    def drop_counts(self) -> dict[str, int]:
        return dict(self.decoder.stats.drops)

    def close(self, delivered: bool) -> None:
        try:
            if delivered and self.endpoint.group:
                try:
                    self.consumer.commit(asynchronous=False)
                except KafkaException as exc:
                    # Nothing consumed since the last commit, or the group is gone: not a data loss.
                    log.warning("%s: offset commit failed: %s", self.name, exc)
        finally:
            self.consumer.close()
