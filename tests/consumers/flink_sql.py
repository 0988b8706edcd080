"""Run a Flink SQL script in a local Flink mini cluster (Java and Maven only, no Flink install).

``flink/pom.xml`` lists the jars (Flink 2.2.0's Table API and planner, flink-sql-connector-kafka,
flink-sql-avro-confluent-registry); :func:`resolve_jars` copies them with Maven once into
``$DNSQR_FLINK_CACHE``, else ``~/.cache/dnsqr-pipeline/flink/VERSION-POMHASH`` (``$XDG_CACHE_HOME``
respected; a changed pom resolves again), and :func:`run_sql` runs ``flink/RunFlinkSql.java`` as a
single-file source program (no build step) on the script, bound to 127.0.0.1 only, and parses the rows it
prints. :func:`failures_per_name_server` runs the README's ``docs/examples/flink_failures.sql`` on any
failures topic: the test feeds it records it wrote itself, and it works the same on the pipeline's output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import os
import string
import subprocess
import tempfile
import time
from pathlib import Path

from dnsqr_pipeline import maven_cache, processes

FLINK_VERSION = "2.2.0"
HERE = Path(__file__).resolve().parent
POM = HERE / "flink" / "pom.xml"
RUNNER = HERE / "flink" / "RunFlinkSql.java"
#: the script the README shows verbatim
FAILURES_SQL = HERE.parents[1] / "docs" / "examples" / "flink_failures.sql"
#: the mini cluster's JVM: measured ~520 MB RSS for the failures script
JVM_OPTIONS = ("-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
RUN_TIMEOUT = 180.0


class FlinkUnavailable(RuntimeError):
    """Java or Maven is missing: the message says what to install."""


class FlinkError(RuntimeError):
    """Maven could not resolve the jars, or the script failed; the message has the last output lines."""


# ---------------------------------------------------------------------------------------------- jars


def cache_dir() -> Path:
    """Where the jars live: ``$DNSQR_FLINK_CACHE`` or the XDG cache, per version and pom."""
    if os.environ.get("DNSQR_FLINK_CACHE"):
        return Path(os.environ["DNSQR_FLINK_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:8]
    return base / "dnsqr-pipeline" / "flink" / f"{FLINK_VERSION}-{digest}"


def java() -> str:
    found = processes.find_java()
    if not found:
        raise FlinkUnavailable("Java 17+ is needed to run Flink: apt-get install openjdk-17-jdk-headless")
    return found


def resolve_jars() -> Path:
    """The directory holding the jars, resolved with Maven only when not cached yet (~170 MB the first time;
    :mod:`dnsqr_pipeline.maven_cache`)."""
    java()
    try:
        return maven_cache.cached_dependencies(
            POM.read_bytes(),
            cache_dir(),
            what=f"the Flink {FLINK_VERSION} jars of {POM}",
            expect="flink-sql-avro-confluent-registry-*.jar",
        )
    except maven_cache.MavenMissing as exc:
        raise FlinkUnavailable(str(exc)) from None
    except maven_cache.MavenError as exc:
        raise FlinkError(str(exc)) from None


# ----------------------------------------------------------------------------------------------- run


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """The final rows of the script's queries (all of them, in order) and what the JVM listened on."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    #: every (address, port) the Flink JVM was seen listening on while it ran
    listening: frozenset[tuple[str, int]]
    seconds: float


def _listen_inodes() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket of this network namespace."""
    out: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hexaddr, hexport = fields[1].split(":")
                raw = bytes.fromhex(hexaddr)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                out[int(fields[9])] = (str(ipaddress.ip_address(raw)), int(hexport, 16))
    return out


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pid`` listens on (empty once it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(fd.path)
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return {addr for inode, addr in _listen_inodes().items() if inode in inodes}


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def run_sql(script: str, *, timeout: float = RUN_TIMEOUT) -> QueryResult:
    """Run ``script`` (Flink SQL statements) in a local mini cluster and return its queries' final rows;
    :class:`FlinkError` if it fails, or if the JVM was seen listening on an address beyond loopback."""
    libs = resolve_jars()
    with tempfile.TemporaryDirectory(prefix="flink-sql-") as tmp:
        sql = Path(tmp) / "script.sql"
        sql.write_text(script)
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        cmd = [java(), *JVM_OPTIONS, "-cp", str(libs / "*"), str(RUNNER), str(sql)]
        began = time.monotonic()
        listening: set[tuple[str, int]] = set()
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=tmp)
            try:
                while proc.poll() is None:
                    if time.monotonic() - began > timeout:
                        proc.kill()
                        proc.wait()
                        raise FlinkError(
                            f"the Flink script did not finish within {timeout:.0f}s; last output:\n"
                            + err.read_text(errors="replace")[-3000:]
                        )
                    listening |= listening_addresses(proc.pid)
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        seconds = time.monotonic() - began
        text = out.read_text(errors="replace")
        if proc.returncode != 0:
            raise FlinkError(
                f"the Flink script failed (exit {proc.returncode}); last lines of its output:\n"
                + (text + err.read_text(errors="replace"))[-4000:]
            )
    beyond = sorted(addr for addr in listening if not is_loopback(addr[0]))
    if beyond:
        raise FlinkError(f"the Flink mini cluster listened beyond loopback: {beyond}")
    columns: tuple[str, ...] = ()
    rows = []
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "COLUMNS":
            columns = tuple(rest.split("\t"))
        elif kind == "ROW":
            rows.append(tuple(rest.split("\t")))
    return QueryResult(columns, rows, frozenset(listening), seconds)


def failures_sql(bootstrap: str, registry_url: str, topic: str) -> str:
    """The README's script with its placeholders filled in."""
    template = string.Template(FAILURES_SQL.read_text())
    return template.substitute(BOOTSTRAP=bootstrap, REGISTRY_URL=registry_url, TOPIC=topic)


def failures_per_name_server(
    bootstrap: str, registry_url: str, topic: str, *, timeout: float = RUN_TIMEOUT
) -> dict[str, int]:
    """{name server: failures} of everything ``topic`` holds now (Confluent Avro values, schema id looked up
    in the registry at ``registry_url``), counted by Flink with ``docs/examples/flink_failures.sql``."""
    return counts_of(run_sql(failures_sql(bootstrap, registry_url, topic), timeout=timeout))


def counts_of(result: QueryResult) -> dict[str, int]:
    """{name server: failures} from the rows of ``flink_failures.sql``."""
    if result.columns != ("name_server", "failures"):
        raise FlinkError(f"unexpected columns {result.columns} from {FAILURES_SQL.name}")
    counts = {ns: int(n) for ns, n in result.rows}
    if len(counts) != len(result.rows):
        raise FlinkError(f"a name server appears twice in {result.rows}")
    return counts
