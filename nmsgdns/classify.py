"""Failure kinds and EDNS detail for selected records, and the extra per-name-server observations.

The seed rule (``edns-rule.md``) decides *whether* a record is an EDNS0 failure; operators also want to
know *what kind* (the DNS Flag Day / ISC EDNS-compliance taxonomy, as far as it can be seen passively).
The kind is only a label on a selected record and never changes the selection. Observations that the
seed rule does not select (an EDNS query never answered, an answer whose OPT is wrong) are reported by
:func:`observe` so they can be counted per name server alongside, never mixed into the seed output.

Everything here works from the record, the query's OPT and the response bytes the scanner already
produced; it runs only for hits and observations, so it favours clarity over speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import unpack_from

from nmsgdns.dnsqr import DnsQR, qname_to_text
from nmsgdns.proto.dnsqr_pb2 import UDP_UNANSWERED_QUERY
from nmsgdns.wire import Opt

__all__ = [
    "KINDS",
    "OBSERVATIONS",
    "FailureDetail",
    "classify_failure",
    "edns_option_codes",
    "observe",
]

RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NOTIMP, RCODE_REFUSED = 1, 2, 4, 5
RCODE_BADVERS = 16
DO_BIT = 0x8000
_TC_BIT = 0x02  # in the third header byte

_RCODE_KINDS = {
    RCODE_FORMERR: "formerr",
    RCODE_SERVFAIL: "servfail",
    RCODE_NOTIMP: "notimp",
    RCODE_REFUSED: "refused",
}
#: Labels of selected records (see :func:`classify_failure`).
KINDS = ("badvers", "formerr", "servfail", "notimp", "refused", "truncated-noopt", "noopt")
#: Labels :func:`observe` reports for records the seed rule does not select.
OBSERVATIONS = ("timeout", "badvers", "version-not-zero", "do-not-echoed", "option-echoed")

#: EDNS option codes assigned by IANA (1-18, 20292, 26946). A server may legitimately answer with
#: these; an option code outside the set that comes back is an unknown option echoed.
KNOWN_OPTION_CODES = frozenset(range(1, 19)) | {20292, 26946}


@dataclass(frozen=True, slots=True)
class FailureDetail:
    """What a selected record tells about the failure: the kind and the query that provoked it."""

    kind: str
    qname: str | None  # presentation form as nmsgtool prints it; None when the record has no qname
    qtype: int | None
    qclass: int | None
    rcode: int  # the response header's RCODE (4 bits: there is no OPT to extend it)
    edns_udp_size: int  # of the query's OPT
    edns_version: int
    edns_do: bool


def classify_failure(rec: DnsQR, query_opt: Opt, response_wire: bytes) -> FailureDetail:
    """Label a record the seed rule selected (response parses without OPT, query has ``query_opt``).

    Precedence, most specific first:

    1. ``badvers`` when the query asked for EDNS version > 0: the answer should have been BADVERS
       with an OPT; without OPT it is a version-negotiation failure whatever the rcode;
    2. ``formerr`` / ``servfail`` / ``notimp`` / ``refused`` from the response RCODE (pre-EDNS servers
       answer FORMERR);
    3. ``truncated-noopt`` when TC is set (the client will retry over TCP without learning anything
       about EDNS);
    4. ``noopt``: any other answer without OPT; the server ignores EDNS.
    """
    rcode = response_wire[3] & 0x0F
    if query_opt.version > 0:
        kind = "badvers"
    elif rcode in _RCODE_KINDS:
        kind = _RCODE_KINDS[rcode]
    elif response_wire[2] & _TC_BIT:
        kind = "truncated-noopt"
    else:
        kind = "noopt"
    return FailureDetail(
        kind=kind,
        qname=qname_to_text(rec.qname) if rec.HasField("qname") else None,
        qtype=rec.qtype if rec.HasField("qtype") else None,
        qclass=rec.qclass if rec.HasField("qclass") else None,
        rcode=rcode,
        edns_udp_size=query_opt.udp_size,
        edns_version=query_opt.version,
        edns_do=bool(query_opt.flags & DO_BIT),
    )


def edns_option_codes(options: bytes) -> list[int]:
    """Option codes of OPT RDATA, in order; a truncated trailing option still counts by its code
    (libwdns takes OPT RDATA as opaque bytes, so a malformed list is the server's business)."""
    codes = []
    pos = 0
    while pos + 4 <= len(options):
        code, length = unpack_from(">HH", options, pos)
        codes.append(code)
        pos += 4 + length
    return codes


def observe(
    record_type: int, query_opt: Opt | None, response_opt: Opt | None, response_rcode: int = 0
) -> str | None:
    """The extra observation for a record the seed rule did not select, or None.

    ``record_type`` is the dnsqr record's ``type``: all of the record this needs, so the worker can call
    it on the many answered records without decoding them.

    - ``timeout``: an UDP_UNANSWERED_QUERY whose query has EDNS (the Flag Day "timeout" class; one
      unanswered query is no proof, which is why these are counted, not selected).

    For an EDNS query answered *with* OPT (``response_rcode`` is the response header's 4-bit RCODE,
    extended by the response OPT), the first of:

    - ``badvers``: the query asked for version > 0 and the answer is not BADVERS, or is BADVERS but
      claims a version not lower than the one asked for; or a version-0 query was answered BADVERS;
    - ``version-not-zero``: a version-0 query answered with an OPT of another version;
    - ``do-not-echoed``: the query set DO and the answer's OPT does not (RFC 3225 requires the copy);
    - ``option-echoed``: an option code not in :data:`KNOWN_OPTION_CODES` that the query carried comes
      back in the answer (servers must ignore unknown options, not reflect them).
    """
    if query_opt is None:
        return None
    if record_type == UDP_UNANSWERED_QUERY:
        return "timeout"
    if response_opt is None:
        return None
    full_rcode = (response_opt.ext_rcode << 4) | response_rcode
    if query_opt.version > 0:
        if full_rcode != RCODE_BADVERS or response_opt.version >= query_opt.version:
            return "badvers"
    elif full_rcode == RCODE_BADVERS:
        return "badvers"
    elif response_opt.version != 0:
        return "version-not-zero"
    if query_opt.flags & DO_BIT and not response_opt.flags & DO_BIT:
        return "do-not-echoed"
    unknown = set(edns_option_codes(query_opt.options)) - KNOWN_OPTION_CODES
    if unknown and unknown.intersection(edns_option_codes(response_opt.options)):
        return "option-echoed"
    return None
