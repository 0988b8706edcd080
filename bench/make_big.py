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

The record times can be rewritten too (issue #17: records older than the window expiry), for workloads like
merged captures of several sensors and replays of historical captures. ``--time-span-days D`` spreads
the records evenly over D days in file order, from ``--start-time T`` (seconds since the epoch; default the
first source record's time) to T + D days, both included, to the second. ``--time-offset-days D`` instead
shifts every record's time by D days (negative: earlier), for two captures recorded years apart.
``--shuffle-times`` assigns the same times in an order drawn from ``--seed``, so the records are out of
order. ``--future-record T`` then gives the record in the middle of the file (number records // 2,
from 0) time T, like one from a sensor with a bad clock. Only ``time_sec`` changes (``time_nsec`` is
kept), by ``nmsgdns.payload.replace_time``; the filter's selection does not look at the time, so the
records selected and the counts per name server are those of the same file without these options.

    python bench/make_big.py --records 1000000 --out bench/out/big.nmsg
    python bench/make_big.py --records 1000000 --name-servers 1000000 --zipf 0.8 --out bench/out/ns1m.nmsg
    python bench/make_big.py --records 1000000 --time-span-days 30 --shuffle-times --out bench/out/spread.nmsg
    python bench/make_big.py --records 1000000 --time-offset-days -730 --out bench/out/old.nmsg
    python bench/make_big.py --records 1000000 --future-record 2208988800 --out bench/out/future.nmsg
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from nmsgdns.errors import PayloadError
from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter
from nmsgdns.payload import MSGTYPE_DNSQR, VID_BASE, payload_fields, payload_time, read_varint, replace_time

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / "tests" / "data" / "nmsg" / "live_resolver.nmsg"

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
#: seconds per day, the unit of the time options
DAY = 86400
#: record times lie from 1970-01-01 to 9999-12-31 (UTC), years datetime can print
TIME_RANGE = (0, 253402300800)


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


def spread_times(start: int, span: int, records: int) -> list[int]:
    """``records`` times evenly spaced from ``start`` to ``start + span`` seconds, both ends included.

    Whole seconds (the payload's ``time_sec``): each step is span / (records - 1) rounded down, the last
    time exactly ``start + span``.
    """
    if records == 1:
        return [start]
    return [start + i * span // (records - 1) for i in range(records)]


def record_times(
    source_times: list[int],
    records: int,
    *,
    span: int | None,
    start: int | None,
    offset: int,
    shuffle: random.Random | None,
    future: int | None,
) -> list[int]:
    """The ``time_sec`` of each output record, in file order (the records repeat the source's).

    ``span`` (seconds): evenly spread from ``start`` (default: the first source time) over ``span``;
    otherwise the source's times shifted by ``offset`` seconds. ``shuffle`` permutes them; ``future`` then
    replaces the middle record's time.
    """
    if span is None:
        times = [t + offset for t in itertools.islice(itertools.cycle(source_times), records)]
    else:
        times = spread_times(source_times[0] if start is None else start, span, records)
    if shuffle is not None:
        shuffle.shuffle(times)
    if future is not None:
        times[records // 2] = future
    return times


def utc(time_sec: int) -> str:
    """A record time as UTC text, for the summary line."""
    return datetime.fromtimestamp(time_sec, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def days(text: str) -> float:
    """argparse type of the day options: a finite number (inf and nan make no times)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number of days: {text}")
    return value


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
    p.add_argument("--seed", type=int, default=1, help="seed of the addresses, the draws and the shuffle")
    times_group = p.add_mutually_exclusive_group()
    times_group.add_argument(
        "--time-span-days",
        type=days,
        metavar="D",
        help="spread the record times evenly over D days, in file order (default: the source's times)",
    )
    times_group.add_argument(
        "--time-offset-days", type=days, metavar="D", help="shift every record time by D days (may be < 0)"
    )
    p.add_argument(
        "--start-time",
        type=int,
        metavar="T",
        help="with --time-span-days: the first time, seconds since the epoch (default: the source's first)",
    )
    p.add_argument("--shuffle-times", action="store_true", help="assign the record times in random order")
    p.add_argument(
        "--future-record",
        type=int,
        metavar="T",
        help="give the record in the middle of the file time T (seconds since the epoch)",
    )
    args = p.parse_args(argv)
    if args.records < 1:
        p.error("--records must be at least 1")
    if args.name_servers is not None and args.name_servers < 1:
        p.error("--name-servers must be at least 1")
    span = None if args.time_span_days is None else round(args.time_span_days * DAY)
    if span is not None and span <= 0:
        p.error("--time-span-days must be more than 0 (at least a second)")
    if args.start_time is not None and span is None:
        p.error("--start-time needs --time-span-days")
    retime = args.shuffle_times or any(
        x is not None for x in (span, args.time_offset_days, args.future_record)
    )
    with args.source.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(args.source)))
    if not payloads:
        print(f"{args.source}: no payloads", file=sys.stderr)
        return 1
    times = None
    if retime:
        try:
            source_times = [payload_time(payload)[0] for payload in payloads]
        except PayloadError as exc:
            print(f"{args.source}: the record times cannot be rewritten: {exc}", file=sys.stderr)
            return 1
        times = record_times(
            source_times,
            args.records,
            span=span,
            start=args.start_time,
            offset=round((args.time_offset_days or 0) * DAY),
            shuffle=random.Random(args.seed) if args.shuffle_times else None,
            future=args.future_record,
        )
        if not TIME_RANGE[0] <= min(times) <= max(times) < TIME_RANGE[1]:
            p.error(f"record times from {min(times)} to {max(times)}: they must lie in years 1970 to 9999")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rewriter = None
    if args.name_servers is None:
        out: Iterator[bytes] = itertools.islice(itertools.cycle(payloads), args.records)
    else:
        rewriter = AddressRewriter(args.name_servers, args.zipf, random.Random(args.seed))
        sources = [Source.of(payload) for payload in payloads]
        out = map(rewriter.rewrite, itertools.islice(itertools.cycle(sources), args.records))
    if times is not None:  # after the address rewrite: its spans are those of the source payloads
        out = map(replace_time, out, times)
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
    if times is not None:
        order = f", shuffled (seed {args.seed})" if args.shuffle_times else ""
        print(f"record times {utc(min(times))} to {utc(max(times))} UTC{order}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
