"""Faust web views over the aggregator's state: JSON top-N and an HTML page of the worst name servers.

Each worker serves the name servers of the ns-stats partitions assigned to it (``processors/aggregator.py``
keeps only those). With one worker that is everything; with several, ask each worker, or read the counts
topic, which carries every name server's latest snapshot.

Routes (Faust's web server, ``--web-port``, default 6066):

- ``GET /dnsqr/top/?by=failures|rate&n=20&min_answered=1&scope=total|window`` -> JSON list
- ``GET /dnsqr/worst/?n=50`` -> HTML table
- ``GET /dnsqr/stats/`` -> JSON counters of this worker's agents (and its consumer's seeks back)

A bad query parameter answers 400 with a message saying which and why.
"""

from __future__ import annotations

import dataclasses
import heapq
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from processors.aggregator import Aggregation
from processors.ns_counts import count_values, failure_rate
from processors.ns_state import Counts

if TYPE_CHECKING:
    from processors.app import PipelineApp

ORDERS = ("failures", "rate")
SCOPES = ("total", "window")

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
            for start, window in state.windows.items():
                for ns, counts in window.items():
                    yield ns, start, counts


def top(
    all_rows: Iterable[Row], *, by: str = "failures", n: int = 20, min_answered: int = 1
) -> list[dict[str, Any]]:
    """The ``n`` worst rows by failures (ties by rate) or by rate (ties by failures), as JSON objects.

    ``min_answered`` keeps a name server asked once and failed once (rate 1.0) from topping the rate
    list over one that failed thousands of times out of a few more. Picks with a heap, so a worker with a
    million name servers answers without sorting them all.
    """
    if by not in ORDERS:
        raise BadRequest(f"by must be one of {ORDERS}")
    kept = (r for r in all_rows if r[2][1] > 0 and r[2][0] >= min_answered)
    if by == "failures":
        best = heapq.nsmallest(n, kept, key=lambda r: (-r[2][1], -failure_rate(r[2]), r[0], r[1] or 0))
    else:
        best = heapq.nsmallest(n, kept, key=lambda r: (-failure_rate(r[2]), -r[2][1], r[0], r[1] or 0))
    out = []
    for ns, start, counts in best:
        row: dict[str, Any] = {"name_server": ns}
        if start is not None:
            row["window_start"] = start
        row.update(count_values(counts))
        out.append(row)
    return out


def int_arg(request: Request, name: str, default: int) -> int:
    """The non-negative integer query parameter ``name``, or ``default`` when absent."""
    value = request.query.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value!r}") from None
    if number < 0:
        raise BadRequest(f"{name} must not be negative")
    return number


def worst_page(top_rows: list[dict[str, Any]]) -> str:
    """A small self-contained HTML page of the given rows."""
    body = "\n".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1%}</td><td>{}</td><td>{}</td></tr>".format(
            html.escape(r["name_server"]),
            r["failures"],
            r["edns_answered"],
            r["failure_rate"],
            r["timeouts"],
            html.escape(", ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items()))),
        )
        for r in top_rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>EDNS0 failures by name server</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}"
        "td:first-child,td:last-child{text-align:left}</style></head><body>"
        "<h1>Name servers answering EDNS0 queries without OPT</h1>"
        "<p>This worker's ns-stats partitions; failures = selected by the reference rule, rate = failures "
        "per EDNS query answered.</p><table><tr><th>name server</th><th>failures</th><th>EDNS answered</th>"
        f"<th>rate</th><th>timeouts</th><th>by kind</th></tr>\n{body}\n</table></body></html>"
    )


def install(app: PipelineApp, aggregation: Aggregation) -> None:
    """Register the views on ``app``'s web server."""

    @app.page("/dnsqr/top/")
    class TopView(View):
        """JSON top-N name servers."""

        async def get(self, request: Request) -> Response:
            by = request.query.get("by", "failures")
            scope = request.query.get("scope", "total")
            if by not in ORDERS or scope not in SCOPES:
                return self.error(400, f"by must be one of {ORDERS}, scope one of {SCOPES}")
            try:
                n, min_answered = int_arg(request, "n", 20), int_arg(request, "min_answered", 1)
            except BadRequest as exc:
                return self.error(400, str(exc))
            return self.json(top(rows(aggregation, scope), by=by, n=n, min_answered=min_answered))

    @app.page("/dnsqr/worst/")
    class WorstView(View):
        """HTML page of the worst name servers by failures."""

        async def get(self, request: Request) -> Response:
            try:
                n = int_arg(request, "n", 50)
            except BadRequest as exc:
                return self.error(400, str(exc))
            return self.html(worst_page(top(rows(aggregation, "total"), n=n)))

    @app.page("/dnsqr/stats/")
    class StatsView(View):
        """This worker's agent counters, and how often its consumer sought back to a record it had not
        delivered (``processors/consumer.py``)."""

        async def get(self, request: Request) -> Response:
            reseeks = getattr(app.consumer, "reseeks", 0)
            return self.json(
                {
                    **dataclasses.asdict(app.counters),
                    "replayed_stats": aggregation.replayed,
                    "reseeks": reseeks,
                    "name_servers": sum(len(s.totals) for s in aggregation.states.values()),
                }
            )
