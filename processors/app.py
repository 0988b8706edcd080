"""The Faust app factory, its settings, and the module-level ``app`` for ``faust -A processors.app worker``.

Everything a worker needs (topic names, partitions, processing guarantee, window size) lives in one frozen
:class:`Settings`, built from command flags (``dnsqr-pipeline worker``) or from environment variables (the
``faust`` command, whose own flags cannot carry ours). :func:`create_app` turns settings into a
:class:`PipelineApp` with the filter agent, the aggregator agent and the web views installed.

Settings chosen here, and why:

- No Faust tables: the aggregator keeps its per-name-server state itself (``processors/aggregator.py`` says
  why), with its own compacted changelog topic (:func:`changelog_spec`). :func:`internal_topic_specs` names
  every topic a worker needs besides the raw topic, so they can all be created before the agents start.
- ``processing_guarantee``: ``at_least_once`` by default. Outputs are keyed and the sink is idempotent by
  offset range, so replays after a crash duplicate nothing downstream. ``exactly_once`` uses Kafka
  transactions (one transactional producer per input partition); the broker must allow it: three brokers, or
  ``transaction.state.log.replication.factor=1`` and ``min.isr=1`` on a single node (the local broker does).
- Producer: large batches and a linger of a few milliseconds, because the filter agent hands the producer
  whole per-partition batches of failures (see ``filter_agent.py``); requests stay under the broker's default
  ``message.max.bytes`` (about 1 MB).
- Consumer: low session timeout and heartbeat interval so a group join (tests, restarts) takes seconds, and
  a fetch size large enough for containers of ~1000 records. At most :data:`STREAM_BUFFER` events wait in
  an agent's buffer (Faust's default is 4096): a raw event is a whole container (~300 KB), so a worker
  behind its input held up to a gigabyte of prefetched containers; a few batches of the filter agent
  (``BATCH_CONTAINERS``) keep it busy as well.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

from dnsqr_kafka.config import DEFAULT_BOOTSTRAP, Credentials, default_bootstrap
from dnsqr_kafka.names import DEFAULT_APP_ID, DEFAULT_NAMES
from dnsqr_kafka.topics import CONTAINER_TOPIC_CONFIG, TopicSpec

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from processors.aggregator import Aggregation
    from processors.filter_agent import Output

GUARANTEES = ("at_least_once", "exactly_once")

#: Faust's ``stream_buffer_maxsize``: events prefetched per agent (see the module doc)
STREAM_BUFFER = 256

#: Environment variable for each :class:`Settings` field read by :meth:`Settings.from_env`.
ENV_PREFIX = "DNSQR_"


@dataclass(frozen=True)
class Settings:
    """Everything that configures one worker; the defaults are the topic contracts' names."""

    app_id: str = DEFAULT_APP_ID
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    raw_topic: str = DEFAULT_NAMES.raw
    failures_topic: str = DEFAULT_NAMES.failures
    stats_topic: str = DEFAULT_NAMES.stats
    counts_topic: str = DEFAULT_NAMES.counts
    dlq_topic: str = DEFAULT_NAMES.raw_dlq
    #: the filter agent's receipts (``processors/progress.py``): one partition
    progress_topic: str = DEFAULT_NAMES.progress
    #: partitions of the topics this app creates when missing (ns-stats, counts, failures, DLQ, the state
    #: changelog); ns-stats and the changelog must agree (one changelog partition per ns-stats partition).
    partitions: int = 4
    #: of the topics the worker creates (and Faust's own); 0: min(3, brokers), resolved as the worker starts
    replication_factor: int = 0
    processing_guarantee: str = "at_least_once"
    #: tumbling window size for the per-name-server counts, in seconds of record time
    window_seconds: int = 3600
    #: windows starting this many seconds (record time) before the newest window seen are freed; 0 keeps
    #: every window. Totals never expire.
    window_expires_seconds: int = 7 * 86400
    #: a record whose window starts more than this many seconds after the worker's clock is early (a sensor
    #: with a bad clock): it counts in the totals only and does not move stream time (ns_state.py)
    window_max_ahead_seconds: int = 86400
    #: how often the aggregator publishes snapshots of changed name servers to the counts topic
    snapshot_interval: float = 1.0
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = True
    session_timeout: float = 6.0
    heartbeat_interval: float = 1.0
    #: how the worker authenticates (security protocol, SASL, SSL); see :func:`faust_credentials`
    credentials: Credentials = field(default_factory=Credentials)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``DNSQR_<FIELD>`` variables (e.g. ``DNSQR_RAW_TOPIC``) and ``KAFKA_BOOTSTRAP``.

        This is how ``faust -A processors.app worker`` is configured, since the faust command has no
        flags for our topics.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"bootstrap_servers": env.get("KAFKA_BOOTSTRAP") or default_bootstrap()}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name == "credentials":
                continue
            default = getattr(cls, f.name)
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = type(default)(raw)
        return cls(**values, credentials=Credentials.from_env(env)).validated()

    def validated(self) -> Settings:
        """Self, after checking the values that would otherwise fail deep inside Faust."""
        if self.processing_guarantee not in GUARANTEES:
            raise ValueError(
                f"processing guarantee must be one of {GUARANTEES}, not {self.processing_guarantee!r}"
            )
        if self.partitions < 1 or self.window_seconds <= 0 or self.snapshot_interval <= 0:
            raise ValueError("partitions, window_seconds and snapshot_interval must be positive")
        if self.window_expires_seconds < 0:
            raise ValueError("window_expires_seconds must be 0 (never) or positive")
        if self.window_max_ahead_seconds < 0:
            raise ValueError("window_max_ahead_seconds must be 0 or positive")
        return self

    @property
    def changelog_topic(self) -> str:
        """The aggregator's state changelog: per app id, since it holds that consumer group's state."""
        return f"{self.app_id}-ns-state-changelog"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the command use it)."""
        return replace(self, **changes).validated()


#: the changelog's segments roll at this size, so compaction (which skips the active segment) keeps up and a
#: restore reads about one record per key
CHANGELOG_SEGMENT_BYTES = 16 * 1024 * 1024


def changelog_spec(settings: Settings) -> TopicSpec:
    """The aggregator's state changelog: compacted, one partition per ns-stats partition."""
    return TopicSpec(
        settings.changelog_topic,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor or None,
        config={"cleanup.policy": "compact", "segment.bytes": str(CHANGELOG_SEGMENT_BYTES)},
    )


