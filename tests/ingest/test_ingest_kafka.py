"""Ingest against a real broker: every corpus source lands in the raw topic exactly, bad input is counted.

Ground truth is the corpus: the payloads of nmsgtool's own NAME.nmsg files (read with the shared codec)
and the datagrams tcpdump captured from ``nmsgtool -s`` (NAME.udp.pcap).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from ingest.bridge import Bridge, run_ingest
from ingest.producer import IngestError
from nmsgdns.container import decode_container, encode_container
from nmsgdns.payload import make_payload
from tests import corpus
from tests.dead_letters import read_letters
from tests.ingest.helpers import (
    CLI,
    config,
    dnsqr_multiset,
    file_payloads,
    free_udp_port,
    read_topic,
    topic_payloads,
)

pytestmark = pytest.mark.integration

FILES = [f"{c}.nmsg" for c in corpus.CASES] + [f"{c}.z.nmsg" for c in corpus.ZLIB_CASES]


@pytest.fixture
def topics(new_topic) -> tuple[str, str]:
    """A raw topic with 3 partitions (payloads spread over them) and its dead-letter topic."""
    return new_topic(3, prefix="ingest-raw"), new_topic(1, prefix="ingest-dlq")


@pytest.mark.parametrize("name", FILES)
def test_file_replay_gives_exactly_the_dnsqr_payloads(
    kafka_bootstrap: str, topics: tuple[str, str], name: str
):
    raw, dlq = topics
    path = corpus.path(name)
    expected = dnsqr_multiset(file_payloads(path))
    assert sum(expected.values()) == len(
        corpus.json_lines(name.replace(".z.nmsg", ".nmsg").replace(".nmsg", ".json"))
    )
    # Small containers so every file spans several records and partitions.
    summary = run_ingest(config(kafka_bootstrap, raw, dlq, files=[str(path)], container_records=50))
    assert summary.ok, summary.format()
    assert summary.records_out == sum(expected.values())
    assert summary.dropped == {}
    assert topic_payloads(kafka_bootstrap, raw) == expected
    assert read_topic(kafka_bootstrap, dlq) == []


def test_several_files_and_byte_limit(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    names = ["live_resolver.z.nmsg", "edge_cases.nmsg", "sock_m512.nmsg"]
    expected: Counter[bytes] = Counter()
    for n in names:
        expected += dnsqr_multiset(file_payloads(corpus.path(n)))
    cfg = config(kafka_bootstrap, raw, dlq, files=[str(corpus.path(n)) for n in names], container_bytes=20000)
    summary = run_ingest(cfg)
    assert summary.ok, summary.format()
    records = read_topic(kafka_bootstrap, raw)
    # One record (with its own container) may exceed the limit only when it holds a single payload.
    assert all(len(v) <= 20000 + 10 or len(decode_container(v).payloads) == 1 for v, _ in records)
    assert topic_payloads(kafka_bootstrap, raw) == expected


def _send_datagrams(port: int, datagrams: list[bytes], gap: float = 0.0) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            if gap:
                time.sleep(gap)


def _run_live(bridge: Bridge, until: callable, timeout: float = 30.0):
    """Run a bridge with live sources in a thread; stop it once ``until()`` holds; return its summary."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=bridge.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    bridge.stop.set()
    thread.join(60)
    assert not thread.is_alive()
    return result["summary"]


@pytest.mark.parametrize("case", corpus.SOCKET_CASES)
def test_udp_datagrams_from_nmsgtool(kafka_bootstrap: str, topics: tuple[str, str], case: str):
    raw, dlq = topics
    datagrams = corpus.udp_datagrams(case)
    expected = dnsqr_multiset(file_payloads(corpus.path(f"{case}.nmsg")))
    port = free_udp_port()
    bridge = Bridge(config(kafka_bootstrap, raw, dlq, listen=[f"127.0.0.1/{port}"]))
    total = sum(expected.values())
    sender = threading.Thread(target=_send_datagrams, args=(port, datagrams))
    sender.start()
    summary = _run_live(bridge, lambda: sum(bridge.records_in.values()) >= total)
    sender.join()
    assert summary.ok, summary.format()
    assert topic_payloads(kafka_bootstrap, raw) == expected
    assert summary.dropped.get("kernel_rcvbuf", 0) == 0


