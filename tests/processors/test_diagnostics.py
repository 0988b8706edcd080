"""The SIGUSR1 task dump names the frame a task actually waits in, not only its outermost one."""

from __future__ import annotations

import asyncio

from processors.diagnostics import dump_tasks


async def _innermost() -> None:
    await asyncio.sleep(30)


async def _outer() -> None:
    await _innermost()


def test_dump_follows_the_await_chain() -> None:
    async def scenario() -> str:
        task = asyncio.create_task(_outer(), name="waiting-task")
        await asyncio.sleep(0.01)
        try:
            return dump_tasks()
        finally:
            task.cancel()

    text = asyncio.run(scenario())
    section = text[text.index("--- waiting-task") :]
    assert "in _outer" in section and "in _innermost" in section and "in sleep" in section
