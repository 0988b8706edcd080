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


def _await_chain(coro: Any) -> list[str]:
    """Where a suspended coroutine waits: its frame and those of what it awaits, outermost first.

    ``Task.print_stack`` shows only the outermost frame of a suspended task; following ``cr_await``
    (coroutines, async generators, generator-based awaitables) reaches the frame that actually waits.
    """
    where: list[str] = []
    seen = 0
    while coro is not None and seen < 40:
        seen += 1
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "ag_frame", None)
            or getattr(coro, "gi_frame", None)
        )
        if frame is not None:
            where.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    return where


def dump_tasks() -> str:
    """The await chains of all tasks of the running loop, as text."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        out.write("\n".join(_await_chain(task.get_coro())) + "\n")
    return out.getvalue()


def install(app: Any) -> None:
    """Register the SIGUSR1 handler when ``app``'s worker starts (it needs the worker's loop)."""

    @app.task
    async def handle_sigusr1() -> None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: log.warning("asyncio tasks on SIGUSR1:\n%s", dump_tasks())
        )
