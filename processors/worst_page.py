"""The ``/dnsqr/worst/`` page: what it shows, rendered to one self-contained HTML document.

A page operators keep open on a collector, which often has no internet: everything is inline (CSS, the
script, the sparklines as SVG), it loads nothing else, and its Content-Security-Policy forbids loading
anything else (``default-src 'none'``). Pure: :func:`render` turns a :class:`WorstPage` into text and
knows nothing of Faust or of the aggregator's state; ``processors/views.py`` gathers the rows.

What the page does in the browser, with the script below and no library:

- sorts the rows when a column header is clicked (again: the other way), ties in the server's order; the
  sort is kept in the URL fragment (``#sort=rate:desc``), so a reload or the auto-refresh keeps it;
- reloads itself every ``refresh`` seconds (0: never), unless "pause" is ticked; when the worker does not
  answer (a HEAD request first), it keeps the page, says so, and tries again;
- the filter form (kind, minimum answered, rows, windows, refresh, ranking) is a plain GET form: the
  server picks the rows, since the worst N depend on the filters.
"""

from __future__ import annotations

import html
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: How the server picks the worst ``n``: most failures, or highest failure rate.
ORDERS = ("failures", "rate")

#: Sparkline size in CSS pixels, and the margin that keeps a dot at an edge whole.
SPARK_WIDTH, SPARK_HEIGHT, SPARK_PAD = 150, 28, 2.5
#: The sparklines' rate scale runs from 0 to the largest rate on the page, but at least this much, so that
#: a page of near-zero rates does not draw noise full height.
SPARK_MIN_SCALE = 0.05


@dataclass(frozen=True)
class Filters:
    """The page's query parameters, validated (``processors.views.worst_filters``)."""

    #: ranking of the ``n`` rows the server picks (:data:`ORDERS`)
    by: str = "failures"
    #: only name servers with failures of this kind; None: any
    kind: str | None = None
    #: only name servers that answered at least this many EDNS queries
    min_answered: int = 1
    n: int = 50
    #: windows in the sparklines, the newest last
    windows: int = 24
    #: seconds between reloads; 0: no reload
    refresh: int = 30


@dataclass(frozen=True)
class WorstRow:
    """One name server's totals, and its counts in each window of the page's axis."""

    name_server: str
    edns_answered: int
    failures: int
    timeouts: int
    by_kind: Mapping[str, int]
    #: (failures, EDNS answered) in each window of :attr:`WorstPage.axis`; None: not seen in that window
    series: Sequence[tuple[int, int] | None]

    @property
    def rate(self) -> float:
        return self.failures / self.edns_answered if self.edns_answered else 0.0


@dataclass(frozen=True)
class WorstPage:
    """Everything the page shows."""

    rows: Sequence[WorstRow]
    filters: Filters
    #: the failure kinds the kind filter offers
    kinds: Sequence[str]
    window_seconds: int
    #: window starts (record time, Unix seconds) of the sparklines, oldest first, one per window
    axis: Sequence[int]
    #: record time covered by the windows held: start of the oldest, end of the newest; None: no window
    held: tuple[int, int] | None
    #: windows starting this long before the newest are freed (0: never), their counts kept in the totals
    expires: int
    #: when the rows were gathered (wall clock, Unix seconds)
    generated: float
    #: the worker that serves the page (``host:pid``)
    worker: str
    #: ns-stats partitions whose state this worker holds, and those it is still restoring
    partitions: Sequence[int] = ()
    restoring: Sequence[int] = ()
    #: name servers in the states held
    name_servers: int = 0
    #: workers whose states the page shows (this one and the others that answered)
    workers: int = 1
    #: the workers that did not answer, with their partitions and why: their name servers are missing
    missing: Sequence[str] = ()


def when(seconds: float) -> str:
    """A Unix time as UTC text, to the minute: ``2026-11-05 14:00``."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def duration(seconds: int) -> str:
    """``3600`` -> ``1 h``; ``90`` -> ``90 s``; ``604800`` -> ``7 d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def address_key(name_server: str) -> str:
    """A text that sorts name servers as addresses: IPv4 before IPv6, each in numeric order; anything
    else after them, as text."""
    try:
        address = ipaddress.ip_address(name_server)
    except ValueError:
        return "9" + name_server
    return f"{address.version}{int(address):032x}"


