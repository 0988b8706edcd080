"""The EDNS0 rule per payload: verdicts, parity with the reference selection, and the detail fields."""

from __future__ import annotations

from collections import Counter

import pytest

from nmsgdns.edns import EdnsFilter, Verdict, judge
from nmsgdns.input import ContainerStreamReader
from nmsgdns.payload import make_payload
from nmsgdns.proto.dnsqr_pb2 import UDP_UNANSWERED_QUERY, DnsQR
from tests import corpus


def payloads(name: str) -> list[bytes]:
    with corpus.path(name).open("rb") as fh:
        return list(ContainerStreamReader(fh, name=name))


@pytest.mark.parametrize("case", corpus.CASES)
def test_selection_and_counts_equal_reference(case: str) -> None:
    rule = EdnsFilter()
    selected = [p for p in payloads(f"{case}.nmsg") if rule.select(p)]
    assert selected == payloads(f"{case}.filtered.nmsg")
    assert dict(rule.failures_by_ns) == corpus.expected_counts(case)
    assert rule.seen == len(corpus.json_lines(f"{case}.json"))


@pytest.mark.parametrize("case", corpus.CASES)
def test_detail_mode_selects_the_same(case: str) -> None:
    fast = [judge(p).verdict for p in payloads(f"{case}.nmsg")]
    full = [judge(p, detail=True).verdict for p in payloads(f"{case}.nmsg")]
    # The fast path stops at the first failing check, so only SELECTED must agree exactly; where the
    # response already decides, both name the same response reason.
    assert [v is Verdict.SELECTED for v in fast] == [v is Verdict.SELECTED for v in full]
    assert Counter(fast)[Verdict.RESPONSE_HAS_EDNS] == Counter(full)[Verdict.RESPONSE_HAS_EDNS]


def test_rate_denominator_and_timeouts_from_the_corpus() -> None:
    """edns_answered counts EDNS queries whose response parsed; timeouts are unanswered EDNS queries."""
    judged = [judge(p, detail=True) for p in payloads("live_resolver.nmsg")]
    for j in judged:
        if j.selected:
            assert j.edns_answered and j.query_opt is not None and j.response_opt is None
        if j.edns_timeout:
            assert j.record.type == UDP_UNANSWERED_QUERY and not j.selected
    answered = sum(j.edns_answered for j in judged)
    selected = sum(j.selected for j in judged)
    assert selected == 598 and answered > selected
    assert any(j.edns_timeout for j in judged), "the corpus has unanswered EDNS queries"


def test_non_dnsqr_garbage_and_typeless_records_are_skipped_with_a_reason() -> None:
    other = make_payload(2, 1, 1, 0, b"\x01\x02")
    assert judge(other).verdict is Verdict.NOT_DNSQR
    assert judge(b"\xff\xff\xff").verdict is Verdict.UNDECODABLE
    # A DnsQR without its required `type`: libnmsg cannot unpack it, so it is never selected.
    selected = payloads("edge_cases.filtered.nmsg")[0]
    rec = DnsQR.FromString(judge(selected).record.SerializeToString())
    rec.ClearField("type")
    typeless = make_payload(1, 9, 1, 0, rec.SerializePartialToString())
    assert judge(typeless).verdict is Verdict.UNDECODABLE
    assert judge(selected).verdict is Verdict.SELECTED


def test_ns_ip_text_for_ipv4_and_ipv6() -> None:
    ips = {judge(p).ns_ip for p in payloads("live_resolver.filtered.nmsg")}
    assert ips == set(corpus.expected_counts("live_resolver"))
