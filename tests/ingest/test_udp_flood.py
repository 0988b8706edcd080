"""Garbage cannot flood the DLQ: 100,000 undecodable datagrams amid a real capture stream into
``dnsqr-pipeline ingest -l``.

The real stream is the corpus's ``nmsgtool -s`` datagrams (sock_m512, fragments included), sent several
times, each time from a new socket, while another socket sends the garbage. Both senders are paced so the
kernel's receive buffer does not overflow (the summary's ``kernel_rcvbuf`` would say it did). The DLQ must
hold at most the rate limit's worth (``--dlq-rate`` times the run's seconds + the burst), the summary and the
metrics must count every garbage datagram by reason, and the raw topic must hold every real record.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import pytest

from tests import corpus
from tests.dead_letters import read_letters
from tests.ingest.helpers import CLI, dnsqr_multiset, file_payloads, free_udp_port, topic_payloads

pytestmark = pytest.mark.integration

#: Undecodable datagrams of each kind, by the reason the datagram decoder (nmsgdns.input) gives them.
GARBAGE_KINDS = {
    "garbage": b"garbage, not NMSG at all",
    "short": b"NMS",
    "bad_version": b"NMSG\x00\x07\x00\x00\x00\x00",
    "bad_length": b"NMSG\x00\x02\x00\x00\x10\x00short",
}
GARBAGE_TOTAL = 100_000
#: times the real capture stream is sent
COPIES = 10
DLQ_RATE = 10


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples over its labels."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.MULTILINE))


def _send_garbage(port: int, sender: list[str]) -> None:
    kinds = list(GARBAGE_KINDS.values())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        sender.append(f"127.0.0.1/{s.getsockname()[1]}")
        for i in range(GARBAGE_TOTAL):
            s.sendto(kinds[i % len(kinds)], ("127.0.0.1", port))
            if i % 500 == 499:
                time.sleep(0.01)  # at most ~50,000 datagrams/s


def _send_capture(port: int, datagrams: list[bytes]) -> None:
    for _ in range(COPIES):
        # a new socket (sender port) per copy: the same fragment ids from one sender would mix
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", port))
                time.sleep(0.001)


def test_garbage_flood_is_sampled_counted_and_real_records_all_arrive(kafka_bootstrap: str, new_topic):
    raw, dlq = new_topic(3, prefix="flood-raw"), new_topic(1, prefix="flood-dlq")
    expected = Counter()
    one_copy = dnsqr_multiset(file_payloads(corpus.path("sock_m512.nmsg")))
    for _ in range(COPIES):
        expected += one_copy
    port, metrics_port = free_udp_port(), _free_tcp_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "ingest",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--raw-topic",
            raw,
            "--dlq-topic",
            dlq,
            "-l",
            f"127.0.0.1/{port}",
            "--metrics-port",
            str(metrics_port),
            "--no-progress-bar",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _scrape(metrics_port) is None:  # served once the socket is bound
            assert proc.poll() is None and time.monotonic() < deadline, "ingest did not start"
            time.sleep(0.2)
        garbage_sender: list[str] = []
        senders = [
            threading.Thread(target=_send_garbage, args=(port, garbage_sender)),
            threading.Thread(target=_send_capture, args=(port, corpus.udp_datagrams("sock_m512"))),
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(120)
        # until every datagram is decoded and every real record delivered (bounded)
        deadline = time.monotonic() + 60
        while True:
            text = _scrape(metrics_port) or ""
            drops = {r: _metric(text, f'dnsqr_ingest_drops_total{{reason="{r}"}}') for r in GARBAGE_KINDS}
            out = _metric(text, "dnsqr_ingest_records_out_total")
            if sum(drops.values()) >= GARBAGE_TOTAL and out >= sum(expected.values()):
                break
            assert time.monotonic() < deadline, f"not done: {drops}, {out} records out"
            time.sleep(0.5)
        metrics_unsampled = _metric(text, "dnsqr_ingest_dead_letters_unsampled_total")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err

    # every real record arrived, none lost in the kernel or the backlog
    assert topic_payloads(kafka_bootstrap, raw) == expected
    dropped = dict(re.findall(r"^    (\w+): (\d+)$", err.split("  dropped:")[1], flags=re.MULTILINE))
    per_kind = GARBAGE_TOTAL // len(GARBAGE_KINDS)
    # the summary counts all 100k by reason (and nothing else was dropped: no kernel or backlog loss)
    assert {k: int(v) for k, v in dropped.items()} == dict.fromkeys(GARBAGE_KINDS, per_kind)
    elapsed = float(re.search(r"ingest summary \(([\d.]+) s", err).group(1))
    unsampled = int(
        re.search(r"not sampled \(--dlq-rate limit\), counted in dropped only: (\d+)", err).group(1)
    )

    # the DLQ holds at most the rate limit's worth, and what it lacks is counted
    letters = read_letters(kafka_bootstrap, dlq)
    assert DLQ_RATE <= len(letters) <= DLQ_RATE * elapsed + DLQ_RATE
    assert len(letters) + unsampled == GARBAGE_TOTAL
    assert metrics_unsampled == unsampled
    assert f"dead letters: {len(letters)} sent, 0 failed" in err
    reported = sum(letter.headers.unsampled for letter in letters)
    assert reported <= unsampled and reported > 0
    for letter in letters:
        headers = letter.headers
        assert (headers.stage, headers.source) == ("ingest", f"udp:127.0.0.1/{port}")
        assert headers.sender == garbage_sender[0]
        assert letter.value == GARBAGE_KINDS[headers.error_type]
    print(
        f"flood: {elapsed:.1f} s run, {len(letters)} dead letters, {unsampled} unsampled, "
        f"{sum(expected.values())} real records delivered"
    )
