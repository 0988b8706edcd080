"""RecoveryWatchdog's stall rule (pure: no app, no broker)."""

from __future__ import annotations

from processors.watchdog import RecoveryWatchdog


def test_progress_or_no_recovery_is_never_a_stall() -> None:
    w = RecoveryWatchdog(stall_seconds=20)
    assert not w.stalled(True, 100, 0.0)
    assert not w.stalled(True, 90, 15.0)
    assert not w.stalled(True, 80, 30.0)
    assert not w.stalled(True, 80, 49.0)
    assert not w.stalled(False, 80, 100.0)
    assert not w.stalled(True, 0, 200.0)


def test_no_progress_for_the_stall_period_asks_once_per_period() -> None:
    w = RecoveryWatchdog(stall_seconds=20)
    assert not w.stalled(True, 75, 0.0)
    assert not w.stalled(True, 75, 19.9)
    assert w.stalled(True, 75, 20.0)
    assert not w.stalled(True, 75, 25.0)
    assert w.stalled(True, 75, 40.0)
    # a new recovery (after the rejoin) starts its own clock
    assert not w.stalled(False, 75, 41.0)
    assert not w.stalled(True, 75, 42.0)
    assert not w.stalled(True, 75, 61.0)
    assert w.stalled(True, 75, 62.0)
