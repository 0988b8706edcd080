"""The agents' supervisor: a crash is restarted, a crash loop stops the worker with its exit status."""

from __future__ import annotations

import asyncio

import pytest
from mode import Service

from processors.supervisor import (
    EXIT_CRASH_LOOP,
    MAX_RESTARTS,
    WINDOW_SECONDS,
    BoundedRestarts,
    CrashLoopError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Agent(Service):
    """Stands in for a Faust actor; counts its restarts."""

    restarts = 0

    async def restart(self) -> None:
        Agent.restarts += 1


def restart(supervisor: BoundedRestarts, service: Service) -> None:
    asyncio.run(supervisor.restart_service(service))


def test_crashes_within_the_limit_are_restarted() -> None:
    Agent.restarts = 0
    clock = FakeClock()
    agent = Agent()
    supervisor = BoundedRestarts(agent, clock=clock, max_restarts=100.0, over=1.0)
    for _ in range(MAX_RESTARTS):
        restart(supervisor, agent)
    assert Agent.restarts == MAX_RESTARTS


def test_a_crash_loop_stops_the_worker_with_its_status(caplog: pytest.LogCaptureFixture) -> None:
    Agent.restarts = 0
    clock = FakeClock()
    agent = Agent()
    supervisor = BoundedRestarts(agent, clock=clock)
    for _ in range(MAX_RESTARTS):
        restart(supervisor, agent)
        clock.now += 5
    with pytest.raises(CrashLoopError) as raised:
        restart(supervisor, agent)
    assert raised.value.code == EXIT_CRASH_LOOP
    assert isinstance(raised.value, SystemExit)  # ends the event loop, not only the supervisor's task
    assert Agent.restarts == MAX_RESTARTS
    assert "stopping the worker" in caplog.text


def test_crashes_spread_out_in_time_never_stop_it() -> None:
    Agent.restarts = 0
    clock = FakeClock()
    agent = Agent()
    supervisor = BoundedRestarts(agent, clock=clock)
    for _ in range(4 * MAX_RESTARTS):
        restart(supervisor, agent)
        clock.now += WINDOW_SECONDS / MAX_RESTARTS + 1
    assert Agent.restarts == 4 * MAX_RESTARTS
