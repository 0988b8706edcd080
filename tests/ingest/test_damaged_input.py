"""``dnsqr-pipeline ingest`` on damaged input, against a real broker: the exit status tells the truth.

A damaged file (cut mid-container, random bytes, a header declaring 4 GiB, trailing garbage) is named on
stderr with the byte offset of the damage, the records before it are in the raw topic, and the exit
status is 1, as ``dnsqr-edns-filter`` gives; a directory is refused before anything is read (status 2).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ingest import command
from tests import corpus
from tests.ingest.helpers import (
    CLI,
    DAMAGE_CASES,
    damaged_capture,
    dnsqr_multiset,
    file_payloads,
    read_topic,
    topic_payloads,
)

pytestmark = pytest.mark.integration


def _ingest(bootstrap: str, raw: str, *inputs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "ingest", "--bootstrap-servers", bootstrap, "--raw-topic", raw, "--dlq-topic", "", *inputs],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", DAMAGE_CASES)
def test_damaged_file_exits_1_naming_file_and_offset_after_delivering_what_came_before(
    kafka_bootstrap: str, new_topic, tmp_path: Path, case: str
):
    raw = new_topic(2, prefix="ingest-damaged")
    capture = damaged_capture(case, tmp_path)
    after = corpus.path("incompressible.nmsg")
    proc = _ingest(kafka_bootstrap, raw, "-r", str(capture.path), "-r", str(after))
    assert proc.returncode == command.EXIT_INPUT_DAMAGED == 1, proc.stderr
    damage = f"input DAMAGED: {capture.path}: offset {capture.offset}: "
    [line] = [line for line in proc.stderr.splitlines() if damage in line]
    assert capture.reason in line
    assert "the records before it were delivered" in proc.stderr
    # the records before the damage, and the file after the damaged one, whole
    assert topic_payloads(kafka_bootstrap, raw) == capture.intact + dnsqr_multiset(file_payloads(after))


def test_whole_files_exit_0(kafka_bootstrap: str, new_topic):
    raw = new_topic(1, prefix="ingest-whole")
    proc = _ingest(kafka_bootstrap, raw, "-r", str(corpus.path("edge_cases.nmsg")))
    assert proc.returncode == command.EXIT_OK, proc.stderr
    assert "DAMAGED" not in proc.stderr


def test_directory_is_refused_before_anything_is_read(kafka_bootstrap: str, new_topic, tmp_path: Path):
    raw = new_topic(1, prefix="ingest-dir")
    (tmp_path / "a.nmsg").write_bytes(corpus.path("edge_cases.nmsg").read_bytes())
    proc = _ingest(kafka_bootstrap, raw, "-r", str(corpus.path("edge_cases.nmsg")), "-r", str(tmp_path))
    assert proc.returncode == command.EXIT_USAGE == 2, proc.stderr
    assert f"{tmp_path} is a directory; give the NMSG files in it, e.g. {tmp_path}/*.nmsg" in proc.stderr
    assert read_topic(kafka_bootstrap, raw) == []
