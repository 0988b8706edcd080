"""The worst page in a real browser: headless Chromium loads ``/dnsqr/worst/`` from a running worker.

A worker (``dnsqr-pipeline worker``) with 60 s windows gets the
records of two corpus cases replayed into eight consecutive windows: every record that is not a failure in
every window, and of each name server's failures a share that rises window by window for some name
servers and falls for the others (and for some, no record at all in one window), so the sparklines have
shapes and gaps. The expected counts come from the standalone filter's rule (``nmsgdns.edns.judge``) on
the records sent, not from the worker.

Chromium is driven through the DevTools protocol (``tests/chromium.py``): the test reads the rendered DOM
(rows, their values, one drawn SVG per row), clicks column headers with real mouse events and reads the
order again, follows the page's own auto-refresh (and, once the worker is stopped, its note that the
worker does not answer, the rows kept), and saves a screenshot (``worst-page.png`` in the test's
tmp dir, copied to ``$DNSQR_TEST_ARTIFACTS`` or the repository's ``test-artifacts/``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import shutil
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dnsqr_kafka.topics import admin_client, delete_topics
from dnsqr_pipeline.job import Stage, free_port
from nmsgdns.classify import classify_failure
from nmsgdns.container import encode_container
from nmsgdns.edns import judge
from nmsgdns.payload import decode_payload, payload_time
from processors.settings import Settings
from processors.topology import internal_topic_specs
from tests import corpus
from tests.chromium import CHROMIUM, Chromium, Tab
from tests.processors.test_integration import wait_web_totals

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
    ),
]

CASES = ("live_resolver", "edge_cases")
WINDOW, WINDOWS = 60, 8
#: start of the first window (record time): 2026-11-27 ..., a multiple of WINDOW
T0 = 1_795_771_800
#: the window in which some name servers send nothing (a gap in their sparkline)
GAP = 5
WIDTH, HEIGHT = 1280, 900
REPO = Path(__file__).resolve().parents[2]

#: one (failures, EDNS answered) per name server and window
Series = dict[str, list[tuple[int, int] | None]]


def retimed(payload: bytes, time_sec: int) -> bytes:
    envelope = decode_payload(payload)
    envelope.time_sec = time_sec
    return envelope.SerializeToString()


class Feed:
    """The records replayed into the windows, and what the rule says of them."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.failures: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.kinds: dict[str, Counter[str]] = defaultdict(Counter)
        #: name server -> per window: failures, EDNS answered, records counted (timeouts too)
        counts: dict[str, list[list[int]]] = defaultdict(lambda: [[0, 0, 0] for _ in range(WINDOWS)])
        for case in CASES:
            payloads = corpus.read_payloads(corpus.path(f"{case}.nmsg"))
            first = min(payload_time(p)[0] for p in payloads)
            judged = [(p, judge(p, detail=True)) for p in payloads]
            for window in range(WINDOWS):
                for index, (payload, j) in enumerate(judged):
                    ns = j.ns_ip
                    if ns is None:
                        continue
                    seed = sum(ns.encode())
                    if window == GAP and seed % 3 == 0:
                        continue
                    # failures: a share rising with the window, or falling, by name server
                    level = window + 1 if seed % 2 else WINDOWS - window
                    if j.selected and index % WINDOWS >= level:
                        continue
                    self.payloads.append(
                        retimed(payload, T0 + window * WINDOW + payload_time(payload)[0] - first)
                    )
                    if j.selected:
                        self.failures[ns] += 1
                        self.kinds[ns][classify_failure(j.record, j.query_opt, j.response).kind] += 1
                        counts[ns][window][0] += 1
                    if j.selected or j.edns_answered:
                        self.answered[ns] += 1
                        counts[ns][window][1] += 1
                    if j.selected or j.edns_answered or j.edns_timeout:
                        counts[ns][window][2] += 1
        self.series: Series = {ns: [(f, a) if n else None for f, a, n in counts[ns]] for ns in self.failures}


