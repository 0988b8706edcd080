"""IPv4/IPv6 fragment reassembly with the rules of libnmsg's ``ipreasm`` as the dnsqr module uses it.

Reproduced on purpose, because they decide which fragmented DNS messages nmsgtool reports:

- fragments are keyed by (src, dst, IP id, protocol) for IPv4 and (src, dst, id) for IPv6;
- a non-final fragment whose length is not a multiple of 8, any overlap, a second final fragment or a
  fragment past the end poisons the whole datagram: later fragments are dropped until it expires;
- the dnsqr module never sets a reassembly timeout, so it is 0: a datagram is discarded as soon as a
  packet arrives whose whole-second timestamp is later than that of its first fragment;
- the stored fragments are cut to the IP length (trailer padding removed), kept in offset order, each
  with its own capture time; these become the record's packets.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

#: Largest packet libnmsg's reassembly buffer holds (NMSG_IPSZ_MAX).
IPSZ_MAX = 65536


@dataclass(slots=True)
class Fragment:
    """One stored fragment: ``data`` is the IP packet cut to its IP length."""

    data: bytes
    ts_sec: int
    ts_nsec: int
    offset: int  # byte offset of this fragment's payload in the reassembled payload
    length: int  # payload bytes in this fragment
    data_offset: int  # where the payload starts in ``data``
    last_nxt: int = 0  # IPv6: index of the next-header byte to patch when reassembling
    ip6f_nxt: int = 0  # IPv6: the next header carried by the fragment header


@dataclass(slots=True)
class FragmentSet:
    """Fragments of one datagram received so far."""

    family: int
    expires_sec: int
    frags: list[Fragment] = field(default_factory=list)
    total: int = 0  # payload length, known once the final fragment arrived
    holes: int = 1
    valid: bool = True

    def add(self, frag: Fragment, last: bool) -> bool:
        """Insert ``frag`` in offset order; False when it makes the datagram impossible to rebuild."""
        if not last and frag.length & 7:
            return False
        if self.total and frag.offset + frag.length > self.total:
            return False
        fit_left = fit_right = False
        if last:
            if self.total:
                return False
            self.total = frag.offset + frag.length
            fit_right = True
        index = 0
        while index < len(self.frags) and self.frags[index].offset <= frag.offset:
            index += 1
        prev_end = self.frags[index - 1].offset + self.frags[index - 1].length if index else 0
        if prev_end > frag.offset:
            return False
        if prev_end == frag.offset:
            fit_left = True
        if index < len(self.frags):
            nxt = self.frags[index]
            if last or frag.offset + frag.length > nxt.offset:
                return False
            if frag.offset + frag.length == nxt.offset:
                fit_right = True
        if frag.length:
            self.frags.insert(index, frag)
            if fit_left and fit_right:
                self.holes -= 1
            elif not fit_left and not fit_right:
                self.holes += 1
        elif last and fit_left:
            self.holes -= 1
        return True

    def assemble(self) -> bytes | None:
        """The rebuilt IP packet (length and checksum fixed up as libnmsg does), or None if too large."""
        first = self.frags[0]
        head_len = first.data_offset if self.family == 4 else first.data_offset - 8
        if self.total + head_len > IPSZ_MAX:
            return None
        out = bytearray(first.data[:head_len])
        out.extend(bytes(self.total))
        for frag in self.frags:
            start = head_len + frag.offset
            out[start : start + frag.length] = frag.data[frag.data_offset : frag.data_offset + frag.length]
        if self.family == 4:
            out[2:4] = (head_len + self.total).to_bytes(2, "big")
            out[6:8] = b"\x00\x00"
            out[10:12] = b"\x00\x00"
            total = sum(int.from_bytes(out[i : i + 2], "big") for i in range(0, head_len, 2))
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            out[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
        else:
            out[first.last_nxt] = first.ip6f_nxt
            out[4:6] = ((head_len + self.total - 40) & 0xFFFF).to_bytes(2, "big")
        return bytes(out)


class Reassembler:
    """Feeds every packet through :meth:`next`, which expires stale sets and collects fragments.

    Counts into ``stats`` (shared with the caller): ``fragment.completed``, ``fragment.expired`` and
    ``fragment.invalid`` sets, ``fragment.dropped`` fragments.
    """

    def __init__(self, stats: Counter[str], timeout_sec: int = 0) -> None:
        self._timeout = timeout_sec
        self._sets: OrderedDict[tuple, FragmentSet] = OrderedDict()
        self._stats = stats

    def next(self, packet: bytes, ts_sec: int, ts_nsec: int) -> tuple[bool, FragmentSet | None]:
        """(is this a fragment?, the completed set if this fragment completed one)."""
        while self._sets:
            key, first = next(iter(self._sets.items()))
            if first.expires_sec >= ts_sec:
                break
            del self._sets[key]
            self._stats["fragment.expired"] += 1
        parsed = _parse_fragment(packet, ts_sec, ts_nsec)
        if parsed is None:
            return False, None
        key, family, frag, last = parsed
        fset = self._sets.get(key)
        if fset is None:
            fset = FragmentSet(family, ts_sec + self._timeout)
            self._sets[key] = fset
        if not fset.valid:
            self._stats["fragment.dropped"] += 1
            return True, None
        if not fset.add(frag, last):
            fset.valid = False
            self._stats["fragment.invalid"] += 1
            self._stats["fragment.dropped"] += len(fset.frags) + 1
            return True, None
        if fset.holes:
            return True, None
        del self._sets[key]
        self._stats["fragment.completed"] += 1
        return True, fset


def _parse_fragment(packet: bytes, ts_sec: int, ts_nsec: int) -> tuple[tuple, int, Fragment, bool] | None:
    """Recognise an IPv4 or IPv6 fragment: (key, family, fragment, is_last), or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        ip_len = int.from_bytes(packet[2:4], "big")
        off = int.from_bytes(packet[6:8], "big")
        hlen = (packet[0] & 0x0F) * 4
        if len(packet) < ip_len or not off & 0x3FFF:
            return None
        if hlen < 20 or ip_len < hlen:
            return None
        frag = Fragment(packet[:ip_len], ts_sec, ts_nsec, (off & 0x1FFF) * 8, ip_len - hlen, hlen)
        key = (4, packet[12:16], packet[16:20], int.from_bytes(packet[4:6], "big"), packet[9])
        return key, 4, frag, not off & 0x2000
    if version == 6:
        if len(packet) < 40:
            return None
        total = int.from_bytes(packet[4:6], "big") + 40
        if len(packet) < total:
            return None
        nxt = packet[6]
        pos = 40
        last_nxt = 6
        while nxt in (0, 43, 60):
            if pos + 2 > total:
                return None
            ext_len = 8 + 8 * packet[pos + 1]
            if pos + ext_len > total:
                return None
            nxt = packet[pos]
            last_nxt = pos
            pos += ext_len
        if nxt != 44 or pos + 8 > total:
            return None
        offlg = int.from_bytes(packet[pos + 2 : pos + 4], "big")
        ident = int.from_bytes(packet[pos + 4 : pos + 8], "big")
        frag = Fragment(
            packet[:total], ts_sec, ts_nsec, offlg & 0xFFF8, total - pos - 8, pos + 8, last_nxt, packet[pos]
        )
        return (6, packet[8:24], packet[24:40], ident), 6, frag, not offlg & 1
    return None
