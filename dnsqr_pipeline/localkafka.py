"""A local Apache Kafka (KRaft) for development, tests and users without Docker.

The machine has Java and Maven but no Kafka package and no Docker engine, so the broker jars come from
Maven Central (``maven/pom.xml``, resolved once into a per-version cache) and each node runs as
``java -cp JARS kafka.Kafka server.properties`` in its own process group, combined broker+controller,
bound to 127.0.0.1 only.

Version choice: Kafka 4.x. Kafka 4.0 removed old protocol versions (KIP-896), which older aiokafka (and
so Faust) still used; with aiokafka 0.14.0 / faust-streaming 0.15.3 a Faust agent that consumes, commits
and produces (also with ``processing_guarantee="exactly_once"``) works against this broker: checked
before choosing, and kept checked by ``test_faust_consumes_and_produces_through_this_broker``. So there
is no need for the 3.9.x fallback; 4.3.1 is the newest 4.x line with a patch release. ``DNSQR_KAFKA_VERSION``
or ``--kafka-version`` selects another version should a client need it; 3.9.1 runs too, but brings its
own log4j 1 binding, so its log goes to node-N/logs/stdout.log only.

Layout of ``--dir`` (default ``$DNSQR_KAFKA_DIR``, else ``./var/kafka``)::

    cluster.json            version, cluster id, node count, ports, security: later commands need no flags
    log4j2.properties       the broker logs to node-N/logs/server.log (rotated)
    node-N/server.properties, node-N/data/, node-N/logs/{server.log,stdout.log}, node-N/kafka.pid
    credentials.json        secured clusters only (0600): the SCRAM users' passwords
    tls/ca.pem              sasl_ssl only: the CA clients verify the brokers with (and the broker's key)

Node N (1-based) listens for clients on ``port + N - 1`` and for the controller quorum on
``controller_port + N - 1``. ``--security sasl_ssl`` or ``sasl_plaintext`` (fixed at the first start)
makes it a secured cluster: SCRAM users per stage, TLS, ACLs; see :mod:`dnsqr_pipeline.kafka_security`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from confluent_kafka.admin import AdminClient

from dnsqr_pipeline import certs, kafka_security, maven_cache, processes

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
DEFAULT_PORT = 9092
#: far enough from the client ports that a 3-node cluster's client and controller ports never overlap
CONTROLLER_PORT_OFFSET = 100
HOST = "127.0.0.1"
#: small heap: the development box has 2 cores and a 3-node cluster runs three JVMs
DEFAULT_HEAP = "512m"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class LocalKafkaError(RuntimeError):
    """A local broker could not be resolved, started or reached; the message says what to do."""


# ---------------------------------------------------------------------------------------------- jars


def kafka_version() -> str:
    """The Kafka version to run: ``$DNSQR_KAFKA_VERSION`` or the one this module was tested with."""
    return os.environ.get("DNSQR_KAFKA_VERSION") or KAFKA_VERSION


def default_dir() -> Path:
    """``$DNSQR_KAFKA_DIR`` or ``./var/kafka`` (ignored by git)."""
    return Path(os.environ.get("DNSQR_KAFKA_DIR") or "var/kafka")


def cache_root() -> Path:
    """Where resolved jars live, shared by every checkout: ``$DNSQR_KAFKA_CACHE`` or the XDG cache."""
    if os.environ.get("DNSQR_KAFKA_CACHE"):
        return Path(os.environ["DNSQR_KAFKA_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dnsqr-pipeline"


def _pom_bytes() -> bytes:
    return resources.files("dnsqr_pipeline").joinpath("maven/pom.xml").read_bytes()


def jar_dir(version: str | None = None) -> Path:
    """Cache directory for one Kafka version and one pom (a changed pom must not reuse stale jars)."""
    digest = hashlib.sha256(_pom_bytes()).hexdigest()[:8]
    return cache_root() / f"kafka-{version or kafka_version()}-{digest}"


def resolve_jars(version: str | None = None) -> Path:
    """Return the directory holding the broker's jars, running Maven only when it is not cached yet
    (:mod:`dnsqr_pipeline.maven_cache`)."""
    version = version or kafka_version()
    target = jar_dir(version)
    if not (target / maven_cache.COMPLETE).exists():
        log.info("resolving Kafka %s jars with Maven into %s", version, target)
    try:
        return maven_cache.cached_dependencies(
            _pom_bytes(),
            target,
            what=f"the Kafka {version} jars",
            expect="kafka_2.13-*.jar",
            properties={"kafka.version": version},
        )
    except maven_cache.MavenError as exc:
        raise LocalKafkaError(str(exc)) from None


def java_command() -> str:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` on PATH (Kafka 4 needs Java 17+)."""
    found = processes.find_java()
    if not found:
        raise LocalKafkaError("Java 17+ is needed to run Kafka: apt-get install openjdk-17-jre-headless")
    return found