@pytest.fixture
def worker(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> Iterator[tuple[int, Stage]]:
    """``dnsqr-pipeline worker`` with 60 s windows on topics of its own, fed :class:`Feed`; its web port
    and process. The topics it created are deleted after."""
    name = f"worst-page-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        app_id=name,
        bootstrap_servers=kafka_bootstrap,
        raw_topic=new_topic(2, prefix="worst-page-raw"),
        failures_topic=f"{name}.failures",
        stats_topic=f"{name}.ns-stats",
        counts_topic=f"{name}.ns-counts",
        dlq_topic=f"{name}.raw.dlq",
        progress_topic=f"{name}.progress",
        partitions=2,
        replication_factor=1,
        window_seconds=WINDOW,
    )
    port = free_port()
    argv = [sys.executable, "-m", "dnsqr_pipeline.cli", "worker", "--bootstrap-servers", kafka_bootstrap]
    for flag, value in (
        ("--app-id", settings.app_id),
        ("--raw-topic", settings.raw_topic),
        ("--failures-topic", settings.failures_topic),
        ("--stats-topic", settings.stats_topic),
        ("--counts-topic", settings.counts_topic),
        ("--dlq-topic", settings.dlq_topic),
        ("--progress-topic", settings.progress_topic),
        ("--partitions", settings.partitions),
        ("--replication-factor", settings.replication_factor),
        ("--window-seconds", settings.window_seconds),
        ("--web-port", port),
    ):
        argv += [flag, str(value)]
    stage = Stage("worker", argv, tmp_path, restarts=0)
    try:
        feed = the_feed()
        producer = Producer(
            {"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        for i in range(0, len(feed.payloads), 150):
            producer.produce(settings.raw_topic, encode_container(feed.payloads[i : i + 150]))
        assert producer.flush(30) == 0
        expected = dict(feed.failures)
        got = wait_web_totals(port, expected, timeout=120)
        assert got == expected, f"worker {stage.proc.poll()}: {stage.log_path.read_text()[-3000:]}"
        yield port, stage
    finally:
        stage.stop()
        created = [spec.name for spec in internal_topic_specs(settings)]
        delete_topics(admin_client({"bootstrap.servers": kafka_bootstrap}), created)


@functools.cache
def the_feed() -> Feed:
    return Feed()


ROWS_JS = """Array.from(document.querySelectorAll('#worst tbody tr')).map(tr => {
  const svg = tr.querySelector('td.trend svg.spark');
  return {ns: tr.cells[1].textContent, failures: +tr.dataset.failures, answered: +tr.dataset.answered,
          rate: +tr.dataset.rate, kinds: tr.querySelector('td.kinds').textContent,
          svg: svg ? {width: svg.getBoundingClientRect().width,
                      marks: svg.querySelectorAll('path, circle').length,
                      title: svg.querySelector('title').textContent} : null};
})"""


def series_of(title: str) -> list[tuple[int, int] | None]:
    """The (failures, answered) per window that a sparkline's title lists: ``... oldest first: 1/10, -``."""
    listed = title.rsplit(": ", 1)[1].split(", ")
    return [None if t == "-" else (int(t.split("/")[0]), int(t.split("/")[1])) for t in listed]


def address(ns: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ns)
    return a.version, int(a)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


async def browse(tab: Tab, base: str, feed: Feed, shot: Path, stop_worker: Callable[[], object]) -> None:
    # --- rows as the worker ranks them (most failures first), with their values and sparklines
    await tab.navigate(f"{base}?windows={WINDOWS}&refresh=0")
    rows = await tab.evaluate(ROWS_JS)
    assert {r["ns"]: r["failures"] for r in rows} == dict(feed.failures)
    assert {r["ns"]: r["answered"] for r in rows} == {ns: feed.answered[ns] for ns in feed.failures}
    assert [r["failures"] for r in rows] == sorted((r["failures"] for r in rows), reverse=True)
    for r in rows:
        assert r["svg"] is not None and r["svg"]["width"] == 150 and r["svg"]["marks"] > 0, r
        assert series_of(r["svg"]["title"]) == feed.series[r["ns"]], r["ns"]
    assert any(None in s for s in feed.series.values()), "the feed leaves gaps in some sparklines"
    assert await tab.evaluate("document.getElementById('range').textContent") == (
        f"{when(T0)} - {when(T0 + WINDOWS * WINDOW)} UTC"
    )
    # self-contained: nothing was fetched besides the page, nothing refers elsewhere
    assert await tab.evaluate("performance.getEntriesByType('resource').length") == 0
    assert await tab.evaluate("document.querySelectorAll('[src]').length") == 0

    # --- a click on "rate" sorts by rate, highest first; a second click lowest first; then by address
    by_failures = [r["ns"] for r in rows]
    by_rate = sorted(rows, key=lambda r: (-r["rate"], by_failures.index(r["ns"])))
    assert [r["ns"] for r in by_rate] != by_failures, "the feed must rank differently by rate"
    await tab.click('th[data-key="rate"]')
    after = await tab.evaluate(ROWS_JS)
    assert [r["ns"] for r in after] == [r["ns"] for r in by_rate]
    assert await tab.evaluate("location.hash") == "#sort=rate:desc"
    assert await tab.evaluate("document.querySelector('th[data-key=rate]').getAttribute('aria-sort')") == (
        "descending"
    )
    await tab.click('th[data-key="rate"]')
    rates = [r["rate"] for r in await tab.evaluate(ROWS_JS)]
    assert rates == sorted(rates) and await tab.evaluate("location.hash") == "#sort=rate:asc"
    await tab.click('th[data-key="ns"]')
    assert [r["ns"] for r in await tab.evaluate(ROWS_JS)] == sorted(feed.failures, key=address)

    # --- filters: one kind (some name servers have it, some not), a minimum of answers
    having_kind = {
        k: {ns for ns, kinds in feed.kinds.items() if kinds[k]} for c in feed.kinds.values() for k in c
    }
    kind = min(sorted(having_kind), key=lambda k: abs(len(having_kind[k]) - len(feed.failures) / 2))
    having = having_kind[kind]
    least = sorted(feed.answered[ns] for ns in having)[len(having) // 2]
    await tab.navigate(f"{base}?kind={kind}&min_answered={least}&refresh=0")
    filtered = await tab.evaluate(ROWS_JS)
    expected = {ns for ns in having if feed.answered[ns] >= least}
    assert 0 < len(expected) < len(feed.failures)
    assert {r["ns"] for r in filtered} == expected
    assert all(kind in r["kinds"] for r in filtered)

    # --- auto-refresh: the page reloads itself and keeps its sort (the fragment)
    await tab.navigate(f"{base}?windows={WINDOWS}&refresh=2#sort=rate:asc")
    first = await tab.evaluate("document.body.dataset.generated")
    deadline = time.monotonic() + 20
    reloaded = first
    while reloaded == first:
        assert time.monotonic() < deadline, "the page did not reload itself"
        await asyncio.sleep(0.5)
        try:
            reloaded = await tab.evaluate("document.body && document.body.dataset.generated")
        except Exception:  # the page is between two documents
            continue
    await asyncio.sleep(0.3)
    rates = [r["rate"] for r in await tab.evaluate(ROWS_JS)]
    assert rates == sorted(rates)
    assert await tab.evaluate("document.querySelector('th[data-key=rate]').getAttribute('aria-sort')") == (
        "ascending"
    )

    # --- the screenshot: default settings, sorted by rate with a click
    await tab.navigate(f"{base}?windows={WINDOWS}")
    await tab.click('th[data-key="rate"]')
    await tab.screenshot(shot, WIDTH, HEIGHT)

    # --- the worker goes away: the page stays, says so, and keeps trying
    await tab.navigate(f"{base}?windows={WINDOWS}&refresh=2")
    await asyncio.to_thread(stop_worker)
    deadline = time.monotonic() + 30
    while "does not answer" not in await tab.evaluate("document.getElementById('stale').textContent"):
        assert time.monotonic() < deadline, "the page did not notice the worker was gone"
        await asyncio.sleep(0.5)
    assert len(await tab.evaluate(ROWS_JS)) == len(feed.failures)


def test_worst_page_in_chromium(worker: tuple[int, Stage], tmp_path: Path) -> None:
    port, stage = worker
    base = f"http://127.0.0.1:{port}/dnsqr/worst/"
    # the server's side first: GET only, bad parameters refused with a message
    for query, status in (("?n=abc", 400), ("?kind=bogus", 400), ("?refresh=1", 400), ("?typo=1", 400)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + query, timeout=10)
        assert refused.value.code == status, query
        assert json.load(refused.value)["error"], query
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(urllib.request.Request(base, data=b"", method="POST"), timeout=10)
    assert post.value.code == 405
    with urllib.request.urlopen(base, timeout=10) as page:
        assert page.headers.get_content_type() == "text/html"

    browser = Chromium(tmp_path / "chromium", width=WIDTH, height=HEIGHT)
    shot = tmp_path / "worst-page.png"

    async def scenario() -> None:
        async with browser.tab() as tab:
            await browse(tab, base, the_feed(), shot, stage.stop)

    try:
        asyncio.run(scenario())
    finally:
        browser.stop()
    assert png_size(shot) == (WIDTH, HEIGHT)
    artifacts = Path(os.environ.get("DNSQR_TEST_ARTIFACTS") or REPO / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, artifacts / "worst-page.png")
