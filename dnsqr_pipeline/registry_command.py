"""``dnsqr-pipeline registry ...``: run a local Schema Registry (Apicurio, Confluent-compatible API).

Thin wrappers over :mod:`dnsqr_pipeline.localregistry`; ``start`` remembers its port in the directory, so
``stop`` and ``status`` need only ``--dir``.
"""

from __future__ import annotations

import argparse

from dnsqr_pipeline import localregistry, service_command

_reporting = service_command.reporting("registry", localregistry.LocalRegistryError)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    service_command.add_dir(parser, "pid, log and port files", "DNSQR_REGISTRY_DIR", "./var/registry")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="run a local Schema Registry (Apicurio 2.4.2, Confluent-compatible API) on 127.0.0.1",
        description="Run a local Apicurio Registry (in-memory storage) built once from Maven Central, "
        f"bound to 127.0.0.1; clients use http://127.0.0.1:PORT{localregistry.API_PATH}.",
    )
    actions = parser.add_subparsers(dest="registry_action", required=True, metavar="ACTION")

    p = actions.add_parser("start", help="start the registry (building it once), print its URL")
    _add_dir(p)
    p.add_argument(
        "--port",
        type=int,
        help=f"HTTP port (default: the directory's last one, else {localregistry.DEFAULT_PORT})",
    )
    p.add_argument("--heap", default=localregistry.DEFAULT_HEAP, help="JVM heap (default %(default)s)")
    p.add_argument(
        "--timeout", type=float, default=localregistry.START_TIMEOUT, help="seconds to wait for it"
    )
    p.set_defaults(func=_start)

    p = actions.add_parser("stop", help="stop the registry (SIGTERM, then SIGKILL after --timeout)")
    _add_dir(p)
    p.add_argument("--timeout", type=float, default=localregistry.STOP_TIMEOUT)
    p.set_defaults(func=_stop)

    p = actions.add_parser("status", help="say whether it runs and where; exit 0 running, 3 not")
    _add_dir(p)
    p.set_defaults(func=_status)

    p = actions.add_parser("build", help="build the registry runner (cached) and print its directory")
    p.set_defaults(func=_build)


@_reporting
def _start(args: argparse.Namespace) -> int:
    registry = localregistry.start(args.dir, args.port, heap=args.heap, timeout=args.timeout)
    print(registry.url)
    return 0


@_reporting
def _stop(args: argparse.Namespace) -> int:
    stopped = localregistry.stop(args.dir, timeout=args.timeout)
    print(f"stopped the registry (pid {stopped})" if stopped else "no registry was running")
    return 0


@_reporting
def _status(args: argparse.Namespace) -> int:
    directory = (args.dir or localregistry.default_dir()).resolve()
    registry, pid = localregistry.status(directory)
    if registry is None:
        print(f"no registry in {directory}")
        return 3
    state = f"running (pid {pid})" if pid else "stopped"
    print(f"Apicurio Registry {registry.version} {registry.url} {state}")
    return 0 if pid else 3


@_reporting
def _build(args: argparse.Namespace) -> int:
    print(localregistry.build_runner())
    return 0
