"""Faust web views over the aggregator's state: JSON top-N and the page of the worst name servers.

Each worker holds the name servers of the ns-stats partitions assigned to it (``processors/aggregator.py``
keeps only those). ``/dnsqr/top/`` and ``/dnsqr/worst/`` answer for the whole cluster on any worker: the
worker asked gathers the other workers' parts (``processors/scatter_gather.py``) and merges them; with
``local=1`` a worker answers for its own partitions only (that is what it is asked by the others). When a
worker does not answer, ``/dnsqr/top/`` fails with 503 naming it and its partitions, and the page says which
name servers are missing.

Routes (Faust's web server, ``--web-port``, default 6066), GET only (other methods answer 405):

- ``GET /dnsqr/top/?by=failures|rate&n=20&min_answered=1&scope=total|window[&local=1]`` -> JSON list
- ``GET /dnsqr/worst/?by=failures|rate&kind=KIND&min_answered=1&n=50&windows=24&refresh=30`` -> the
  page (``processors/worst_page.py`` renders it; here the rows are gathered); with ``local=1`` this
  worker's rows as JSON
- ``GET /dnsqr/stats/`` -> JSON counters of this worker's agents (and its consumer's seeks back; the
  late and early deltas counted in the totals only, ``processors/state.py``)

A bad query parameter answers 400 with a message saying which and why.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

import faust
from faust.web import Request, Response, View

from nmsgdns.classify import KINDS
from processors.agent_counters import AgentCounters
from processors.aggregator import Aggregation
from processors.counts import ANSWERED, BY_KIND, FAILURES, TIMEOUTS, Counts, count_values, failure_rate
from processors.scatter_gather import LOCAL, Missing, gather, rank_worst, top_rows, worst_json, worst_rows
from processors.settings import Settings
from processors.worst_page import ORDERS, Filters, WorstPage, WorstRow, render

SCOPES = ("total", "window")
#: Most rows, and most windows per sparkline, the page draws.
MAX_ROWS, MAX_WINDOWS = 1000, 500
#: Shortest auto-refresh period but 0 (off), and the longest.
MIN_REFRESH, MAX_REFRESH = 2, 86400

#: (name server, window start or None for totals, counts)
Row = tuple[str, int | None, Counts]


class BadRequest(ValueError):
    """A query parameter the views cannot use; its message is the answer's."""


def rows(aggregation: Aggregation, scope: str) -> Iterable[Row]:
    """One row per name server (``total``) or per name server and window (``window``) held here."""
    for state in list(aggregation.states.values()):
        if scope == "total":
            for ns, counts in state.totals.items():
                yield ns, None, counts
        else:
            for start, window in state.all_windows().items():
                for ns, counts in window.items():
                    yield ns, start, counts


def pick(
    all_rows: Iterable[Row],
    *,
    by: str = "failures",
    n: int = 20,
    min_answered: int = 1,
    kind: str | None = None,
) -> list[Row]:
    """The ``n`` worst rows by failures (ties by rate) or by rate (ties by failures), of those with a
    failure (of ``kind`` when given) and at least ``min_answered`` EDNS answers.

    ``min_answered`` keeps a name server asked once and failed once (rate 1.0) from topping the rate
    list over one that failed thousands of times out of a few more. Picks with a heap, so a worker with a
    million name servers answers without sorting them all.
    """
    if by not in ORDERS:
        raise BadRequest(f"by must be one of {ORDERS}")
    kept = (
        r
        for r in all_rows
        if r[2][FAILURES] > 0
        and r[2][ANSWERED] >= min_answered
        and (kind is None or (r[2][BY_KIND] or {}).get(kind))
    )
    if by == "failures":
        return heapq.nsmallest(n, kept, key=lambda r: (-r[2][FAILURES], -failure_rate(r[2]), r[0], r[1] or 0))
    return heapq.nsmallest(n, kept, key=lambda r: (-failure_rate(r[2]), -r[2][FAILURES], r[0], r[1] or 0))


def top(
    all_rows: Iterable[Row], *, by: str = "failures", n: int = 20, min_answered: int = 1
) -> list[dict[str, Any]]:
    """:func:`pick` as JSON objects."""
    out = []
    for ns, start, counts in pick(all_rows, by=by, n=n, min_answered=min_answered):
        row: dict[str, Any] = {"name_server": ns}
        if start is not None:
            row["window_start"] = start
        row.update(count_values(counts))
        out.append(row)
    return out


def missing_partitions(missing: Iterable[Missing]) -> list[int]:
    """The ns-stats partitions of the workers that did not answer."""
    return sorted(p for m in missing for p in m.peer.partitions)


