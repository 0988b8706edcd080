"""``dnsqr-edns-filter`` end to end against the reference C filter's output in the corpus."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nmsgdns.cli import main
from nmsgdns.input import ContainerStreamReader
from tests import corpus

FILTER = [sys.executable, "-m", "nmsgdns.cli"]


def payloads_of(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return list(ContainerStreamReader(fh, name=str(path)))


@pytest.mark.parametrize(
    "source", [f"{c}.nmsg" for c in corpus.CASES] + [f"{c}.z.nmsg" for c in corpus.ZLIB_CASES]
)
def test_file_selection_equals_reference(source: str, tmp_path: Path, capsys) -> None:
    case = source.split(".")[0]
    source = corpus.path(source)
    out, counts = tmp_path / "out.nmsg", tmp_path / "counts.json"
    assert main(["-r", str(source), "-w", str(out), "--counts-json", str(counts)]) == 0
    expected = corpus.path(f"{case}.filtered.nmsg")
    # Same payload bytes in the same order; the reference writes one uncompressed 1 MiB container.
    assert payloads_of(out) == payloads_of(expected)
    assert out.read_bytes() == expected.read_bytes()
    assert json.loads(counts.read_text()) == corpus.expected_counts(case)
    summary = capsys.readouterr().err
    assert f"{len(payloads_of(expected))} selected" in summary


@pytest.mark.parametrize("case", corpus.CASES)
def test_json_lines_equal_nmsgtool_dump_of_reference_selection(case: str) -> None:
    """``dnsqr-edns-filter -r NAME.nmsg -J -`` prints NAME.filtered.json (nmsgtool -J of the reference
    filter's output): line for line the same objects, every field, and the same bytes."""
    proc = subprocess.run(
        [*FILTER, "-r", str(corpus.path(f"{case}.nmsg")), "-J", "-"], capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    ours = proc.stdout.decode("utf-8").splitlines()
    ref = corpus.path(f"{case}.filtered.json").read_text(encoding="utf-8").splitlines()
    assert len(ours) == len(ref) > 0
    for i, (line, ref_line) in enumerate(zip(ours, ref, strict=True)):
        got, want = json.loads(line), json.loads(ref_line)
        assert got.keys() == want.keys() and list(got["message"]) == list(want["message"]), (case, i)
        for key, value in want["message"].items():
            assert got["message"][key] == value, (case, i, key)
        assert got == want, (case, i)
    assert proc.stdout == corpus.path(f"{case}.filtered.json").read_bytes()


def test_json_lines_and_nmsg_together(tmp_path: Path, capsys) -> None:
    nmsg, lines = tmp_path / "out.nmsg", tmp_path / "out.json"
    assert (
        main(["-r", str(corpus.path("edge_cases.nmsg")), "-w", str(nmsg), "-J", str(lines), "-c", "20"]) == 0
    )
    assert payloads_of(nmsg) == payloads_of(corpus.path("edge_cases.filtered.nmsg"))[:20]
    ref = corpus.path("edge_cases.filtered.json").read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines.read_text(encoding="utf-8") == "".join(ref[:20])
    assert "20 selected, 20 written" in capsys.readouterr().err


def test_zlib_output_and_count_limit(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.nmsg"
    assert main(["-r", str(corpus.path("live_resolver.nmsg")), "-w", str(out), "-z", "-c", "50"]) == 0
    assert out.read_bytes()[4] & 0x01, "container must carry the zlib flag"
    assert payloads_of(out) == payloads_of(corpus.path("live_resolver.filtered.nmsg"))[:50]


def test_truncated_file_names_offset_and_keeps_what_was_read(tmp_path: Path, capsys) -> None:
    # A whole file, then a second one cut inside its (only) container.
    data = corpus.path("edge_cases.nmsg").read_bytes() + corpus.path("live_resolver.nmsg").read_bytes()
    broken = tmp_path / "broken.nmsg"
    broken.write_bytes(data[: len(data) - 1000])
    out = tmp_path / "out.nmsg"
    assert main(["-r", str(broken), "-w", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.nmsg" in err and "offset" in err
    # Everything before the damaged container was judged and written.
    assert payloads_of(out) == payloads_of(corpus.path("edge_cases.filtered.nmsg"))


def test_usage_errors(tmp_path: Path, capsys) -> None:
    assert main(["-r", str(corpus.path("edge_cases.nmsg"))]) == 2
    assert "No outputs given" in capsys.readouterr().err
    assert main(["-r", str(corpus.path("edge_cases.nmsg")), "-w", "-", "-J", "-"]) == 2
    assert "both write to standard output" in capsys.readouterr().err
    assert main(["-w", str(tmp_path / "o")]) == 2
    assert main(["-L", "ipc:///tmp/x", "-w", str(tmp_path / "o")]) == 2
    assert "not supported" in capsys.readouterr().err
    missing = tmp_path / "missing.nmsg"
    assert main(["-r", str(missing), "-w", str(tmp_path / "o")]) == 1
    assert "missing.nmsg" in capsys.readouterr().err


_EDGE = str(corpus.path("edge_cases.nmsg"))
#: each way a run can fail: arguments (run in a scratch directory holding truncated.nmsg) -> the text of
#: its one error line, after ``error: ``
ERROR_PATHS = {
    "missing input": (["-r", "missing.nmsg", "-w", "o.nmsg"], f"missing.nmsg: {os.strerror(errno.ENOENT)}"),
    "directory": (["-r", ".", "-w", "o.nmsg"], f".: {os.strerror(errno.EISDIR)}"),
    "truncated": (["-r", "truncated.nmsg", "-w", "o.nmsg"], "truncated.nmsg: offset 0: container declares"),
    "disk full": (["-r", _EDGE, "-w", "/dev/full"], f"/dev/full: {os.strerror(errno.ENOSPC)}"),
    "counts unwritable": (
        ["-r", _EDGE, "-w", "o.nmsg", "--counts-json", "no/c.json"],
        f"no/c.json: {os.strerror(errno.ENOENT)}",
    ),
    "closed pipe": (["-r", _EDGE, "-w", "-"], f"stdout: {os.strerror(errno.EPIPE)}"),
    "json disk full": (
        ["-r", _EDGE, "-w", "o.nmsg", "-J", "/dev/full"],
        f"/dev/full: {os.strerror(errno.ENOSPC)}",
    ),
    "json closed pipe": (["-r", _EDGE, "-J", "-"], f"stdout: {os.strerror(errno.EPIPE)}"),
}


@pytest.mark.parametrize("name", ERROR_PATHS)
def test_each_error_is_reported_once(name: str, tmp_path: Path) -> None:
    """One ``error:`` line in the summary, exit status 1, and the error nowhere else on stderr (no
    traceback, no second report)."""
    args, error = ERROR_PATHS[name]
    if "/dev/full" in args and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    (tmp_path / "truncated.nmsg").write_bytes(corpus.path("edge_cases.nmsg").read_bytes()[:3000])
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stdout: the first write to it fails with EPIPE
    try:
        proc = subprocess.run(
            [*FILTER, *args], cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[0].startswith("dnsqr-edns-filter: ") and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("  error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"  error: {error}"), proc.stderr
    reason = error.rsplit(": ", 1)[1]
    assert sum(reason in line for line in lines) == 1, proc.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", corpus.SOCKET_CASES)
def test_socket_replay_equals_reference(case: str, tmp_path: Path) -> None:
    datagrams = corpus.udp_datagrams(case)
    port = free_udp_port()
    out = tmp_path / "out.nmsg"
    proc = subprocess.Popen(
        [*FILTER, "-l", f"127.0.0.1/{port}", "-w", str(out), "--counts-json", str(tmp_path / "c.json")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening on" in proc.stderr.readline()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for d in datagrams:
                tx.sendto(d, ("127.0.0.1", port))
                time.sleep(0.001)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert payloads_of(out) == payloads_of(corpus.path(f"{case}.filtered.nmsg"))
    assert json.loads((tmp_path / "c.json").read_text()) == corpus.expected_counts(case)
    assert "input drops" not in err, "every datagram of nmsgtool's capture is a valid container or fragment"


def test_garbage_datagrams_are_counted_not_fatal(tmp_path: Path) -> None:
    port = free_udp_port()
    out = tmp_path / "out.nmsg"
    proc = subprocess.Popen(
        [*FILTER, "-l", f"127.0.0.1/{port}", "-w", str(out)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert "listening on" in proc.stderr.readline()
        good = corpus.udp_datagrams("sock_m512")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for junk in (b"", b"NMSG", b"garbage" * 10, b"\x00\x00\x01\x00\x78\x9c" + b"\x00" * 40):
                tx.sendto(junk, ("127.0.0.1", port))
            for d in good:
                tx.sendto(d, ("127.0.0.1", port))
                time.sleep(0.001)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "input drops:" in err
    assert payloads_of(out) == payloads_of(corpus.path("sock_m512.filtered.nmsg"))
