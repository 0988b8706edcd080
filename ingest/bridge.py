"""The ingest bridge as a library: sources -> base:dnsqr gate -> container packer -> raw topic.

``run_ingest(config)`` is what ``dnsqr-pipeline ingest`` runs and what the ``run`` command can call
in-process. One thread (the caller's) owns the packer and the producer, so neither needs a lock; sources
run in their own threads and hand over batches (see ``ingest.sources``).

Accounting, which the summary and the exit status rest on: every payload a source hands over is counted
in ``records_in``; it is then either dropped by the gate (``not_dnsqr``, ``bad_payload``) or packed, and
every packed record ends as delivered or failed in the producer's delivery callbacks. Input lost before
it became a payload (kernel buffer overruns, undecodable datagrams, a truncated file) is counted by the
source under its reason, and undecodable bytes go to the dead-letter topic when there is one: one for one
from files and Kafka, a sample of at most ``dlq_rate`` per second per UDP source (the rest counted by
reason as ``dead_letters_unsampled``), so that no sender can flood the topic. A file
that could not be read whole is also named, with the byte offset, in the summary's ``damaged_inputs``: its
records before that offset are delivered like any others, and the exit status still says the input was
incomplete.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from dnsqr_kafka.names import DEFAULT_NAMES
from ingest.metrics import IngestMetrics
from ingest.packer import DEFAULT_CONTAINER_BYTES, DEFAULT_CONTAINER_RECORDS, ContainerBuilder, DnsqrGate
from ingest.producer import IngestError, RawProducer
from ingest.progress import Progress
from ingest.replay import Pacer, TimeWindow
from ingest.sampling import DEFAULT_DLQ_RATE
from ingest.sources import (
    UDP_RCVBUF,
    Batch,
    DeadLetter,
    Finished,
    KafkaEndpoint,
    KafkaSource,
    Outbox,
    ReplayInput,
    ReplaySource,
    Source,
    UdpSource,
)
from nmsgdns.chalias import channel_endpoints, parse_endpoint
from nmsgdns.errors import ChannelError

log = logging.getLogger(__name__)

#: Seconds between progress/metrics ticks of the main loop.
_TICK = 0.5


@dataclass
class IngestConfig:
    """Everything one ingest run needs; the CLI flags map onto these fields one to one."""

    kafka: Mapping[str, str]
    files: list[str] = field(default_factory=list)
    pcaps: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    chalias: str | None = None
    kafka_sources: list[str] = field(default_factory=list)
    #: stop Kafka sources at the end of their partitions (makes them finite)
    kafka_source_eof: bool = False
    raw_topic: str = DEFAULT_NAMES.raw
    dlq_topic: str | None = DEFAULT_NAMES.raw_dlq
    #: most dead letters per second per UDP/channel source (token bucket; the rest are only counted)
    dlq_rate: float = DEFAULT_DLQ_RATE
    key: str | None = None
    container_records: int = DEFAULT_CONTAINER_RECORDS
    container_bytes: int = DEFAULT_CONTAINER_BYTES
    container_crcs: bool = False
    #: longest a packed-but-unsent record may wait for its container to fill (ms)
    container_max_delay_ms: int = 500
    linger_ms: int = 100
    compression: str = "lz4"
    speed: float | None = None
    start: float | None = None
    end: float | None = None
    #: environment for pcap capture (DNSQR_*); None means this process's environment
    capture_environ: Mapping[str, str] | None = None
    rcvbuf: int = UDP_RCVBUF
    metrics_port: int | None = None
    progress_bar: bool | None = None
    progress_interval: float = 10.0
    startup_timeout: float = 15.0
    flush_timeout: float = 60.0


@dataclass
class IngestSummary:
    """Outcome of a run: ``ok`` (every record read was delivered) and ``input_complete`` (every input was
    read whole) are what the exit status reports, separately."""

    records_in: dict[str, int] = field(default_factory=dict)
    records_packed: int = 0
    records_out: int = 0
    containers_out: int = 0
    records_failed: int = 0
    records_unresolved: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    dead_letters_failed: int = 0
    #: undecodable datagrams counted (in ``dropped``) but not dead-lettered under the rate limit, by reason
    dead_letters_unsampled: dict[str, int] = field(default_factory=dict)
    delivery_errors: dict[str, int] = field(default_factory=dict)
    source_errors: list[str] = field(default_factory=list)
    #: inputs that could not be read whole (a damaged or unreadable file), one message each naming the
    #: file, the byte offset and what was wrong; each was read up to that offset, the rest was skipped
    damaged_inputs: list[str] = field(default_factory=list)
    fatal_error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Every packed record delivered, no fatal error, no source that died of an unexpected error."""
        return (
            self.fatal_error is None
            and self.records_failed == 0
            and self.records_unresolved == 0
            and self.dead_letters_failed == 0
            and not self.source_errors
        )

    @property
    def input_complete(self) -> bool:
        """Every input was read whole: no file damaged or unreadable, no source that died."""
        return not self.damaged_inputs and not self.source_errors

    def format(self) -> str:
        """Human-readable summary printed at the end of ``dnsqr-pipeline ingest``."""
        total_in = sum(self.records_in.values())
        rate = total_in / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"ingest summary ({self.elapsed:.1f} s, {rate:,.0f} records/s in):",
            f"  records in:  {total_in}",
        ]
        lines += [f"    {src}: {n}" for src, n in sorted(self.records_in.items())]
        lines.append(f"  records out: {self.records_out} in {self.containers_out} containers")
        if self.records_failed or self.records_unresolved:
            lines.append(
                f"  records FAILED: {self.records_failed}, unresolved at exit: {self.records_unresolved}"
            )
        for name, n in sorted(self.delivery_errors.items()):
            lines.append(f"    delivery error {name}: {n}")
        dropped = sum(self.dropped.values())
        lines.append(f"  dropped: {dropped}" + ("" if dropped else " (none)"))
        lines += [f"    {reason}: {n}" for reason, n in sorted(self.dropped.items())]
        unsampled = sum(self.dead_letters_unsampled.values())
        if self.dead_letters or self.dead_letters_failed or unsampled:
            lines.append(f"  dead letters: {self.dead_letters} sent, {self.dead_letters_failed} failed")
        if unsampled:
            lines.append(f"    not sampled (--dlq-rate limit), counted in dropped only: {unsampled}")
            lines += [f"      {reason}: {n}" for reason, n in sorted(self.dead_letters_unsampled.items())]
        lines += [f"  source error: {err}" for err in self.source_errors]
        if self.damaged_inputs:
            lines += [f"  input DAMAGED: {damage}" for damage in self.damaged_inputs]
            before = "delivered" if self.ok else "read, but not all delivered (see above)"
            lines.append(f"    each file was read up to its damage only; the records before it were {before}")
        if self.fatal_error:
            lines.append(f"  FATAL: {self.fatal_error}")
        return "\n".join(lines)


