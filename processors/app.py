"""The composition root: :func:`create_app` builds the Faust app of a worker and installs its parts.

``faust -A processors.app worker`` uses the module-level ``app`` (built lazily from the environment, see
:func:`__getattr__`); ``dnsqr-pipeline worker`` (``processors/command.py``) calls :func:`create_app` with
the settings of its flags; nothing else in the package imports this module. The agents, views and metrics
receive what they need (settings, counters, output, the aggregator's state) as arguments of their
``install``.

Faust settings chosen here, and why:

- ``processing_guarantee``: ``at_least_once`` by default. Outputs are keyed and the sink is idempotent by
  offset range, so replays after a crash duplicate nothing downstream. ``exactly_once`` uses Kafka
  transactions (one transactional producer per input partition); the broker must allow it: three brokers, or
  ``transaction.state.log.replication.factor=1`` and ``min.isr=1`` on a single node (the local broker does).
- Producer: large batches and a linger of a few milliseconds, because the filter agent hands the producer
  whole per-partition batches of failures (see ``filter_agent.py``); requests stay under the broker's default
  ``message.max.bytes`` (about 1 MB).
- ``table_standby_replicas``: ``--standby-replicas``, at least 1 (Faust's default): Faust's partition
  assignor computes standbys for ns-stats with it (``processors/standby.py``), and with 0 and no tables
  Faust would use a round-robin assignor instead, whose assignments carry no worker URLs
  (``processors/scatter_gather.py`` needs them). Standbys are tailed only with ``--standby-replicas`` > 0.
- Consumer: low session timeout and heartbeat interval so a group join (tests, restarts) takes seconds.
  Prefetched input is most of a busy worker's memory besides its state, so it is bounded: at most
  :data:`STREAM_BUFFER` events wait in an agent's buffer (Faust's default is 4096: a raw event is a whole
  container, ~300 KB, so a worker behind its input would hold up to a gigabyte), one batch of the filter
  agent (``BATCH_CONTAINERS``); and a fetch takes at most :data:`FETCH_BYTES` per partition (a container
  of ~1000 records is ~300 KB; the broker returns a larger record whole anyway). With 8 MB and 256 events
  a worker's fetched and buffered input held ~200 MB at its peak (``memray`` on issue #20's week of
  windows); with 2 MB and 16 events its peak RSS there was 583-620 MB instead of 748 (docs/design.md).
  The consumer class is the commit guard (``processors/commit_guard.py``).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from dnsqr_kafka.config import Credentials
from dnsqr_kafka.value_formats import TopicFormats
from processors import aggregator, commit_guard, diagnostics, filter_agent, metrics, views
from processors.agent_counters import AgentCounters
from processors.aggregator import Aggregation
from processors.filter_agent import KafkaBatchOutput, Output
from processors.framed_output import FramedOutput
from processors.metrics import DeadLetterTally
from processors.receipts import worker_name
from processors.settings import Settings
from processors.supervisor import BoundedRestarts
from processors.warmup import WarmupAssignor

log = logging.getLogger(__name__)

#: Faust's ``stream_buffer_maxsize``: events prefetched per agent (see the module doc)
STREAM_BUFFER = 16
#: aiokafka's ``max_partition_fetch_bytes`` (Faust's ``consumer_max_fetch_size``; see the module doc)
FETCH_BYTES = 2 * 1024 * 1024


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


@dataclass(frozen=True)
class Parts:
    """What :func:`compose` built and handed to the agents, views and metrics (tests read them)."""

    app: faust.App
    #: the settings, validated
    settings: Settings
    counters: AgentCounters
    #: what the agents send through: the output counted by the dead-letter tally of ``/metrics``
    output: DeadLetterTally
    aggregation: Aggregation


def create_app(settings: Settings, formats: TopicFormats | None = None) -> faust.App:
    """The Faust app of a worker for ``settings``, with its agents, views and metrics installed."""
    return compose(settings, formats=formats).app


def compose(settings: Settings, output: Output | None = None, formats: TopicFormats | None = None) -> Parts:
    """Build the app and install its agents, views and metrics, handing each what it needs.

    ``output`` is where the agents' records go: by default Kafka, through the app's producer
    (:class:`processors.filter_agent.KafkaBatchOutput`); unit tests pass one that records them. Values of
    the failures and counts topics go out in ``formats`` (by default :meth:`Settings.topic_formats`, which
    registers the schemas when the settings name a registry): a :class:`FramedOutput` encodes them, none
    when both are schemaless Avro. The order
    of the installs matters: the aggregator's commit hook wraps the filter agent's, so that Faust's commit
    of a partition sends the held outputs (exactly_once) before the snapshots and changelog records.
    """
    settings = settings.validated()
    if settings.web_enabled and not is_loopback(settings.web_host):
        log.warning(
            "the web views and /metrics on %s:%d have no authentication: anyone who reaches that address "
            "reads the per-name-server counts; keep it on a trusted network",
            settings.web_host,
            settings.web_port,
        )
    app = faust.App(
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
        broker_commit_interval=settings.commit_interval,
        # the partition assignor's standbys (processors/standby.py); at least Faust's default of 1, which
        # keeps Faust's own assignor (not round robin: the views' scatter-gather reads its metadata)
        table_standby_replicas=max(settings.standby_replicas, 1),
        # Faust's assignor, with warm-ups before an ns-stats partition moves (processors/warmup.py)
        PartitionAssignor=functools.partial(
            WarmupAssignor,
            stats_topic=settings.stats_topic,
            standby_replicas=settings.standby_replicas,
            warm_up=settings.warm_up,
            acceptable_lag=settings.acceptable_recovery_lag,
            changelog_records=aggregator.changelog_records(settings),
        ),
        consumer_max_fetch_size=FETCH_BYTES,
        stream_buffer_maxsize=STREAM_BUFFER,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=1_000_000,
        producer_linger=0.005,
        producer_acks=-1,
    )
    commit_guard.install(app)
    counters = AgentCounters()
    kafka: KafkaBatchOutput | None = None
    if output is None:
        output = kafka = KafkaBatchOutput(app)
    formats = formats or settings.topic_formats()
    framed = formats.by_topic(settings.failures_topic, settings.counts_topic)
    if framed:
        output = FramedOutput(output, framed)
    tally = DeadLetterTally(output, settings.dlq_topic)
    name = worker_name()
    filter_agent.install(app, settings, counters, tally, name)
    if kafka is not None and settings.processing_guarantee == "exactly_once":
        # not app.in_transaction: that is False until the Worker has started the app
        filter_agent.hook_commit(app, kafka)
    aggregation = aggregator.install(app, settings, counters, tally)
    views.install(app, settings, counters, aggregation, name)
    diagnostics.install(app)
    metrics.install(app, settings, counters, tally, aggregation)
    return Parts(app, settings, counters, tally, aggregation)


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
