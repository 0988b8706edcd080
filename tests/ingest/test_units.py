"""Ingest pieces without Kafka: packing, the dnsqr gate, pacing, the time window, endpoint syntax, damaged
input and the exit status, the help text, librdkafka's start-up log lines."""

from __future__ import annotations

import io
import logging
from collections import Counter

import pytest

from dnsqr_pipeline.cli import build_parser
from ingest import command
from ingest.bridge import IngestConfig, IngestSummary, replay_inputs
from ingest.packer import ContainerBuilder, DnsqrGate
from ingest.producer import IngestError, LibrdkafkaLog
from ingest.progress import Progress
from ingest.replay import Pacer, TimeWindow, parse_time, record_time
from ingest.sources import Batch, DeadLetter, DropTracker, KafkaEndpoint, Outbox, ReplayInput, ReplaySource
from nmsgdns.container import decode_container
from nmsgdns.input import ContainerStreamReader, DatagramDecoder
from nmsgdns.payload import make_payload
from tests import corpus
from tests.ingest.helpers import DAMAGE_CASES, damaged_capture, dnsqr_multiset, file_payloads


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return file_payloads(corpus.path("live_resolver.nmsg"))


def _unpack(packed) -> list[bytes]:
    return [p for c in packed for p in decode_container(c.container).payloads]


