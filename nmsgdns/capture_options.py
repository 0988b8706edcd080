"""Settings of the pcap -> base:dnsqr capture and the packet/record filters they imply.

libnmsg's dnsqr module reads these from ``DNSQR_*`` environment variables; :meth:`CaptureOptions.from_env`
parses them the way it does (C ``strtol`` with base 0, whole string consumed, out-of-range values mean
"unset"), and the explicit fields let a CLI set them directly.

``DNSQR_RES_ADDRS`` / ``DNSQR_AUTH_ADDRS`` become a BPF filter in libnmsg; :class:`AddressFilter` evaluates
the same expressions on the IP packet (see its docstring for the exact patterns).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_QUERY_TIMEOUT = 60
DEFAULT_STATE_TABLE_MAX = 131072

_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def c_strtol(text: str) -> int | None:
    """Value of ``text`` under ``strtol(s, &end, 0)`` when it consumes the whole string, else None.

    As in C, the empty string parses as 0 (no digits, and the end pointer sits on the terminator).
    """
    if text == "":
        return 0
    match = _STRTOL.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


@dataclass(frozen=True)
class CaptureOptions:
    """What to capture and how long to wait; defaults are libnmsg's.

    ``capture_qr``: None reconstructs query/response pairs; 0 emits UDP queries only, 1 UDP responses only
    (no pairing). ``capture_rd``: None keeps everything; 0/1 keeps records whose query (or, lacking one,
    response) RD bit equals it. Address lists hold IPs or CIDR networks (see :class:`AddressFilter`).
    Qname lists hold domain names in presentation form; a record matches a name when its qname equals it
    or is below it.
    """

    res_addrs: tuple[str, ...] = ()
    auth_addrs: tuple[str, ...] = ()
    capture_qr: int | None = None
    capture_rd: int | None = None
    zero_resolver_address: bool = False
    filter_qnames_include: tuple[str, ...] = ()
    filter_qnames_exclude: tuple[str, ...] = ()
    query_timeout: int = DEFAULT_QUERY_TIMEOUT
    state_table_max: int = DEFAULT_STATE_TABLE_MAX

    def __post_init__(self) -> None:
        if self.capture_qr not in (None, 0, 1):
            raise ValueError(f"capture_qr must be None, 0 or 1, not {self.capture_qr!r}")
        if self.capture_rd not in (None, 0, 1):
            raise ValueError(f"capture_rd must be None, 0 or 1, not {self.capture_rd!r}")
        if self.query_timeout <= 0:
            raise ValueError(f"query_timeout must be positive, not {self.query_timeout!r}")
        if self.state_table_max <= 0:
            raise ValueError(f"state_table_max must be positive, not {self.state_table_max!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CaptureOptions:
        """Options as libnmsg's dnsqr module derives them from ``DNSQR_*`` variables in ``environ``."""

        def number(name: str) -> int | None:
            raw = environ.get(name)
            return None if raw is None else c_strtol(raw)

        qr = number("DNSQR_CAPTURE_QR")
        rd = number("DNSQR_CAPTURE_RD")
        zero = number("DNSQR_ZERO_RESOLVER_ADDRESS")
        maximum = number("DNSQR_STATE_TABLE_MAX")
        timeout = number("DNSQR_QUERY_TIMEOUT")
        return cls(
            res_addrs=_split(environ.get("DNSQR_RES_ADDRS", ""), ","),
            auth_addrs=_split(environ.get("DNSQR_AUTH_ADDRS", ""), ","),
            capture_qr=qr if qr in (0, 1) else None,
            capture_rd=rd if rd in (0, 1) else None,
            zero_resolver_address=bool(zero),
            filter_qnames_include=_split(environ.get("DNSQR_FILTER_QNAMES_INCLUDE", ""), ":"),
            filter_qnames_exclude=_split(environ.get("DNSQR_FILTER_QNAMES_EXCLUDE", ""), ":"),
            # the C code keeps these in uint32_t
            query_timeout=timeout & 0xFFFFFFFF if timeout and timeout > 0 else DEFAULT_QUERY_TIMEOUT,
            state_table_max=maximum & 0xFFFFFFFF if maximum and maximum > 0 else DEFAULT_STATE_TABLE_MAX,
        )


def _split(value: str, sep: str) -> tuple[str, ...]:
    return tuple(token.strip() for token in value.split(sep) if token.strip())


def parse_networks(tokens: Iterable[str]) -> list[IpNetwork]:
    """IPs and CIDRs as networks. Tokens that are not addresses are ignored, as libnmsg ignores them.

    A CIDR with host bits set raises ValueError (libpcap refuses to compile such a filter).
    """
    nets: list[IpNetwork] = []
    for token in tokens:
        addr = token.split("/", 1)[0]
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            continue
        nets.append(ipaddress.ip_network(token, strict=True))
    return nets


