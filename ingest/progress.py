"""Progress of an ingest run: a tqdm bar on a terminal, a periodic log line otherwise.

Replay sources know their size in bytes, so the bar runs over bytes (which gives the ETA) and shows
records and the record rate beside it; live sources have no total and show only records and rate. In
logs and under systemd a bar is noise, hence the plain line every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

from tqdm import tqdm

log = logging.getLogger("ingest")


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


class Progress:
    """Called from the bridge's tick with totals; renders at most a few times a second."""

    def __init__(self, *, bar: bool | None = None, interval: float = 10.0) -> None:
        self.bar_enabled = sys.stderr.isatty() if bar is None else bar
        self.interval = interval
        self._bar: tqdm | None = None
        self._start = time.monotonic()
        self._last = self._start
        self._last_records = 0

    def update(
        self, records_in: int, records_out: int, drops: Mapping[str, int], sized: tuple[int, int] | None
    ) -> None:
        now = time.monotonic()
        if self.bar_enabled:
            self._draw(now, records_in, records_out, drops, sized)
        elif now - self._last >= self.interval:
            rate = (records_in - self._last_records) / (now - self._last)
            self._last, self._last_records = now, records_in
            where = ""
            if sized and sized[1]:
                done, total = sized
                elapsed = now - self._start
                eta = elapsed * (total - done) / done if done else float("nan")
                where = f", {100.0 * done / total:.1f}% of input, ETA {eta:.0f} s"
            dropped = sum(drops.values())
            log.info(
                "ingest: %s records in, %s out, %s/s%s, %s dropped",
                records_in,
                records_out,
                _si(rate),
                where,
                dropped,
            )

    def _draw(
        self,
        now: float,
        records_in: int,
        records_out: int,
        drops: Mapping[str, int],
        sized: tuple[int, int] | None,
    ) -> None:
        if self._bar is None:
            if sized and sized[1]:
                self._bar = tqdm(total=sized[1], unit="B", unit_scale=True, desc="ingest", mininterval=0.5)
            else:
                self._bar = tqdm(unit=" rec", unit_scale=True, desc="ingest", mininterval=0.5)
        bar = self._bar
        if bar.total:
            bar.update(sized[0] - bar.n if sized else 0)
            elapsed = max(now - self._start, 1e-9)
            bar.set_postfix_str(
                f"{_si(records_in)} rec, {_si(records_in / elapsed)} rec/s, out {_si(records_out)}, "
                f"dropped {sum(drops.values())}",
                refresh=False,
            )
        else:
            bar.update(records_in - bar.n)
            bar.set_postfix_str(f"out {_si(records_out)}, dropped {sum(drops.values())}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
