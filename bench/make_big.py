"""Build a large NMSG file for benchmarks by repeating the payloads of a corpus capture.

Records are copied byte for byte (the mix of selected and skipped records stays that of the source, for
live_resolver about 23 % selected), written in 1 MiB containers like ``nmsgtool -w``.

    python bench/make_big.py --records 1000000 --out bench/out/big.nmsg
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / "tests" / "data" / "nmsg" / "live_resolver.nmsg"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="NMSG file whose payloads repeat")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "big.nmsg")
    p.add_argument("-z", "--zlib", action="store_true", help="zlib containers")
    args = p.parse_args(argv)
    with args.source.open("rb") as fh:
        payloads = list(ContainerStreamReader(fh, name=str(args.source)))
    if not payloads:
        print(f"{args.source}: no payloads", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with NmsgFileWriter(args.out, compress=args.zlib) as writer:
        for payload in itertools.islice(itertools.cycle(payloads), args.records):
            writer.write(payload)
    print(f"{args.out}: {args.records} records, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