def int_arg(
    query: Mapping[str, str], name: str, default: int, least: int = 0, most: int | None = None
) -> int:
    """The integer query parameter ``name`` (from ``least`` to ``most``), or ``default`` when absent."""
    value = query.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value!r}") from None
    if number < least:
        raise BadRequest(f"{name} must be at least {least}" if least else f"{name} must not be negative")
    if most is not None and number > most:
        raise BadRequest(f"{name} must be at most {most}")
    return number


WORST_PARAMETERS = ("by", "kind", "min_answered", "n", "windows", "refresh")


def worst_filters(query: Mapping[str, str]) -> Filters:
    """The page's parameters, checked; BadRequest names the first bad one (an unknown one too: a typo
    would otherwise be ignored silently)."""
    unknown = sorted(set(query) - {*WORST_PARAMETERS, LOCAL})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; the page takes {', '.join(WORST_PARAMETERS)}")
    default = Filters()
    by = query.get("by") or default.by
    if by not in ORDERS:
        raise BadRequest(f"by must be one of {', '.join(ORDERS)}, not {by!r}")
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)} (or empty for any), not {kind!r}")
    refresh = int_arg(query, "refresh", default.refresh, 0, MAX_REFRESH)
    if 0 < refresh < MIN_REFRESH:
        raise BadRequest(f"refresh must be 0 (off) or at least {MIN_REFRESH} seconds")
    return Filters(
        by=by,
        kind=kind,
        min_answered=int_arg(query, "min_answered", default.min_answered),
        n=int_arg(query, "n", default.n, 1, MAX_ROWS),
        windows=int_arg(query, "windows", default.windows, 1, MAX_WINDOWS),
        refresh=refresh,
    )


def worst(
    aggregation: Aggregation, filters: Filters, *, window_seconds: int
) -> tuple[list[WorstRow], list[int]]:
    """The rows of the page, and the window starts of their sparklines (the ``filters.windows`` windows
    up to the newest held, oldest first).

    Only the rows picked get a series: the windows of their own state, ``windows`` lookups each.
    """
    states = list(aggregation.states.values())
    picked = pick(
        rows(aggregation, "total"),
        by=filters.by,
        n=filters.n,
        min_answered=filters.min_answered,
        kind=filters.kind,
    )
    axis = window_axis(
        max((max(s.all_windows()) for s in states if s.windows or s.frozen), default=None),
        filters,
        window_seconds,
    )
    out = []
    for ns, _, counts in picked:
        state = next(s for s in states if ns in s.totals)
        windows = state.all_windows()
        series: list[tuple[int, int] | None] = []
        for start in axis:
            window = windows.get(start)
            c = None if window is None else window.get(ns)
            series.append(None if c is None else (c[FAILURES], c[ANSWERED]))
        out.append(
            WorstRow(
                ns, counts[ANSWERED], counts[FAILURES], counts[TIMEOUTS], dict(counts[BY_KIND] or {}), series
            )
        )
    return out, axis


def window_axis(newest: int | None, filters: Filters, window_seconds: int) -> list[int]:
    """The starts of the ``filters.windows`` windows up to ``newest``, oldest first."""
    if newest is None:
        return []
    return [newest - i * window_seconds for i in range(filters.windows - 1, -1, -1)]


def held_range(aggregation: Aggregation, window_seconds: int) -> tuple[int, int] | None:
    """Record time the windows held cover: the start of the oldest, the end of the newest."""
    starts = [start for state in list(aggregation.states.values()) for start in state.all_windows()]
    return (min(starts), max(starts) + window_seconds) if starts else None


