"""libwdns-compatible DNS message scanner: does a message parse, and where is its first OPT record.

The EDNS0 rule (``docs/edns-rule.md``) must select exactly what the reference C filter selects,
and that filter's notion of "parses" and "has EDNS" is ``wdns_parse_message`` of libwdns 1.3.1. So this
module re-implements that walk, including its leniencies (a message that ends at a record boundary before
its section counts are used up parses; RDATA may stop between fields) and its strictness (compression
pointers only backwards, per-type RDATA checks). It builds nothing: it only walks offsets, because it
runs for every record of the stream and dnspython is ~200 times slower.

Deliberate differences from the C code, all where libwdns reads memory past the message (undefined
behaviour whose outcome depends on whatever byte follows the buffer):

- a name whose last label ends exactly at the end of the data, with no terminating zero, fails here;
  libwdns reads the byte after the buffer and may accept the name when that byte happens to be zero;
- a compression pointer whose second byte lies past the end of the data fails here;
- an SVCB/HTTPS SvcParam whose value length is 65532 or more fails here; libwdns computes
  ``4 + length`` in 16 bits, which wraps, and then reads past the RDATA or loops forever.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from struct import error as StructError
from typing import NamedTuple, TypeVar

from nmsgdns.errors import DnsWireError
from nmsgdns.native import implementation, load_extension

__all__ = [
    "IMPLEMENTATION",
    "TYPE_OPT",
    "Opt",
    "scan_opt",
    "scan_opt_c",
    "scan_opt_py",
    "scan_or",
    "scan_or_py",
]

TYPE_OPT = 41
_T = TypeVar("_T")
_CLASS_IN = 1
#: Longest uncompressed name libwdns accepts, counting length octets but not the terminating zero.
_MAXLEN_NAME = 255


class Opt(NamedTuple):
    """The EDNS fields libwdns takes from the first type-41 record of a message.

    For an OPT resource record: ``udp_size`` is its CLASS, ``ext_rcode``/``version``/``flags`` are TTL
    bits 24-31 / 16-23 / 0-15 and ``options`` its RDATA. A *question* of type 41 also counts as EDNS in
    libwdns (it hands the question to its EDNS parser, whose TTL and RDATA are then empty), so it yields
    ``Opt(qclass, 0, 0, 0, b"")``.
    """

    udp_size: int
    ext_rcode: int
    version: int
    flags: int
    options: bytes


# RDATA field kinds. Positive values are fixed sizes in bytes (u8, u16, u32, ipv4, eui48, eui64, ipv6).
_NAME = -1
_STRING = -2
_STRINGS = -3
_BYTES = -4
_IPV6PREFIX = -5
_BITMAP = -6
_SVCPARAMS = -7

# The libwdns 1.3.1 record descriptor table: type -> (applies to class IN only, fields). Types not listed,
# and types whose only field is ``bytes`` (NULL, OPENPGPKEY, OPT), are opaque: any RDATA is accepted.
_FIELDS: dict[int, tuple[bool, tuple[int, ...]]] = {}
for _t in (2, 3, 4, 5, 7, 8, 9, 12, 39):  # NS MD MF CNAME MB MG MR PTR DNAME
    _FIELDS[_t] = (False, (_NAME,))
_FIELDS[6] = (False, (_NAME, _NAME, 4, 4, 4, 4, 4))  # SOA
for _t in (13, 20):  # HINFO ISDN
    _FIELDS[_t] = (False, (_STRING, _STRING))
for _t in (14, 17):  # MINFO RP
    _FIELDS[_t] = (False, (_NAME, _NAME))
for _t in (15, 18, 21):  # MX AFSDB RT
    _FIELDS[_t] = (False, (2, _NAME))
for _t in (16, 99):  # TXT SPF
    _FIELDS[_t] = (False, (_STRINGS,))
_FIELDS[19] = (False, (_STRING,))  # X25
_FIELDS[30] = (False, (_NAME, _BYTES))  # NXT
for _t in (24, 46):  # SIG RRSIG
    _FIELDS[_t] = (False, (2, 1, 1, 4, 4, 4, 2, _NAME, _BYTES))
_FIELDS[1] = (True, (4,))  # A
_FIELDS[11] = (True, (4, 1, _BYTES))  # WKS
_FIELDS[28] = (True, (16,))  # AAAA
_FIELDS[38] = (True, (_IPV6PREFIX, _NAME))  # A6
_FIELDS[36] = (True, (2, _NAME))  # KX
_FIELDS[26] = (True, (2, _NAME, _NAME))  # PX
_FIELDS[35] = (True, (2, 2, _STRING, _STRING, _STRING, _NAME))  # NAPTR
_FIELDS[33] = (True, (2, 2, 2, _NAME))  # SRV
for _t in (48, 60, 43, 59):  # DNSKEY CDNSKEY DS CDS
    _FIELDS[_t] = (False, (2, 1, 1, _BYTES))
_FIELDS[47] = (False, (_NAME, _BITMAP))  # NSEC
_FIELDS[50] = (False, (1, 1, 2, _STRING, _STRING, _BITMAP))  # NSEC3
_FIELDS[51] = (False, (1, 1, 2, _STRING))  # NSEC3PARAM
_FIELDS[52] = (False, (1, 1, 1, _BYTES))  # TLSA
_FIELDS[62] = (False, (4, 2, _BITMAP))  # CSYNC
_FIELDS[108] = (False, (6,))  # EUI48
_FIELDS[109] = (False, (8,))  # EUI64
_FIELDS[256] = (False, (2, 2, _BYTES))  # URI
for _t in (64, 65):  # SVCB HTTPS
    _FIELDS[_t] = (True, (2, _NAME, _SVCPARAMS))
_FIELDS[257] = (True, (1, _STRING, _BYTES))  # CAA

# Check kinds, so the hot loop decides most records with one set lookup instead of a field walk.
_K_LENGTHS = 0  # only fixed-size fields: RDLENGTH must be one of the field boundaries
_K_PREFIX = 1  # fixed-size fields then bytes: RDLENGTH >= the prefix, or a boundary inside it
_K_FIELDS = 2  # anything with names, strings, bitmaps: walked by _fields over compiled steps
_K_NAME = 3  # exactly one name (NS, CNAME, PTR...): no field walk needed
#: Step code of a run of consecutive fixed-size fields, checked at once.
_FIXED = 0

_Step = tuple[int, int, frozenset[int]]


def _bounds(sizes: tuple[int, ...]) -> list[int]:
    """Offsets of the field boundaries of consecutive fixed-size fields, 0 and the total included."""
    out = [0]
    for f in sizes:
        out.append(out[-1] + f)
    return out


def _steps(fields: tuple[int, ...]) -> tuple[_Step, ...]:
    """Compile a field list into steps (code, size, bounds): each run of fixed-size fields becomes one
    ``_FIXED`` step of the run's total size whose ``bounds`` are the lengths at which the RDATA may end
    inside the run (between two of its fields)."""
    steps: list[_Step] = []
    run: list[int] = []
    for f in (*fields, None):
        if f is not None and f > 0:
            run.append(f)
            continue
        if run:
            b = _bounds(tuple(run))
            steps.append((_FIXED, b[-1], frozenset(b[1:-1])))
            run = []
        if f is not None:
            steps.append((f, 0, frozenset()))
    return tuple(steps)


def _compile(
    in_only: bool, fields: tuple[int, ...]
) -> tuple[bool, int, frozenset[int] | tuple[_Step, ...], int]:
    """Pick the cheapest exact check for a field list (see the ``_K_*`` kinds)."""
    fixed = fields[:-1] if fields[-1] == _BYTES else fields
    if all(f > 0 for f in fixed):
        b = _bounds(fixed)
        if fixed is fields:
            return (in_only, _K_LENGTHS, frozenset(b), 0)
        return (in_only, _K_PREFIX, frozenset(b), b[-1])
    if fields == (_NAME,):
        return (in_only, _K_NAME, frozenset(), 0)
    return (in_only, _K_FIELDS, _steps(fields), 0)


_SPECS = {t: _compile(*v) for t, v in _FIELDS.items()}
#: The checks that apply to a record, by class: IN records see every entry, other classes only the
#: class-independent ones. A missing type means opaque RDATA.
_CHECKS_IN = {t: spec[1:] for t, spec in _SPECS.items()}
_CHECKS_ANY = {t: spec[1:] for t, spec in _SPECS.items() if not spec[0]}
del _t

_HEADER = Struct(">4H").unpack_from
_RR = Struct(">HHIH").unpack_from
_U16 = Struct(">H").unpack_from
_SVC = Struct(">HH").unpack_from
#: Builds an Opt without NamedTuple's Python-level ``__new__`` (half the cost, on every EDNS message).
_new_tuple = tuple.__new__


def _fail(why: str, offset: int) -> DnsWireError:
    return DnsWireError(f"DNS message does not parse: {why} at offset {offset}")


def _name(wire: bytes, pos: int, known: dict[int, int]) -> int:
    """Validate the (possibly compressed) name at ``pos``; return the offset just after it in place.

    ``known`` maps offsets where a valid name starts to that name's length (length octets included,
    terminating zero excluded). The fast path covers nearly every real name: labels ending in the root
    or in a pointer to a known name. Every known offset lies before the name being read, so such a
    pointer points backwards; the final length is the largest the walk reaches, so checking it once is
    checking every step. Everything else takes :func:`_name_walk`.

    Reading past the end of ``wire`` raises IndexError, which :func:`scan_opt_py` turns into a parse failure:
    every such read is a name running off the data.
    """
    src = pos
    c = wire[src]
    while 0 < c < 64:
        src += c + 1
        c = wire[src]
    if c == 0:
        if src - pos < _MAXLEN_NAME:
            known[pos] = src - pos
            return src + 1
    elif c >= 192:
        sub = known.get(((c & 63) << 8) | wire[src + 1])
        if sub is not None and src - pos + sub < _MAXLEN_NAME:
            known[pos] = src - pos + sub
            return src + 2
    return _name_walk(wire, pos, known)


def _name_walk(wire: bytes, pos: int, known: dict[int, int]) -> int:
    """The general name walk of ``wdns_unpack_name``: labels and pointers, in any order.

    Names reached through pointers are looked up in ``known`` and the walk stops there; pointer targets
    walked for the first time are added. A name's validity and length depend only on where it starts,
    so this cache cannot change a verdict.
    """
    total = 0
    src = pos
    end = -1
    marks = None
    while True:
        c = wire[src]
        if c < 64:
            if c == 0:
                break
            total += c + 1
            if total >= _MAXLEN_NAME:
                raise _fail("name too long", src)
            src += c + 1
        elif c >= 192:
            target = ((c & 63) << 8) | wire[src + 1]
            if target >= src:
                raise _fail("compression pointer not backwards", src)
            if end < 0:
                end = src + 2
            sub = known.get(target)
            if sub is not None:
                total += sub
                if total >= _MAXLEN_NAME:
                    raise _fail("name too long", src)
                break
            if marks is None:
                marks = []
            marks.append((target, total))
            src = target
        else:
            raise _fail("invalid label length octet", src)
    known[pos] = total
    if marks is not None:
        for target, before in marks:
            known[target] = total - before
    return end if end >= 0 else src + 1


def _svcparam_ok(wire: bytes, key: int, p: int, vlen: int) -> bool:
    """libwdns's per-key SvcParam value checks (``svcparam_key_validate``)."""
    if key == 0:  # mandatory: a list of u16 keys
        return vlen % 2 == 0
    if key == 1:  # alpn: non-empty, exactly filled by length-prefixed strings
        if vlen == 0:
            return False
        q = p
        stop = p + vlen
        while q < stop:
            q += wire[q] + 1
        return q == stop
    if key == 2:  # no-default-alpn
        return vlen == 0
    if key == 3:  # port
        return vlen == 2
    if key == 4:  # ipv4hint
        return vlen % 4 == 0
    if key == 6:  # ipv6hint
        return vlen % 16 == 0
    return key != 65535