def faust_credentials(credentials: Credentials) -> Any:
    """Faust/aiokafka credentials for the shared Kafka flags (``dnsqr_kafka.config.Credentials``, which
    the confluent-kafka stages turn into librdkafka properties): one set of options connects every stage.
    None for plaintext."""
    protocol = credentials.security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=credentials.ssl_ca_location or None)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=credentials.sasl_username or None,
            password=credentials.sasl_password or None,
            mechanism=credentials.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


@dataclass
class FilterCounters:
    """What this worker's agents have seen; served by the ``/dnsqr/stats`` view."""

    containers: int = 0
    records: int = 0
    failures: int = 0
    dead_letters: int = 0
    #: (name server, window) deltas sent to the ns-stats topic
    deltas: int = 0
    #: raw records Faust delivered again after they were processed (committed or acknowledged), dropped
    redelivered: int = 0
    #: the same for ns-stats records, dropped by the aggregator agent
    redelivered_stats: int = 0
    #: ns-stats records that did not decode, skipped by the aggregator agent
    bad_stats: int = 0


class PipelineApp(faust.App):
    """A Faust app that also carries its :class:`Settings`, the filter's counters, its output and the
    aggregator's state."""

    settings: Settings
    counters: FilterCounters
    #: ``host:pid``, written into the filter receipts
    worker_name: str
    output: Output
    aggregation: Aggregation


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _datadir(app_id: str) -> str:
    """Faust keeps a per-app directory even without tables: under ``$DNSQR_FAUST_DATADIR`` or the temp
    dir, not (Faust's default) the user's working directory."""
    base = Path(os.environ.get("DNSQR_FAUST_DATADIR") or Path(tempfile.gettempdir()) / "dnsqr-faust")
    base.mkdir(parents=True, exist_ok=True)
    return str(base / f"{app_id}-data")


def create_app(settings: Settings) -> PipelineApp:
    """Build the app and install the agents and views for ``settings``."""
    # Imported here: these modules import this one for PipelineApp/Settings.
    from processors import aggregator, consumer, diagnostics, filter_agent, metrics, views
    from processors.progress import worker_name
    from processors.supervisor import BoundedRestarts

    settings = settings.validated()
    if settings.web_enabled and not is_loopback(settings.web_host):
        log.warning(
            "the web views and /metrics on %s:%d have no authentication: anyone who reaches that address "
            "reads the per-name-server counts; keep it on a trusted network",
            settings.web_host,
            settings.web_port,
        )
    app = PipelineApp(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.credentials),
        datadir=_datadir(settings.app_id),
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor or 1,
        agent_supervisor=BoundedRestarts,
        autodiscover=False,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_commit_interval=1.0,
        consumer_max_fetch_size=8 * 1024 * 1024,
        stream_buffer_maxsize=STREAM_BUFFER,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=1_000_000,
        producer_linger=0.005,
        producer_acks=-1,
    )
    consumer.install(app)
    app.settings = settings
    app.counters = FilterCounters()
    app.worker_name = worker_name()
    filter_agent.install(app)
    app.aggregation = aggregator.install(app)
    views.install(app, app.aggregation)
    diagnostics.install(app)
    metrics.install(app)
    return app


def internal_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic a worker writes or keeps state in besides the raw topic, with the partitions and
    configuration it expects. ``dnsqr-pipeline worker``, ``topics create`` and ``run`` create them all
    before any agent starts, so no agent meets a topic that is not in the cluster's metadata yet.

    The ns-stats topic and the state changelog share the partition count (:func:`copartitioned_topics`);
    the progress topic has one partition, so a reader sees every receipt in order.
    """
    n = settings.partitions
    return [
        TopicSpec(settings.failures_topic, partitions=n),
        TopicSpec(settings.stats_topic, partitions=n),
        # a snapshot per name server and window: only the newest per key matters to a reader
        TopicSpec(settings.counts_topic, partitions=n, config={"cleanup.policy": "compact"}),
        TopicSpec(settings.dlq_topic, partitions=n, config=CONTAINER_TOPIC_CONFIG),
        TopicSpec(settings.progress_topic, partitions=1),
        changelog_spec(settings),
    ]


def copartitioned_topics(settings: Settings) -> list[str]:
    """The ns-stats topic and the state changelog: their partition counts must be equal, since the
    changelog partition of a name server's state is the ns-stats partition its deltas arrive in."""
    return [settings.stats_topic, settings.changelog_topic]


def __getattr__(name: str) -> Any:
    """Build the module-level ``app`` on first use, from the environment (``faust -A processors.app``).

    Lazy so that importing this module (the ``dnsqr-pipeline`` command, tests) does not create an app
    nobody runs.
    """
    if name == "app":
        app = create_app(Settings.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