def replay_inputs(config: IngestConfig) -> list[ReplayInput]:
    """The -r and -p inputs in command-line order, each checked to be a readable file.

    Raises IngestError saying what a path is instead (missing, a directory, unreadable). Only local
    checks: the bridge runs them before it asks for the broker, so a wrong path is the first thing said.
    """
    inputs = [ReplayInput("nmsg", f) for f in config.files] + [ReplayInput("pcap", p) for p in config.pcaps]
    for item in inputs:
        path = item.path
        if os.path.isdir(path):
            kind, pattern = ("NMSG", "*.nmsg") if item.kind == "nmsg" else ("pcap", "*.pcap")
            raise IngestError(
                f"{path} is a directory; give the {kind} files in it, e.g. {os.path.join(path, pattern)}"
            )
        if not os.path.exists(path):
            raise IngestError(f"{path}: no such file")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise IngestError(f"{path}: not a readable file")
    return inputs


def build_sources(config: IngestConfig, inputs: list[ReplayInput]) -> list[Source]:
    """The configured sources, opened (sockets bound) so configuration errors surface before any input.

    ``inputs`` are the checked files of :func:`replay_inputs`. Raises IngestError naming the bad flag value.
    """
    sources: list[Source] = []
    try:
        if inputs:
            sources.append(
                ReplaySource(
                    inputs,
                    window=TimeWindow(config.start, config.end),
                    pacer=Pacer(config.speed),
                    capture_environ=config.capture_environ,
                )
            )
        udp = {"rcvbuf": config.rcvbuf, "dlq_rate": config.dlq_rate}
        for spec in config.listen:
            sources.append(UdpSource(f"udp:{spec}", parse_endpoint(spec), **udp))
        for channel in config.channels:
            sources.append(UdpSource(f"channel:{channel}", channel_endpoints(channel, config.chalias), **udp))
        for spec in config.kafka_sources:
            endpoint = KafkaEndpoint.parse(spec)
            sources.append(KafkaSource(endpoint, config.kafka, stop_at_eof=config.kafka_source_eof))
    except (ChannelError, ValueError, OSError) as exc:
        for source in sources:
            source.close(False)
        raise IngestError(str(exc)) from None
    if not sources:
        raise IngestError("no source: give at least one of -r, -p, -l, -C or --kafka-source")
    return sources


