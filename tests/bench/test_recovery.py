"""bench/recovery.py: a worker started on a written changelog holds exactly what was written, plus the new
input it processes (its views against the writer's states), on a small state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.recovery import add_input, create_run, delete_run, recovered_worker, write_state
from processors.counts import FAILURES, count_values
from processors.state import NsState

NAME_SERVERS = 2000


def expected_rows(states: dict[int, NsState], scope: str) -> dict[tuple[str, int | None], dict[str, Any]]:
    """What ``/dnsqr/top/`` answers for every failing name server (``total``) or window (``window``)."""
    found: dict[tuple[str, int | None], dict[str, Any]] = {}
    for state in states.values():
        if scope == "total":
            tables: dict[int | None, dict[str, list[Any]]] = {None: state.totals}
        else:
            tables = dict(state.windows)
        for start, table in tables.items():
            for ns, counts in table.items():
                if counts[FAILURES]:
                    found[ns, start] = count_values(counts)
    return found


def top_rows(answer: list[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    return {(row.pop("name_server"), row.pop("window_start", None)): row for row in (dict(r) for r in answer)}


@pytest.mark.integration
def test_restored_worker_counts_what_was_written_and_processes_new_input(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = create_run(kafka_bootstrap, partitions=4)
    app_id = run.settings.app_id
    try:
        states = write_state(run, NAME_SERVERS)
        add_input(run, states)
        with recovered_worker(run, app_id, timeout=180, log_dir=tmp_path) as recovery:
            stats = recovery.view("/dnsqr/stats/")
            query = f"/dnsqr/top/?local=1&n={NAME_SERVERS}&min_answered=0"
            totals = recovery.view(query)
            windows = recovery.view(query + "&scope=window")
    finally:
        delete_run(run, [app_id])
    # the group committed the new input (recovered_worker returns only then), and it was applied
    assert recovery.processing_at is not None
    assert recovery.restored_name_servers == stats["name_servers"] == NAME_SERVERS
    assert stats["bad_stats"] == 0
    assert top_rows(totals) == expected_rows(states, "total")
    assert top_rows(windows) == expected_rows(states, "window")
    # ~60% of the name servers failed (a kinds map), the input's name servers among them
    assert 0.5 * NAME_SERVERS < len(totals) < 0.7 * NAME_SERVERS
    assert all(top_rows(totals)[next(iter(s.totals)), None]["by_kind"].get("noopt") for s in states.values())
