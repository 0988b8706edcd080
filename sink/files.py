"""Rotating NMSG files, one open file per Kafka partition, named by partition and offset range.

Pure file handling: nothing here imports Kafka, so rotation, naming and atomicity are testable alone.

The sink commits a Kafka offset only once every record before it is on disk for good. This module gives
it exactly that signal: each :class:`Durable` it returns says "in partition P, every record below offset N
is durable", and it returns one only after the file holding those records was written to a temporary
name, fsync'd, renamed to its final name and the directory fsync'd. Until the rename nothing under a final
name exists, so a crash leaves at most a temporary file (ignored by readers, removed on the next
assignment) and an uncommitted range that Kafka redelivers.

Final names carry the partition and the first and last offset consumed into the file, e.g.
``failures-p0003-o000000000120-000000000345.nmsg``. That makes a replay idempotent in two ways:

* size rotation depends only on the records, so replaying the same range produces the same name and the
  rename replaces the old file with identical content;
* a crash between rename and offset commit leaves a final file whose range Kafka redelivers; every
  redelivered offset that an existing final file already covers is skipped (reported durable without
  writing), so even a time-rotated file whose boundaries would differ on replay is never duplicated.
  The directory, not only the committed offset, is the record of what is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from nmsgdns.container import BUFSZ_MAX
from nmsgdns.output import ContainerPacker

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "failures"
TMP_SUFFIX = ".tmp"
_FINAL_RE = re.compile(r"^(?P<prefix>.+)-p(?P<partition>\d{4,})-o(?P<first>\d{12,})-(?P<last>\d{12,})\.nmsg$")


def final_name(prefix: str, partition: int, first: int, last: int) -> str:
    """The final file name of ``partition``'s records ``first..last`` (inclusive).

    Fixed-width numbers make a plain ``ls`` list each partition's files in offset order.
    """
    return f"{prefix}-p{partition:04d}-o{first:012d}-{last:012d}.nmsg"


def tmp_name(prefix: str, partition: int, first: int) -> str:
    """The temporary name of the file being filled from ``first``.

    A leading dot and the ``.tmp`` suffix keep it out of ``*.nmsg`` globs; the pid keeps two processes
    that briefly both think they own a partition (during a rebalance) from writing into one file.
    """
    return f".{prefix}-p{partition:04d}-o{first:012d}.{os.getpid()}{TMP_SUFFIX}"


@dataclass(frozen=True)
class FinalFile:
    """A final file name taken apart."""

    prefix: str
    partition: int
    first: int
    last: int


def parse_final_name(name: str) -> FinalFile | None:
    """The parts of a final file name, or None when ``name`` is not one (temporary or foreign files)."""
    match = _FINAL_RE.match(name)
    if match is None:
        return None
    return FinalFile(match["prefix"], int(match["partition"]), int(match["first"]), int(match["last"]))


def final_files(directory: Path, prefix: str, partition: int | None = None) -> list[Path]:
    """The final files of ``prefix`` in ``directory`` (of one partition if given), by partition and offset."""
    found: list[tuple[int, int, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            parsed = parse_final_name(entry.name)
            if parsed is None or parsed.prefix != prefix:
                continue
            if partition is None or parsed.partition == partition:
                found.append((parsed.partition, parsed.first, Path(entry.path)))
    return [path for _, _, path in sorted(found)]


@dataclass(frozen=True)
class Durable:
    """Every record of ``partition`` below ``next_offset`` is durable: ``next_offset`` may be committed.

    ``path`` is the file just finalized, or None when the progress came without a new file (an offset
    an existing file already covers, or a record that had no payload to write).
    """

    partition: int
    next_offset: int
    path: Path | None = None
    payloads: int = 0


class Discard(Enum):
    """Why a partly filled file was thrown away; the value completes "N partial files discarded ..."."""

    #: the partition was revoked or lost (or assigned afresh while a file of it was still open)
    REBALANCE = "on a rebalance"
    #: the sink is ending on an exception (disk full, a broken broker connection)
    ERROR = "after an error"


@dataclass
class FileSetStats:
    """What the file set did, for the sink's summary."""

    files: int = 0
    payloads: int = 0
    payload_bytes: int = 0
    #: bytes of the final files (containers as written, compressed or not)
    file_bytes: int = 0
    #: redelivered offsets skipped because an existing final file already holds them
    already_durable: int = 0
    #: partially filled files thrown away, by reason: Kafka redelivers their range
    discarded: Counter[Discard] = field(default_factory=Counter)


