"""The sink's file set without Kafka: naming, rotation, atomic finalization, idempotent replay."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from nmsgdns.container import FLAG_ZLIB, parse_header
from sink import files as sink_files
from sink.files import (
    Discard,
    Durable,
    PartitionFileSet,
    final_files,
    final_name,
    parse_final_name,
    tmp_name,
)
from tests.sink.helpers import corpus_payloads, files_multiset, read_payloads


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return corpus_payloads("live_resolver")


def fileset(directory: Path, **kwargs: object) -> PartitionFileSet:
    kwargs.setdefault("rotate_seconds", None)
    fs = PartitionFileSet(directory, **kwargs)  # type: ignore[arg-type]
    return fs


def feed(fs: PartitionFileSet, partition: int, records: list[tuple[int, bytes | None]]) -> list[Durable]:
    done: list[Durable] = []
    for offset, payload in records:
        done += fs.append(partition, offset, payload)
    return done


def visible(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def tmp_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


# ------------------------------------------------------------------------------ naming


def test_final_name_format_and_parse() -> None:
    name = final_name("failures", 3, 120, 345)
    assert name == "failures-p0003-o000000000120-000000000345.nmsg"
    parsed = parse_final_name(name)
    assert parsed is not None
    assert (parsed.prefix, parsed.partition, parsed.first, parsed.last) == ("failures", 3, 120, 345)
    # prefixes with dashes still parse; wider numbers than the padding too
    parsed = parse_final_name(final_name("edns-fail", 12345, 10**13, 10**13 + 5))
    assert parsed is not None and (parsed.prefix, parsed.partition) == ("edns-fail", 12345)


@pytest.mark.parametrize(
    "name",
    [
        tmp_name("failures", 3, 120),
        "failures-p0003-o000000000120.nmsg",
        "failures-p3-o120-345.nmsg",
        "failures-p0003-o000000000120-000000000345.nmsg.tmp",
        "notes.txt",
    ],
)
def test_other_names_are_not_final(name: str) -> None:
    assert parse_final_name(name) is None


def test_tmp_name_is_hidden_and_per_process() -> None:
    name = tmp_name("failures", 3, 120)
    assert name.startswith(".failures-p0003-o000000000120.")
    assert name.endswith(f".{os.getpid()}.tmp")


def test_bad_prefix_rejected(tmp_path: Path) -> None:
    for prefix in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            PartitionFileSet(tmp_path, prefix=prefix)


# ------------------------------------------------------------------------------ writing


def test_size_rotation_splits_contiguous_ranges(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path, rotate_bytes=16 * 1024)
    fs.adopt(0)
    done = feed(fs, 0, list(enumerate(payloads)))
    done += fs.finalize_all()
    paths = final_files(tmp_path, "failures")
    assert [d.path for d in done] == paths
    assert len(paths) > 5
    # ranges are contiguous and in order; every Durable commits one past its file's last offset
    expected_first = 0
    for item in done:
        assert item.path is not None
        parsed = parse_final_name(item.path.name)
        assert parsed is not None and parsed.partition == 0 and parsed.first == expected_first
        assert item.next_offset == parsed.last + 1
        file_payloads = read_payloads(item.path)
        assert file_payloads == payloads[parsed.first : parsed.last + 1]
        assert item.payloads == len(file_payloads)
        expected_first = parsed.last + 1
    assert expected_first == len(payloads)
    # every file but the last reached the size limit with its final payload, not before
    for item in done[:-1]:
        sizes = [len(p) for p in read_payloads(item.path)]  # type: ignore[arg-type]
        assert sum(sizes) >= 16 * 1024 > sum(sizes[:-1])
    assert tmp_files(tmp_path) == []
    assert fs.stats.files == len(paths) and fs.stats.payloads == len(payloads)


def test_nothing_final_until_finalized(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path)
    fs.adopt(7)
    assert feed(fs, 7, [(100 + i, p) for i, p in enumerate(payloads[:50])]) == []
    assert visible(tmp_path) == []
    assert tmp_files(tmp_path) == [tmp_name("failures", 7, 100)]
    (item,) = fs.finalize_all()
    assert item == Durable(7, 150, tmp_path / final_name("failures", 7, 100, 149), 50)
    assert visible(tmp_path) == [final_name("failures", 7, 100, 149)]
    assert tmp_files(tmp_path) == []


def test_fsync_before_rename_and_directory_after(
    tmp_path: Path, payloads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(sink_files.os, "fsync", fsync)
    monkeypatch.setattr(sink_files.os, "replace", replace)
    fs = fileset(tmp_path)
    fs.adopt(0)
    feed(fs, 0, [(0, payloads[0])])
    fs.finalize_all()
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_partitions_get_separate_files(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path)
    for partition in (0, 1, 2):
        fs.adopt(partition)
    for i, payload in enumerate(payloads[:90]):
        fs.append(i % 3, i // 3, payload)
    fs.finalize_all()
    assert visible(tmp_path) == [final_name("failures", p, 0, 29) for p in (0, 1, 2)]
    for partition in (0, 1, 2):
        (path,) = final_files(tmp_path, "failures", partition)
        assert read_payloads(path) == payloads[partition:90:3]


def test_time_rotation(tmp_path: Path, payloads: list[bytes]) -> None:
    clock = FakeClock()
    fs = fileset(tmp_path, rotate_seconds=10.0, clock=clock)
    fs.adopt(0)
    fs.adopt(1)
    feed(fs, 0, [(0, payloads[0]), (1, payloads[1])])
    clock.now += 5
    feed(fs, 1, [(0, payloads[2])])
    assert fs.expire() == []
    clock.now += 5  # partition 0's file is 10 s old, partition 1's 5 s
    (item,) = fs.expire()
    assert item.partition == 0 and item.next_offset == 2
    clock.now += 5
    (item,) = fs.expire()
    assert item.partition == 1 and item.next_offset == 1
    assert fs.expire() == []
    assert visible(tmp_path) == [final_name("failures", 0, 0, 1), final_name("failures", 1, 0, 0)]


def test_idle_rotation(tmp_path: Path, payloads: list[bytes]) -> None:
    """``rotate_idle`` finalizes a file nothing joined for that long, however young the file is."""
    clock = FakeClock()
    fs = fileset(tmp_path, rotate_seconds=10.0, rotate_idle=0.5, clock=clock)
    fs.adopt(0)
    fs.adopt(1)
    feed(fs, 0, [(0, payloads[0])])
    feed(fs, 1, [(0, payloads[1])])
    clock.now += 0.4
    feed(fs, 1, [(1, payloads[2])])  # partition 1 stays busy
    assert fs.expire() == []
    clock.now += 0.1  # partition 0 idle for 0.5 s, partition 1 for 0.1 s
    (item,) = fs.expire()
    assert item.partition == 0 and item.next_offset == 1
    clock.now += 0.4
    (item,) = fs.expire()
    assert item.partition == 1 and item.next_offset == 2
    assert visible(tmp_path) == [final_name("failures", 0, 0, 0), final_name("failures", 1, 0, 1)]


def test_zlib_files(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path, compress=True)
    fs.adopt(0)
    feed(fs, 0, list(enumerate(payloads)))
    (item,) = fs.finalize_all()
    assert item.path is not None
    data = item.path.read_bytes()
    assert parse_header(data).flags & FLAG_ZLIB
    assert len(data) < sum(map(len, payloads))
    assert read_payloads(item.path) == payloads


def test_record_without_payload(tmp_path: Path, payloads: list[bytes]) -> None:
    """A dead-lettered record is durable at once with no file open, else it joins the open file's range."""
    fs = fileset(tmp_path)
    fs.adopt(0)
    assert fs.append(0, 0, None) == [Durable(0, 1)]
    assert visible(tmp_path) == [] and tmp_files(tmp_path) == []
    assert feed(fs, 0, [(1, payloads[0]), (2, None), (3, payloads[1]), (4, None)]) == []
    (item,) = fs.finalize_all()
    assert item.next_offset == 5 and item.payloads == 2
    assert visible(tmp_path) == [final_name("failures", 0, 1, 4)]


