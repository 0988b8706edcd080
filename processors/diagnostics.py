"""``kill -USR1 <worker pid>``: log the stack of every asyncio task of the worker.

A worker that stops making progress (a Faust recovery that never ends, an agent waiting on a send) shows
nothing wrong in its log; the task stacks say where it waits, without stopping it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


def dump_tasks() -> str:
    """The stacks of all tasks of the running loop, as text."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()} {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def install(app: Any) -> None:
    """Register the SIGUSR1 handler when ``app``'s worker starts (it needs the worker's loop)."""

    @app.task
    async def handle_sigusr1() -> None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: log.warning("asyncio tasks on SIGUSR1:\n%s", dump_tasks())
        )
