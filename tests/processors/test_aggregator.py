"""The aggregator agent applies each ns-stats delta once, under Faust's test_context (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from processors.app import Settings, create_app


def delta(failures: int) -> dict[str, Any]:
    return {
        "name_server": "192.0.2.1",
        "window_start": 0,
        "edns_answered": failures,
        "failures": failures,
        "timeouts": 0,
        "by_kind": {"noopt": failures},
        "observations": {},
    }


def test_a_delta_delivered_again_is_not_applied_again() -> None:
    """Faust delivers records again after a rebalance or a seek back (processors/consumer.py); the
    consumer knows which offsets were processed, and the agent skips those."""

    async def scenario() -> tuple[dict[str, Any], int, list[tuple[TP, int]]]:
        app = create_app(Settings(app_id="test-aggregator", web_enabled=False, window_seconds=60))
        app.finalize()
        asked: list[tuple[TP, int]] = []
        seen: set[int] = set()

        def done(tp: TP, offset: int) -> bool:
            asked.append((tp, offset))
            return offset in seen

        app.consumer.done = done  # type: ignore[method-assign]
        agent = app.agents["dnsqr-ns-aggregator"]
        async with agent.test_context() as test_agent:
            for failures in (2, 3):
                event = await test_agent.put(delta(failures), key=b"192.0.2.1")
                seen.add(event.message.offset)
            # the same record again (same partition and offset), as after a seek back
            test_agent.sent_offset = min(seen)
            again = await test_agent.put(delta(2), key=b"192.0.2.1")
            assert again.message.offset == min(seen)
        return dict(app.dnsqr_tables.totals["192.0.2.1"]), app.counters.redelivered_deltas, asked

    totals, redelivered, asked = asyncio.run(scenario())
    assert totals["failures"] == 5
    assert totals["by_kind"] == {"noopt": 5}
    assert redelivered == 1
    assert len(asked) == 3