def test_offsets_must_increase(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path)
    with pytest.raises(KeyError):
        fs.append(0, 0, payloads[0])
    fs.adopt(0)
    fs.append(0, 5, payloads[0])
    with pytest.raises(ValueError):
        fs.append(0, 5, payloads[1])


# ------------------------------------------------------------------------------ crashes and replay


def test_discard_removes_partial_file(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path, rotate_bytes=8 * 1024)
    fs.adopt(0)
    done = feed(fs, 0, list(enumerate(payloads[:100])))
    kept = visible(tmp_path)
    assert kept and tmp_files(tmp_path)
    fs.discard([0], Discard.REBALANCE)
    assert tmp_files(tmp_path) == [] and visible(tmp_path) == kept
    assert fs.stats.discarded == Counter({Discard.REBALANCE: 1}) and fs.partitions == []
    # the next owner resumes at the last committed offset and completes the range exactly once
    resume = done[-1].next_offset
    again = fileset(tmp_path, rotate_bytes=8 * 1024)
    again.adopt(0)
    feed(again, 0, list(enumerate(payloads[:100]))[resume:])
    again.finalize_all()
    assert files_multiset(tmp_path) == Counter(payloads[:100])


def test_close_counts_its_discards_as_the_error(tmp_path: Path, payloads: list[bytes]) -> None:
    """close() is the error path: what it throws away is counted under ERROR, never as a rebalance."""
    fs = fileset(tmp_path)
    for partition in (0, 1, 2):
        fs.adopt(partition)
    feed(fs, 0, list(enumerate(payloads[:5])))
    feed(fs, 1, list(enumerate(payloads[5:10])))
    fs.close()  # partition 2 has no open file: nothing of it to discard
    assert fs.stats.discarded == Counter({Discard.ERROR: 2})
    assert tmp_files(tmp_path) == [] and visible(tmp_path) == []