def _fields(wire: bytes, p: int, end: int, steps: tuple[_Step, ...], known: dict[int, int]) -> None:
    """Walk RDATA ``wire[p:end]`` field by field as libwdns ``_wdns_parse_rdata`` does."""
    for code, size, bounds in steps:
        if p == end:
            return  # missing trailing fields are accepted
        if code == _FIXED:
            if end - p >= size:
                p += size
            elif end - p in bounds:
                return  # the RDATA ends between two fields of the run
            else:
                raise _fail("RDATA field cut off", end)
        elif code == _NAME:
            p = _name(wire, p, known)
            if p > end:
                raise _fail("name runs past RDATA", end)
        elif code == _STRING:
            p += wire[p] + 1
            if p > end:
                raise _fail("string runs past RDATA", end)
        elif code == _BYTES:
            p = end
        elif code == _STRINGS:
            while p < end:
                p += wire[p] + 1
            if p > end:
                raise _fail("string runs past RDATA", end)
        elif code == _IPV6PREFIX:
            plen = wire[p]
            if plen > 128:
                raise _fail("A6 prefix length > 128", p)
            p += 1 + (135 - plen) // 8
            if p > end:
                raise _fail("A6 address cut off", end)
        elif code == _BITMAP:
            while end - p >= 2:
                blen = wire[p + 1]
                if blen < 1 or blen > 32:
                    raise _fail("type bitmap window length not in 1..32", p)
                if blen > end - p - 2:
                    raise _fail("type bitmap runs past RDATA", p)
                p += 2 + blen
        else:  # _SVCPARAMS
            while p < end:
                if end - p < 4:
                    raise _fail("SvcParam header cut off", p)
                key, vlen = _SVC(wire, p)
                if vlen + 4 > end - p:
                    raise _fail("SvcParam value runs past RDATA", p)
                if not _svcparam_ok(wire, key, p + 4, vlen):
                    raise _fail(f"invalid SvcParam value for key {key}", p)
                p += 4 + vlen
    if p != end:
        raise _fail("bytes left over after the last RDATA field", p)


