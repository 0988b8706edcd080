"""Cluster-wide answers of the web views: ask every other worker for its part, merge (scatter-gather).

A worker holds the state of its own ns-stats partitions only (``processors/aggregator.py``). For
``/dnsqr/top/`` and ``/dnsqr/worst/`` to answer for every name server on any worker, the worker that is
asked gathers the same answer from each other member of the consumer group, restricted to that member's
partitions (``local=1``), and merges: each name server lives in exactly one partition, so the worst N of
the cluster are the worst N of the union of each worker's worst N.

Who the others are comes from Faust's partition assignor: every member advertises its web URL
(``canonical_url``, from ``--web-host``/``--web-port``), and the assignment tells which member owns which
ns-stats partitions (``PartitionAssignor.external_topic_distribution``). A member that does not answer
within :data:`PEER_TIMEOUT` seconds is named with its partitions, never left out silently.

The pure half (rows to and from JSON, merging) is here beside the asking; neither touches a state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from processors.counts import Counts, count_values, counts_of, failure_rate
from processors.worst_page import WorstRow

#: query parameter of a worker-local answer (what a peer is asked for)
LOCAL = "local"
#: seconds a peer has to answer
PEER_TIMEOUT = 3.0


@dataclass(frozen=True)
class Peer:
    """Another worker of the group: its web URL and the ns-stats partitions it owns."""

    url: str
    partitions: tuple[int, ...]


@dataclass(frozen=True)
class Missing:
    """A peer whose part of the answer is missing, and why."""

    peer: Peer
    reason: str

    def describe(self) -> str:
        parts = ", ".join(map(str, self.peer.partitions))
        return f"worker {self.peer.url} (ns-stats partitions {parts}): {self.reason}"


def peers(app: faust.App, stats_topic: str) -> list[Peer]:
    """The other members of ``app``'s group that own partitions of ``stats_topic`` (the ns-stats topic),
    from the latest assignment."""
    own = str(app.conf.canonical_url).rstrip("/")
    distribution: Mapping[str, Mapping[str, Sequence[int]]] = app.assignor.external_topic_distribution
    out = []
    for url, topics in distribution.items():
        partitions = tuple(sorted(topics.get(stats_topic, ())))
        if partitions and str(url).rstrip("/") != own:
            out.append(Peer(str(url).rstrip("/"), partitions))
    return sorted(out, key=lambda p: p.url)


async def gather(
    app: faust.App, stats_topic: str, path: str, query: Mapping[str, str]
) -> tuple[list[tuple[Peer, Any]], list[Missing]]:
    """GET ``path`` with ``query`` and ``local=1`` from every peer (:func:`peers`): the JSON answers, and
    the peers that did not give one."""

    async def ask(peer: Peer) -> tuple[Peer, Any]:
        async with app.http_client.get(
            peer.url + path, params={**query, LOCAL: "1"}, timeout=PEER_TIMEOUT
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"answered {response.status}: {(await response.text())[:200]}")
            return peer, await response.json()

    answers: list[tuple[Peer, Any]] = []
    missing: list[Missing] = []
    others = peers(app, stats_topic)
    for peer, result in zip(
        others, await asyncio.gather(*(ask(p) for p in others), return_exceptions=True), strict=True
    ):
        if isinstance(result, BaseException):
            reason = (
                "no answer in time"
                if isinstance(result, asyncio.TimeoutError)
                else str(result) or repr(result)
            )
            missing.append(Missing(peer, reason))
        else:
            answers.append(result)
    return answers, missing


def top_rows(answer: Iterable[Mapping[str, Any]]) -> list[tuple[str, int | None, Counts]]:
    """The rows (``processors.views.Row``) of a ``/dnsqr/top/`` answer."""
    return [(r["name_server"], r.get("window_start"), counts_of(r)) for r in answer]


def worst_json(rows: Sequence[WorstRow], axis: Sequence[int]) -> list[dict[str, Any]]:
    """Worst-page rows as JSON, each window of the series by its start (record time)."""
    return [
        {
            "name_server": r.name_server,
            **count_values([r.edns_answered, r.failures, r.timeouts, dict(r.by_kind) or None, None]),
            "series": [[start, *point] for start, point in zip(axis, r.series, strict=True) if point],
        }
        for r in rows
    ]


def worst_rows(answer: Iterable[Mapping[str, Any]], axis: Sequence[int]) -> list[WorstRow]:
    """The rows of a :func:`worst_json` answer, their series on ``axis`` (None where not seen)."""
    out = []
    for r in answer:
        points = {start: (failures, answered) for start, failures, answered in r["series"]}
        out.append(
            WorstRow(
                r["name_server"],
                r["edns_answered"],
                r["failures"],
                r["timeouts"],
                dict(r["by_kind"]),
                [points.get(start) for start in axis],
            )
        )
    return out


def rank_worst(rows: Iterable[WorstRow], by: str, n: int) -> list[WorstRow]:
    """The ``n`` worst of ``rows``, ordered as :func:`processors.views.pick` orders name servers."""

    def key(r: WorstRow) -> tuple[Any, ...]:
        rate = failure_rate([r.edns_answered, r.failures])
        if by == "failures":
            return (-r.failures, -rate, r.name_server)
        return (-rate, -r.failures, r.name_server)

    return sorted(rows, key=key)[:n]