def java_classpath(libs: Path) -> str:
    """A JVM class path wildcard over every jar in ``libs``."""
    return str(libs / "*")


# ------------------------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class ClusterLayout:
    """What ``start`` decided once and every later command reads back from ``cluster.json``."""

    directory: Path
    nodes: int
    port: int
    controller_port: int
    version: str
    cluster_id: str
    #: "plaintext", "sasl_plaintext" or "sasl_ssl" (:data:`kafka_security.SECURITY_PROTOCOLS`)
    security: str = "plaintext"

    @property
    def node_ids(self) -> range:
        return range(1, self.nodes + 1)

    def client_port(self, node: int) -> int:
        return self.port + node - 1

    def quorum_port(self, node: int) -> int:
        return self.controller_port + node - 1

    def bootstrap(self, nodes: Iterable[int] | None = None) -> str:
        """Comma-separated client addresses (of ``nodes``, default all)."""
        return ",".join(f"{HOST}:{self.client_port(n)}" for n in (nodes or self.node_ids))

    def node_dir(self, node: int) -> Path:
        return self.directory / f"node-{node}"

    def pid_file(self, node: int) -> Path:
        return self.node_dir(node) / "kafka.pid"

    def log_file(self, node: int) -> Path:
        return self.node_dir(node) / "logs" / "server.log"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients verify the brokers with (sasl_ssl), else None."""
        if not kafka_security.uses_tls(self.security):
            return None
        return certs.stored_tls(self.directory / kafka_security.TLS_DIR).ca_file

    def client_config(self, user: str = kafka_security.ADMIN) -> dict[str, str]:
        """librdkafka properties to reach this cluster, as ``user`` when it is secured."""
        password = (
            kafka_security.load_credentials(self.directory)[user]
            if kafka_security.is_secured(self.security)
            else ""
        )
        return kafka_security.client_config(self.bootstrap(), self.security, user, password, self.ca_file)

    def check_node(self, node: int) -> None:
        if node not in self.node_ids:
            raise LocalKafkaError(
                f"no node {node}: the cluster in {self.directory} has nodes 1..{self.nodes}"
            )


def random_cluster_id() -> str:
    """A Kafka ``Uuid`` in its text form (URL-safe base64 of 16 bytes), as ``kafka-storage random-uuid``."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like command-line options
            return text


def load_layout(directory: Path) -> ClusterLayout | None:
    """The layout stored in ``directory`` by an earlier ``start``, or None."""
    meta = directory / "cluster.json"
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return ClusterLayout(directory=directory, **data)


def plan_layout(
    directory: Path,
    *,
    nodes: int | None = None,
    port: int | None = None,
    controller_port: int | None = None,
    version: str | None = None,
    security: str | None = None,
) -> ClusterLayout:
    """The stored layout, checked against the flags given; or a new one from the flags and defaults.

    A directory is formatted for one cluster id and quorum, so flags that contradict it are an error
    rather than silently ignored.
    """
    directory = directory.resolve()
    existing = load_layout(directory)
    if existing:
        asked = {
            "nodes": nodes,
            "port": port,
            "controller_port": controller_port,
            "version": version,
            "security": security,
        }
        clashes = [
            f"{k}={v} (it has {getattr(existing, k)})"
            for k, v in asked.items()
            if v is not None and v != getattr(existing, k)
        ]
        if clashes:
            raise LocalKafkaError(
                f"{directory} already holds a {existing.nodes}-node cluster; asked for "
                + ", ".join(clashes)
                + ". Use another --dir, or `kafka stop` and delete the directory."
            )
        return existing
    port = port or DEFAULT_PORT
    return ClusterLayout(
        directory=directory,
        nodes=nodes or 1,
        port=port,
        controller_port=controller_port or port + CONTROLLER_PORT_OFFSET,
        version=version or kafka_version(),
        cluster_id=random_cluster_id(),
        security=security or "plaintext",
    )


def server_properties(layout: ClusterLayout, node: int) -> str:
    """``server.properties`` of one combined broker+controller node.

    Test-friendly choices: internal topics are replicated to every node up to 3, so one node works
    (and Faust's ``exactly_once`` with it, since the transaction log needs only 1 in-sync replica there)
    while the 3-node cluster tolerates a lost node; no initial rebalance delay (groups join at once);
    topic auto-creation stays on because Faust and some clients create internal topics on first use.
    """
    n = layout.nodes
    internal_rf = min(n, 3)
    min_isr = 1 if n == 1 else 2
    if n == 1:
        # dynamic quorum (KIP-853): formatted with --standalone
        quorum = f"controller.quorum.bootstrap.servers={HOST}:{layout.quorum_port(node)}"
    else:
        # a fixed voter set is all the fault tests need and survives restarts without reconfiguration
        voters = ",".join(f"{i}@{HOST}:{layout.quorum_port(i)}" for i in layout.node_ids)
        quorum = f"controller.quorum.voters={voters}"
    lines = [
        "process.roles=broker,controller",
        f"node.id={node}",
        *_listener_properties(layout, node),
        quorum,
        f"log.dirs={layout.node_dir(node) / 'data'}",
        f"default.replication.factor={internal_rf}",
        f"offsets.topic.replication.factor={internal_rf}",
        f"transaction.state.log.replication.factor={internal_rf}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={internal_rf}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        # development data: keep a day, in small segments, so var/ does not grow without bound
        "log.retention.hours=24",
        "log.segment.bytes=104857600",
        "num.network.threads=2",
        "num.io.threads=4",
    ]
    return "\n".join(lines) + "\n"