class AddressFilter:
    """The BPF filter libnmsg builds from DNSQR_RES_ADDRS / DNSQR_AUTH_ADDRS, evaluated in Python.

    With R the resolver addresses and A the authoritative ones (``port53`` = UDP, not a non-first
    fragment; ``frag`` = IPv4 MF or offset set; QR = the DNS header's QR bit):

    - IPv4 resolver: (src in R and dst port53) or (dst in R and src port53) or (dst in R and frag);
      with capture_qr 0 only the first clause plus QR=0; with 1 the second plus QR=1, and the third.
    - IPv4 authoritative: the mirror image (dst in A for queries, src in A for responses/fragments).
    - IPv6: any packet from or to one of the addresses (no port or protocol test at all).

    So with these set, IPv4 TCP and ICMP are never captured, and families without an address are dropped.
    """

    def __init__(self, options: CaptureOptions) -> None:
        res = parse_networks(options.res_addrs)
        auth = parse_networks(options.auth_addrs)
        self._res4 = _masks(n for n in res if n.version == 4)
        self._res6 = _masks(n for n in res if n.version == 6)
        self._auth4 = _masks(n for n in auth if n.version == 4)
        self._auth6 = _masks(n for n in auth if n.version == 6)
        self._qr = options.capture_qr
        #: False when no address was given: every packet passes (libnmsg sets no filter).
        self.active = bool(res or auth)

    def __call__(self, net: bytes, family: int) -> bool:
        """Does the IP packet ``net`` (``family`` from the link layer) pass the filter?"""
        if not self.active:
            return True
        if family == 4:
            if len(net) < 20:
                return False
            return self._match4(net)
        if family == 6:
            if len(net) < 40 or not (self._res6 or self._auth6):
                return False
            src = int.from_bytes(net[8:24], "big")
            dst = int.from_bytes(net[24:40], "big")
            nets = self._res6 + self._auth6
            return _within(src, nets) or _within(dst, nets)
        return False

    def _match4(self, net: bytes) -> bool:
        if not (self._res4 or self._auth4):
            return False
        src = int.from_bytes(net[12:16], "big")
        dst = int.from_bytes(net[16:20], "big")
        flags_off = int.from_bytes(net[6:8], "big")
        frag = (flags_off & 0x3FFF) != 0
        sport = dport = None
        qr = None
        hlen = (net[0] & 0x0F) * 4
        if net[9] == 17 and not flags_off & 0x1FFF and len(net) >= hlen + 4:
            sport = int.from_bytes(net[hlen : hlen + 2], "big")
            dport = int.from_bytes(net[hlen + 2 : hlen + 4], "big")
            if len(net) >= hlen + 12:
                qr = net[hlen + 10] >> 7
        for nets, ask_dir, answer_dir in ((self._res4, "src", "dst"), (self._auth4, "dst", "src")):
            if not nets:
                continue
            asker = src if ask_dir == "src" else dst
            answerer = dst if answer_dir == "dst" else src
            asker_in = _within(asker, nets)
            answerer_in = _within(answerer, nets)
            queries = asker_in and dport == 53
            responses = answerer_in and sport == 53
            frags = answerer_in and frag
            if self._qr is None:
                hit = queries or responses or frags
            elif self._qr == 0:
                hit = queries and qr == 0
            else:
                hit = (responses and qr == 1) or frags
            if hit:
                return True
        return False


def _masks(nets: Iterable[IpNetwork]) -> list[tuple[int, int]]:
    return [(int(n.network_address), int(n.netmask)) for n in nets]


def _within(addr: int, nets: list[tuple[int, int]]) -> bool:
    return any(addr & mask == base for base, mask in nets)


def name_to_wire(text: str) -> bytes | None:
    """Presentation name -> lower-cased wire form, as ``wdns_str_to_name``; None when it is invalid."""
    if text in ("", "."):
        return b"\x00"
    raw = text.encode("utf-8")
    labels: list[bytes] = []
    label = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == 0x5C:  # backslash: \X is X, \DDD is the octet DDD
            nxt = raw[i + 1 : i + 2]
            if not nxt:
                return None
            if not nxt.isdigit():
                label += nxt
                i += 2
                continue
            digits = raw[i + 1 : i + 4]
            if len(digits) < 3 or not digits.isdigit() or int(digits) > 255:
                return None
            label.append(int(digits))
            i += 4
            continue
        if ch == 0x2E:  # '.'
            if not label:
                return None
            labels.append(bytes(label))
            label = bytearray()
        else:
            label.append(ch)
        i += 1
    if label:
        labels.append(bytes(label))
    if any(len(lab) > 63 for lab in labels):
        return None
    wire = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
    return wire.lower() if len(wire) <= 255 else None


class QnameFilter:
    """DNSQR_FILTER_QNAMES_INCLUDE / _EXCLUDE: suffix match on the lower-cased wire qname.

    libnmsg checks the include list only to skip the exclude list (a name not included is still kept);
    that defeats the variable's purpose, so here a non-empty include list keeps only included names.
    Records without a qname are always kept, as in libnmsg.
    """

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self._include = {w for w in map(name_to_wire, include) if w is not None}
        self._exclude = {w for w in map(name_to_wire, exclude) if w is not None}
        self.active = bool(self._include or self._exclude)

    def drops(self, qname: bytes | None) -> bool:
        """True when a record with this qname is filtered out."""
        if not self.active or qname is None:
            return False
        suffixes = list(_suffixes(qname.lower()))
        if self._include:
            return not any(s in self._include for s in suffixes)
        return any(s in self._exclude for s in suffixes)


def _suffixes(name: bytes) -> Iterable[bytes]:
    """The name and each name obtained by chopping its leftmost label (as ``wdns_left_chop``)."""
    while name:
        yield name
        if name == b"\x00":
            return
        label = name[0]
        if label > len(name) - 1:
            return
        name = name[label + 1 :]