def scan_opt_py(wire: bytes) -> Opt | None:
    """Return the EDNS fields of ``wire`` (the first type-41 record in any section, question included),
    or None when the message parses without one.

    This is the reference implementation; ``nmsgdns/_wirescan.c`` transcribes it step for step and the
    property tests hold the two to identical results, exceptions and messages.

    Raises :class:`DnsWireError` when ``wdns_parse_message`` would fail on it. Reaching the end of the data
    exactly at a record boundary ends the walk successfully, even if the header counts more records.
    """
    n = len(wire)
    if n < 12:
        raise _fail("shorter than the 12-byte header", 0)
    try:
        qdcount, ancount, nscount, arcount = _HEADER(wire, 4)
        opt = None
        pos = 12
        known: dict[int, int] = {}
        for _ in range(qdcount):
            if pos == n:
                return opt
            # Inline walk of an uncompressed name (the usual question); anything else takes _name.
            src = pos
            c = wire[src]
            while 0 < c < 64:
                src += c + 1
                c = wire[src]
            if c == 0 and src - pos < _MAXLEN_NAME:
                # Remember every suffix: later names point at them (owner names, SOA, NS targets).
                while pos < src:
                    known[pos] = src - pos
                    pos += wire[pos] + 1
                pos = src + 1
            else:
                pos = _name(wire, pos, known)
            if pos + 4 > n:
                raise _fail("question cut off", pos)
            if opt is None and wire[pos] == 0 and wire[pos + 1] == TYPE_OPT:
                opt = _new_tuple(Opt, (_U16(wire, pos + 2)[0], 0, 0, 0, b""))
            pos += 4
        for _ in range(ancount + nscount + arcount):
            if pos == n:
                return opt
            # Owner name: a pointer to a name already validated (known offsets all lie before pos, so
            # it points backwards) and the root (OPT) are decided inline; the rest takes _name.
            c = wire[pos]
            if c >= 192 and (((c & 63) << 8) | wire[pos + 1]) in known:
                pos += 2
            elif c == 0:
                pos += 1
            else:
                pos = _name(wire, pos, known)
            rtype, rclass, ttl, rdlen = _RR(wire, pos)
            pos += 10
            end = pos + rdlen
            if end > n:
                raise _fail("RDATA runs past the end", pos)
            check = (_CHECKS_IN if rclass == _CLASS_IN else _CHECKS_ANY).get(rtype)
            if check is None:
                if rtype == TYPE_OPT and opt is None:
                    opt = _new_tuple(Opt, (rclass, ttl >> 24, ttl >> 16 & 0xFF, ttl & 0xFFFF, wire[pos:end]))
            else:
                kind, arg, prefix = check
                if kind == _K_LENGTHS:
                    if rdlen not in arg:
                        raise _fail(f"RDATA length {rdlen} invalid for type {rtype}", pos)
                elif kind == _K_PREFIX:
                    if rdlen < prefix and rdlen not in arg:
                        raise _fail(f"RDATA field cut off for type {rtype}", pos)
                elif not rdlen:
                    pass  # RDATA may end before its first field
                elif kind == _K_NAME:
                    if _name(wire, pos, known) != end:
                        raise _fail("name does not end its RDATA", pos)
                else:
                    _fields(wire, pos, end, arg, known)
            pos = end
        return opt
    except (IndexError, StructError):
        # Every out-of-range read is a name or record running off the end of the data.
        raise _fail("name or record runs past the end", n) from None