def spark_scale(rows: Sequence[WorstRow]) -> float:
    """The top of the sparklines' rate scale: the largest window rate on the page, at least
    :data:`SPARK_MIN_SCALE`, at most 1."""
    rates = [f / a for row in rows for f, a in filter(None, row.series) if a]
    return min(1.0, max([SPARK_MIN_SCALE, *rates]))


def sparkline(series: Sequence[tuple[int, int] | None], scale: float, title: str) -> str:
    """An inline SVG of the failure rate in each window: a line through consecutive windows with EDNS
    answers, a dot for a window alone between gaps, a larger dot on the newest; windows without answers
    are gaps. Rates are drawn from 0 (bottom) to ``scale`` (top)."""
    width, height, pad = SPARK_WIDTH, SPARK_HEIGHT, SPARK_PAD
    step = (width - 2 * pad) / (len(series) - 1) if len(series) > 1 else 0.0
    points: list[tuple[float, float] | None] = []
    for i, point in enumerate(series):
        if point is None or point[1] == 0:
            points.append(None)
            continue
        rate = min(point[0] / point[1], scale)
        x = pad + i * step if len(series) > 1 else width / 2
        points.append((x, pad + (1 - rate / scale) * (height - 2 * pad)))
    path: list[str] = []
    dots: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []
    for p in [*points, None]:
        if p is not None:
            run.append(p)
            continue
        if len(run) == 1:
            dots.append(run[0])
        elif run:
            path.append("M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in run))
        run = []
    parts = [
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<line class="base" x1="0" y1="{height - pad:.1f}" x2="{width}" y2="{height - pad:.1f}"/>',
    ]
    if path:
        parts.append(f'<path d="{" ".join(path)}"/>')
    newest = points[-1] if points else None
    parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5"/>' for x, y in dots if (x, y) != newest]
    if newest is not None:
        parts.append(f'<circle class="last" cx="{newest[0]:.1f}" cy="{newest[1]:.1f}" r="2.5"/>')
    parts.append("</svg>")
    return "".join(parts)


#: (key, header, type: ``num`` or ``text``; None: not sortable)
COLUMNS = (
    ("rank", "#", "num"),
    ("ns", "name server", "text"),
    ("failures", "failures", "num"),
    ("answered", "EDNS answered", "num"),
    ("rate", "rate", "num"),
    ("timeouts", "timeouts", "num"),
    ("kinds", "by kind", None),
    ("trend", "rate per window", None),
)


def _row(rank: int, row: WorstRow, page: WorstPage, scale: float) -> str:
    counts = ", ".join("-" if p is None else f"{p[0]}/{p[1]}" for p in row.series)
    title = f"{row.name_server}: failures/answered per {duration(page.window_seconds)} window, oldest first: "
    kinds = ", ".join(
        f"<b>{html.escape(k)} {n:,}</b>" if k == page.filters.kind else f"{html.escape(k)} {n:,}"
        for k, n in sorted(row.by_kind.items(), key=lambda item: (-item[1], item[0]))
    )
    rate_bar = f"--r:{row.rate * 100:.1f}%"
    return (
        f'<tr data-rank="{rank}" data-ns="{html.escape(address_key(row.name_server))}" '
        f'data-failures="{row.failures}" data-answered="{row.edns_answered}" data-rate="{row.rate:.6f}" '
        f'data-timeouts="{row.timeouts}">'
        f"<td>{rank}</td><td class=ns>{html.escape(row.name_server)}</td><td>{row.failures:,}</td>"
        f'<td>{row.edns_answered:,}</td><td class=rate style="{rate_bar}">{row.rate:.1%}</td>'
        f"<td>{row.timeouts:,}</td><td class=kinds>{kinds}</td>"
        f"<td class=trend>{sparkline(row.series, scale, title + counts)}</td></tr>"
    )


def _header(page: WorstPage, scale: float) -> str:
    cells = []
    for key, label, kind in COLUMNS:
        if key == "trend":
            label = f"rate per {duration(page.window_seconds)} window (0-{scale:.0%})"
        if kind is None:
            cells.append(f"<th>{html.escape(label)}</th>")
            continue
        first = "asc" if key in ("rank", "ns") else "desc"
        current = ' aria-sort="descending"' if key == page.filters.by else ""
        cells.append(
            f'<th data-key="{key}" data-type="{kind}" data-first="{first}"{current} tabindex="0">'
            f"{html.escape(label)}</th>"
        )
    return "<tr>" + "".join(cells) + "</tr>"


def _coverage(page: WorstPage) -> str:
    """What the counts cover, in record time."""
    if page.held is None:
        return "No window held yet: no record counted."
    start, end = page.held
    windows = (
        f"Windows held: <b id=range>{when(start)} - {when(end)} UTC</b> "
        f"(record time, {duration(page.window_seconds)} each)"
    )
    if page.expires:
        totals = (
            f"Totals count every record since this worker's state began, also in windows freed after "
            f"{duration(page.expires)}, so they may cover more than the windows."
        )
    else:
        totals = "Windows are never freed, so the totals cover the same time."
    axis = ""
    if page.axis:
        axis = f" Sparklines: {len(page.axis)} windows from {when(page.axis[0])} UTC, the newest last."
    return f"{windows}. {totals}{axis}"


def _form(page: WorstPage) -> str:
    f = page.filters
    orders = "".join(f'<option value="{o}"{" selected" if o == f.by else ""}>{o}</option>' for o in ORDERS)
    kinds = '<option value="">any</option>' + "".join(
        f"<option{' selected' if k == f.kind else ''}>{html.escape(k)}</option>" for k in page.kinds
    )

    def number(name: str, label: str, value: int, least: int) -> str:
        return (
            f'<label>{label} <input name="{name}" type="number" min="{least}" value="{value}" '
            f'size="6"></label>'
        )

    return (
        '<form id=filters method="get">'
        f'<label>worst by <select name="by">{orders}</select></label>'
        f'<label>kind <select name="kind">{kinds}</select></label>'
        + number("min_answered", "min. answered", f.min_answered, 0)
        + number("n", "rows", f.n, 1)
        + number("windows", "windows", f.windows, 1)
        + number("refresh", "refresh (s, 0 off)", f.refresh, 0)
        + '<button type="submit">apply</button></form>'
    )


STYLE = """
:root{color-scheme:light;--fg:#1d232b;--muted:#5d6875;--line:#dde2e8;--head:#f3f5f8;--bad:#c0392b;
--bar:#f6d4cf;--spark:#c0392b}
*{box-sizing:border-box}
body{margin:0;padding:18px 24px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg)}
h1{font-size:20px;margin:0 0 4px}
.meta,.cover{color:var(--muted);margin:2px 0}
.warn{color:var(--bad);font-weight:600}
form{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;margin:12px 0;padding:8px 10px;
background:var(--head);border:1px solid var(--line);border-radius:6px}
form input{width:6em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);position:sticky;top:0;font-weight:600;user-select:none}
th[data-key]{cursor:pointer}
th[data-key]:hover{color:#0b5cad}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
td.ns,td.kinds,th:nth-child(2),th:nth-child(7){text-align:left}
td.ns{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
td.kinds{white-space:normal;color:var(--muted)}
td.kinds b{color:var(--fg)}
td.rate{background:linear-gradient(to left,var(--bar) var(--r),transparent var(--r))}
tbody tr:hover{background:#fafbfc}
td.trend{padding:2px 10px}
svg.spark{display:block;margin-left:auto}
svg.spark path{fill:none;stroke:var(--spark);stroke-width:1.5;stroke-linejoin:round}
svg.spark circle{fill:var(--spark)}
svg.spark line.base{stroke:var(--line);stroke-width:1}
.empty{padding:24px;color:var(--muted)}
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("worst");
  var form = document.getElementById("filters");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function sortBy(key, dir) {
    var th = table.querySelector('th[data-key="' + key + '"]');
    if (!th) { return false; }
    var numeric = th.getAttribute("data-type") === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.getAttribute("data-" + key), y = b.getAttribute("data-" + key);
      var c = numeric ? parseFloat(x) - parseFloat(y) : (x < y ? -1 : x > y ? 1 : 0);
      if (dir === "desc") { c = -c; }
      return c || a.getAttribute("data-rank") - b.getAttribute("data-rank");
    });
    rows.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    return true;
  }
  function remember(key, dir) {
    history.replaceState(null, "", "#sort=" + key + ":" + dir);
    if (form) { form.action = location.pathname + location.hash; }
  }
  function clicked(th) {
    var key = th.getAttribute("data-key"), now = th.getAttribute("aria-sort");
    var dir = now === "descending" ? "asc" : now === "ascending" ? "desc" : th.getAttribute("data-first");
    if (sortBy(key, dir)) { remember(key, dir); }
  }
  heads.forEach(function (th) {
    if (!th.hasAttribute("data-key")) { return; }
    th.addEventListener("click", function () { clicked(th); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { clicked(th); } });
  });
  var saved = /(?:^#|&)sort=([a-z]+):(asc|desc)/.exec(location.hash);
  if (saved && sortBy(saved[1], saved[2])) { remember(saved[1], saved[2]); }
  var seconds = parseInt(document.body.getAttribute("data-refresh"), 10) || 0;
  var pause = document.getElementById("pause");
  var stale = document.getElementById("stale");
  var timer = null;
  function arm() {
    clearTimeout(timer);
    if (seconds > 0 && !(pause && pause.checked)) { timer = setTimeout(reload, seconds * 1000); }
  }
  function keep(why) {
    stale.textContent = " The worker " + why + " (" + new Date().toISOString().slice(11, 19) +
      " UTC): these counts are from the time above; trying again every " + seconds + " s.";
    arm();
  }
  function reload() {
    fetch(location.href, {method: "HEAD", cache: "no-store"}).then(function (answer) {
      if (answer.ok) { location.reload(); } else { keep("answered " + answer.status); }
    }, function () { keep("does not answer"); });
  }
  if (pause) { pause.addEventListener("change", arm); }
  arm();
})();
"""

#: nothing but this document's own inline style and script; the form and the reload's check go to the
#: worker itself
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'"
)


