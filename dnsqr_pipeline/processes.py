"""Background server processes of the local services (:mod:`localkafka`, :mod:`localregistry`).

One concept: a long-running child started in its own session, known by a pid file, judged alive by its
own ``Popen`` when this process started it and otherwise by the pid file, ``kill(0)``, ``/proc`` (not a
zombie) and its command line (a reused pid running something else does not count), and stopped with
SIGTERM to its process group, then SIGKILL after a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: the servers this process started, by pid. Their own ``Popen`` answers whether they run, and keeping it
#: referenced keeps it out of ``subprocess._active``, whose later ``waitpid`` of a reaped pid could reap an
#: unrelated child once the pid is reused (pid_max is 32768 on some hosts and a JVM takes ~100 pids).
children: dict[int, subprocess.Popen[bytes]] = {}
#: the last few of them that exited, for the exit status in an error message
exited_children: collections.deque[subprocess.Popen[bytes]] = collections.deque(maxlen=16)


def find_java() -> str | None:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` on PATH, else None."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` with spaces between arguments, or None (gone, or no /proc)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie; reaps it when it is our own exited child."""
    child = children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        exited_children.append(children.pop(pid))
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _read_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().strip())


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process runs and is ours, else None.

    A stale pid file, or a pid reused by a process whose command line does not contain ``marker`` (a path
    only that server's command line names), counts as not running.
    """
    try:
        pid = _read_pid(pid_file)
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    if pid in children:
        return pid  # our own running child: no need to guess from its command line
    line = cmdline(pid)
    if line is not None and marker not in line:
        return None
    return pid


def why_not_running(pid_file: Path) -> str:
    """Why :func:`running_pid` takes the server of ``pid_file`` as not running, for an error message."""
    try:
        pid = _read_pid(pid_file)
    except (OSError, ValueError) as exc:
        return f"no readable pid file: {exc}"
    for child in exited_children:
        if child.pid == pid:
            return f"pid {pid} exited with status {child.returncode}"
    if not alive(pid):
        return f"pid {pid} is gone"
    return f"pid {pid} runs something else: {cmdline(pid)!r:.200}"


def spawn(cmd: Sequence[str], *, output: Path, pid_file: Path, cwd: Path) -> int:
    """Start ``cmd`` in its own session with stdout and stderr appended to ``output``; write its pid.

    Own session: Ctrl-C in the shell (or pytest's) must not kill the server behind our back, and stop/kill
    can signal the whole group.
    """
    with open(output, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group of ``pid`` (a session leader: pgid == pid), if it exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_all(running: Mapping[str, int], *, timeout: float, kill: bool = False) -> None:
    """Stop the servers ``{name: pid}``: SIGTERM (``kill``: SIGKILL) to all, then wait for them together;
    SIGKILL whichever still runs after ``timeout`` seconds (logged with its name)."""
    for pid in running.values():
        signal_group(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in running.values()):
        if time.monotonic() > deadline:
            for name, pid in running.items():
                if alive(pid):
                    log.warning("%s did not stop within %.0fs; killing it", name, timeout)
                    signal_group(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
