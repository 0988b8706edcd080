"""The agents' supervisor: restart a crashed agent a few times, then stop the worker with the reason.

Faust's default supervisor restarts a crashed agent up to 100 times a second, which in practice is
forever: an agent that fails on every start (a table whose changelog topic is missing, say) crashed every
5 s for hours while the worker looked healthy and a job waited on it. Here a crash is restarted (a
transient error, e.g. a broker failing over, deserves another try), but more than :data:`MAX_RESTARTS`
crashes within :data:`WINDOW_SECONDS` end the worker with exit status :data:`EXIT_CRASH_LOOP`, after one
log line that names the agent and the last reason. A process supervisor (systemd, the job, Kubernetes)
then sees a dead worker instead of a live one that does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import Any

from mode import OneForOneSupervisor, ServiceT

log = logging.getLogger(__name__)

#: More crashes than this within WINDOW_SECONDS stop the worker.
MAX_RESTARTS = 3
WINDOW_SECONDS = 60.0
#: The worker's exit status after a crash loop (1 is Faust's for any other crash, 2 a topic it could not
#: create).
EXIT_CRASH_LOOP = 4


class CrashLoopError(SystemExit):
    """Raised from the supervisor's task: ends the event loop, and so the worker, with the exit status."""


class BoundedRestarts(OneForOneSupervisor):
    """``OneForOneSupervisor`` that gives up on a crash loop (see the module doc).

    Faust builds one per agent with its own rate limit arguments (100 restarts a second); ours replace
    them.
    """

    def __init__(self, *services: ServiceT, clock: Any = time.monotonic, **kwargs: Any) -> None:
        kwargs.pop("max_restarts", None)
        kwargs.pop("over", None)
        super().__init__(*services, **kwargs)
        # mode's token bucket would raise its own MaxRestartsExceeded first; the window below decides
        self._bucket = contextlib.nullcontext()  # type: ignore[assignment]
        self._clock = clock
        self._crashes: deque[float] = deque()

    async def restart_service(self, service: ServiceT) -> None:
        now = self._clock()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > WINDOW_SECONDS:
            self._crashes.popleft()
        if len(self._crashes) > MAX_RESTARTS:
            log.critical(
                "%s crashed %d times within %.0f s, last with %r: stopping the worker (exit status %d)",
                service,
                len(self._crashes),
                WINDOW_SECONDS,
                service.crash_reason,
                EXIT_CRASH_LOOP,
            )
            raise CrashLoopError(EXIT_CRASH_LOOP)
        await super().restart_service(service)
