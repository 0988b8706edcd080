"""``dnsqr-pipeline``: one operations command whose subcommands live with the stage they run.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its subcommand and sets
``func`` (``func(args) -> int`` exit status). Keeping registration with the stage keeps this file small and
lets each stage own its flags.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "dnsqr_pipeline.kafka_command",
    "dnsqr_pipeline.registry_command",
    "dnsqr_pipeline.topics_command",
    "ingest.command",
    "processors.command",
    "sink.command",
    "dnsqr_pipeline.tail_command",
    "dnsqr_pipeline.top_command",
    "dnsqr_pipeline.run_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnsqr-pipeline",
        description="Kafka pipeline that finds name servers answering EDNS0 queries without OPT.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the Schema Registry client's HTTP library logs every request at INFO; -vv shows them
    logging.getLogger("httpx2").setLevel(max(level, logging.WARNING) if args.verbose < 2 else level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