def test_packing_is_lossless_and_ordered(payloads: list[bytes]):
    builder = ContainerBuilder(max_records=100)
    packed = builder.add(payloads[:250]) + builder.add(payloads[250:]) + builder.flush()
    assert _unpack(packed) == payloads
    assert [c.records for c in packed[:-1]] == [100] * (len(payloads) // 100)
    assert sum(c.records for c in packed) == len(payloads)
    assert builder.pending == 0 and builder.flush() == []


def test_packing_respects_the_byte_limit(payloads: list[bytes]):
    builder = ContainerBuilder(max_records=10_000, max_bytes=5000)
    packed = builder.add(payloads) + builder.flush()
    assert _unpack(packed) == payloads
    for c in packed:
        body = len(c.container) - 10
        assert body <= 5000 or c.records == 1
        assert int.from_bytes(c.container[6:10], "big") == body


def test_oversized_payload_gets_a_container_of_its_own():
    big = make_payload(1, 9, 1, 0, b"x" * 20000)
    small = make_payload(1, 9, 1, 0, b"y")
    builder = ContainerBuilder(max_records=10, max_bytes=1000)
    packed = builder.add([small, big, small]) + builder.flush()
    assert [c.records for c in packed] == [1, 1, 1]
    assert _unpack(packed) == [small, big, small]


def test_containers_with_crcs_pass_libnmsg_crc_check(payloads: list[bytes]):
    builder = ContainerBuilder(max_records=300, crcs=True)
    packed = builder.add(payloads) + builder.flush()
    stream = io.BytesIO(b"".join(c.container for c in packed))
    reader = ContainerStreamReader(stream, name="packed")
    assert [p for b in reader.batches() for p in b] == payloads
    assert not reader.stats.drops
    assert len(decode_container(packed[0].container).crcs) == 300


def test_builder_reports_the_age_of_pending_records(payloads: list[bytes]):
    builder = ContainerBuilder(max_records=1000)
    assert builder.oldest is None
    builder.add(payloads[:10])
    assert builder.oldest is not None
    builder.flush()
    assert builder.oldest is None


def test_gate_keeps_dnsqr_and_counts_the_rest(payloads: list[bytes]):
    other = make_payload(2, 1, 0, 0, b"")
    long_vid = make_payload(1, 9, 0, 0, b"d", source=5)
    slow = b"\x10\x09\x08\x01\x18\x00\x25\x00\x00\x00\x00"  # dnsqr with fields out of order
    broken = b"\x08\x02\x10"
    gate = DnsqrGate()
    got = gate.keep([payloads[0], other, slow, broken, long_vid])
    assert got == [payloads[0], slow, long_vid]
    assert gate.drops() == {"not_dnsqr": 1, "bad_payload": 1}
    assert gate.keep(payloads) == payloads


def test_pacer_schedule_follows_capture_time_over_speed():
    now = [100.0]
    pacer = Pacer(speed=10.0, clock=lambda: now[0])
    assert pacer.delay(1000.0) == 0.0  # the first record fixes the origin
    assert pacer.delay(1010.0) == pytest.approx(1.0)  # 10 s of capture at 10x
    now[0] = 100.5
    assert pacer.delay(1010.0) == pytest.approx(0.5)
    assert pacer.delay(999.0) < 0  # time going backwards: due at once
    assert Pacer().delay(5.0) == 0.0 and not Pacer().active
    with pytest.raises(ValueError):
        Pacer(speed=0)


def test_time_window_and_parse_time(payloads: list[bytes]):
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14 22:13:20") == 1700000000.0
    with pytest.raises(ValueError, match="neither epoch"):
        parse_time("yesterday")
    window = TimeWindow(10.0, 20.0)
    assert [window.contains(t) for t in (9.9, 10.0, 19.9, 20.0, None)] == [False, True, True, False, True]
    assert not TimeWindow().active
    assert record_time(payloads[0]) == pytest.approx(1_700_000_000, abs=10**9)
    assert record_time(b"\xff") is None


def test_kafka_endpoint_syntax():
    assert KafkaEndpoint.parse("dnsqr.nmsg") == KafkaEndpoint("dnsqr.nmsg")
    ep = KafkaEndpoint.parse("nmsg:ch202#3@10.0.0.1:9092,newest")
    assert (ep.topic, ep.partition, ep.group, ep.broker, ep.offset) == (
        "ch202",
        3,
        None,
        "10.0.0.1:9092",
        "newest",
    )
    ep = KafkaEndpoint.parse("nmsg:ch202%ingest@b1:9092")
    assert (ep.topic, ep.partition, ep.group, ep.broker, ep.offset) == (
        "ch202",
        None,
        "ingest",
        "b1:9092",
        "oldest",
    )
    assert KafkaEndpoint.parse("nmsg:t@b:1,42").offset == "42"
    for bad in ("nmsg:t", "nmsg:t#x@b", "a#b", "nmsg:@b", "nmsg:t@b,soon", "nmsg:t@b1,b2"):
        with pytest.raises(ValueError):
            KafkaEndpoint.parse(bad)


def test_drop_tracker_names_the_reason():
    decoder = DatagramDecoder()
    tracker = DropTracker(decoder)
    assert decoder.feed(b"garbage garbage") == [] and tracker.changed() == "garbage"
    assert tracker.changed() is None
    good = corpus.path("edge_cases.nmsg").read_bytes()
    assert decoder.feed(good) and tracker.changed() is None
    assert decoder.feed(b"NMSG\x00\x02\x00\x00\x00\x09abc") == [] and tracker.changed() == "bad_length"


def test_progress_log_line(caplog: pytest.LogCaptureFixture):
    progress = Progress(bar=False, interval=0.0)
    with caplog.at_level(logging.INFO, logger="ingest"):
        progress.update(1500, 1000, {"garbage": 2}, (50, 100))
    assert "1500 records in, 1000 out" in caplog.text and "50.0% of input" in caplog.text
    assert "2 dropped" in caplog.text


def test_summary_ok_and_format():
    summary = IngestSummary(records_in={"a": 3}, records_out=2, dropped=Counter(not_dnsqr=1), elapsed=1.0)
    assert summary.ok
    text = summary.format()
    assert "records in:  3" in text and "not_dnsqr: 1" in text
    failed = IngestSummary(records_failed=5, delivery_errors={"_MSG_TIMED_OUT": 1})
    assert not failed.ok and "FAILED: 5" in failed.format()


def test_summary_input_damaged_is_not_a_delivery_failure():
    damage = "capture.nmsg: offset 22427: truncated: container declares 876614 body bytes, stream has 5"
    summary = IngestSummary(records_in={"nmsg:capture.nmsg": 68}, records_out=68, damaged_inputs=[damage])
    assert summary.ok and not summary.input_complete
    text = summary.format()
    assert f"input DAMAGED: {damage}" in text
    assert "the records before it were delivered" in text
    assert command.exit_status(summary) == command.EXIT_INPUT_DAMAGED == 1


def test_exit_status_undelivered_outranks_damage_and_clean_is_zero():
    clean = IngestSummary(records_in={"a": 3}, records_out=3)
    assert clean.input_complete and command.exit_status(clean) == command.EXIT_OK == 0
    both = IngestSummary(records_failed=2, damaged_inputs=["x.nmsg: offset 0: bad container: bad magic"])
    assert command.exit_status(both) == command.EXIT_UNDELIVERED
    assert "not all delivered" in both.format()
    died = IngestSummary(source_errors=["replay: boom"])
    assert not died.input_complete and command.exit_status(died) == command.EXIT_UNDELIVERED
    statuses = {command.EXIT_OK, command.EXIT_INPUT_DAMAGED, command.EXIT_USAGE, command.EXIT_UNDELIVERED}
    assert len(statuses) == 4


def _replay(*paths: str) -> tuple[ReplaySource, list[object]]:
    """Run a ReplaySource over NMSG files without the bridge; returns it and what it handed over."""
    items: list[object] = []
    outbox = Outbox()
    outbox.handler = items.append
    source = ReplaySource([ReplayInput("nmsg", p) for p in paths])
    source.run(outbox)
    return source, items


@pytest.mark.parametrize("case", DAMAGE_CASES)
def test_damaged_file_is_named_with_its_offset_and_what_came_before_is_handed_over(case, tmp_path):
    capture = damaged_capture(case, tmp_path)
    good = corpus.path("incompressible.nmsg")
    source, items = _replay(str(capture.path), str(good))
    [damage] = source.damaged
    assert damage.startswith(f"{capture.path}: offset {capture.offset}: ")
    assert capture.reason in damage
    handed = [p for item in items if isinstance(item, Batch) for p in item.payloads]
    # the records before the damage, then the next file read whole
    assert dnsqr_multiset(handed) == capture.intact + dnsqr_multiset(file_payloads(good))
    [letter] = [item for item in items if isinstance(item, DeadLetter)]
    headers = letter.headers
    assert headers.origin() == ("ingest", str(capture.path), capture.offset)
    assert headers.source == f"nmsg:{capture.path}" and headers.error == damage
    assert headers.error_type in ("truncated_file", "bad_container") and headers.unsampled is None
    assert letter.data == capture.path.read_bytes()[capture.offset :]


def test_whole_files_are_not_damaged():
    source, _ = _replay(str(corpus.path("edge_cases.nmsg")), str(corpus.path("live_resolver.z.nmsg")))
    assert source.damaged == []


def test_file_that_vanished_before_it_was_read_is_damaged_input(tmp_path):
    source, items = _replay(str(tmp_path / "gone.nmsg"))
    assert source.damaged == [f"{tmp_path / 'gone.nmsg'}: cannot open: No such file or directory"]
    assert items == []


@pytest.mark.parametrize("flag", ["files", "pcaps"])
def test_a_directory_as_input_says_to_give_its_files(flag, tmp_path):
    pattern = "*.nmsg" if flag == "files" else "*.pcap"
    with pytest.raises(IngestError) as err:
        replay_inputs(IngestConfig(kafka={}, **{flag: [str(tmp_path)]}))
    assert str(err.value) == (
        f"{tmp_path} is a directory; give the {'NMSG' if flag == 'files' else 'pcap'} files in it, "
        f"e.g. {tmp_path}/{pattern}"
    )
    with pytest.raises(IngestError, match="no such file"):
        replay_inputs(IngestConfig(kafka={}, files=[str(tmp_path / "missing.nmsg")]))


def test_ingest_help_renders_its_syntax_compression_and_exit_statuses(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "nmsg:TOPIC[#PARTITION|%GROUP]@BROKER[,OFFSET]" in text
    assert "%%" not in text
    # the option's own help: after its last mention (the first is in the usage line), up to the next option
    compression = text[text.rindex("--compression {lz4,zstd,none}") :].split("--flush-timeout")[0]
    assert "compression of the Kafka record batches" in compression and "(default lz4)" in compression
    for status in (command.EXIT_OK, command.EXIT_INPUT_DAMAGED, command.EXIT_USAGE, command.EXIT_UNDELIVERED):
        assert f" {status} " in text.split("exit status:")[1]


_PID_LINE = (
    "GETPID",
    "rdkafka#producer-1",
    "[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:9092/1: "
    "Broker: Coordinator load in progress: retrying",
)


def test_coordinator_still_loading_is_debug_at_start_and_a_warning_later(caplog):
    now = [100.0]
    log = LibrdkafkaLog(logging.getLogger("ingest.rdkafka"), grace=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="ingest.rdkafka"):
        log.log(logging.WARNING, "%s [%s] %s", *_PID_LINE)
        log.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connect to broker failed")
        log.log(logging.ERROR, "%s [%s] %s", *_PID_LINE)
        now[0] += 31.0
        log.log(logging.WARNING, "%s [%s] %s", *_PID_LINE)
    levels = [(r.levelno, "idempotence PID" in r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.DEBUG, True),
        (logging.WARNING, False),
        (logging.ERROR, True),
        (logging.WARNING, True),
    ]
