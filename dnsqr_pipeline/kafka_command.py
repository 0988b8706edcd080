"""``dnsqr-pipeline kafka ...``: run a local KRaft Kafka (one node, or three for fault tests).

The actions are thin wrappers over :mod:`dnsqr_pipeline.localkafka`; the state they share lives in the
cluster directory, so ``start`` takes the shape flags once and the other actions need only ``--dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from confluent_kafka import KafkaException

from dnsqr_kafka import topics
from dnsqr_kafka.access import KafkaAccessError, access_error, check_access, report
from dnsqr_kafka.config import add_kafka_arguments, client_config
from dnsqr_pipeline import compose_secrets, kafka_security, localkafka, service_command

_reporting = service_command.reporting("kafka", localkafka.LocalKafkaError)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    service_command.add_dir(parser, "data, logs and pid files", "DNSQR_KAFKA_DIR", "./var/kafka")


def _node_arg(parser: argparse.ArgumentParser) -> None:
    _add_dir(parser)
    parser.add_argument("node", type=int, help="node number, 1..N")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kafka",
        help="run a local Apache Kafka (KRaft, jars from Maven Central) on 127.0.0.1",
        description="Run a local Apache Kafka in KRaft mode from Maven Central jars, bound to 127.0.0.1.",
    )
    actions = parser.add_subparsers(dest="kafka_action", required=True, metavar="ACTION")

    p = actions.add_parser("start", help="start the cluster (formats storage on first use), print bootstrap")
    _add_dir(p)
    p.add_argument("--nodes", type=int, choices=(1, 3), help="cluster size (default 1; fixed at first start)")
    p.add_argument("--port", type=int, help="client port of node 1; node N uses PORT+N-1 (default 9092)")
    p.add_argument("--controller-port", type=int, help="controller port of node 1 (default PORT+100)")
    p.add_argument(
        "--kafka-version",
        help=f"Kafka version (default: $DNSQR_KAFKA_VERSION, else {localkafka.KAFKA_VERSION})",
    )
    p.add_argument(
        "--security",
        choices=tuple(kafka_security.SECURITY_PROTOCOLS),
        help="client listener (default plaintext; fixed at first start): sasl_ssl or sasl_plaintext make "
        "SCRAM-SHA-512 users per stage (ingest, worker, sink) plus admin, ACLs that give each stage only "
        "what it needs, and for sasl_ssl a CA and broker certificate; prints each user's client settings",
    )
    p.add_argument("--heap", default=localkafka.DEFAULT_HEAP, help="JVM heap per node (default %(default)s)")
    p.add_argument("--timeout", type=float, default=localkafka.START_TIMEOUT, help="seconds to wait for it")
    p.set_defaults(func=_start)

    p = actions.add_parser("stop", help="stop every node cleanly (SIGTERM, then SIGKILL after --timeout)")
    _add_dir(p)
    p.add_argument("--timeout", type=float, default=localkafka.STOP_TIMEOUT)
    p.set_defaults(func=_stop)

    p = actions.add_parser("status", help="say which nodes run; exit 0 all, 1 some, 3 none")
    _add_dir(p)
    p.set_defaults(func=_status)

    p = actions.add_parser("kill-node", help="SIGKILL one node (a crash, for fault tests)")
    _node_arg(p)
    p.set_defaults(func=_kill_node)

    p = actions.add_parser("stop-node", help="stop one node cleanly")
    _node_arg(p)
    p.set_defaults(func=_stop_node)

    p = actions.add_parser("start-node", help="start one node of an existing cluster again")
    _node_arg(p)
    p.set_defaults(func=_start_node)

    p = actions.add_parser("password", help="print a user's password on a secured cluster")
    _add_dir(p)
    p.add_argument("user", choices=kafka_security.CLIENT_USERS, help="the SCRAM user")
    p.set_defaults(func=_password)

    p = actions.add_parser(
        "grant",
        help="as an admin, give the stage users (ingest, worker, sink) their ACLs on any cluster",
        description="Create the ACLs `kafka start --security` grants (see dnsqr_pipeline/kafka_security.py) "
        "on the cluster the connection flags name, as a user allowed to alter ACLs. Idempotent.",
    )
    add_kafka_arguments(p)
    p.set_defaults(func=_grant)

    p = actions.add_parser(
        "secrets",
        help="write the secured Docker Compose profile's CA, broker settings and passwords (once)",
    )
    p.add_argument("--dir", type=Path, required=True, help="one subdirectory per reader: broker, admin, ...")
    p.add_argument("--hostname", required=True, help="the broker's name on the Compose network")
    p.set_defaults(func=_secrets)

    p = actions.add_parser("fetch", help="resolve the broker jars (cached) and print their directory")
    p.add_argument(
        "--kafka-version",
        help=f"Kafka version (default: $DNSQR_KAFKA_VERSION, else {localkafka.KAFKA_VERSION})",
    )
    p.set_defaults(func=_fetch)


@_reporting
def _start(args: argparse.Namespace) -> int:
    directory = args.dir or localkafka.default_dir()
    layout = localkafka.start(
        directory,
        nodes=args.nodes,
        port=args.port,
        controller_port=args.controller_port,
        version=args.kafka_version,
        security=args.security,
        heap=args.heap,
        timeout=args.timeout,
    )
    print(layout.bootstrap())
    _print_client_settings(layout)
    return 0


def _print_client_settings(layout: localkafka.ClusterLayout) -> None:
    """On a secured cluster, how each user connects (to stderr: stdout stays the bootstrap address)."""
    if kafka_security.is_secured(layout.security):
        text = kafka_security.client_settings_text(
            layout.bootstrap(),
            layout.security,
            layout.directory,
            layout.ca_file,
        )
        print(text, file=sys.stderr)


@_reporting
def _stop(args: argparse.Namespace) -> int:
    stopped = localkafka.stop(args.dir, timeout=args.timeout)
    print(f"stopped node(s) {', '.join(map(str, stopped))}" if stopped else "no Kafka node was running")
    return 0


@_reporting
def _status(args: argparse.Namespace) -> int:
    directory = (args.dir or localkafka.default_dir()).resolve()
    layout = localkafka.load_layout(directory)
    if layout is None:
        print(f"no Kafka cluster in {directory}")
        return 3
    pids = localkafka.status(directory)
    for node, pid in pids.items():
        state = f"running (pid {pid})" if pid else "stopped"
        print(f"node {node}: {localkafka.HOST}:{layout.client_port(node)} {state}")
    running = sum(pid is not None for pid in pids.values())
    print(
        f"Kafka {layout.version}, {layout.nodes} node(s), bootstrap {layout.bootstrap()}, "
        f"security {layout.security}"
    )
    return 0 if running == len(pids) else (1 if running else 3)


@_reporting
def _kill_node(args: argparse.Namespace) -> int:
    killed = localkafka.stop(args.dir, only=[args.node], kill=True)
    print(f"killed node {args.node}" if killed else f"node {args.node} was not running")
    return 0


@_reporting
def _stop_node(args: argparse.Namespace) -> int:
    stopped = localkafka.stop(args.dir, only=[args.node])
    print(f"stopped node {args.node}" if stopped else f"node {args.node} was not running")
    return 0


@_reporting
def _start_node(args: argparse.Namespace) -> int:
    directory = (args.dir or localkafka.default_dir()).resolve()
    if localkafka.load_layout(directory) is None:
        raise localkafka.LocalKafkaError(f"no Kafka cluster in {directory}; run `kafka start` first")
    layout = localkafka.start(directory, only=[args.node])
    print(layout.bootstrap([args.node]))
    return 0


@_reporting
def _password(args: argparse.Namespace) -> int:
    directory = (args.dir or localkafka.default_dir()).resolve()
    layout = localkafka.load_layout(directory)
    if layout is None or not kafka_security.is_secured(layout.security):
        raise localkafka.LocalKafkaError(f"no secured Kafka cluster in {directory}")
    print(kafka_security.load_credentials(directory)[args.user])
    return 0


def _grant(args: argparse.Namespace) -> int:
    kafka = client_config(args)
    try:
        check_access(kafka)
        count = kafka_security.grant(topics.admin_client(kafka), kafka_security.stage_acls())
    except KafkaAccessError as exc:
        return report("kafka grant", exc)
    except KafkaException as exc:
        refused = access_error(exc, kafka)
        if refused:
            return report("kafka grant", refused)
        print(f"dnsqr-pipeline kafka grant: {exc.args[0].str()}", file=sys.stderr)
        return 1
    print(f"granted {count} ACL bindings to the users ingest, worker and sink")
    return 0


def _secrets(args: argparse.Namespace) -> int:
    written = compose_secrets.write_compose_secrets(args.dir, args.hostname)
    print(f"{'wrote' if written else 'kept the existing'} secrets in {args.dir}")
    return 0


@_reporting
def _fetch(args: argparse.Namespace) -> int:
    print(localkafka.resolve_jars(args.kafka_version))
    return 0