def _listener_properties(layout: ClusterLayout, node: int) -> list[str]:
    """Listeners and, on a secured cluster, SASL, TLS and the authorizer."""
    client = f"{HOST}:{layout.client_port(node)}"
    controller = f"{HOST}:{layout.quorum_port(node)}"
    if not kafka_security.is_secured(layout.security):
        return [
            f"listeners=PLAINTEXT://{client},CONTROLLER://{controller}",
            f"advertised.listeners=PLAINTEXT://{client}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
        ]
    return kafka_security.listener_properties(
        security=layout.security,
        client=client,
        controller=controller,
        passwords=kafka_security.load_credentials(layout.directory),
        tls=certs.stored_tls(layout.directory / kafka_security.TLS_DIR),
    )


LOG4J2_PROPERTIES = """\
# written by dnsqr_pipeline.localkafka: broker logs go to ${sys:kafka.logs.dir}/server.log
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _write_layout(layout: ClusterLayout) -> None:
    layout.directory.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(layout)
    del data["directory"]  # the directory is where the file is: the tree can be moved
    (layout.directory / "cluster.json").write_text(json.dumps(data, indent=2) + "\n")
    (layout.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    if kafka_security.is_secured(layout.security):
        kafka_security.create_credentials(layout.directory)
        if kafka_security.uses_tls(layout.security):
            certs.make_broker_tls(layout.directory / kafka_security.TLS_DIR, kafka_security.LOCAL_HOSTS)
    for node in layout.node_ids:
        (layout.node_dir(node) / "logs").mkdir(parents=True, exist_ok=True)
        # a secured node's properties hold the broker's password
        kafka_security.write_private(
            layout.node_dir(node) / "server.properties", server_properties(layout, node)
        )


def _format_storage(layout: ClusterLayout, libs: Path) -> None:
    """Format every node's log dirs once (``meta.properties`` marks a formatted one).

    The nodes are formatted in parallel: each run is a JVM start of a few seconds on this 2-core box.
    """
    running: dict[int, subprocess.Popen[str]] = {}
    for node in layout.node_ids:
        if (layout.node_dir(node) / "data" / "meta.properties").exists():
            continue
        cmd = [
            java_command(),
            "-Xmx256m",
            "-cp",
            java_classpath(libs),
            f"-Dlog4j2.configurationFile={layout.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={layout.node_dir(node) / 'logs'}",
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            layout.cluster_id,
            "-c",
            str(layout.node_dir(node) / "server.properties"),
        ]
        if layout.nodes == 1:
            cmd.append("--standalone")
        if kafka_security.is_secured(layout.security):
            cmd += kafka_security.scram_format_args(kafka_security.load_credentials(layout.directory))
        running[node] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failures = []
    for node, proc in running.items():
        output, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"formatting node {node} failed (exit {proc.returncode}):\n{output}")
    if failures:
        raise LocalKafkaError("\n".join(failures))


# ------------------------------------------------------------------------------------------ process

#: the nodes this process started (shared with every local server: :data:`processes.children`)
_children = processes.children


def node_pid(layout: ClusterLayout, node: int) -> int | None:
    """The pid of a running node, or None; a stale pid file (or a reused pid) counts as not running."""
    return processes.running_pid(layout.pid_file(node), str(layout.node_dir(node) / "server.properties"))


def _why_not_running(layout: ClusterLayout, node: int) -> str:
    """Why :func:`node_pid` takes ``node`` as not running, for an error message."""
    return processes.why_not_running(layout.pid_file(node))


def _spawn_node(layout: ClusterLayout, node: int, libs: Path, heap: str) -> int:
    logs = layout.node_dir(node) / "logs"
    cmd = [
        java_command(),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j2.configurationFile={layout.directory / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        java_classpath(libs),
        "kafka.Kafka",
        str(layout.node_dir(node) / "server.properties"),
    ]
    return processes.spawn(
        cmd, output=logs / "stdout.log", pid_file=layout.pid_file(node), cwd=layout.node_dir(node)
    )


def wait_ready(
    layout: ClusterLayout, nodes: Iterable[int] | None = None, timeout: float = START_TIMEOUT
) -> None:
    """Wait until each of ``nodes`` answers a metadata request and sees every running node's broker.

    Checking through the AdminClient (not just a TCP connect) is what clients need: the port opens
    before the broker has caught up with the metadata log.
    """
    nodes = list(nodes or layout.node_ids)
    deadline = time.monotonic() + timeout
    for node in nodes:
        admin = AdminClient(
            {
                **layout.client_config(),
                "bootstrap.servers": layout.bootstrap([node]),
                "log_level": 0,  # "connection refused" until the node listens is expected, not news
                "logger": logging.getLogger("localkafka.admin"),
            }
        )
        while True:
            pid = node_pid(layout, node)
            if pid is None:
                raise LocalKafkaError(
                    f"Kafka node {node} is not running during startup ({_why_not_running(layout, node)}); "
                    f"last lines of {layout.log_file(node)}:\n"
                    + processes.tail(layout.log_file(node))
                    + "\n"
                    + processes.tail(layout.node_dir(node) / "logs" / "stdout.log")
                )
            try:
                md = admin.list_topics(timeout=2)
                expected = sum(node_pid(layout, n) is not None for n in layout.node_ids)
                if node in md.brokers and len(md.brokers) >= expected:
                    break
            except Exception:  # not answering yet: librdkafka raises KafkaException while it connects
                log.debug("node %d not ready yet", node, exc_info=True)
            if time.monotonic() > deadline:
                raise LocalKafkaError(
                    f"Kafka node {node} did not accept connections within {timeout:.0f}s; "
                    f"see {layout.log_file(node)}"
                )
            time.sleep(0.3)


def start(
    directory: Path | None = None,
    *,
    nodes: int | None = None,
    port: int | None = None,
    controller_port: int | None = None,
    version: str | None = None,
    security: str | None = None,
    heap: str = DEFAULT_HEAP,
    only: Iterable[int] | None = None,
    timeout: float = START_TIMEOUT,
) -> ClusterLayout:
    """Start the cluster in ``directory`` (all its nodes, or ``only`` some), formatting it on first use.

    Nodes that already run are left alone, so starting twice is harmless; returns once every node
    answers. A secured cluster's stage ACLs (:func:`kafka_security.stage_acls`) are granted on every
    start, which keeps them complete after an upgrade of this module.
    """
    layout = plan_layout(
        directory or default_dir(),
        nodes=nodes,
        port=port,
        controller_port=controller_port,
        version=version,
        security=security,
    )
    targets = list(only or layout.node_ids)
    for node in targets:
        layout.check_node(node)
    libs = resolve_jars(layout.version)
    if load_layout(layout.directory) is None:
        _write_layout(layout)
    _format_storage(layout, libs)
    for node in targets:
        if node_pid(layout, node) is None:
            pid = _spawn_node(layout, node, libs, heap)
            log.info("started Kafka node %d (pid %d) on %s:%d", node, pid, HOST, layout.client_port(node))
    wait_ready(layout, targets, timeout)
    if kafka_security.is_secured(layout.security):
        admin = AdminClient({**layout.client_config(), "logger": logging.getLogger("localkafka.admin")})
        granted = kafka_security.grant(admin, kafka_security.stage_acls())
        log.info("granted %d ACL bindings to the stage users", granted)
    return layout


def stop(
    directory: Path | None = None,
    *,
    only: Iterable[int] | None = None,
    timeout: float = STOP_TIMEOUT,
    kill: bool = False,
) -> list[int]:
    """Stop nodes (all, or ``only`` some): SIGTERM for a clean shutdown, SIGKILL after ``timeout``.

    ``kill=True`` sends SIGKILL at once (a crash, for fault tests). Returns the nodes that were running.
    Signals go to all nodes first and are waited for together, so a cluster does not stall with its
    quorum half gone while nodes are stopped one by one.
    """
    layout = load_layout((directory or default_dir()).resolve())
    if layout is None:
        return []
    targets = list(only or layout.node_ids)
    for node in targets:
        layout.check_node(node)
    running = {node: pid for node in targets if (pid := node_pid(layout, node)) is not None}
    processes.stop_all(
        {f"Kafka node {node}": pid for node, pid in running.items()}, timeout=timeout, kill=kill
    )
    for node in running:
        with contextlib.suppress(FileNotFoundError):
            layout.pid_file(node).unlink()
    return list(running)


def status(directory: Path | None = None) -> dict[int, int | None]:
    """``{node: pid or None}`` for the cluster in ``directory`` (empty if there is none)."""
    layout = load_layout((directory or default_dir()).resolve())
    if layout is None:
        return {}
    return {node: node_pid(layout, node) for node in layout.node_ids}
