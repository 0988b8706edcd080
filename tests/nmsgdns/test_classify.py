"""nmsgdns.classify: failure kinds of selected records and the extra observations, on the corpus (whose
servers were built to fail in known ways) and on hand-made OPTs."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import cache

import dpkt
import pytest

from nmsgdns.classify import KINDS, OBSERVATIONS, FailureDetail, classify_failure, edns_option_codes, observe
from nmsgdns.dnsqr import DnsQR, decode_dnsqr, derive_query, derive_response, ip_to_text
from nmsgdns.errors import DnsWireError
from nmsgdns.proto import dnsqr_pb2
from nmsgdns.wire import Opt, scan_opt
from tests import corpus
from tests.nmsgdns.test_wire import read_payloads


def _scan(wire: bytes | None) -> tuple[bool, Opt | None]:
    if wire is None:
        return False, None
    try:
        return True, scan_opt(wire)
    except DnsWireError:
        return False, None


def label_record(rec: DnsQR) -> tuple[str | None, str | None]:
    """(failure kind if the seed rule selects the record, else None; observation or None)."""
    response = derive_response(rec)
    r_ok, r_opt = _scan(response)
    q_ok, q_opt = _scan(derive_query(rec))
    if r_ok and r_opt is None and q_ok and q_opt is not None:
        assert response is not None
        return classify_failure(rec, q_opt, response).kind, None
    rcode = response[3] & 0x0F if response is not None and r_ok else 0
    return None, observe(rec.type, q_opt if q_ok else None, r_opt if r_ok else None, rcode)


@cache
def labelled(case: str) -> tuple[tuple[DnsQR, str | None, str | None], ...]:
    out = []
    for payload in read_payloads(corpus.path(f"{case}.nmsg")):
        rec = decode_dnsqr(payload.payload)
        out.append((rec, *label_record(rec)))
    return tuple(out)


def test_live_resolver_kinds_per_name_server() -> None:
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for rec, kind, _ in labelled("live_resolver"):
        if kind is not None:
            kinds[ip_to_text(rec.response_ip)][kind] += 1
    assert {ns: sum(c.values()) for ns, c in kinds.items()} == corpus.expected_counts("live_resolver")
    assert kinds["127.0.0.13"] == Counter(formerr=20)  # FORMERR to every EDNS query
    assert set(kinds["127.0.0.12"]) == {"noopt"}  # answers everything without OPT
    assert set(kinds["fd00::12"]) == {"noopt"}
    assert set(kinds["127.0.0.15"]) == {"noopt"}  # omits OPT for some types
    assert set(kinds["127.0.0.14"]) == {"servfail", "notimp"}  # flaky: SERVFAIL/NOTIMP without OPT
    assert set(kinds["fd00::14"]) == {"servfail", "notimp"}


def test_live_resolver_observations() -> None:
    obs: Counter[str] = Counter()
    for rec, _, observation in labelled("live_resolver"):
        if observation == "timeout":
            assert rec.type == dnsqr_pb2.UDP_UNANSWERED_QUERY
        if observation is not None:
            obs[observation] += 1
    unanswered_edns = sum(
        1
        for rec, _, _ in labelled("live_resolver")
        if rec.type == dnsqr_pb2.UDP_UNANSWERED_QUERY and _scan(derive_query(rec))[1] is not None
    )
    assert obs["timeout"] == unanswered_edns > 0
    # NSD (127.0.0.10) answers EDNS correctly: nothing observed there
    assert not any(o for rec, _, o in labelled("live_resolver") if rec.response_ip == bytes([127, 0, 0, 10]))


@cache
def edge_case_labels() -> dict[int, str]:
    """First pcap packet number of each labelled case of edge_cases.cases.txt -> its description."""
    out = {}
    for line in corpus.path("edge_cases.cases.txt").read_text(encoding="utf-8").splitlines():
        number, _, text = line.strip().partition(" ")
        out[int(number)] = text.strip()
    return out


def edge_case_of(rec: DnsQR, frames: dict[bytes, int]) -> int:
    """The labelled case a record belongs to, by the pcap frame number of its first packet."""
    packets = [*rec.query_packet, *rec.response_packet, *([rec.tcp] if rec.HasField("tcp") else [])]
    first = min(frames[p] for p in packets)
    return max(start for start in edge_case_labels() if start <= first)


@cache
def edge_cases_by_label() -> dict[int, list[tuple[str | None, str | None]]]:
    frames: dict[bytes, int] = {}
    with corpus.path("edge_cases.pcap").open("rb") as fh:
        for number, (_, frame) in enumerate(dpkt.pcap.Reader(fh), 1):
            frames.setdefault(frame[14:], number)  # Ethernet header off: the record keeps IP packets
    out: dict[int, list[tuple[str | None, str | None]]] = defaultdict(list)
    for rec, kind, observation in labelled("edge_cases"):
        out[edge_case_of(rec, frames)].append((kind, observation))
    return out


@pytest.mark.parametrize(
    ("start", "kinds"),
    [
        (1, Counter()),  # baseline EDNS query and EDNS response
        (21, Counter(noopt=...)),  # EDNS query, response without OPT
        # cases.txt calls 45 "non-EDNS query, non-EDNS response (not selected)", but the packets from 45
        # on still carry EDNS queries answered without OPT, and the reference filter selects them.
        (45, Counter(noopt=...)),
        (57, Counter(formerr=2, servfail=2, notimp=2, refused=2)),
        (75, Counter({"truncated-noopt": 1})),
        (79, Counter(noopt=2)),  # IPv6 (2001:db8:2::a and ::d)
        (91, Counter(noopt=1)),  # IPv4 fragmented response without OPT
        (100, Counter()),  # malformed response body
        (106, Counter()),  # unanswered: never selected ...
        (113, Counter()),  # garbage on port 53
    ],
)
def test_edge_cases_kinds(start: int, kinds: Counter[str]) -> None:
    got = Counter(kind for kind, _ in edge_cases_by_label()[start] if kind is not None)
    if kinds.get("noopt") is ...:
        assert set(got) == {"noopt"}
    else:
        assert got == kinds, edge_case_labels()[start]


def test_edge_cases_unanswered_edns_queries_are_timeouts() -> None:
    observations = [obs for _, obs in edge_cases_by_label()[106]]
    assert observations and set(observations) == {"timeout"}


def test_every_label_is_declared() -> None:
    for case in ("live_resolver", "edge_cases"):
        for _, kind, observation in labelled(case):
            assert kind is None or kind in KINDS
            assert observation is None or observation in OBSERVATIONS


# ---------------------------------------------------------------- hand-made records


def response(rcode: int = 0, tc: bool = False) -> bytes:
    return bytes([0x12, 0x34, 0x80 | (0x02 if tc else 0), rcode]) + bytes(8)


REC = DnsQR(type=1, qname=b"\x03www\x07example\x03com\x00", qtype=28, qclass=1, rcode=0)
EDNS0 = Opt(1232, 0, 0, 0, b"")
EDNS0_DO = Opt(4096, 0, 0, 0x8000, b"")
EDNS1 = Opt(1232, 0, 1, 0, b"")


def test_classify_detail() -> None:
    assert classify_failure(REC, EDNS0_DO, response(1)) == FailureDetail(
        kind="formerr",
        qname="www.example.com.",
        qtype=28,
        qclass=1,
        rcode=1,
        edns_udp_size=4096,
        edns_version=0,
        edns_do=True,
    )
    bare = classify_failure(DnsQR(type=1), EDNS0, response())
    assert (bare.kind, bare.qname, bare.qtype, bare.qclass, bare.edns_do) == (
        "noopt",
        None,
        None,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("opt", "wire", "kind"),
    [
        (EDNS0, response(0), "noopt"),
        (EDNS0, response(3), "noopt"),  # NXDOMAIN without OPT
        (EDNS0, response(1), "formerr"),
        (EDNS0, response(2), "servfail"),
        (EDNS0, response(4), "notimp"),
        (EDNS0, response(5), "refused"),
        (EDNS0, response(0, tc=True), "truncated-noopt"),
        (EDNS0, response(2, tc=True), "servfail"),  # the rcode is the more specific signal
        (EDNS1, response(1), "badvers"),  # an EDNS1 query must get BADVERS with an OPT
        (EDNS1, response(0), "badvers"),
    ],
)
def test_classify_kinds(opt: Opt, wire: bytes, kind: str) -> None:
    assert classify_failure(REC, opt, wire).kind == kind


ECHO = b"\xfd\xe9\x00\x01x"  # option 65001, unknown
COOKIE = b"\x00\x0a\x00\x08" + bytes(8)


@pytest.mark.parametrize(
    ("query", "answer", "rcode", "expected"),
    [
        (EDNS0, Opt(1232, 0, 0, 0, b""), 0, None),
        (None, Opt(1232, 0, 0, 0, b""), 0, None),  # a non-EDNS query is not our business
        (EDNS0, None, 0, None),  # not selected and nothing to observe (e.g. the response did not parse)
        (EDNS0, Opt(1232, 0, 1, 0, b""), 0, "version-not-zero"),
        (EDNS0, Opt(1232, 1, 0, 0, b""), 0, "badvers"),  # BADVERS to a version-0 query
        (EDNS1, Opt(1232, 1, 0, 0, b""), 0, None),  # proper BADVERS, own version 0
        (EDNS1, Opt(1232, 1, 1, 0, b""), 0, "badvers"),  # BADVERS claiming the version asked for
        (EDNS1, Opt(1232, 0, 0, 0, b""), 0, "badvers"),  # answered as if version 0
        (EDNS0_DO, Opt(1232, 0, 0, 0x8000, b""), 0, None),
        (EDNS0_DO, Opt(1232, 0, 0, 0, b""), 0, "do-not-echoed"),
        (EDNS0, Opt(1232, 0, 0, 0x8000, b""), 0, None),  # DO set unasked: not a fault we label
        (Opt(1232, 0, 0, 0, ECHO), Opt(1232, 0, 0, 0, ECHO), 0, "option-echoed"),
        (Opt(1232, 0, 0, 0, ECHO), Opt(1232, 0, 0, 0, b""), 0, None),
        (Opt(1232, 0, 0, 0, COOKIE), Opt(1232, 0, 0, 0, COOKIE), 0, None),  # cookies come back by design
        (Opt(1232, 0, 0, 0, b""), Opt(1232, 0, 0, 0, ECHO), 0, None),  # not echoed: never asked
    ],
)
def test_observe_answers_with_opt(
    query: Opt | None, answer: Opt | None, rcode: int, expected: str | None
) -> None:
    assert observe(REC.type, query, answer, rcode) == expected


def test_observe_timeout() -> None:
    unanswered = dnsqr_pb2.UDP_UNANSWERED_QUERY
    assert observe(unanswered, EDNS0, None) == "timeout"
    assert observe(unanswered, None, None) is None


def test_edns_option_codes() -> None:
    assert edns_option_codes(b"") == []
    assert edns_option_codes(COOKIE + ECHO) == [10, 65001]
    assert edns_option_codes(b"\x00\x03\x00\x10ab") == [3]  # cut short: still counted by its code
    assert edns_option_codes(b"\x00\x03\x00") == []
