"""State checkpoints without Kafka: a checkpoint loads as its changelog does, alone and with the records
written after it on top; damaged, truncated, foreign and stale files are refused with a reason."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from processors import checkpoint
from processors.checkpoint import CheckpointError, Header
from processors.state import NsState, Record
from tests.processors.test_state import batch, restored, row

TOPIC = "app-ns-state-changelog"
EXPIRES = 3 * 3600


def busy_state(seed: int, rounds: int, state: NsState | None = None) -> tuple[NsState, list[Record]]:
    """A state after ``rounds`` batches over a few hours (windows freed, late deltas, failure kinds, marks),
    and the changelog records it wrote, a flush per batch."""
    rng = random.Random(seed)
    state = state or NsState(EXPIRES)
    records: list[Record] = []
    offset = state.base + len(state.applied_offsets) + 10
    for _ in range(rounds):
        rows = [
            row(
                f"192.0.2.{rng.randrange(40)}", 3600 * rng.randrange(8), rng.randrange(3), rng.randrange(1, 5)
            )
            for _ in range(30)
        ] + [row("198.51.100.7", 3600 * rng.randrange(8), 1, servfail=1)]
        state.apply(batch(*rows), offset)
        offset += 1
        records += state.changelog()
    return state, records


def header(partition: int = 1, **changes: object) -> Header:
    return dataclasses.replace(Header(TOPIC, partition, 500, 42, 1_000_000.0), **changes)


def assert_same(got: NsState, want: NsState) -> None:
    assert got.totals == want.totals
    assert got.windows == want.windows
    assert got.newest == want.newest
    assert (got.base, got.applied_offsets) == (want.base, want.applied_offsets)


def loaded_from(data: bytes, later: list[Record] = ()) -> NsState:  # type: ignore[assignment]
    _, image = checkpoint.decode(data, TOPIC, 1)
    state = NsState(EXPIRES)
    checkpoint.install(state, image)
    for key, value in later:
        state.load(key, value)
    state.loaded()
    return state


@pytest.mark.parametrize("hot_windows", [0, 1])
def test_a_checkpoint_loads_as_its_changelog(hot_windows: int) -> None:
    state, records = busy_state(1, 60, NsState(EXPIRES, hot_windows=hot_windows))
    state.apply(batch(row("192.0.2.1", state.newest, 1)), 1000)  # the other windows idle for an interval
    records += state.changelog()
    assert bool(state.frozen) == bool(hot_windows), "frozen windows are in the image too"
    assert state.late_deltas and any(k[:1] == b"R" for k, _ in records), "the case has retired counts"
    data = checkpoint.encode(header(), checkpoint.image_of(state))
    full = restored(records, EXPIRES)
    assert_same(loaded_from(data), full)
    assert full.totals == state.totals


def test_records_after_a_checkpoint_load_on_top() -> None:
    state, records = busy_state(2, 40)
    data = checkpoint.encode(header(), checkpoint.image_of(state))
    # the next owner restores from the changelog, goes on, and writes after the checkpoint's offset
    successor = restored(records, EXPIRES)
    successor, later = busy_state(3, 40, successor)
    assert_same(loaded_from(data, later), restored(records + later, EXPIRES))


def test_no_image_of_a_state_with_unwritten_changes() -> None:
    state, _ = busy_state(4, 3)
    state.apply(batch(row("192.0.2.1", 0, 1)))
    with pytest.raises(ValueError, match="changelog does not have"):
        checkpoint.image_of(state)


def test_a_large_window_spans_several_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "CHUNK", 7)
    state, records = busy_state(5, 20)
    assert_same(
        loaded_from(checkpoint.encode(header(), checkpoint.image_of(state))), restored(records, EXPIRES)
    )


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    state, _ = busy_state(6, 5)
    file = checkpoint.path(tmp_path / "state", TOPIC, 1)
    data = checkpoint.encode(header(), checkpoint.image_of(state))
    checkpoint.write(file, b"old")
    checkpoint.write(file, data)
    assert file.read_bytes() == data
    assert [p.name for p in file.parent.iterdir()] == [file.name], "no temporary file left"
    assert checkpoint.decode(file.read_bytes(), TOPIC, 1)[0] == header()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:-10], "truncated"),
        (lambda d: d[:30], "damaged header|truncated"),
        (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:], "checksum"),
        (lambda d: b"garbage" + d, "no magic"),
        (lambda d: b"", "no magic"),
    ],
)
def test_damaged_files_are_refused(damage: object, reason: str) -> None:
    state, _ = busy_state(7, 5)
    data = checkpoint.encode(header(), checkpoint.image_of(state))
    with pytest.raises(CheckpointError, match=reason):
        checkpoint.decode(damage(data), TOPIC, 1)  # type: ignore[operator]


def test_another_version_topic_or_partition_is_refused() -> None:
    image = checkpoint.image_of(NsState())
    with pytest.raises(CheckpointError, match="format version 2, this worker reads 1"):
        checkpoint.decode(checkpoint.encode(header(version=2), image), TOPIC, 1)
    with pytest.raises(CheckpointError, match="not of app-ns-state-changelog partition 1"):
        checkpoint.decode(checkpoint.encode(header(partition=2), image), TOPIC, 1)
    with pytest.raises(CheckpointError, match="not of other-ns-state-changelog"):
        checkpoint.decode(checkpoint.encode(header(), image), "other-ns-state-changelog", 1)


def test_rejection_of_stale_checkpoints() -> None:
    h = header()  # changelog offset 500, committed 42
    now = h.written_at + 60
    assert checkpoint.rejection(h, 0, 500, 42, now) is None
    assert checkpoint.rejection(h, 100, 900, 77, now) is None, "others went on: read from 500"
    assert "outside the changelog's offsets 0-20" in checkpoint.rejection(h, 0, 20, 42, now)  # type: ignore[operator]
    assert "outside" in checkpoint.rejection(h, 501, 900, 42, now)  # type: ignore[operator]
    assert "committed offset -1 is behind" in checkpoint.rejection(h, 0, 500, -1, now)  # type: ignore[operator]
    old = h.written_at + checkpoint.TOMBSTONE_RETENTION_SECONDS + 3600
    assert "tombstones" in checkpoint.rejection(h, 0, 500, 42, old)  # type: ignore[operator]
