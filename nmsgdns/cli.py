"""``dnsqr-edns-filter``: the EDNS0 filter without Kafka, flag-compatible with the reference C program.

The reference (farsightsec blog-code ``dnsqr_edns_filter``) takes ``-r FILE``, ``-C CHANNEL`` and ``-w FILE``
(and libxs endpoints ``-L``/``-S``). We add ``-l ADDR/PORT`` sockets, ``-z``, ``-c COUNT``, ``--counts-json``,
``-J FILE`` (the selected records as JSON lines, as ``nmsgtool -J`` prints them; with or instead of ``-w``)
and a summary. Unlike the reference we always write the last container: on end of input, ``-c`` or
SIGINT/SIGTERM the output is flushed and closed before the summary is printed.

Every error (an input that cannot be read, an output that cannot be written, e.g. a full disk or a closed
pipe) is one ``error:`` line of the summary, and the exit status is then 1. A write error also stops the
run: nothing more can be written, and the pending container is not tried again.

Files are read in the order given, then sockets (``-l``, ``-C``) are read until a signal or ``-c``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from tqdm import tqdm

from nmsgdns.chalias import Endpoint, channel_endpoints, parse_endpoint
from nmsgdns.container import BUFSZ_MAX
from nmsgdns.edns import EdnsFilter, Verdict, ranked_counts
from nmsgdns.errors import ChannelError, ContainerError
from nmsgdns.input import ContainerStreamReader, DatagramDecoder, DecodeStats
from nmsgdns.jsonout import JsonLinesWriter
from nmsgdns.output import NmsgFileWriter
from nmsgdns.udp import RCVBUF_WANTED, UdpReceiver

PROG = "dnsqr-edns-filter"
#: How often an idle socket loop wakes to check for a signal and expire stale fragments.
POLL_SECONDS = 0.25


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Select base:dnsqr records whose EDNS0 query was answered without an OPT record "
        "(name servers not ready for DNSSEC) and write them to an NMSG file and/or as JSON lines.",
        epilog="Examples: %(prog)s -r capture.nmsg -w noedns.nmsg --counts-json counts.json; "
        "%(prog)s -r capture.nmsg -J - | jq -r .message.response_ip",
    )
    p.add_argument("-r", dest="files", action="append", default=[], metavar="FILE", help="read NMSG file")
    p.add_argument(
        "-l",
        dest="sockets",
        action="append",
        default=[],
        metavar="ADDR/PORT[..PORT2]",
        help="read NMSG datagrams from UDP socket(s), e.g. from nmsgtool -s",
    )
    p.add_argument(
        "-C",
        dest="channels",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="read the UDP sockets of a channel alias (e.g. ch202)",
    )
    p.add_argument("--chalias", metavar="FILE", help="channel alias file (default: $NMSG_CHALIAS_FILE)")
    p.add_argument("-w", dest="output", metavar="FILE", help="write selected records to FILE ('-': stdout)")
    p.add_argument("-z", dest="zlib", action="store_true", help="zlib-compress output containers")
    p.add_argument(
        "-J",
        dest="json_output",
        metavar="FILE",
        help="write selected records as JSON lines, one per record as nmsgtool -J prints them ('-': stdout)",
    )
    p.add_argument(
        "-c",
        dest="count",
        type=_positive_int,
        metavar="COUNT",
        help="stop after COUNT selected records (like nmsgtool -c, which counts output payloads)",
    )
    p.add_argument("--counts-json", metavar="FILE", help="write per-name-server failure counts {ip: n}")
    p.add_argument("--top", type=int, default=20, metavar="N", help="name servers in the stderr table")
    p.add_argument("--rcvbuf", type=_positive_int, default=RCVBUF_WANTED, help="UDP receive buffer bytes")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr while reading files (auto: when stderr is a terminal)",
    )
    p.add_argument("-L", dest="xs_input", metavar="XEP", help=argparse.SUPPRESS)
    p.add_argument("-S", dest="xs_output", metavar="XEP", help=argparse.SUPPRESS)
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


@dataclass
class Output:
    """One destination of the selected records (``-w`` or ``-J``): the file ``writer`` writes to (opened by
    :func:`main`, closed by :meth:`Run.close_outputs`) and its name in error lines."""

    file: BinaryIO
    name: str
    writer: NmsgFileWriter | JsonLinesWriter
    failed: bool = False


@dataclass
class Run:
    """State of one filter run: the rule's counters, the reader counters, errors, and when to stop."""

    outputs: list[Output]
    count: int | None
    rule: EdnsFilter = field(default_factory=EdnsFilter)
    input_stats: list[tuple[str, DecodeStats]] = field(default_factory=list)
    #: one line per error, input or output, in the order they happened
    errors: list[str] = field(default_factory=list)
    kernel_drops: int = 0
    stopping: bool = False
    started: float = field(default_factory=time.monotonic)

    def feed(self, payloads: Iterable[bytes]) -> None:
        """Judge payloads and write the selected ones to every output; sets ``stopping`` at ``-c`` or on a
        write error."""
        select, outputs = self.rule.select, self.outputs
        for payload in payloads:
            if select(payload):
                for out in outputs:
                    try:
                        out.writer.write(payload)
                    except OSError as exc:
                        self.output_error(out, exc)
                        return
                if self.count is not None and self.rule.selected >= self.count:
                    self.stopping = True
                    return

    def output_error(self, out: Output, exc: OSError) -> None:
        """Record an output's first write error and stop: later ones are the same failure again."""
        if not out.failed:
            out.failed = True
            self.errors.append(f"{out.name}: {exc.strerror}")
        self.stopping = True

    @property
    def written(self) -> int:
        """Selected records every output received."""
        return min(out.writer.payloads_written for out in self.outputs)

    def close_outputs(self) -> None:
        """Write what each output still holds (the last NMSG container) unless writing to it already
        failed, then close it (standard output: flush it)."""
        for out in self.outputs:
            if not out.failed:
                try:
                    out.writer.close()
                except OSError as exc:
                    self.output_error(out, exc)
            try:
                if out.file is sys.stdout.buffer:
                    out.file.flush()
                else:
                    out.file.close()
            except OSError as exc:
                self.output_error(out, exc)

    def read_file(self, path: str, progress: bool) -> None:
        """Read one NMSG file; a broken file is reported with its offset and the run goes on."""
        try:
            fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below; the with-block would hide errors
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror}")
            return
        reader = ContainerStreamReader(fh, name=path)
        self.input_stats.append((path, reader.stats))
        bar = tqdm(
            total=Path(path).stat().st_size,
            unit="B",
            unit_scale=True,
            desc=Path(path).name,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        )
        try:
            for batch in reader.batches():
                self.feed(batch)
                bar.update(reader.stats.bytes - bar.n)
                if self.stopping:
                    break
        except ContainerError as exc:
            self.errors.append(str(exc))
        finally:
            bar.close()
            fh.close()

    def read_sockets(self, endpoints: list[Endpoint], rcvbuf: int, err: TextIO) -> None:
        """Read datagrams until a signal or ``-c``; fragments are reassembled per sender."""
        receiver = UdpReceiver(endpoints, rcvbuf)
        listening = ", ".join(f"{addr}/{port}" for addr, port in receiver.addresses())
        print(f"{PROG}: listening on {listening}", file=err, flush=True)
        decoder = DatagramDecoder()
        self.input_stats.append(("sockets", decoder.stats))
        feed = decoder.feed
        try:
            while not self.stopping:
                for datagram, sender in receiver.receive(POLL_SECONDS):
                    self.feed(feed(datagram, sender))
                    if self.stopping:
                        break
                decoder.expire()
        finally:
            self.kernel_drops = receiver.kernel_drops
            receiver.close()


