"""Record time is not arrival time: ``dnsqr-pipeline run`` publishes exact totals whatever the record times.

Captures recorded years apart, replayed in either order, and a capture whose record times are shuffled
over 30 days (merged sensors) put deltas into windows that expired long before they arrive; the counts
topic must still carry every failure. Each run's ``--counts-json`` (read from the counts topic) must be
byte for byte the standalone filter's on the same input, which does not look at time at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.make_big import main as make_big
from tests import corpus

pytestmark = pytest.mark.integration

#: (workers, guarantee) of each job: one worker at least once, and the case that has caught the most bugs,
#: two workers (a rebalance as the second joins) exactly once (every combination ran 2x as long in CI)
JOBS = [(1, "at_least_once"), (2, "exactly_once")]
YEARS_3 = -3 * 365


def standalone_counts(inputs: list[Path], out: Path) -> bytes:
    """The standalone filter's ``--counts-json`` bytes for ``inputs`` (read in order)."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "nmsgdns.cli"),
            *(arg for path in inputs for arg in ("-r", str(path))),
            *("-w", str(out / "standalone.nmsg"), "--counts-json", str(out / "standalone.json")),
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (out / "standalone.json").read_bytes()


def pipeline_counts(bootstrap: str, inputs: list[Path], out: Path, *, workers: int, guarantee: str) -> bytes:
    """``dnsqr-pipeline run --counts-json`` bytes for ``inputs``, after the job proved itself complete."""
    counts = out / "pipeline.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "dnsqr_pipeline.cli", "run", "--no-progress-bar"),
            *(arg for path in inputs for arg in ("-r", str(path))),
            *("--bootstrap-servers", bootstrap, "--output-dir", str(out / "run")),
            *("--workers", str(workers), "--processing-guarantee", guarantee),
            *("--counts-json", str(counts)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return counts.read_bytes()


@pytest.fixture(scope="module")
def three_years_apart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """live_resolver as recorded, and the same capture dated three years earlier."""
    directory = tmp_path_factory.mktemp("years")
    old = directory / "old.nmsg"
    source = corpus.path("live_resolver.nmsg")
    args = ["--source", str(source), "--records", "2596", "--time-offset-days", str(YEARS_3)]
    assert make_big([*args, "--out", str(old)]) == 0
    return old, source


@pytest.mark.parametrize("order", ["old-new", "new-old"])
@pytest.mark.parametrize(("workers", "guarantee"), JOBS)
def test_captures_years_apart_in_either_order(
    kafka_bootstrap: str,
    three_years_apart: tuple[Path, Path],
    tmp_path: Path,
    order: str,
    guarantee: str,
    workers: int,
) -> None:
    """The second capture's records fall into windows freed by the first's (or free them): totals exact."""
    old, new = three_years_apart
    inputs = [old, new] if order == "old-new" else [new, old]
    want = standalone_counts(inputs, tmp_path)
    assert json.loads(want) == {ns: 2 * n for ns, n in corpus.expected_counts("live_resolver").items()}
    assert pipeline_counts(kafka_bootstrap, inputs, tmp_path, workers=workers, guarantee=guarantee) == want


@pytest.fixture(scope="module")
def shuffled_30_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 records whose times are spread over the 30 days before the corpus capture, in random order."""
    path = tmp_path_factory.mktemp("shuffled") / "shuffled.nmsg"
    start = 1_700_000_000  # 2023-11-14: in the past whatever the machine's clock says
    args = ["--records", "200000", "--time-span-days", "30", "--start-time", str(start), "--shuffle-times"]
    assert make_big([*args, "--out", str(path)]) == 0
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "guarantee"), JOBS)
def test_records_shuffled_over_30_days(
    kafka_bootstrap: str, shuffled_30_days: Path, tmp_path: Path, guarantee: str, workers: int
) -> None:
    """Window expiry is 7 days: most deltas arrive for freed windows, and all still count."""
    want = standalone_counts([shuffled_30_days], tmp_path)
    got = pipeline_counts(kafka_bootstrap, [shuffled_30_days], tmp_path, workers=workers, guarantee=guarantee)
    assert got == want