def render(page: WorstPage) -> str:
    """The whole HTML document of ``page``."""
    f = page.filters
    scale = spark_scale(page.rows)
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(page.generated))
    held = ", ".join(map(str, page.partitions)) or "none"
    others = (
        f" and {page.workers - 1} other worker{'s' if page.workers > 2 else ''}" if page.workers > 1 else ""
    )
    meta = (
        f"Worker <b>{html.escape(page.worker)}</b>{others}, ns-stats partitions {held}: "
        f"{page.name_servers:,} name servers. Updated {generated} UTC"
    )
    if f.refresh:
        meta += (
            f'; reloads every {f.refresh} s <label><input type="checkbox" id="pause"> pause</label>'
            '<span id="stale" class="warn"></span>'
        )
    warning = ""
    if page.restoring:
        warning = (
            '<p class="meta warn">Partitions '
            + ", ".join(map(str, page.restoring))
            + " are being restored: their name servers are missing until then.</p>"
        )
    if page.missing:
        warning += (
            '<p class="meta warn" id="missing">Not shown: the name servers of '
            + "; ".join(html.escape(m) for m in page.missing)
            + ".</p>"
        )
    which = f"with {html.escape(f.kind)} failures, " if f.kind else ""
    summary = (
        f"The {f.n} worst name servers {which}by {f.by}, among those with {f.min_answered:,} or more EDNS "
        "queries answered: failures are EDNS0 queries answered without OPT (the reference rule), "
        "rate = failures per EDNS query answered."
    )
    if page.rows:
        rows = "\n".join(_row(i, row, page, scale) for i, row in enumerate(page.rows, 1))
        table = f'<table id="worst"><thead>{_header(page, scale)}</thead>\n<tbody>\n{rows}\n</tbody></table>'
    else:
        table = '<p class="empty" id="worst-empty">No name server matches.</p>'
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        "<title>Worst name servers: EDNS0 without OPT</title>"
        f"<style>{STYLE}</style></head>\n"
        f'<body data-refresh="{f.refresh}" data-generated="{page.generated:.3f}">'
        "<h1>Name servers answering EDNS0 queries without OPT</h1>"
        f'<p class="meta">{meta}</p>{warning}'
        f'<p class="cover">{_coverage(page)}</p>'
        f'<p class="meta">{summary}</p>'
        f"{_form(page)}\n{table}\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