@dataclass
class _OpenFile:
    partition: int
    first: int
    last: int
    tmp: Path
    fh: BinaryIO
    packer: ContainerPacker
    opened_at: float
    #: when the last payload went in (for ``rotate_idle``)
    appended_at: float
    payloads: int = 0
    payload_bytes: int = 0


@dataclass
class _Partition:
    #: ranges (first, last) of final files found on assignment that end at or after the next offset
    covered: deque[tuple[int, int]] = field(default_factory=deque)
    current: _OpenFile | None = None
    last_offset: int = -1


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the new name is in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartitionFileSet:
    """The files the sink is filling in ``directory``: at most one open file per partition.

    ``rotate_bytes`` counts the uncompressed payload bytes in a file (so boundaries depend only on the
    records and a replay reproduces them); ``rotate_seconds`` bounds how long a file stays open, checked by
    :meth:`expire`, so a quiet partition still gets its records on disk and its offsets committed.
    ``rotate_idle`` also finalizes a file no payload has joined for that long: a batch job, whose input
    ends, has its last records durable that soon instead of up to ``rotate_seconds`` later.
    ``on_fsync`` is told how long each finalization took to make its file durable (fsync of the file, rename,
    fsync of the directory), for the sink's metrics.
    """

    def __init__(
        self,
        directory: Path,
        *,
        prefix: str = DEFAULT_PREFIX,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_seconds: float | None = 300.0,
        rotate_idle: float | None = None,
        compress: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_fsync: Callable[[float], None] | None = None,
    ) -> None:
        if not prefix or "/" in prefix or prefix.startswith("."):
            raise ValueError(f"file prefix must be a plain, non-hidden name, got {prefix!r}")
        if rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be positive")
        self.directory = Path(directory)
        self.prefix = prefix
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds if rotate_seconds and rotate_seconds > 0 else None
        self.rotate_idle = rotate_idle if rotate_idle and rotate_idle > 0 else None
        self.compress = compress
        self.clock = clock
        self.on_fsync = on_fsync
        self.stats = FileSetStats()
        self._partitions: dict[int, _Partition] = {}

    # -------------------------------------------------------------------------------- ownership

    def adopt(self, partition: int) -> None:
        """Take ``partition`` over: note which offsets existing final files hold, drop stale temp files.

        Temporary files of this partition belong to a writer that crashed or lost the partition; their
        range was never committed, so Kafka redelivers it and they are garbage.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.discard([partition], Discard.REBALANCE)
        state = _Partition()
        for path in final_files(self.directory, self.prefix, partition):
            parsed = parse_final_name(path.name)
            assert parsed is not None  # final_files only lists parseable names
            state.covered.append((parsed.first, parsed.last))
        self._partitions[partition] = state
        stale = f".{self.prefix}-p{partition:04d}-o"
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(stale) and entry.name.endswith(TMP_SUFFIX):
                    log.info("removing stale temporary file %s", entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def discard(self, partitions: Iterable[int], reason: Discard) -> None:
        """Forget ``partitions``, deleting their partly filled temporary files; counted under ``reason``.

        Their offsets were not committed, so whoever owns the partition next re-consumes that range and
        writes it again; finishing the file instead could race the new owner and duplicate the range.
        """
        for partition in partitions:
            state = self._partitions.pop(partition, None)
            if state is None or state.current is None:
                continue
            current = state.current
            current.fh.close()
            with contextlib.suppress(FileNotFoundError):
                current.tmp.unlink()
            self.stats.discarded[reason] += 1
            log.info(
                "discarded partial file of partition %d (offsets %d-%d, %d payloads) %s: not committed",
                partition,
                current.first,
                current.last,
                current.payloads,
                reason.value,
            )

    def accepts(self, partition: int, offset: int) -> bool:
        """Whether ``offset`` is new for an owned ``partition`` (:meth:`append` would take it)."""
        state = self._partitions.get(partition)
        return state is not None and offset > state.last_offset

    @property
    def partitions(self) -> list[int]:
        """The partitions this set currently owns."""
        return sorted(self._partitions)

    # -------------------------------------------------------------------------------- writing

    def append(self, partition: int, offset: int, payload: bytes | None) -> list[Durable]:
        """Add the record at ``offset`` of ``partition``; ``payload`` None means nothing to write.

        A record without payload (an undecodable value, dead-lettered by the caller) still advances the
        open file's range, so its offset is committed with that file; with no file open it is durable at
        once. Returns the progress this call made durable (empty while a file is still filling).
        """
        state = self._partitions.get(partition)
        if state is None:
            raise KeyError(f"partition {partition} was not adopted")
        if offset <= state.last_offset:
            raise ValueError(f"partition {partition}: offset {offset} after {state.last_offset}")
        state.last_offset = offset
        done: list[Durable] = []
        if self._is_covered(state, offset):
            if state.current is not None:
                done.append(self._finalize(state))
            self.stats.already_durable += 1
            done.append(Durable(partition, offset + 1))
            return done
        current = state.current
        if payload is None:
            if current is None:
                done.append(Durable(partition, offset + 1))
            else:
                current.last = offset
            return done
        if current is None:
            current = state.current = self._open(partition, offset)
        for container in current.packer.add(payload):
            current.fh.write(container)
        current.last = offset
        current.appended_at = self.clock()
        current.payloads += 1
        current.payload_bytes += len(payload)
        if current.payload_bytes >= self.rotate_bytes:
            done.append(self._finalize(state))
        return done

    def expire(self) -> list[Durable]:
        """Finalize every file open for ``rotate_seconds`` or idle for ``rotate_idle`` or more."""
        if self.rotate_seconds is None and self.rotate_idle is None:
            return []
        now = self.clock()
        return [
            self._finalize(state)
            for state in self._partitions.values()
            if state.current is not None and self._expired(state.current, now)
        ]

    def _expired(self, current: _OpenFile, now: float) -> bool:
        if self.rotate_seconds is not None and now - current.opened_at >= self.rotate_seconds:
            return True
        return self.rotate_idle is not None and now - current.appended_at >= self.rotate_idle

    def finalize_all(self) -> list[Durable]:
        """Finalize every open file (clean shutdown)."""
        return [self._finalize(state) for state in self._partitions.values() if state.current is not None]

    def close(self) -> None:
        """Discard whatever is still open (error path: nothing of it was committed)."""
        self.discard(list(self._partitions), Discard.ERROR)

    # -------------------------------------------------------------------------------- internals

    @staticmethod
    def _is_covered(state: _Partition, offset: int) -> bool:
        covered = state.covered
        while covered and covered[0][1] < offset:
            covered.popleft()
        return bool(covered) and covered[0][0] <= offset

    def _open(self, partition: int, first: int) -> _OpenFile:
        tmp = self.directory / tmp_name(self.prefix, partition, first)
        fh = open(tmp, "wb")  # noqa: SIM115 - lives until the file is finalized or discarded
        # libnmsg writes files with its largest buffer size; so do we (fewer, larger containers)
        packer = ContainerPacker(BUFSZ_MAX, compress=self.compress, crcs=True)
        now = self.clock()
        return _OpenFile(partition, first, first, tmp, fh, packer, opened_at=now, appended_at=now)

    def _finalize(self, state: _Partition) -> Durable:
        current = state.current
        assert current is not None
        for container in current.packer.flush():
            current.fh.write(container)
        current.fh.flush()
        size = current.fh.tell()
        started = time.perf_counter()
        os.fsync(current.fh.fileno())
        current.fh.close()
        final = self.directory / final_name(self.prefix, current.partition, current.first, current.last)
        os.replace(current.tmp, final)
        fsync_directory(self.directory)
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - started)
        state.current = None
        self.stats.files += 1
        self.stats.file_bytes += size
        self.stats.payloads += current.payloads
        self.stats.payload_bytes += current.payload_bytes
        log.debug("finalized %s (%d payloads)", final.name, current.payloads)
        return Durable(current.partition, current.last + 1, final, current.payloads)
