"""Build a large NMSG file for benchmarks by repeating the payloads of a corpus capture.

Records are copied byte for byte (the mix of selected and skipped records stays that of the source, for
live_resolver about 23 % selected), written in 1 MiB containers like ``nmsgtool -w``.

``--name-servers N --zipf S`` gives the file a realistic name-server cardinality (issue #11): every
base:dnsqr record's ``response_ip`` is replaced by one of N distinct addresses, drawn with Zipf(S)
probabilities over their ranks (rank r has weight 1 / r**S), deterministically for a given ``--seed``.
IPv4 stays IPv4 and IPv6 stays IPv6: rank r stands for a dual-stack name server with one IPv4 and one
IPv6 address, and a record gets the address of its own family of the rank it draws, so the file names at
most N addresses of each family (for 1M records, N = 1M and S = 0.8: about 480,000 addresses in all, the
workload of issue #11). Nothing else changes, not even the addresses inside the IP packets: the filter
and the pipeline count per ``response_ip``, and the EDNS rule does not look at it, so the records
selected are the same as without the option. Records without a 4- or 16-byte ``response_ip`` (or not
base:dnsqr) are copied unchanged.

The rewrite is a splice, not a protobuf re-serialization: an address keeps its length, so replacing its
bytes inside the DnsQR inside the NmsgPayload leaves every enclosing length as it was, and every other
byte of the record is the source's. The writer computes the payload CRCs over the new bytes.

    python bench/make_big.py --records 1000000 --out bench/out/big.nmsg
    python bench/make_big.py --records 1000000 --name-servers 1000000 --zipf 0.8 --out bench/out/ns1m.nmsg
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nmsgdns.errors import PayloadError
from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE, payload_fields, read_varint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "testdata" / "nmsg" / "live_resolver.nmsg"

#: DnsQR field number of ``response_ip``
RESPONSE_IP_FIELD = 3
#: address families by address length
FAMILIES = (4, 16)
#: IPv4 addresses are drawn from 1.0.0.0 up to (not including) 224.0.0.0: no 0/8, multicast or reserved
IPV4_RANGE = (0x01000000, 0xE0000000)
#: IPv6 addresses are drawn inside 2001:db8::/32, the documentation prefix
IPV6_PREFIX = 0x20010DB8 << 96
#: draws are made this many at a time per family (random.choices is much faster in bulk)
DRAW_BLOCK = 65536


def response_ip_span(payload: bytes) -> tuple[int, int] | None:
    """Where the value of DnsQR field 3 (``response_ip``) lies inside a serialized NmsgPayload.

    None when the payload is not base:dnsqr or its record has no ``response_ip``. When the field occurs
    more than once the last occurrence is returned, the one a protobuf parser keeps. Raises PayloadError
    on a malformed payload or record.
    """
    fields = payload_fields(payload)
    if (fields.vid, fields.msgtype) != (VID_BASE, MSGTYPE_DNSQR) or fields.data_end == 0:
        return None
    pos, end = fields.data_start, fields.data_end
    span = None
    while pos < end:
        key, pos = read_varint(payload, pos, end, where="DnsQR")
        field, wire = key >> 3, key & 7
        if wire == 0:
            _value, pos = read_varint(payload, pos, end, where="DnsQR")
        elif wire == 2:
            length, pos = read_varint(payload, pos, end, where="DnsQR")
            if field == RESPONSE_IP_FIELD:
                span = (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise PayloadError(f"DnsQR: unsupported wire type {wire} (field {field})")
        if pos > end:
            raise PayloadError(f"DnsQR: field {field} runs past the end")
    return span


@dataclass(frozen=True)
class Source:
    """One source payload and, when its ``response_ip`` is an address to rewrite, where that lies."""

    payload: bytes
    span: tuple[int, int] | None

    @classmethod
    def of(cls, payload: bytes) -> Source:
        """The payload with its address located; one that is not an IPv4 or IPv6 address, or a payload
        that does not decode, is kept as it is."""
        try:
            span = response_ip_span(payload)
        except PayloadError:
            span = None
        if span is not None and span[1] - span[0] not in FAMILIES:
            span = None
        return cls(payload, span)


def distinct_addresses(family: int, count: int, rng: random.Random) -> list[bytes]:
    """``count`` distinct random addresses of ``family`` (4 or 16 bytes), in random order."""
    if family == 4:
        return [n.to_bytes(4, "big") for n in rng.sample(range(*IPV4_RANGE), count)]
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        chosen[IPV6_PREFIX | rng.getrandbits(96)] = None
    return [n.to_bytes(16, "big") for n in chosen]


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights over ranks 1..n (rank r weighs 1 / r**s), for ``random.choices``."""
    return list(itertools.accumulate(r**-s for r in range(1, n + 1)))


