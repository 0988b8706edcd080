"""The EDNS0 rule over one payload: is this base:dnsqr record an EDNS0 failure, and if not, why not.

The rule is the reference filter's (``docs/edns-rule.md``): a vid 1 / msgtype 9 record is
selected when its derived ``response`` exists, parses and has no OPT record, and its derived ``query``
exists, parses and has one. Every record gets exactly one :class:`Verdict`, so a summary can say how many
were skipped and why, and nothing is dropped without a count.

The standalone filter only needs the verdict and stops at the first check that fails (the response is
checked first: most responses carry OPT, so most records need one scan). The Faust agent also wants the
rate's denominator and unanswered EDNS queries, so :func:`judge` with ``detail=True`` scans both sides;
:func:`triage` is that detailed judgement without the protobuf record, for the worker's per-record loop.

When the C extension is built, the common case (one query packet, one response packet, the usual
envelope) is decided by ``nmsgdns._wirescan.judge`` from the serialized bytes, without protobuf objects;
anything else (and everything under ``NMSGDNS_PURE_PYTHON``) takes :func:`judge_py`, the specification
the tests hold the C path to.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from nmsgdns.dnsqr import derive_query, derive_response, ip_to_text
from nmsgdns.native import load_extension
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE
from nmsgdns.proto.dnsqr_payload_pb2 import DnsqrPayload
from nmsgdns.proto.dnsqr_pb2 import UDP_UNANSWERED_QUERY, DnsQR
from nmsgdns.proto.nmsg_pb2 import NmsgPayload
from nmsgdns.wire import Opt, scan_or


class Verdict(enum.Enum):
    """Outcome of the rule for one payload; every value but SELECTED is a reason for skipping it."""

    SELECTED = "selected"
    NOT_DNSQR = "not-dnsqr"
    UNDECODABLE = "undecodable"
    NO_RESPONSE = "no-response"
    RESPONSE_MALFORMED = "response-malformed"
    RESPONSE_HAS_EDNS = "response-has-edns"
    NO_QUERY = "no-query"
    QUERY_MALFORMED = "query-malformed"
    QUERY_NO_EDNS = "query-no-edns"

    # Members are singletons: identity hashing is correct and, unlike Enum's default (which hashes the
    # name in Python code), costs nothing on the per-record counting path.
    __hash__ = object.__hash__


class _Scan(enum.Enum):
    """A side of the exchange that could not be scanned (as opposed to an Opt or None)."""

    ABSENT = "absent"
    MALFORMED = "malformed"


# Module-level names for the hot path; ``scan_or`` (C when built) returns one of them, an Opt or None,
# so no exception is raised and caught per malformed side and no Python frame wraps the scan.
_ABSENT = _Scan.ABSENT
_MALFORMED = _Scan.MALFORMED


@dataclass(slots=True)
class Judgement:
    """The verdict on one payload and what was learnt on the way.

    ``query_opt``/``response_opt`` are the OPT records found (None: that side was absent, malformed, had
    none, or was not scanned because the verdict was already decided and ``detail`` was off).
    """

    verdict: Verdict
    record: DnsQR | None = None
    query_opt: Opt | None = None
    response_opt: Opt | None = None
    response: bytes | None = None
    edns_answered: bool = False
    edns_timeout: bool = False

    @property
    def selected(self) -> bool:
        return self.verdict is Verdict.SELECTED

    @property
    def ns_ip(self) -> str | None:
        """The name server (response_ip) as text, or None when the record has no usable address."""
        rec = self.record
        if rec is None or len(rec.response_ip) not in (4, 16):
            return None
        return ip_to_text(rec.response_ip)


def _undecodable_reason(payload: bytes) -> Verdict:
    """Why the one-call view did not parse: another message type, or really broken bytes."""
    try:
        envelope = NmsgPayload.FromString(payload)
    except DecodeError:
        return Verdict.UNDECODABLE
    if envelope.vid != VID_BASE or envelope.msgtype != MSGTYPE_DNSQR:
        return Verdict.NOT_DNSQR
    return Verdict.UNDECODABLE


def judge(payload: bytes, *, detail: bool = False) -> Judgement:
    """Apply the EDNS0 rule to one serialized NmsgPayload.

    With ``detail`` both sides are always scanned, so ``edns_answered`` (an EDNS query whose response
    parsed: the rate's denominator) and ``edns_timeout`` (an unanswered EDNS query) are filled in.
    Same result as :func:`judge_py`; the C path only saves the Python-level derivation and scans.
    """
    if _judge_c is not None:
        t = _judge_c(payload, detail)
        if t is not None:
            # The record is still the protobuf view's, as callers (classify, failure records) expect.
            return Judgement(t[0], DnsqrPayload.FromString(payload).payload, t[1], t[2], t[3], t[4], t[5])
    return _judge_view(payload, detail)[0]


def judge_py(payload: bytes, *, detail: bool = False) -> Judgement:
    """:func:`judge` in Python only: the specification of the C fast path (and its fallback)."""
    return _judge_view(payload, detail)[0]


#: What :func:`triage` returns: (verdict, query_opt, response_opt, response, edns_answered, edns_timeout,
#: response_ip, type, time_sec, time_nsec); the first six are :func:`judge`'s ``detail=True`` Judgement
#: fields, then the record's response_ip (b"" when absent) and type and the payload's time (0 for the
#: three when the payload did not decode as a dnsqr record).
Triage = tuple[Verdict, Opt | None, Opt | None, bytes | None, bool, bool, bytes, int, int, int]


def triage(payload: bytes) -> Triage:
    """``judge(payload, detail=True)`` as a tuple, plus what the worker needs of the record and envelope.

    The worker needs the record itself only for the ~quarter of records that are selected; for the rest
    building the protobuf record (and the Judgement) was most of the per-record cost, so this returns the
    few fields it reads instead (the name server for the counts, the type, the time for failure records).
    """
    if _judge_c is not None:
        t = _judge_c(payload, True)
        if t is not None:
            return t
    return triage_py(payload)


def judgement_of(payload: bytes, t: Triage) -> Judgement:
    """The ``judge(payload, detail=True)`` Judgement of a payload whose :func:`triage` is ``t``: its
    fields plus the protobuf record (decoded here, only for the records that need it)."""
    view = DnsqrPayload.FromString(payload)
    return Judgement(t[0], view.payload, t[1], t[2], t[3], t[4], t[5])


def triage_py(payload: bytes) -> Triage:
    """:func:`triage` from :func:`judge_py`: the specification of the C fast path."""
    j, view = _judge_view(payload, True)
    if view is None or j.record is None:
        return (j.verdict, None, None, None, False, False, b"", 0, 0, 0)
    rec = j.record
    return (
        j.verdict,
        j.query_opt,
        j.response_opt,
        j.response,
        j.edns_answered,
        j.edns_timeout,
        rec.response_ip,
        rec.type,
        view.time_sec,
        view.time_nsec,
    )


def _judge_view(payload: bytes, detail: bool) -> tuple[Judgement, DnsqrPayload | None]:
    """The rule in Python, and the protobuf view it decoded (None when the payload did not decode)."""
    try:
        view = DnsqrPayload.FromString(payload)
    except DecodeError:
        return Judgement(_undecodable_reason(payload)), None
    if view.vid != VID_BASE or view.msgtype != MSGTYPE_DNSQR:
        return Judgement(Verdict.NOT_DNSQR), view
    rec = view.payload
    if not rec.HasField("type"):
        # upb does not enforce proto2 `required`; protobuf-c (libnmsg) refuses such a record.
        return Judgement(Verdict.UNDECODABLE), view

    response = derive_response(rec)
    r = scan_or(response, _ABSENT, _MALFORMED)
    if not detail:
        if r is _ABSENT:
            return Judgement(Verdict.NO_RESPONSE, rec), view
        if r is _MALFORMED:
            return Judgement(Verdict.RESPONSE_MALFORMED, rec), view
        if r is not None:
            return Judgement(Verdict.RESPONSE_HAS_EDNS, rec, None, r), view
    q = scan_or(derive_query(rec), _ABSENT, _MALFORMED)
    query_opt = q if isinstance(q, Opt) else None
    response_opt = r if isinstance(r, Opt) else None
    if r is _ABSENT:
        verdict = Verdict.NO_RESPONSE
    elif r is _MALFORMED:
        verdict = Verdict.RESPONSE_MALFORMED
    elif r is not None:
        verdict = Verdict.RESPONSE_HAS_EDNS
    elif q is _ABSENT:
        verdict = Verdict.NO_QUERY
    elif q is _MALFORMED:
        verdict = Verdict.QUERY_MALFORMED
    elif q is None:
        verdict = Verdict.QUERY_NO_EDNS
    else:
        verdict = Verdict.SELECTED
    judgement = Judgement(
        verdict,
        rec,
        query_opt,
        response_opt,
        response,
        query_opt is not None and not isinstance(r, _Scan),  # edns_answered
        query_opt is not None and rec.type == UDP_UNANSWERED_QUERY,  # edns_timeout
    )
    return judgement, view


_ext = load_extension("_wirescan")
#: ``nmsgdns._wirescan.judge`` when built: (payload, detail) -> the :data:`Triage` tuple, or None where
#: :func:`judge_py` must decide.
_judge_c: Callable[[bytes, bool], Triage | None] | None = None
if _ext is not None:
    _ext.configure_judge(
        (
            Verdict.SELECTED,
            Verdict.NO_RESPONSE,
            Verdict.RESPONSE_MALFORMED,
            Verdict.RESPONSE_HAS_EDNS,
            Verdict.NO_QUERY,
            Verdict.QUERY_MALFORMED,
            Verdict.QUERY_NO_EDNS,
        )
    )
    _judge_c = _ext.judge


def ranked_counts(failures_by_ns: Mapping[str, int]) -> dict[str, int]:
    """``{ip: n}`` most failures first, ties by address text: the order of every ``--counts-json`` (the
    standalone filter's and the pipeline's, so that the two files of one input are byte-identical)."""
    return dict(sorted(failures_by_ns.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class EdnsFilter:
    """The rule applied to a stream of payloads, with the counts a summary needs.

    ``verdicts`` counts every payload seen by its verdict; ``failures_by_ns`` counts selected records
    per name server (response_ip as text), the ``{ip: n}`` form of the reference's expected counts.
    """

    verdicts: Counter[Verdict] = field(default_factory=Counter)
    failures_by_ns: Counter[str] = field(default_factory=Counter)

    def select(self, payload: bytes) -> bool:
        """Judge ``payload``, count the outcome, and say whether it is an EDNS0 failure."""
        j = judge(payload)
        verdict = j.verdict
        self.verdicts[verdict] += 1
        if verdict is Verdict.SELECTED:
            self.failures_by_ns[j.ns_ip or "?"] += 1
            return True
        return False

    @property
    def seen(self) -> int:
        return sum(self.verdicts.values())

    @property
    def selected(self) -> int:
        return self.verdicts[Verdict.SELECTED]
