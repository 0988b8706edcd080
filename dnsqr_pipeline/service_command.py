"""What the local-service subcommands (``kafka``, ``registry``) share: the ``--dir`` option and errors shown
as one line.

Each service keeps its pid, log and port files in a directory (``--dir``, else an environment variable,
else ``./var/<service>``), and raises one error type whose text already says what went wrong and what to
do: the command prints it after its own name and exits 1, not with a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

Action = Callable[[argparse.Namespace], int]


def reporting(command: str, error: type[Exception]) -> Callable[[Action], Action]:
    """Decorate an action so that ``error`` becomes ``dnsqr-pipeline COMMAND: <text>`` on stderr, exit 1."""

    def decorate(func: Action) -> Action:
        @functools.wraps(func)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except error as exc:
                print(f"dnsqr-pipeline {command}: {exc}", file=sys.stderr)
                return 1

        return wrapper

    return decorate


def add_dir(parser: argparse.ArgumentParser, holds: str, env: str, default: str) -> None:
    """The ``--dir`` option: where the service keeps ``holds`` (default ``$ENV``, else ``default``)."""
    parser.add_argument("--dir", type=Path, default=None, help=f"{holds} (default: ${env}, else {default})")