def scan_or_py(wire: bytes | None, absent: _T, malformed: _T) -> Opt | _T | None:
    """One side of an exchange as the rule sees it: ``absent`` when ``wire`` is None, ``malformed``
    where :func:`scan_opt_py` raises, else its result. One call per side keeps the rule's hot path free
    of a Python frame and, in C, of building an exception nobody reads."""
    if wire is None:
        return absent
    try:
        return scan_opt_py(wire)
    except DnsWireError:
        return malformed


_ext = load_extension("_wirescan")
#: The C transcription of :func:`scan_opt_py` (same results, messages and offsets), when built.
scan_opt_c: Callable[[bytes], Opt | None] | None = None
if _ext is not None:
    _ext.configure_wire(Opt, DnsWireError, scan_opt_py)
    scan_opt_c = _ext.scan_opt
    scan_or = _ext.scan
else:
    scan_or = scan_or_py
#: Which scanner :func:`scan_opt` is: ``"c"`` (nmsgdns/_wirescan.c) or ``"python"`` (:func:`scan_opt_py`).
IMPLEMENTATION = implementation(scan_opt_c)
#: The scanner in use. Inputs other than ``bytes`` always take the Python code (the C one hands them over).
scan_opt: Callable[[bytes], Opt | None] = scan_opt_py if scan_opt_c is None else scan_opt_c
