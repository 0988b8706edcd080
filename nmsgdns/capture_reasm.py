"""IPv4/IPv6 fragment reassembly of the pcap capture, with the rules of libnmsg's ``reasm_ip_next`` as the
dnsqr module uses it (the fragments' parsing, insertion and assembly: :mod:`nmsgdns.ipreasm`).

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
from dataclasses import dataclass

from nmsgdns.ipreasm import IpFragments, parse_ip_fragment


@dataclass(slots=True)
class FragmentSet(IpFragments):
    """The fragments of one datagram received so far (:class:`~nmsgdns.ipreasm.IpFragments`), with when the
    set expires and whether a fragment already made it impossible to rebuild."""

    expires_sec: int = 0
    valid: bool = True


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
        frag = parse_ip_fragment(packet, ts_sec, ts_nsec)
        if frag is None:
            return False, None
        fset = self._sets.get(frag.key)
        if fset is None:
            fset = FragmentSet(family=frag.family, expires_sec=ts_sec + self._timeout)
            self._sets[frag.key] = fset
        if not fset.valid:
            self._stats["fragment.dropped"] += 1
            return True, None
        if not fset.add(frag):
            fset.valid = False
            self._stats["fragment.invalid"] += 1
            self._stats["fragment.dropped"] += len(fset.frags) + 1
            return True, None
        if fset.holes:
            return True, None
        del self._sets[frag.key]
        self._stats["fragment.completed"] += 1
        return True, fset
