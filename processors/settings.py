"""The worker's settings: everything that configures one worker, in one frozen :class:`Settings`.

Built from command flags (``dnsqr-pipeline worker``, ``processors/command.py``) or from environment
variables (the ``faust`` command, whose own flags cannot carry ours: :meth:`Settings.from_env`). The
defaults are the topic contracts' names (``dnsqr_kafka.names``). ``processors/app.py`` turns settings into
a Faust app; ``processors/topology.py`` into the topics a worker needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnsqr_kafka.config import DEFAULT_BOOTSTRAP, Credentials, default_bootstrap
from dnsqr_kafka.names import DEFAULT_APP_ID, DEFAULT_NAMES
from dnsqr_kafka.value_formats import FAILURES_FORMATS, RegistryOptions, TopicFormats, topic_formats

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

#: the processing guarantees a worker runs under (``processors/app.py`` says what each costs)
GUARANTEES = ("at_least_once", "exactly_once")

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
    #: the filter agent's receipts (``processors/receipts.py``): one partition
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
    #: with a bad clock): it counts in the totals only and does not move stream time (state.py)
    window_max_ahead_seconds: int = 86400
    #: the newest this many windows of each ns-stats partition stay Python objects; older ones that no
    #: delta reached for a commit interval are frozen into flat buffers (~50 instead of ~250 bytes a
    #: (name server, window); state.py). 0: freeze none
    hot_windows: int = 2
    #: a budget of name servers per ns-stats partition whose totals stay Python objects (~300 bytes each);
    #: beyond a quarter more, the oldest outside the hot windows are frozen (~55 bytes) down to three
    #: quarters of it, at ~5 us of CPU each time one freezes or thaws (state.py). 0: no budget
    hot_totals: int = 500_000
    #: how often the aggregator publishes snapshots of changed name servers to the counts topic
    snapshot_interval: float = 1.0
    #: how often Faust commits (each commit also writes the changed counts to the changelog and the counts
    #: topic): the counts' staleness, and a failover's, is up to this much more. 0.5 s kept a SIGKILL's
    #: staleness under the session timeout + 2 s in 3 runs of 3 where 1 s did in 2 (docs/design.md)
    commit_interval: float = 0.5
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = True
    session_timeout: float = 6.0
    #: how often the consumer heartbeats; also how late, at most, a worker learns that the group rebalances
    #: (a member left or died), so it is part of every failover's pause
    heartbeat_interval: float = 0.5
    #: where the aggregator keeps a checkpoint of each ns-stats partition's state
    #: (``processors/checkpoint.py``), so that a restart reads the changelog from the checkpoint on; None: no
    #: checkpoints, a restart reads the whole changelog
    state_dir: Path | None = None
    #: values of the failures topic: "avro" or "json" (``dnsqr_kafka.value_formats``)
    failures_format: str = "avro"
    #: a Schema Registry's URL: failures and counts values in the Confluent wire format; "": schemaless
    schema_registry: str = ""
    schema_registry_user: str = ""
    schema_registry_password: str = ""
    #: standby replicas of each ns-stats partition's state (``processors/standby.py``): this many other
    #: workers tail its changelog, and a failover prefers one of them; each costs a full copy of the state's
    #: memory. 0: none, a worker taking a partition over reads its changelog (or checkpoint) as before
    standby_replicas: int = 0
    #: an ns-stats partition leaves a live owner only for a worker that caught up with its state as a standby
    #: first (``processors/warmup.py``: Kafka Streams' warm-up replicas); False: it moves as soon as Faust's
    #: assignor balances it, and the new owner reads its changelog then
    warm_up: bool = True
    #: a partition whose changelog holds at most this many records moves at once, without a warm-up, and a
    #: warm-up this close to its changelog's end has caught up (Kafka Streams' ``acceptable.recovery.lag``)
    acceptable_recovery_lag: int = 10_000
    #: megabytes of ns-stats records one partition keeps while its state is restored; then the partition is
    #: paused (fetched again from the next record once the state is back), so a long restore under a full
    #: stream holds a bounded amount of memory. 0 pauses at the first record.
    restore_buffer_mb: float = 64.0
    #: how the worker authenticates (security protocol, SASL, SSL): its Kafka clients and Faust alike
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
            if f.name == "state_dir":
                values[f.name] = Path(raw) if raw else None
            elif isinstance(default, bool):
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
        if (
            self.partitions < 1
            or self.window_seconds <= 0
            or self.snapshot_interval <= 0
            or self.commit_interval <= 0
        ):
            raise ValueError(
                "partitions, window_seconds, snapshot_interval and commit_interval must be positive"
            )
        if self.window_expires_seconds < 0:
            raise ValueError("window_expires_seconds must be 0 (never) or positive")
        if self.window_max_ahead_seconds < 0:
            raise ValueError("window_max_ahead_seconds must be 0 or positive")
        if self.hot_windows < 0:
            raise ValueError("hot_windows must be 0 (freeze none) or positive")
        if self.hot_totals < 0:
            raise ValueError("hot_totals must be 0 (no budget) or positive")
        if self.failures_format not in FAILURES_FORMATS:
            raise ValueError(
                f"failures format must be one of {FAILURES_FORMATS}, not {self.failures_format!r}"
            )
        if self.acceptable_recovery_lag < 0:
            raise ValueError("acceptable_recovery_lag must be 0 or positive")
        if self.standby_replicas < 0:
            raise ValueError("standby_replicas must be 0 (none) or positive")
        if self.restore_buffer_mb < 0:
            raise ValueError("restore_buffer_mb must be 0 or positive")
        return self

    @property
    def registry(self) -> RegistryOptions | None:
        """The Schema Registry the worker registers its schemas with; None: schemaless Avro."""
        if not self.schema_registry:
            return None
        return RegistryOptions(self.schema_registry, self.schema_registry_user, self.schema_registry_password)

    def topic_formats(self, client: SchemaRegistryClient | None = None) -> TopicFormats:
        """The failures and counts topics' formats, the worker's schemas registered (once, at start-up:
        :func:`dnsqr_kafka.value_formats.topic_formats`, whose errors it raises; ``client``: a registry
        client to use instead of one for :attr:`registry`, e.g. confluent-kafka's mock)."""
        return topic_formats(
            self.registry,
            failures_topic=self.failures_topic,
            counts_topic=self.counts_topic,
            failures_format=self.failures_format,
            register=True,
            client=client,
        )

    @property
    def restore_buffer_bytes(self) -> int:
        """:attr:`restore_buffer_mb` in bytes (at least 1: 0 pauses a partition at its first record)."""
        return max(1, int(self.restore_buffer_mb * 2**20))

    @property
    def changelog_topic(self) -> str:
        """The aggregator's state changelog: per app id, since it holds that consumer group's state."""
        return f"{self.app_id}-ns-state-changelog"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the command use it)."""
        return replace(self, **changes).validated()
