"""``dnsqr-pipeline run`` twice in a row over a 200k-record capture, as a user replays history.

Each run starts its own broker (the embedded default), the second with a busy loop hogging one of the two
cores, and each must exit 0 with files and counts equal to the standalone filter's on the same capture (the
standalone filter is held to the reference C filter by the corpus tests): repeated runs are where hangs
and silent losses show; ``bench/run_repeat.py`` runs the same on 1M records, 20 times.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsqr_pipeline.job import job_files
from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter
from tests import corpus
from tests.corpus import read_payloads

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS = 200_000
RUNS = 2
#: runs (0-based) with a busy loop pinned to one core
HOGGED = (1,)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("capture") / "big200k.nmsg"
    payloads = read_payloads(corpus.path("live_resolver.nmsg"))
    with NmsgFileWriter(path) as writer:
        for payload in itertools.islice(itertools.cycle(payloads), RECORDS):
            writer.write(payload)
    return path


def digests(files: list[Path]) -> Counter[bytes]:
    """Multiset of the payloads in ``files``, by digest (200k payloads are too many to keep whole)."""
    out: Counter[bytes] = Counter()
    for path in files:
        with path.open("rb") as fh:
            out.update(hashlib.blake2b(p, digest_size=16).digest() for p in ContainerStreamReader(fh))
    return out


@contextlib.contextmanager
def cpu_hog(enabled: bool) -> Iterator[None]:
    """A busy loop pinned to core 0 while the block runs."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"],
    )
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def test_runs_in_a_row_are_all_exact(capture: Path, tmp_path: Path) -> None:
    ref_files, ref_counts = tmp_path / "ref.nmsg", tmp_path / "ref.json"
    subprocess.run(
        [BIN / "dnsqr-edns-filter", "-r", capture, "-w", ref_files, "--counts-json", ref_counts],
        check=True,
        capture_output=True,
        timeout=300,
    )
    expected_counts = json.loads(ref_counts.read_text())
    expected = digests([ref_files])
    assert sum(expected.values()) > 40_000
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    outcomes = []
    for run in range(RUNS):
        out, counts = tmp_path / f"run{run}", tmp_path / f"run{run}.json"
        with cpu_hog(run in HOGGED):
            proc = subprocess.run(
                [
                    *(BIN / "dnsqr-pipeline", "run", "--no-progress-bar", "-r", capture, "--workers", "1"),
                    *("--output-dir", out, "--counts-json", counts),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        assert proc.returncode == 0, f"run {run}: {proc.stderr[-3000:]}"
        written = digests(job_files(out))
        outcomes.append((run, sum((expected - written).values()), sum((written - expected).values())))
        assert json.loads(counts.read_text()) == expected_counts, f"run {run}: counts differ"
    assert outcomes == [(run, 0, 0) for run in range(RUNS)], "(run, missing, extra) per run"
