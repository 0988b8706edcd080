"""Faust web views over the aggregator's tables: JSON top-N and an HTML page of the worst name servers.

Each worker serves the name servers of the table partitions assigned to it (the memory store holds only
those; there are no standby replicas, see ``app.py``). With one worker that is everything; with several,
ask each worker, or read the counts topic, which carries every name server's latest snapshot.

Routes (Faust's web server, ``--web-port``, default 6066):

- ``GET /dnsqr/top/?by=failures|rate&n=20&min_answered=1&scope=total|window`` -> JSON list
- ``GET /dnsqr/worst/?n=50`` -> HTML table
- ``GET /dnsqr/stats/`` -> JSON counters of this worker's filter agent (and its consumer's seeks back)
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from processors.aggregator import CountsDict, Tables, count_values

if TYPE_CHECKING:
    from processors.app import PipelineApp

ORDERS = ("failures", "rate")
SCOPES = ("total", "window")


def rows(tables: Tables, scope: str) -> Iterable[dict[str, Any]]:
    """One row per name server (``total``) or per name server and window (``window``) held locally."""
    if scope == "total":
        for ns, counts in tables.totals.items():
            yield {"name_server": ns, **count_values(counts)}
    else:
        for (ns, (start, _end)), counts in tables.windows.table.items():
            yield {"name_server": ns, "window_start": int(start), **count_values(counts)}


def top(
    all_rows: Iterable[Mapping[str, Any]], *, by: str = "failures", n: int = 20, min_answered: int = 1
) -> list[dict[str, Any]]:
    """The ``n`` worst rows by failures (ties by rate) or by rate (ties by failures).

    ``min_answered`` keeps a name server asked once and failed once (rate 1.0) from topping the rate
    list over one that failed thousands of times out of a few more.
    """
    if by not in ORDERS:
        raise ValueError(f"by must be one of {ORDERS}")
    kept = [dict(r) for r in all_rows if r["edns_answered"] >= min_answered and r["failures"] > 0]
    if by == "failures":
        kept.sort(key=lambda r: (-r["failures"], -r["failure_rate"], r["name_server"]))
    else:
        kept.sort(key=lambda r: (-r["failure_rate"], -r["failures"], r["name_server"]))
    return kept[:n]


def _int_arg(request: Request, name: str, default: int) -> int:
    value = request.query.get(name)
    return int(value) if value not in (None, "") else default


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
        "<p>This worker's table partitions; failures = selected by the reference rule, rate = failures per "
        "EDNS query answered.</p><table><tr><th>name server</th><th>failures</th><th>EDNS answered</th>"
        f"<th>rate</th><th>timeouts</th><th>by kind</th></tr>\n{body}\n</table></body></html>"
    )


def install(app: PipelineApp, tables: Tables) -> None:
    """Register the views on ``app``'s web server."""

    @app.page("/dnsqr/top/")
    class TopView(View):
        """JSON top-N name servers."""

        async def get(self, request: Request) -> Response:
            by = request.query.get("by", "failures")
            scope = request.query.get("scope", "total")
            if by not in ORDERS or scope not in SCOPES:
                return self.error(400, f"by must be one of {ORDERS}, scope one of {SCOPES}")
            result: list[CountsDict] = top(
                rows(tables, scope),
                by=by,
                n=_int_arg(request, "n", 20),
                min_answered=_int_arg(request, "min_answered", 1),
            )
            return self.json(result)

    @app.page("/dnsqr/worst/")
    class WorstView(View):
        """HTML page of the worst name servers by failures."""

        async def get(self, request: Request) -> Response:
            return self.html(worst_page(top(rows(tables, "total"), n=_int_arg(request, "n", 50))))

    @app.page("/dnsqr/stats/")
    class StatsView(View):
        """This worker's filter counters, and how often its consumer sought back to a record it had not
        delivered (``processors/consumer.py``)."""

        async def get(self, request: Request) -> Response:
            reseeks = getattr(app.consumer, "reseeks", 0)
            return self.json({**dataclasses.asdict(app.counters), "reseeks": reseeks})
