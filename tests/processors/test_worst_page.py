"""The worst page's HTML as a pure function of what it shows: rows, sparklines, filters, coverage, and
nothing loaded from elsewhere (the browser test, test_worst_page_browser.py, runs its script)."""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser

import pytest

from processors.worst_page import (
    Filters,
    WorstPage,
    WorstRow,
    address_key,
    duration,
    render,
    spark_scale,
    sparkline,
)


class Elements(HTMLParser):
    """Every start tag of a document with its attributes, in order, and the text of the whole page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


ROWS = [
    WorstRow("192.0.2.7", 200, 50, 3, {"noopt": 40, "formerr": 10}, [(1, 10), None, (20, 40)]),
    WorstRow("2001:db8::53", 10, 9, 0, {"servfail": 9}, [None, None, (9, 10)]),
    WorstRow("198.51.100.1", 1000, 5, 12, {"noopt": 5}, [(0, 500), (5, 500), None]),
]


def page(**changes: object) -> WorstPage:
    base = WorstPage(
        rows=ROWS,
        filters=Filters(),
        kinds=("formerr", "noopt", "servfail"),
        window_seconds=3600,
        axis=[1_699_992_000, 1_699_995_600, 1_699_999_200],
        held=(1_699_992_000, 1_700_002_800),
        expires=7 * 86400,
        generated=1_700_000_000.0,
        worker="collector-1:4242",
        partitions=[0, 2],
        name_servers=12345,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_rows_in_the_order_given_with_their_values_for_sorting() -> None:
    doc = Elements(render(page()))
    trs = doc.all("tr")[1:]  # the first is the header's
    assert [t["data-rank"] for t in trs] == ["1", "2", "3"]
    assert [t["data-failures"] for t in trs] == ["50", "9", "5"]
    assert [t["data-answered"] for t in trs] == ["200", "10", "1000"]
    assert [float(t["data-rate"] or "") for t in trs] == pytest.approx([0.25, 0.9, 0.005])
    assert [t["data-timeouts"] for t in trs] == ["3", "0", "12"]
    # every row has its sparkline, an inline SVG
    assert len(doc.all("svg", **{"class": "spark"})) == 3
    text = "".join(doc.text)
    assert "192.0.2.7" in text and "2001:db8::53" in text
    assert "25.0%" in text and "90.0%" in text and "0.5%" in text
    # the sparkline's title lists failures/answered per window, gaps as "-"
    assert "failures/answered per 1 h window, oldest first: 1/10, -, 20/40" in text


def test_sortable_headers_and_the_servers_ranking_marked() -> None:
    doc = Elements(render(page(filters=Filters(by="rate"))))
    heads = doc.all("th")
    keys = [h.get("data-key") for h in heads]
    assert keys == ["rank", "ns", "failures", "answered", "rate", "timeouts", None, None]
    assert [h.get("data-type") for h in heads if h.get("data-key")] == ["num", "text"] + ["num"] * 4
    assert [h.get("data-key") for h in heads if "aria-sort" in h] == ["rate"]
    assert doc.all("th", **{"data-key": "rate"})[0]["aria-sort"] == "descending"


def test_self_contained_no_url_of_anything_else() -> None:
    text = render(page())
    assert "://" not in text
    doc = Elements(text)
    assert all("src" not in attrs for _, attrs in doc.tags)
    assert [a.get("href") for _, a in doc.tags if "href" in a] == ["data:,"]
    [csp] = doc.all("meta", **{"http-equiv": "Content-Security-Policy"})
    assert "default-src 'none'" in (csp["content"] or "")
    assert len(doc.all("script")) == 1 and len(doc.all("style")) == 1


def test_what_the_counts_cover_and_the_worker() -> None:
    text = "".join(Elements(render(page())).text)
    # 1,700,000,000 s is 2023-11-14 22:13:20 UTC; the windows held: 20:00 to 23:00 of that day
    assert "Windows held: 2023-11-14 20:00 - 2023-11-14 23:00 UTC (record time, 1 h each)" in text
    assert "freed after 7 d" in text
    assert "3 windows from 2023-11-14 20:00 UTC" in text
    assert "Updated 2023-11-14 22:13:20 UTC" in text
    assert "collector-1:4242" in text and "partitions 0, 2" in text and "12,345 name servers" in text
    never = "".join(Elements(render(page(expires=0))).text)
    assert "Windows are never freed, so the totals cover the same time." in never
    empty = "".join(Elements(render(page(held=None, axis=[], rows=[]))).text)
    assert "No window held yet" in empty and "No name server matches." in empty
    assert "being restored" not in text
    assert "Partitions 1, 3 are being restored" in "".join(Elements(render(page(restoring=[1, 3]))).text)


def test_the_form_shows_the_filters_in_use() -> None:
    filters = Filters(by="rate", kind="noopt", min_answered=20, n=10, windows=48, refresh=0)
    text = render(page(filters=filters))
    doc = Elements(text)
    selected = [a.get("value") for a in doc.all("option") if "selected" in a]
    assert selected == ["rate", None]  # the kind options carry their text, not a value
    assert "<option selected>noopt</option>" in text
    values = {a["name"]: a["value"] for a in doc.all("input") if a.get("name")}
    assert values == {"min_answered": "20", "n": "10", "windows": "48", "refresh": "0"}
    assert doc.all("form", method="get")
    # no auto-refresh: no pause box; the body says 0
    assert doc.all("body")[0]["data-refresh"] == "0" and not doc.all("input", id="pause")
    refreshing = Elements(render(page()))
    assert refreshing.all("body")[0]["data-refresh"] == "30" and refreshing.all("input", id="pause")
    assert refreshing.all("span", id="stale")  # where the script says the worker does not answer
    # the filtered kind stands out in the by-kind column
    assert "<b>noopt 40</b>" in text


def test_names_are_escaped() -> None:
    evil = WorstRow('<img src=x onerror="alert(1)">', 1, 1, 0, {"<b>": 1}, [None])
    text = render(page(rows=[evil], axis=[0]))
    doc = Elements(text)
    assert not doc.all("img") and "&lt;img src=x" in text
    assert "&lt;b&gt; 1" in text


def test_sparkline_geometry() -> None:
    # 150 x 28 px with a 2.5 px margin: three windows at x 2.5, 75, 147.5; rate 0 at y 25.5, the scale's
    # top at y 2.5
    line = Elements(sparkline([(0, 10), (5, 10), None], 1.0, "t"))
    assert [a["d"] for a in line.all("path")] == ["M2.5 25.5 L75.0 14.0"]
    assert line.all("circle") == []  # the newest window has no answers: no dot for it
    dots = Elements(sparkline([(10, 10), None, (5, 10)], 0.5, "t"))
    assert dots.all("path") == []
    centres = [(a["cx"], a["cy"], a.get("class")) for a in dots.all("circle")]
    # rate 1 is above the scale (0.5) and drawn at its top; rate 0.5 at the top too; the newest larger,
    # not twice
    assert centres == [("2.5", "2.5", None), ("147.5", "2.5", "last")]
    # a window with no EDNS answers (only timeouts) is a gap, as is a window not seen
    gap = Elements(sparkline([(1, 0), (1, 4), (1, 4)], 1.0, "t"))
    assert [a["d"] for a in gap.all("path")] == ["M75.0 19.8 L147.5 19.8"]


def test_spark_scale_is_the_largest_window_rate_within_bounds() -> None:
    assert spark_scale(ROWS) == pytest.approx(0.9)
    calm = [WorstRow("a", 1000, 1, 0, {}, [(1, 1000), None])]
    assert spark_scale(calm) == 0.05
    assert spark_scale([WorstRow("a", 1, 1, 0, {}, [(3, 2)])]) == 1.0


def test_address_key_sorts_addresses_numerically() -> None:
    names = ["10.0.0.2", "bogus", "2001:db8::1", "9.0.0.1", "::1", "192.0.2.1"]
    assert sorted(names, key=address_key) == [
        "9.0.0.1",
        "10.0.0.2",
        "192.0.2.1",
        "::1",
        "2001:db8::1",
        "bogus",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600, "1 h"), (60, "1 min"), (90, "90 s"), (604800, "7 d"), (5400, "90 min")]
)
def test_duration(seconds: int, text: str) -> None:
    assert duration(seconds) == text