class Bridge:
    """One ingest run. Use :func:`run_ingest` unless the caller needs the bound UDP addresses first."""

    def __init__(self, config: IngestConfig, *, stop: threading.Event | None = None) -> None:
        self.config = config
        self.outbox = Outbox()
        if stop is not None:
            self.outbox.stop = stop
        inputs = replay_inputs(config)
        self.producer = RawProducer(
            config.kafka,
            topic=config.raw_topic,
            dlq_topic=config.dlq_topic,
            compression=config.compression,
            linger_ms=config.linger_ms,
            key=config.key.encode() if config.key else None,
        )
        self.producer.check_connection(config.startup_timeout)
        self.sources = build_sources(config, inputs)
        self.packer = ContainerBuilder(
            config.container_records, config.container_bytes, crcs=config.container_crcs
        )
        self.gate = DnsqrGate()
        self.records_in: Counter[str] = Counter()
        self.metrics = IngestMetrics() if config.metrics_port is not None else None
        self.metrics_port: int | None = None
        self.progress = Progress(bar=config.progress_bar, interval=config.progress_interval)
        self._source_errors: list[str] = []
        self._max_delay = config.container_max_delay_ms / 1000.0
        self._next_tick = time.monotonic() + _TICK

    @property
    def stop(self) -> threading.Event:
        """Set it (e.g. from a signal handler) to stop the sources, flush and return."""
        return self.outbox.stop

    def udp_addresses(self) -> list[tuple[str, int]]:
        """Bound addresses of every UDP source (for port 0 in tests)."""
        return [a for s in self.sources if isinstance(s, UdpSource) for a in s.addresses()]

    def run(self) -> IngestSummary:
        started = time.monotonic()
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port or 0)
            log.info("metrics on http://127.0.0.1:%d/metrics", self.metrics_port)
        inline = len(self.sources) == 1 and not self.sources[0].live
        threads: list[threading.Thread] = []
        if not inline:
            threads = [
                threading.Thread(target=self._run_source, args=(s,), name=f"source-{s.name}", daemon=True)
                for s in self.sources
            ]
            for t in threads:
                t.start()
        try:
            if inline:
                # One finite source (the file-replay case): read, pack and produce in this one thread. A
                # reader thread would only add GIL hand-offs, which cost more than the queue saves.
                self.outbox.handler = self._handle_inline
                self._run_source(self.sources[0])
            else:
                self._loop()
        finally:
            self.outbox.stop.set()
            self._drain(threads)
            for packed in self.packer.flush():
                self.producer.send(packed.container, packed.records)
            flushed = self.producer.flush(self.config.flush_timeout)
            if not flushed:
                log.error(
                    "%d messages still undelivered after %g s; counted as unresolved",
                    self.producer.queue_depth(),
                    self.config.flush_timeout,
                )
            summary = self._summary(time.monotonic() - started)
            for source in self.sources:
                try:
                    source.close(summary.ok)
                except Exception as exc:  # closing must not hide the summary
                    log.warning("%s: close: %s", source.name, exc)
            self._tick(final=True)
            self.progress.close()
            if self.metrics is not None:
                self.metrics.stop()
        return summary

    def _run_source(self, source: Source) -> None:
        error = None
        try:
            source.run(self.outbox)
        except Exception as exc:
            # A source failing must end this source, not the run, and must not pass unnoticed.
            log.exception("%s failed", source.name)
            error = f"{source.name}: {exc}"
        self.outbox.put(Finished(source, error))

    def _loop(self) -> None:
        live = any(s.live for s in self.sources)
        running = len(self.sources)
        get = self.outbox.queue.get
        stop = self.outbox.stop
        while running:
            if self.producer.fatal is not None or stop.is_set():
                return
            try:
                item = get(timeout=0.1)
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
                if isinstance(item, Finished):
                    running -= 1
                    if not live and running == 0:
                        return
            self._maintain()

    def _handle_inline(self, item: Batch | DeadLetter | Finished) -> None:
        self._handle(item)
        self._maintain()
        if self.producer.fatal is not None:
            self.outbox.stop.set()

    def _handle(self, item: Batch | DeadLetter | Finished) -> None:
        if isinstance(item, Batch):
            self._take(item)
        elif isinstance(item, DeadLetter):
            self._dead_letter(item)
        else:
            self._finished(item)

    def _maintain(self) -> None:
        """Between items: send a container that waited too long, serve callbacks, tick progress/metrics."""
        now = time.monotonic()
        oldest = self.packer.oldest
        if oldest is not None and now - oldest >= self._max_delay:
            self._send(self.packer.flush())
        self.producer.poll(0)
        if now >= self._next_tick:
            self._next_tick = now + _TICK
            self._tick()

    def _drain(self, threads: list[threading.Thread]) -> None:
        """After stop: keep taking what sources still hand over until every source thread has ended."""
        get = self.outbox.queue.get
        deadline = time.monotonic() + 30.0
        while any(t.is_alive() for t in threads) or not self.outbox.queue.empty():
            try:
                item = get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    log.error("sources did not stop within 30 s; abandoning them")
                    return
                continue
            self._handle(item)
            self.producer.poll(0)

    def _take(self, batch: Batch) -> None:
        payloads = batch.payloads
        self.records_in[batch.source] += len(payloads)
        kept = self.gate.keep(payloads)
        if kept:
            self._send(self.packer.add(kept))
        if batch.flush:
            self._send(self.packer.flush())

    def _send(self, packed: list) -> None:
        for p in packed:
            self.producer.send(p.container, p.records)

    def _dead_letter(self, item: DeadLetter) -> None:
        # Without a DLQ topic the bytes are gone, but the source has already counted the drop.
        self.producer.send_dead_letter(item.data, item.headers.encode())

    def _finished(self, item: Finished) -> None:
        if item.error:
            self._source_errors.append(item.error)
        else:
            log.debug("%s finished", item.source.name)

    def _drops(self) -> dict[str, int]:
        drops: Counter[str] = Counter()
        for source in self.sources:
            drops.update(source.drop_counts())
        drops.update(self.gate.drops())
        return {k: v for k, v in drops.items() if v}

    def _unsampled(self) -> dict[str, int]:
        unsampled: Counter[str] = Counter()
        for source in self.sources:
            unsampled.update(source.unsampled_counts())
        return dict(unsampled)

    def _tick(self, final: bool = False) -> None:
        drops = self._drops()
        total_in = sum(self.records_in.values())
        raw = self.producer.raw
        sized = None
        for s in self.sources:
            p = s.progress()
            if p is not None:
                sized = p
        if not final:
            self.progress.update(total_in, raw.records_delivered, drops, sized)
        if self.metrics is not None:
            self.metrics.update(
                records_in=dict(self.records_in),
                records_out=raw.records_delivered,
                containers_out=raw.containers_delivered,
                drops=drops,
                delivery_errors=raw.records_failed,
                dead_letters=self.producer.dlq.records_delivered,
                dead_letters_unsampled=self._unsampled(),
                queue_depth=self.producer.queue_depth(),
            )

    def _summary(self, elapsed: float) -> IngestSummary:
        raw, dlq = self.producer.raw, self.producer.dlq
        errors = dict(raw.errors)
        for name, n in dlq.errors.items():
            errors[f"dlq:{name}"] = n
        return IngestSummary(
            records_in=dict(self.records_in),
            records_packed=raw.records_sent,
            records_out=raw.records_delivered,
            containers_out=raw.containers_delivered,
            records_failed=raw.records_failed,
            records_unresolved=raw.records_sent - raw.records_delivered - raw.records_failed,
            dropped=self._drops(),
            dead_letters=dlq.records_delivered,
            dead_letters_failed=dlq.records_failed
            + (dlq.records_sent - dlq.records_delivered - dlq.records_failed),
            dead_letters_unsampled=self._unsampled(),
            delivery_errors=errors,
            source_errors=list(self._source_errors),
            damaged_inputs=[damage for source in self.sources for damage in source.damaged],
            fatal_error=self.producer.fatal.str() if self.producer.fatal is not None else None,
            elapsed=elapsed,
        )


def run_ingest(config: IngestConfig, *, stop: threading.Event | None = None) -> IngestSummary:
    """Run ingest until finite sources end (or ``stop`` is set); raises IngestError on bad configuration
    or an unreachable broker, before consuming any input."""
    return Bridge(config, stop=stop).run()
