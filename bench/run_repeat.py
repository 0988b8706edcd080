"""Run ``dnsqr-pipeline run`` on one capture N times in a row and check every run's output (issue #10).

Each run is the command a user types, with its own embedded broker (the command starts and stops one):

    dnsqr-pipeline run -r FILE --workers W --output-dir D --counts-json F [--processing-guarantee G]

with a fresh D under this script's work directory. A run is **exact** when it exits 0, its counts JSON
equals the reference's, and the multiset of payloads in its NMSG files equals the reference's. The
reference is computed once, by the standalone filter: ``dnsqr-edns-filter -r FILE -w ref.nmsg
--counts-json ref.json``. A run still going after ``--timeout`` seconds is a **hang**: it gets SIGTERM
(the command then stops its stages and broker), and after a grace period every process it left is
SIGKILLed. Stages and brokers run in sessions of their own, so this script makes itself the child
subreaper (prctl PR_SET_CHILD_SUBREAPER): whatever a run started stays findable as this process's
descendant even when orphaned, and processes left behind by a run that did exit are reported and killed.

``--cpu-hog-every K`` adds load: runs i (counted from 1) with i % K == 0 get a busy-loop process pinned to
one core for the run's duration.

Prints one line per run (exit status, seconds, exact / missing N / extra N / counts differ / hang) and a
summary: hangs, losses (runs with failures missing, and how many of those exited 0), non-zero exits, the
median seconds of the runs that ended by themselves. Exit status 1 if any run was not exact. The
directories of runs that were not exact are kept, with the command's log, for inspection.

    .venv/bin/python bench/run_repeat.py bench/out/big.nmsg --runs 20 --workers 1 --cpu-hog-every 3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nmsgdns.errors import NmsgDnsError
from nmsgdns.input import ContainerStreamReader

BIN = Path(sys.executable).parent
#: seconds a timed-out run gets after SIGTERM to stop its stages and broker, before SIGKILL
GRACE_SECONDS = 30.0
_PR_SET_CHILD_SUBREAPER = 36


def payload_digests(files: list[Path]) -> Counter[bytes]:
    """Multiset of the payloads in ``files``, as 16-byte digests (a 1M-record job's 230k failures in a
    few MB); raises NmsgDnsError when a file is damaged."""
    digests: Counter[bytes] = Counter()
    for path in files:
        with path.open("rb") as fh:
            reader = ContainerStreamReader(fh, name=str(path))
            digests.update(hashlib.blake2b(p, digest_size=16).digest() for p in reader)
        if reader.stats.total_drops:
            raise NmsgDnsError(f"{path}: payloads dropped while reading: {dict(reader.stats.drops)}")
    return digests


def output_files(directory: Path) -> list[Path]:
    """The finished NMSG files of a job (the sink's temporary files start with a dot)."""
    return sorted(p for p in directory.glob("*.nmsg") if not p.name.startswith("."))


@dataclass(frozen=True)
class Reference:
    """What every run must reproduce."""

    payloads: Counter[bytes]
    counts: dict[str, int]


def make_reference(capture: Path, directory: Path) -> Reference:
    """Run the standalone filter once; its files and counts are what each job must match."""
    out, counts = directory / "ref.nmsg", directory / "ref.json"
    cmd = [str(BIN / "dnsqr-edns-filter"), "-r", str(capture), "-w", str(out), "--counts-json", str(counts)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"reference filter failed ({done.returncode}): {done.stderr.strip()}")
    return Reference(payload_digests([out]), json.loads(counts.read_text(encoding="utf-8")))


# --- processes ------------------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init, so none escapes a kill."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process below ``root``."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, tuple[int, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid]
        todo.extend(children.get(pid, []))
    return found


def kill_leftovers(keep: set[int]) -> int:
    """SIGKILL every descendant of this process not in ``keep`` and reap those that become our zombies;
    returns how many were alive. Reaping is by pid, never ``waitpid(-1)``, which could steal the exit
    status of a child that a ``Popen`` in ``keep`` still waits for."""
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        procs = {pid: info for pid, info in descendants(me).items() if pid not in keep}
        if not procs:
            break
        for pid, (ppid, state) in procs.items():
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                if state != "Z":
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
                elif ppid == me:  # an orphan re-parented to us; other zombies are their parents' to reap
                    os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return len(killed)


class CpuHog:
    """A busy loop pinned to one core, for the duration of a ``with`` block."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(self.proc.pid, {max(os.sched_getaffinity(0))})

    def __enter__(self) -> CpuHog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.proc.kill()
        self.proc.wait()


# --- runs -----------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run's outcome; ``missing``/``extra`` count payloads against the reference's files."""

    number: int
    status: int | None  # None: hang
    seconds: float
    missing: int = 0
    extra: int = 0
    counts_equal: bool = False
    hog: bool = False
    left_behind: int = 0
    problem: str = ""

    @property
    def hang(self) -> bool:
        return self.status is None

    @property
    def exact(self) -> bool:
        return self.status == 0 and self.counts_equal and not (self.missing or self.extra or self.problem)

    def describe(self) -> str:
        status = "hang" if self.hang else f"exit {self.status}"
        verdict = []
        if self.exact:
            verdict.append("exact")
        if self.hang:
            complete = not (self.missing or self.extra or self.problem)
            verdict.append("killed, files complete" if complete else "killed")
        if self.missing:
            verdict.append(f"missing {self.missing}")
        if self.extra:
            verdict.append(f"extra {self.extra}")
        if not self.counts_equal and not self.hang:
            verdict.append("counts differ")
        if self.problem:
            verdict.append(self.problem)
        if self.left_behind:
            verdict.append(f"{self.left_behind} processes left behind, killed")
        hog = " [cpu hog]" if self.hog else ""
        return f"run {self.number}{hog}: {status}, {self.seconds:.1f} s, {', '.join(verdict)}"


def run_command(cmd: list[str], log: Path, timeout: float, keep: set[int]) -> tuple[int | None, float, int]:
    """Run ``cmd`` in a session of its own, output to ``log``: (exit status or None for a hang, seconds,
    processes it left behind). A hang gets SIGTERM, ``GRACE_SECONDS`` to stop its stages, then SIGKILL;
    every process it leaves (except ``keep``) is killed either way."""
    started = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        status: int | None
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(GRACE_SECONDS)
        seconds = time.monotonic() - started
        left = kill_leftovers(keep | {proc.pid})
        proc.kill()  # no-op when it has exited
        proc.wait()
    return status, seconds, left


def run_once(number: int, args: argparse.Namespace, directory: Path, ref: Reference, hog: bool) -> RunResult:
    """One ``dnsqr-pipeline run`` in ``directory``, judged against ``ref``."""
    out, counts = directory / "out", directory / "counts.json"
    cmd = [
        str(BIN / "dnsqr-pipeline"),
        "run",
        "-r",
        str(args.capture),
        "--workers",
        str(args.workers),
        "--output-dir",
        str(out),
        "--counts-json",
        str(counts),
        "--processing-guarantee",
        args.processing_guarantee,
    ]
    with contextlib.ExitStack() as stack:
        keep = {stack.enter_context(CpuHog()).proc.pid} if hog else set()
        status, seconds, left = run_command(cmd, directory / "run.log", args.timeout, keep)
    result = RunResult(number, status, seconds, hog=hog, left_behind=left)
    try:
        got = payload_digests(output_files(out))
    except (NmsgDnsError, OSError) as exc:
        result.problem = f"output unreadable: {exc}"
        return result
    result.missing = sum((ref.payloads - got).values())
    result.extra = sum((got - ref.payloads).values())
    try:
        result.counts_equal = json.loads(counts.read_text(encoding="utf-8")) == ref.counts
    except (OSError, ValueError):
        result.counts_equal = False
    return result


def summary(results: list[RunResult]) -> str:
    hangs = sum(r.hang for r in results)
    losses = [r for r in results if r.missing]
    silent = sum(r.status == 0 for r in losses)
    nonzero = sum(r.status not in (0, None) for r in results)
    ended = [r.seconds for r in results if not r.hang]
    median = f"{statistics.median(ended):.1f} s" if ended else "-"
    exact = sum(r.exact for r in results)
    left = sum(bool(r.left_behind) for r in results)
    return (
        f"{len(results)} runs: {exact} exact, {hangs} hangs, {len(losses)} losses ({silent} of them exit 0), "
        f"{nonzero} non-zero exits, {left} left processes behind; "
        f"median {median} (runs that ended by themselves)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capture", type=Path)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpu-hog-every", type=int, metavar="K", help="a CPU hog in runs i with i %% K == 0")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as a hang")
    p.add_argument(
        "--processing-guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    p.add_argument("--work-dir", type=Path, help="where the runs' directories go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.cpu_hog_every is not None and args.cpu_hog_every < 1:
        p.error("--cpu-hog-every must be at least 1")
    become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="run-repeat-", dir=args.work_dir))
    ref = make_reference(args.capture, work)
    print(
        f"reference: {sum(ref.payloads.values())} failures, {len(ref.counts)} name servers; "
        f"{args.runs} runs of dnsqr-pipeline run --workers {args.workers} ({args.processing_guarantee}) "
        f"in {work}",
        flush=True,
    )
    results = []
    for number in range(1, args.runs + 1):
        directory = work / f"run-{number}"
        directory.mkdir()
        hog = args.cpu_hog_every is not None and number % args.cpu_hog_every == 0
        result = run_once(number, args, directory, ref, hog)
        results.append(result)
        if result.exact:
            shutil.rmtree(directory)
        print(result.describe() + ("" if result.exact else f" (kept: {directory})"), flush=True)
    print(summary(results))
    if all(r.exact for r in results):
        shutil.rmtree(work)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
