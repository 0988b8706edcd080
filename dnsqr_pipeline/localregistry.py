"""A local Schema Registry (Apicurio Registry, Confluent-compatible API) for development and tests.

Like the local Kafka (:mod:`dnsqr_pipeline.localkafka`) it needs only Java and Maven: Apicurio Registry
2.4.2.Final is built once from Maven Central by the wrapper pom ``registry/pom.xml`` (Quarkus' build step
over the published ``apicurio-registry-app`` classes; why this version: docs/design.md) into a cache
directory, and runs as ``java -jar`` in its own process group, bound to 127.0.0.1, with in-memory storage:
schemas live as long as the process. Clients (confluent-kafka's ``SchemaRegistryClient``) use
:func:`url`, ``http://127.0.0.1:PORT/apis/ccompat/v7``.

Layout of ``--dir`` (default ``$DNSQR_REGISTRY_DIR``, else ``./var/registry``)::

    registry.json   version and port of the last start: stop and status need no flags
    registry.pid    the running server's pid
    registry.log    its output (Quarkus logs to the console)

The built runner lives in ``$DNSQR_REGISTRY_CACHE``, else ``~/.cache/dnsqr-pipeline/registry/VERSION``
(``$XDG_CACHE_HOME`` respected), with a ``.complete`` marker naming the version and the pom's digest: a
changed pom is built again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from dnsqr_pipeline import processes

log = logging.getLogger(__name__)

#: the only version that can be assembled from Maven Central (docs/design.md); not configurable
REGISTRY_VERSION = "2.4.2.Final"
DEFAULT_PORT = 8081
HOST = "127.0.0.1"
API_PATH = "/apis/ccompat/v7"
#: measured ~170-195 MB RSS with this heap and the serial collector
DEFAULT_HEAP = "128m"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
RUNNER = "registry-runner.jar"


class LocalRegistryError(RuntimeError):
    """The local registry could not be built, started or reached; the message says what to do."""


def url(port: int = DEFAULT_PORT) -> str:
    """The Confluent-compatible API of a local registry on ``port``: what ``schema.registry.url`` takes."""
    return f"http://{HOST}:{port}{API_PATH}"


def default_dir() -> Path:
    """``$DNSQR_REGISTRY_DIR`` or ``./var/registry`` (ignored by git)."""
    return Path(os.environ.get("DNSQR_REGISTRY_DIR") or "var/registry")


# -------------------------------------------------------------------------------------------- build


def _pom_bytes() -> bytes:
    return resources.files("dnsqr_pipeline").joinpath("registry/pom.xml").read_bytes()


def _marker_text() -> str:
    return f"{REGISTRY_VERSION} {hashlib.sha256(_pom_bytes()).hexdigest()[:8]}\n"


def cache_dir() -> Path:
    """Where the built runner lives: ``$DNSQR_REGISTRY_CACHE`` or the XDG cache, per version."""
    if os.environ.get("DNSQR_REGISTRY_CACHE"):
        return Path(os.environ["DNSQR_REGISTRY_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dnsqr-pipeline" / "registry" / REGISTRY_VERSION


def _is_built(target: Path) -> bool:
    try:
        return (target / ".complete").read_text() == _marker_text() and (target / RUNNER).exists()
    except OSError:
        return False


def build_runner() -> Path:
    """Return the directory holding the registry's runner jar (and its ``lib/``), building it with Maven
    only when it is not cached yet (~230 MB of downloads and about a minute the first time).

    The build runs in a temporary sibling whose result is renamed into place, so an interrupted build or
    two concurrent first runs never leave a half-filled cache that later runs would trust.
    """
    target = cache_dir()
    if _is_built(target):
        return target
    what = f"the Apicurio Registry {REGISTRY_VERSION} runner"
    mvn = shutil.which(os.environ.get("MVN") or "mvn")
    if not mvn:
        raise LocalRegistryError(f"Maven (mvn) is needed once to build {what}: apt-get install maven")
    if not processes.find_java():
        raise LocalRegistryError(
            f"Java 17+ is needed to build {what}: apt-get install openjdk-17-jdk-headless"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "pom.xml").write_bytes(_pom_bytes())
        cmd = [mvn, "-B", "--no-transfer-progress", "-f", str(project / "pom.xml"), "package"]
        log.info("building %s with Maven into %s", what, target)
        began = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=project)
        built = project / "target"
        runners = sorted(built.glob("*-runner.jar"))
        if proc.returncode != 0 or len(runners) != 1 or not (built / "lib").is_dir():
            raise LocalRegistryError(
                f"Maven could not build {what} (exit {proc.returncode}; needs Maven, Java 17+ and Maven "
                f"Central). The pom is {REGISTRY_VERSION}-specific on purpose (docs/design.md). "
                "Last lines of mvn's output:\n" + (proc.stdout + proc.stderr)[-3000:]
            )
        log.info("built %s in %.0fs", what, time.monotonic() - began)
        out = Path(tmp) / "runner"
        out.mkdir()
        # the runner's manifest names lib/... relative to itself: the two stay side by side
        runners[0].rename(out / RUNNER)
        (built / "lib").rename(out / "lib")
        (out / ".complete").write_text(_marker_text())
        if target.exists() and not _is_built(target):
            shutil.rmtree(target)  # an older pom's build, or debris: replaced
        try:
            out.rename(target)
        except OSError:
            if not _is_built(target):  # lost a race only if the winner finished
                raise
    return target


# ------------------------------------------------------------------------------------------ process


@dataclasses.dataclass(frozen=True)
class Registry:
    """A registry directory and the port it serves on."""

    directory: Path
    port: int
    version: str = REGISTRY_VERSION

    @property
    def url(self) -> str:
        return url(self.port)

    @property
    def pid_file(self) -> Path:
        return self.directory / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "registry.log"

    @property
    def marker(self) -> str:
        """The system property that names this directory on the server's command line."""
        return f"-Ddnsqr.registry.dir={self.directory}"