class AddressRewriter:
    """Gives each record with an address one of ``name_servers`` addresses of its family, Zipf-drawn.

    Rank r is a dual-stack name server with one random IPv4 and one random IPv6 address; a record draws a
    rank with weight 1 / r**s and gets that rank's address of its own family. ``written`` collects the
    addresses handed out.
    """

    def __init__(self, name_servers: int, s: float, rng: random.Random) -> None:
        self._cum = zipf_cum_weights(name_servers, s)
        self._addresses = {family: distinct_addresses(family, name_servers, rng) for family in FAMILIES}
        self._rng = rng
        self._pending: dict[int, list[bytes]] = {family: [] for family in FAMILIES}
        self.written: set[bytes] = set()

    def _draw(self, family: int) -> bytes:
        pending = self._pending[family]
        if not pending:  # random.choices is much faster in bulk; reversed so pop() keeps draw order
            block = self._rng.choices(self._addresses[family], cum_weights=self._cum, k=DRAW_BLOCK)
            pending.extend(reversed(block))
        return pending.pop()

    def rewrite(self, src: Source) -> bytes:
        """The payload with a drawn address in place of its own (byte for byte the source otherwise)."""
        if src.span is None:
            return src.payload
        start, end = src.span
        address = self._draw(end - start)
        self.written.add(address)
        return src.payload[:start] + address + src.payload[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="NMSG file whose payloads repeat")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "big.nmsg")
    p.add_argument("-z", "--zlib", action="store_true", help="zlib containers")
    p.add_argument(
        "--name-servers",
        type=int,
        metavar="N",
        help="rewrite response_ip to one of N distinct addresses (default: leave the records as they are)",
    )
    p.add_argument("--zipf", type=float, default=0.8, metavar="S", help="Zipf exponent of the draws")
    p.add_argument("--seed", type=int, default=1, help="seed of the addresses and the draws")
    args = p.parse_args(argv)
    if args.name_servers is not None and args.name_servers < 1:
        p.error("--name-servers must be at least 1")
    with args.source.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(args.source)))
    if not payloads:
        print(f"{args.source}: no payloads", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rewriter = None
    if args.name_servers is None:
        out: Iterator[bytes] = itertools.islice(itertools.cycle(payloads), args.records)
    else:
        rewriter = AddressRewriter(args.name_servers, args.zipf, random.Random(args.seed))
        sources = [Source.of(payload) for payload in payloads]
        out = map(rewriter.rewrite, itertools.islice(itertools.cycle(sources), args.records))
    with NmsgFileWriter(args.out, compress=args.zlib) as writer:
        for payload in out:
            writer.write(payload)
    print(f"{args.out}: {args.records} records, {args.out.stat().st_size} bytes")
    if rewriter is not None:
        written = rewriter.written
        families = {f: sum(len(a) == f for a in written) for f in FAMILIES}
        print(
            f"{len(written)} distinct name servers written ({families[4]} IPv4, {families[16]} IPv6), "
            f"Zipf s={args.zipf} over {args.name_servers}, seed {args.seed}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