def _endpoints(args: argparse.Namespace) -> list[Endpoint]:
    endpoints = [ep for spec in args.sockets for ep in parse_endpoint(spec)]
    for name in args.channels:
        endpoints.extend(channel_endpoints(name, args.chalias))
    return endpoints


def _install_signal_handlers(run: Run) -> None:
    """First SIGINT/SIGTERM: stop reading and finish cleanly. A second one: the default action."""

    def stop(signum: int, _frame: object) -> None:
        run.stopping = True
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def format_summary(run: Run, top: int) -> str:
    """The end-of-run report: records read, dnsqr records, selected, skips by reason, worst servers."""
    verdicts = run.rule.verdicts
    seen = run.rule.seen
    elapsed = max(time.monotonic() - run.started, 1e-9)
    lines = [
        f"{PROG}: {seen} records read in {elapsed:.2f} s ({seen / elapsed:,.0f}/s), "
        f"{seen - verdicts[Verdict.NOT_DNSQR]} base:dnsqr, {run.rule.selected} selected, "
        f"{run.written} written",
    ]
    skipped = {v.value: n for v, n in verdicts.items() if v is not Verdict.SELECTED and n}
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{k} {n}" for k, n in sorted(skipped.items())))
    drops: Counter[str] = Counter()
    for _, stats in run.input_stats:
        drops.update(stats.drops)
    if run.kernel_drops:
        drops["kernel_rcvbuf_overflow"] += run.kernel_drops
    if drops:
        lines.append("  input drops: " + ", ".join(f"{k} {n}" for k, n in sorted(drops.items())))
    lines.extend(f"  error: {e}" for e in run.errors)
    lines.append(format_ns_table(run.rule.failures_by_ns, top))
    return "\n".join(lines)