def install(
    app: faust.App, settings: Settings, counters: AgentCounters, aggregation: Aggregation, worker: str
) -> None:
    """Register the views on ``app``'s web server: over ``aggregation``'s states, the agents' ``counters``,
    and ``worker`` (``host:pid``) named on the page."""

    @app.page("/dnsqr/top/")
    class TopView(View):
        """JSON top-N name servers of the cluster (or, with ``local=1``, of this worker)."""

        async def get(self, request: Request) -> Response:
            query = request.query
            by = query.get("by", "failures")
            scope = query.get("scope", "total")
            if by not in ORDERS or scope not in SCOPES:
                return self.error(400, f"by must be one of {ORDERS}, scope one of {SCOPES}")
            try:
                n, min_answered = int_arg(query, "n", 20), int_arg(query, "min_answered", 1)
            except BadRequest as exc:
                return self.error(400, str(exc))
            found: Iterable[Row] = rows(aggregation, scope)
            if not query.get(LOCAL):
                answers, missing = await gather(
                    app, settings.stats_topic, "/dnsqr/top/", {k: v for k, v in query.items() if k != LOCAL}
                )
                if missing:
                    return self.json(
                        {
                            "error": "; ".join(m.describe() for m in missing),
                            "missing_partitions": missing_partitions(missing),
                        },
                        status=503,
                    )
                found = chain(found, *(top_rows(answer) for _, answer in answers))
            return self.json(top(found, by=by, n=n, min_answered=min_answered))

    @app.page("/dnsqr/worst/")
    class WorstView(View):
        """The page of the worst name servers of the cluster (``processors/worst_page.py``); with
        ``local=1`` this worker's rows as JSON."""

        async def get(self, request: Request) -> Response:
            query = request.query
            try:
                filters = worst_filters(query)
            except BadRequest as exc:
                return self.error(400, str(exc))
            window_seconds = settings.window_seconds
            own_rows, own_axis = worst(aggregation, filters, window_seconds=window_seconds)
            part = {
                "rows": worst_json(own_rows, own_axis),
                "newest": own_axis[-1] if own_axis else None,
                "held": held_range(aggregation, window_seconds),
                "partitions": sorted(aggregation.states),
                "restoring": sorted(aggregation.restoring),
                "name_servers": sum(len(s.totals) for s in list(aggregation.states.values())),
            }
            if query.get(LOCAL):
                return self.json(part)
            answers, missing = await gather(
                app, settings.stats_topic, "/dnsqr/worst/", {k: v for k, v in query.items() if k != LOCAL}
            )
            parts = [part, *(answer for _, answer in answers)]
            axis = window_axis(
                max((p["newest"] for p in parts if p["newest"] is not None), default=None),
                filters,
                window_seconds,
            )
            helds = [p["held"] for p in parts if p["held"]]
            page = WorstPage(
                rows=rank_worst(
                    chain.from_iterable(worst_rows(p["rows"], axis) for p in parts), filters.by, filters.n
                ),
                filters=filters,
                kinds=KINDS,
                window_seconds=window_seconds,
                axis=axis,
                held=(min(h[0] for h in helds), max(h[1] for h in helds)) if helds else None,
                expires=settings.window_expires_seconds,
                generated=time.time(),
                worker=worker,
                workers=len(parts),
                partitions=sorted(chain.from_iterable(p["partitions"] for p in parts)),
                restoring=sorted(chain.from_iterable(p["restoring"] for p in parts)),
                name_servers=sum(p["name_servers"] for p in parts),
                missing=[m.describe() for m in missing],
            )
            return self.html(render(page))

    @app.page("/dnsqr/stats/")
    class StatsView(View):
        """This worker's agent counters, and how often its consumer sought back to a record it had not
        delivered: a hole under the committed offset, or records fetched but dropped by Faust's fetch loop
        (``processors/commit_guard.py``)."""

        async def get(self, request: Request) -> Response:
            reseeks = getattr(app.consumer, "reseeks", 0)
            refetches = getattr(app.consumer, "refetches", 0)
            standbys = aggregation.standbys
            return self.json(
                {
                    **dataclasses.asdict(counters),
                    "replayed_stats": aggregation.replayed,
                    "late_deltas": aggregation.late_deltas,
                    "early_deltas": aggregation.early_deltas,
                    # windows held frozen now, and frozen windows thawed by a late record; name servers
                    # whose totals are frozen now, frozen totals thawed by a record, and merges of hot
                    # totals into the frozen ones; of the states held now (processors/state.py)
                    "frozen_windows": sum(len(s.frozen) for s in aggregation.states.values()),
                    "window_thaws": sum(s.thaws for s in aggregation.states.values()),
                    "frozen_totals": sum(len(s.frozen_totals or ()) for s in aggregation.states.values()),
                    "total_thaws": sum(s.total_thaws for s in aggregation.states.values()),
                    "total_merges": sum(s.merges for s in aggregation.states.values()),
                    # ns-stats partitions assigned again whose kept state was current, those taken over
                    # from a standby state (--standby-replicas), those loaded from a checkpoint
                    # (--state-dir), and those read from the changelog's beginning; the changelog records
                    # those restores read; the partitions this worker is standby for now (replicas and
                    # warm-ups), and the rebalances it asked for once its warm-ups caught up
                    "states_kept": aggregation.taken_back,
                    "states_from_standby": aggregation.from_standby,
                    "partitions": sorted(aggregation.states),
                    "standby_partitions": [] if standbys is None else standbys.partitions,
                    "warm_up_probes": aggregation.probes,
                    "states_from_checkpoint": aggregation.from_checkpoint,
                    "states_read": aggregation.read_back,
                    "changelog_records_read": aggregation.changelog_records,
                    "reseeks": reseeks,
                    "refetches": refetches,
                    "name_servers": sum(len(s.totals) for s in aggregation.states.values()),
                }
            )