def load(directory: Path | None = None) -> Registry | None:
    """The registry last started in ``directory``, or None."""
    directory = (directory or default_dir()).resolve()
    try:
        data = json.loads((directory / "registry.json").read_text())
    except FileNotFoundError:
        return None
    return Registry(directory=directory, port=int(data["port"]), version=data["version"])


def pid(registry: Registry) -> int | None:
    """The pid of the running server of ``registry``, or None (a stale pid file counts as not running)."""
    return processes.running_pid(registry.pid_file, registry.marker)


def _ready(registry: Registry) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{registry.port}/health/ready", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def start(
    directory: Path | None = None,
    port: int | None = None,
    *,
    heap: str = DEFAULT_HEAP,
    timeout: float = START_TIMEOUT,
) -> Registry:
    """Start the registry of ``directory`` on ``port`` (default: its last port, else 8081) and return once
    ``/health/ready`` answers 200. One that already runs is left alone (a different ``port`` is an error).
    """
    directory = (directory or default_dir()).resolve()
    previous = load(directory)
    if previous is not None and (running := pid(previous)) is not None:
        if port is not None and port != previous.port:
            raise LocalRegistryError(
                f"the registry in {directory} already runs (pid {running}) on port {previous.port}; "
                f"`registry stop` it first to use port {port}"
            )
        _wait_ready(previous, timeout)
        return previous
    registry = Registry(directory=directory, port=port or (previous.port if previous else DEFAULT_PORT))
    if not _port_free(registry.port):
        raise LocalRegistryError(f"port {HOST}:{registry.port} is in use; choose another with --port")
    runner = build_runner()
    java = processes.find_java()
    if not java:
        raise LocalRegistryError(
            "Java 17+ is needed to run the registry: apt-get install openjdk-17-jre-headless"
        )
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"version": registry.version, "port": registry.port}
    (directory / "registry.json").write_text(json.dumps(meta, indent=2) + "\n")
    cmd = [
        java,
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        # Quarkus binds 0.0.0.0 unless told otherwise
        f"-Dquarkus.http.host={HOST}",
        f"-Dquarkus.http.port={registry.port}",
        "-Dquarkus.banner.enabled=false",
        registry.marker,
        "-jar",
        str(runner / RUNNER),
    ]
    with open(registry.log_file, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting on port {registry.port}\n".encode())
    server = processes.spawn(cmd, output=registry.log_file, pid_file=registry.pid_file, cwd=directory)
    log.info("started Apicurio Registry (pid %d) at %s", server, registry.url)
    _wait_ready(registry, timeout)
    return registry


def _wait_ready(registry: Registry, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _ready(registry):
        if pid(registry) is None:
            raise LocalRegistryError(
                f"the registry stopped during startup ({processes.why_not_running(registry.pid_file)}); "
                f"last lines of {registry.log_file}:\n" + processes.tail(registry.log_file)
            )
        if time.monotonic() > deadline:
            stop(registry.directory)
            raise LocalRegistryError(
                f"the registry was not ready within {timeout:.0f}s and was stopped; "
                f"last lines of {registry.log_file}:\n" + processes.tail(registry.log_file)
            )
        time.sleep(0.3)


def stop(directory: Path | None = None, *, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop the registry of ``directory`` (SIGTERM, SIGKILL after ``timeout``); its pid, or None if it
    was not running."""
    registry = load(directory)
    if registry is None:
        return None
    running = pid(registry)
    if running is not None:
        processes.stop_all({f"the registry in {registry.directory}": running}, timeout=timeout)
    registry.pid_file.unlink(missing_ok=True)
    return running


def status(directory: Path | None = None) -> tuple[Registry | None, int | None]:
    """The registry of ``directory`` (None if never started there) and its pid (None if not running)."""
    registry = load(directory)
    return registry, (pid(registry) if registry else None)