def test_bad_datagrams_are_counted_and_dead_lettered(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    good = corpus.udp_datagrams("sock_m512")
    expected = dnsqr_multiset(file_payloads(corpus.path("sock_m512.nmsg")))
    other = make_payload(2, 1, 1700000000, 0, b"not dnsqr")
    mixed = encode_container([other, *list(expected)[:2]])
    expected.update(list(expected)[:2])
    headerless = (4096).to_bytes(4, "big") + zlib.compress(b"\x0a" * 4096)
    bad = [b"garbage, not NMSG at all", headerless, b"NMSG\x00\x02\x00\x00\x10\x00short", b"NMS"]
    port = free_udp_port()
    bridge = Bridge(config(kafka_bootstrap, raw, dlq, listen=[f"127.0.0.1/{port}"]))
    total = sum(expected.values()) + 1
    _send_datagrams(port, bad[:2] + good[:10] + bad[2:] + good[10:] + [mixed])
    summary = _run_live(bridge, lambda: sum(bridge.records_in.values()) >= total)
    assert summary.ok, summary.format()
    assert topic_payloads(kafka_bootstrap, raw) == expected
    assert summary.dropped == {
        "garbage": 1,
        "headerless_zlib": 1,
        "bad_length": 1,
        "short": 1,
        "not_dnsqr": 1,
    }
    # four bad datagrams are within the sampling's burst: each is dead-lettered, none unsampled
    assert summary.dead_letters == 4 and summary.dead_letters_unsampled == {}
    letters = read_letters(kafka_bootstrap, dlq)
    assert sorted(m.headers.error_type for m in letters) == [
        "bad_length",
        "garbage",
        "headerless_zlib",
        "short",
    ]
    assert {m.value for m in letters} == set(bad)
    for m in letters:
        headers = m.headers
        assert (headers.stage, headers.source, headers.unsampled) == ("ingest", f"udp:127.0.0.1/{port}", 0)
        assert headers.sender.startswith("127.0.0.1/") and headers.origin() is None


def test_kafka_source_in_nmsgtool_format(kafka_bootstrap: str, topics: tuple[str, str], new_topic):
    raw, dlq = topics
    source = new_topic(2, prefix="ingest-nmsgtool")
    # What nmsgtool --writekafka writes: one container per record, here the sock_m512 datagrams (with
    # fragments) and the zlib file's container, plus one record that is no container at all.
    zfile = corpus.path("edge_cases.z.nmsg").read_bytes()
    values = [*corpus.udp_datagrams("sock_m512"), zfile]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for v in values:
        producer.produce(source, v, partition=0)  # fragments of a set must stay in order
    producer.produce(source, b"junk record, not a container", partition=1)
    assert producer.flush(30) == 0
    expected = dnsqr_multiset(file_payloads(corpus.path("sock_m512.nmsg")))
    expected += dnsqr_multiset(file_payloads(corpus.path("edge_cases.z.nmsg")))
    cfg = config(kafka_bootstrap, raw, dlq, kafka_sources=[source], kafka_source_eof=True)
    summary = run_ingest(cfg)
    assert summary.ok, summary.format()
    assert topic_payloads(kafka_bootstrap, raw) == expected
    assert summary.dropped == {"garbage": 1}
    [letter] = read_letters(kafka_bootstrap, dlq)
    assert letter.value == b"junk record, not a container" and letter.headers.error_type == "garbage"
    assert letter.headers.origin() == ("ingest", source, 1, 0)
    # nmsgtool's endpoint syntax reads the same partition.
    raw2, dlq2 = new_topic(3, prefix="ingest-raw2"), new_topic(1, prefix="ingest-dlq2")
    endpoint = f"nmsg:{source}#0@{kafka_bootstrap},oldest"
    summary = run_ingest(config(kafka_bootstrap, raw2, dlq2, kafka_sources=[endpoint], kafka_source_eof=True))
    assert summary.ok, summary.format()
    assert topic_payloads(kafka_bootstrap, raw2) == expected


@pytest.mark.parametrize("case", corpus.PCAP_CASES)
def test_pcap_gives_the_payloads_of_nmsgtool(kafka_bootstrap: str, topics: tuple[str, str], case: str):
    raw, dlq = topics
    environ = {"DNSQR_RES_ADDRS": "127.0.0.2,127.0.0.3,fd00::2"} if case == "live_resolver" else {}
    cfg = config(kafka_bootstrap, raw, dlq, pcaps=[str(corpus.path(f"{case}.pcap"))], capture_environ=environ)
    summary = run_ingest(cfg)
    assert summary.ok, summary.format()
    assert topic_payloads(kafka_bootstrap, raw) == dnsqr_multiset(file_payloads(corpus.path(f"{case}.nmsg")))


def test_truncated_and_garbage_files_keep_every_valid_record(
    kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path
):
    raw, dlq = topics
    first = corpus.path("edge_cases.nmsg").read_bytes()
    second = corpus.path("live_resolver.nmsg").read_bytes()
    truncated = tmp_path / "truncated.nmsg"
    truncated.write_bytes(first + second[: len(second) // 2])
    garbage = tmp_path / "garbage.nmsg"
    garbage.write_bytes(first + b"this is not a container" * 10)
    good = corpus.path("incompressible.nmsg")
    cfg = config(kafka_bootstrap, raw, dlq, files=[str(truncated), str(garbage), str(good)])
    summary = run_ingest(cfg)
    assert summary.ok, summary.format()
    assert not summary.input_complete
    assert [d.split(": offset ")[0] for d in summary.damaged_inputs] == [str(truncated), str(garbage)]
    expected = dnsqr_multiset(file_payloads(corpus.path("edge_cases.nmsg")))
    expected += expected
    expected += dnsqr_multiset(file_payloads(good))
    assert topic_payloads(kafka_bootstrap, raw) == expected
    assert summary.dropped == {"short": 1, "garbage": 1}
    letters = {m.headers.error_type: m for m in read_letters(kafka_bootstrap, dlq)}
    assert set(letters) == {"truncated_file", "bad_container"}
    letter = letters["truncated_file"]
    assert letter.headers.origin() == ("ingest", str(truncated), len(first))
    assert letter.value == second[: len(second) // 2]
    letter = letters["bad_container"]
    assert letter.headers.origin() == ("ingest", str(garbage), len(first))
    assert letter.value.startswith(b"this is not a container")


def test_time_window(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    from ingest.replay import record_time

    payloads = file_payloads(corpus.path("live_resolver.nmsg"))
    times = sorted(record_time(p) for p in payloads)
    start, end = times[100], times[2000]
    summary = run_ingest(
        config(
            kafka_bootstrap, raw, dlq, files=[str(corpus.path("live_resolver.nmsg"))], start=start, end=end
        )
    )
    assert summary.ok, summary.format()
    inside = Counter(p for p in payloads if start <= record_time(p) < end)
    assert topic_payloads(kafka_bootstrap, raw) == inside
    assert summary.dropped == {"outside_window": len(payloads) - sum(inside.values())}


def test_paced_replay_takes_the_capture_time_over_speed(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    from ingest.replay import record_time

    path = corpus.path("edge_cases.nmsg")
    times = [record_time(p) for p in file_payloads(path)]
    span = max(times) - times[0]
    speed = span / 1.5  # the capture replayed in about 1.5 s
    t0 = time.monotonic()
    summary = run_ingest(config(kafka_bootstrap, raw, dlq, files=[str(path)], speed=speed))
    took = time.monotonic() - t0
    assert summary.ok and summary.records_out == len(times)
    assert 1.3 < took < 6.0


def test_broker_down_at_start_fails_fast_and_consumes_nothing(tmp_path: Path):
    port = free_udp_port()
    dead = f"127.0.0.1:{free_udp_port()}"
    cfg = config(dead, "dnsqr.raw", None, listen=[f"127.0.0.1/{port}"], startup_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(IngestError, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+ within 2 s"):
        run_ingest(cfg)
    assert time.monotonic() - t0 < 10
    # The socket was never opened: a later run can bind the same port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))


def test_missing_topic_is_a_clear_error(kafka_bootstrap: str):
    cfg = config(kafka_bootstrap, "no.such.topic.ingest", None, files=[str(corpus.path("edge_cases.nmsg"))])
    with pytest.raises(IngestError, match=r"topic 'no\.such\.topic\.ingest' does not exist"):
        run_ingest(cfg)


def test_metrics_endpoint(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    port = free_udp_port()
    bridge = Bridge(config(kafka_bootstrap, raw, dlq, listen=[f"127.0.0.1/{port}"], metrics_port=0))
    datagrams = corpus.udp_datagrams("sock_m512")
    scraped = {}

    def until() -> bool:
        if sum(bridge.records_in.values()) < 68 or bridge.producer.raw.records_delivered < 68:
            return False
        time.sleep(0.6)  # one tick
        url = f"http://127.0.0.1:{bridge.metrics_port}/metrics"
        scraped["text"] = urllib.request.urlopen(url, timeout=5).read().decode()
        return True

    _send_datagrams(port, [*datagrams, b"junk datagram, not a container"])
    summary = _run_live(bridge, until)
    assert summary.ok
    text = scraped["text"]
    assert f'dnsqr_ingest_records_in_total{{source="udp:127.0.0.1/{port}"}} 68.0' in text
    assert "dnsqr_ingest_records_out_total 68.0" in text
    assert 'dnsqr_ingest_drops_total{reason="garbage"} 1.0' in text
    assert "dnsqr_ingest_producer_queue_depth" in text


def _cli_available() -> bool:
    try:
        from dnsqr_pipeline.cli import build_parser

        build_parser()
    except (ImportError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _cli_available(), reason="the dnsqr-pipeline CLI registry is not complete yet")
def test_cli_live_source_stops_on_sigterm_and_prints_summary(kafka_bootstrap: str, topics: tuple[str, str]):
    raw, dlq = topics
    port = free_udp_port()
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
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        _send_datagrams(port, corpus.udp_datagrams("sock_m512"))
        time.sleep(2)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "records out: 68" in err
    assert topic_payloads(kafka_bootstrap, raw) == dnsqr_multiset(
        file_payloads(corpus.path("sock_m512.nmsg"))
    )


@pytest.mark.skipif(not _cli_available(), reason="the dnsqr-pipeline CLI registry is not complete yet")
def test_cli_broker_down_exit_status():
    dead = f"127.0.0.1:{free_udp_port()}"
    proc = subprocess.run(
        [
            *CLI,
            "ingest",
            "--bootstrap-servers",
            dead,
            "--startup-timeout",
            "1",
            "-r",
            str(corpus.path("edge_cases.nmsg")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot reach Kafka" in proc.stderr
