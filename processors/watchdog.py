"""Rejoin the consumer group when Faust's table recovery stops making progress.

After a rebalance a worker re-reads its tables' changelogs (memory store) before its agents run again.
In about one crash-and-restart run in ten (tests/processors/test_worker_crash.py) Faust 0.15's recovery
received no changelog record at all and waited forever ("No event received for active tp ... since
recovery start", every 5 s, for minutes), with its partitions held and nothing processed; the cause inside
Faust/aiokafka was not found. Nothing is lost while it waits (no offsets are committed), but the pipeline
stops. A rebalance starts recovery afresh, so when the records still to be read have not gone down for
:data:`STALL_SECONDS` the watchdog asks the group coordinator for one; the records are then processed by
whoever owns them after it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: Recovery with records still to read and no progress for this long counts as stuck.
STALL_SECONDS = 20.0
#: How often the watchdog looks.
CHECK_SECONDS = 2.0


class RecoveryWatchdog:
    """Tracks recovery progress between checks; :meth:`stalled` says when to rejoin."""

    def __init__(self, stall_seconds: float = STALL_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self._remaining: int | None = None
        self._since = 0.0

    def stalled(self, in_recovery: bool, remaining: int, now: float) -> bool:
        """Whether recovery has had ``remaining`` records left, unchanged, for ``stall_seconds``."""
        if not in_recovery or remaining <= 0:
            self._remaining = None
            return False
        if remaining != self._remaining:
            self._remaining, self._since = remaining, now
            return False
        if now - self._since < self.stall_seconds:
            return False
        self._since = now  # one rejoin per stall period
        return True


async def request_rejoin(app: Any) -> None:
    """Ask the group coordinator for a rebalance, on the consumer's own thread and loop."""
    thread = app.consumer._thread

    async def rejoin() -> None:
        thread._ensure_consumer()._coordinator.request_rejoin()

    await thread.call_thread(rejoin)


def install(app: Any) -> None:
    """Add the watchdog timer to ``app``."""
    watchdog = RecoveryWatchdog()

    @app.timer(CHECK_SECONDS)
    async def recovery_watchdog() -> None:
        recovery = app.tables.recovery
        if watchdog.stalled(recovery.in_recovery, recovery.active_remaining_total(), time.monotonic()):
            log.warning(
                "table recovery made no progress for %.0f s (%d changelog records left): rejoining the group",
                watchdog.stall_seconds,
                recovery.active_remaining_total(),
            )
            await request_rejoin(app)