def test_crash_before_rename_replays_to_same_files(tmp_path: Path, payloads: list[bytes]) -> None:
    """A killed writer leaves a temp file; the replay removes it and writes byte-identical files."""
    reference = tmp_path / "reference"
    fs = fileset(reference, rotate_bytes=20 * 1024)
    fs.adopt(2)
    committed = [d.next_offset for d in feed(fs, 2, list(enumerate(payloads)))]
    fs.finalize_all()

    crashed = tmp_path / "crashed"
    fs = fileset(crashed, rotate_bytes=20 * 1024)
    fs.adopt(2)
    crash_at = committed[3] + 7  # mid-file: three files renamed, the fourth partly written
    feed(fs, 2, list(enumerate(payloads))[:crash_at])
    assert tmp_files(crashed)
    del fs  # no finalize, no discard: what SIGKILL leaves behind

    restarted = fileset(crashed, rotate_bytes=20 * 1024)
    restarted.adopt(2)
    assert tmp_files(crashed) == []
    feed(restarted, 2, list(enumerate(payloads))[committed[2] :])
    restarted.finalize_all()
    assert visible(crashed) == visible(reference)
    for name in visible(reference):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes()


def test_crash_after_rename_before_commit_skips_covered_offsets(
    tmp_path: Path, payloads: list[bytes]
) -> None:
    """Files renamed but not committed are redelivered; time-rotated boundaries differ, yet no duplicate."""
    clock = FakeClock()
    fs = fileset(tmp_path, rotate_seconds=1.0, clock=clock)
    fs.adopt(0)
    done: list[Durable] = []
    for offset, payload in enumerate(payloads[:400]):
        done += fs.append(0, offset, payload)
        if offset % 37 == 36:  # the clock moves at points the replay will not reproduce
            clock.now += 1
            done += fs.expire()
    done += fs.finalize_all()
    written = visible(tmp_path)
    assert len(written) > 5
    # nothing was committed: the whole partition comes again, then more records follow
    replay = fileset(tmp_path, rotate_bytes=10 * 1024)
    replay.adopt(0)
    progress = feed(replay, 0, list(enumerate(payloads)))
    progress += replay.finalize_all()
    assert replay.stats.already_durable == 400
    assert [d.next_offset for d in progress[:400]] == list(range(1, 401))
    assert all(d.path is None for d in progress[:400])
    assert files_multiset(tmp_path) == Counter(payloads)
    assert set(written) <= set(visible(tmp_path))


def test_covered_range_ahead_closes_open_file(tmp_path: Path, payloads: list[bytes]) -> None:
    """Replaying from an earlier offset than an existing file: the open file ends just before it."""
    fs = fileset(tmp_path)
    fs.adopt(0)
    feed(fs, 0, [(o, payloads[o]) for o in range(10, 20)])
    fs.finalize_all()
    replay = fileset(tmp_path)
    replay.adopt(0)
    progress = feed(replay, 0, [(o, payloads[o]) for o in range(5, 30)])
    assert progress[0] == Durable(0, 10, tmp_path / final_name("failures", 0, 5, 9), 5)
    replay.finalize_all()
    assert visible(tmp_path) == [
        final_name("failures", 0, 5, 9),
        final_name("failures", 0, 10, 19),
        final_name("failures", 0, 20, 29),
    ]
    assert files_multiset(tmp_path) == Counter(payloads[5:30])


def test_other_prefixes_and_partitions_do_not_cover(tmp_path: Path, payloads: list[bytes]) -> None:
    fs = fileset(tmp_path, prefix="other")
    fs.adopt(0)
    feed(fs, 0, [(0, payloads[0])])
    fs.finalize_all()
    mine = fileset(tmp_path)
    mine.adopt(1)
    mine.adopt(0)
    feed(mine, 0, [(0, payloads[0])])
    mine.finalize_all()
    assert mine.stats.already_durable == 0
    assert visible(tmp_path) == [final_name("failures", 0, 0, 0), final_name("other", 0, 0, 0)]
