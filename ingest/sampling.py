"""Rate-limited sampling of undecodable network input into the dead-letter topic.

Anyone who can reach a UDP port can send it garbage, as fast as the network carries it. Copying each
undecodable datagram to the DLQ one for one would let them fill that topic (and the broker's disk) without
limit: 100,000 garbage datagrams made 100,000 dead letters. A live source therefore dead-letters only a
sample, under a token bucket, and counts the rest by reason. File and Kafka sources do not sample: their
volume is bounded by their input, and every bad record of theirs is worth keeping.

One bucket per source, not per sender: the limit has to bound the topic, and a sender address is whatever
a spoofer writes into the packet, so per-sender buckets would multiply the limit by the number of
addresses forged. Every undecodable datagram is still counted (by reason, in the source's drops).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

#: Dead letters per second per live source unless ``--dlq-rate`` says otherwise.
DEFAULT_DLQ_RATE = 10.0


class DeadLetterSampler:
    """A token bucket over one source's undecodable inputs: which to dead-letter, and how many were not.

    Tokens accrue at ``rate`` per second up to ``burst`` (default: one second's worth, at least one); each
    dead letter takes one. Over any T seconds at most ``rate * T + burst`` dead letters go out, whatever
    arrives. ``rate`` 0 dead-letters nothing. An input refused is counted in ``unsampled`` by reason, and
    in the number the next dead letter reports as not sampled since the previous one.

    Not thread-safe: the source's one decoding thread calls :meth:`sample`; other threads only copy
    ``unsampled`` (one C-level ``dict()`` copy).
    """

    def __init__(
        self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0:
            raise ValueError(f"dead-letter rate must be 0 or more, not {rate:g}")
        self.rate = rate
        self.burst = (max(1.0, rate) if rate > 0 else 0.0) if burst is None else burst
        self.unsampled: Counter[str] = Counter()
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._since_sample = 0

    def sample(self, reason: str) -> int | None:
        """Whether to dead-letter this input: None when not (it is counted under ``reason``), else the
        number of inputs not sampled since the previous dead letter."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            skipped, self._since_sample = self._since_sample, 0
            return skipped
        self.unsampled[reason] += 1
        self._since_sample += 1
        return None
