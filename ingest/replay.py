"""Replay of historical captures: the ``--start/--end`` window and pacing by the records' own timestamps.

Pacing keeps the inter-record gaps of the capture divided by ``speed``, measured from the first record
replayed: a capture of one hour at ``--speed 60`` takes a minute. Records whose time goes backwards (files
concatenated out of order, clock steps) are sent at once rather than stalling the replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from nmsgdns.errors import PayloadError
from nmsgdns.payload import payload_time


def parse_time(text: str) -> float:
    """``--start/--end`` value: epoch seconds, or an ISO 8601 date/time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def record_time(payload: bytes) -> float | None:
    """The payload's own time in epoch seconds, or None when its envelope does not decode."""
    try:
        sec, nsec = payload_time(payload)
    except PayloadError:
        return None
    return sec + nsec * 1e-9


@dataclass
class TimeWindow:
    """``start <= time < end``; either bound may be open. Records without a readable time are kept."""

    start: float | None = None
    end: float | None = None

    @property
    def active(self) -> bool:
        return self.start is not None or self.end is not None

    def contains(self, when: float | None) -> bool:
        if when is None:
            return True
        if self.start is not None and when < self.start:
            return False
        return self.end is None or when < self.end


@dataclass
class Pacer:
    """Decides how long to wait before a record of capture time ``when`` is due.

    ``speed`` None means as fast as possible. ``clock``/``sleep`` are injectable so the schedule can be
    tested without waiting.
    """

    speed: float | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _origin_capture: float | None = None
    _origin_wall: float = 0.0

    def __post_init__(self) -> None:
        if self.speed is not None and self.speed <= 0:
            raise ValueError("--speed must be positive")

    @property
    def active(self) -> bool:
        return self.speed is not None

    def delay(self, when: float | None) -> float:
        """Seconds until the record is due (<= 0: due now). The first record fixes the schedule."""
        if self.speed is None or when is None:
            return 0.0
        if self._origin_capture is None:
            self._origin_capture = when
            self._origin_wall = self.clock()
            return 0.0
        due = self._origin_wall + (when - self._origin_capture) / self.speed
        return due - self.clock()