def format_ns_table(failures: Counter[str], top: int) -> str:
    """The worst name servers by failure count, as an aligned text table."""
    rows = failures.most_common(top)
    if not rows:
        return "  no EDNS0 failures"
    width = max(len(ip) for ip, _ in rows)
    out = [f"  {'name server':<{width}}  failures"]
    out += [f"  {ip:<{width}}  {n:>8}" for ip, n in rows]
    if len(failures) > top:
        out.append(f"  ... and {len(failures) - top} more name servers")
    return "\n".join(out)


def main(argv: list[str] | None = None, *, stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    fail: Callable[[str], int] = lambda msg: print(f"{PROG}: {msg}", file=err) or 2  # noqa: E731
    if args.xs_input or args.xs_output:
        return fail("-L/-S (libxs/ZeroMQ endpoints) are not supported; read with -r, -l or -C")
    if not (args.output or args.json_output):
        return fail("No outputs given (use -w FILE or -J FILE)")
    if args.output == args.json_output == "-":
        return fail("-w - and -J - would both write to standard output")
    if not (args.files or args.sockets or args.channels):
        return fail("No inputs given (use -r FILE, -l ADDR/PORT or -C CHANNEL)")
    try:
        endpoints = _endpoints(args)
    except ChannelError as exc:
        return fail(str(exc))
    outputs: list[Output] = []
    for path, make_writer in (
        (args.output, lambda fh: NmsgFileWriter(fh, bufsz=BUFSZ_MAX, compress=args.zlib)),
        (args.json_output, JsonLinesWriter),
    ):
        if not path:
            continue
        try:
            # closed by Run.close_outputs, which must be able to close it without writing to it again
            fh: BinaryIO = sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115
        except OSError as exc:
            for opened in outputs:
                if opened.file is not sys.stdout.buffer:
                    opened.file.close()
            return fail(f"{path}: {exc.strerror}")
        outputs.append(Output(fh, "stdout" if path == "-" else path, make_writer(fh)))
    run = Run(outputs, args.count)
    _install_signal_handlers(run)
    progress = args.progress == "always" or (args.progress == "auto" and err.isatty())
    try:
        for path in args.files:
            if run.stopping:
                break
            run.read_file(path, progress)
        if endpoints and not run.stopping:
            run.read_sockets(endpoints, args.rcvbuf, err)
    except OSError as exc:
        run.errors.append(str(exc))
    finally:
        run.close_outputs()
    if args.counts_json:
        try:
            Path(args.counts_json).write_text(
                json.dumps(ranked_counts(run.rule.failures_by_ns), indent=1) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            run.errors.append(f"{args.counts_json}: {exc.strerror}")
    print(format_summary(run, args.top), file=err)
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
