"""bench/make_big.py --name-servers: only ``response_ip`` changes, its family is kept, the draws are Zipf.
The time options (issue #17): only ``time_sec`` changes, as each option says, and the reference filter's
counts stay those of the source.

Checked against the source capture decoded by protobuf (not by the generator's own walk), on small
outputs, without Kafka.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from bench.make_big import main, response_ip_span
from nmsgdns.cli import main as edns_filter
from nmsgdns.edns import EdnsFilter
from nmsgdns.payload import make_payload, payload_time, replace_time
from nmsgdns.proto.dnsqr_payload_pb2 import DnsqrPayload
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from tests import corpus

RECORDS = 6000
NAME_SERVERS = 40
ZIPF = 0.8
DAY = 86400
#: 2040-01-01 00:00:00 UTC, a sensor's bad clock
FUTURE = 2208988800


def _make(tmp_path: Path, case: str, *extra: str, name: str = "out.nmsg") -> list[bytes]:
    out = tmp_path / name
    argv = ["--source", str(corpus.path(f"{case}.nmsg")), "--records", str(RECORDS), "--out", str(out)]
    assert main([*argv, *extra]) == 0
    return corpus.read_payloads(out)  # fails on any CRC mismatch or other drop


def _source(case: str) -> list[bytes]:
    payloads = corpus.read_payloads(corpus.path(f"{case}.nmsg"))
    return list(itertools.islice(itertools.cycle(payloads), RECORDS))


def _response_ip(payload: bytes) -> bytes | None:
    """``response_ip`` as protobuf decodes it, or None for a payload that is not a decodable base:dnsqr."""
    try:
        msg = DnsqrPayload.FromString(payload)
    except DecodeError:
        return None
    if (msg.vid, msg.msgtype) != (1, 9) or not msg.payload.HasField("response_ip"):
        return None
    return msg.payload.response_ip


def _without_response_ip(payload: bytes) -> DnsqrPayload:
    msg = DnsqrPayload.FromString(payload)
    msg.payload.ClearField("response_ip")
    return msg


@pytest.mark.parametrize("case", ["live_resolver", "edge_cases"])
def test_only_response_ip_changes_and_keeps_its_family(tmp_path: Path, case: str) -> None:
    source = _source(case)
    out = _make(tmp_path, case, "--name-servers", str(NAME_SERVERS), "--zipf", str(ZIPF))
    assert len(out) == len(source)
    rewritten = 0
    for before, after in zip(source, out, strict=True):
        old = _response_ip(before)
        if old is None or len(old) not in (4, 16):
            assert after == before
            continue
        new = _response_ip(after)
        assert new is not None and len(new) == len(old)
        assert len(after) == len(before)
        assert _without_response_ip(after) == _without_response_ip(before)
        rewritten += new != old
    assert rewritten > 0.9 * len(source)


def test_distinct_name_servers_and_zipf_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _make(tmp_path, "live_resolver", "--name-servers", str(NAME_SERVERS), "--zipf", str(ZIPF))
    by_family: dict[int, Counter[bytes]] = {4: Counter(), 16: Counter()}
    for payload in out:
        ip = _response_ip(payload)
        if ip is not None and len(ip) in by_family:
            by_family[len(ip)][ip] += 1
    # Thousands of draws over 40 ranks whose least likely has p ~ 0.9 %: every rank shows, in each family.
    assert {family: len(c) for family, c in by_family.items()} == {4: NAME_SERVERS, 16: NAME_SERVERS}
    assert f"{2 * NAME_SERVERS} distinct name servers written" in capsys.readouterr().out
    top_share = 1 / sum(r**-ZIPF for r in range(1, NAME_SERVERS + 1))  # rank 1's Zipf probability
    for counts in by_family.values():
        ranked = [n for _ip, n in counts.most_common()]
        assert ranked[0] / sum(ranked) == pytest.approx(top_share, rel=0.25)
        assert ranked[0] > 5 * ranked[-1]


def test_same_selection_as_the_plain_repetition(tmp_path: Path) -> None:
    plain, wide = EdnsFilter(), EdnsFilter()
    for payload in _make(tmp_path, "live_resolver", name="plain.nmsg"):
        plain.select(payload)
    for payload in _make(tmp_path, "live_resolver", "--name-servers", "1000", name="wide.nmsg"):
        wide.select(payload)
    assert wide.selected == plain.selected > 0
    assert len(wide.failures_by_ns) > 10 * len(plain.failures_by_ns)


def test_default_repeats_the_source_and_seed_decides_the_draws(tmp_path: Path) -> None:
    assert _make(tmp_path, "live_resolver", name="plain.nmsg") == _source("live_resolver")
    a = _make(tmp_path, "live_resolver", "--name-servers", "100", "--seed", "3", name="a.nmsg")
    b = _make(tmp_path, "live_resolver", "--name-servers", "100", "--seed", "3", name="b.nmsg")
    c = _make(tmp_path, "live_resolver", "--name-servers", "100", "--seed", "4", name="c.nmsg")
    assert a == b != c


def test_response_ip_span() -> None:
    record = DnsQR(type=1, query_ip=b"\x01\x02\x03\x04", response_ip=b"\x05\x06\x07\x08", qname=b"\x00")
    payload = make_payload(1, 9, 1700000000, 5, record.SerializeToString())
    span = response_ip_span(payload)
    assert span is not None
    assert payload[span[0] : span[1]] == b"\x05\x06\x07\x08"
    assert response_ip_span(make_payload(1, 9, 1700000000, 5, DnsQR(type=4).SerializeToString())) is None
    assert response_ip_span(make_payload(1, 2, 1700000000, 5, record.SerializeToString())) is None


def _times(payloads: list[bytes]) -> list[int]:
    return [payload_time(p)[0] for p in payloads]


def _assert_only_times_changed(before: list[bytes], after: list[bytes]) -> None:
    """Each record is its source record but for ``time_sec``: putting the old time back restores it."""
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        assert payload_time(new)[1] == payload_time(old)[1]  # time_nsec is kept
        assert replace_time(new, payload_time(old)[0]) == old


def test_times_spread_evenly_over_the_span(tmp_path: Path) -> None:
    source = _source("live_resolver")
    start, span = 1600000000, 3 * DAY
    out = _make(tmp_path, "live_resolver", "--time-span-days", "3", "--start-time", str(start))
    _assert_only_times_changed(source, out)
    times = _times(out)
    assert times[0] == start and times[-1] == start + span
    step = span / (RECORDS - 1)
    assert all(step - 1 < b - a < step + 1 for a, b in itertools.pairwise(times))
    default = _make(tmp_path, "live_resolver", "--time-span-days", "0.5", name="default.nmsg")
    assert _times(default)[0] == _times(source)[0]
    assert _times(default)[-1] == _times(source)[0] + DAY // 2


def test_shuffled_times_are_a_permutation(tmp_path: Path) -> None:
    source = _source("live_resolver")
    span = ("--time-span-days", "30")
    ordered = _times(_make(tmp_path, "live_resolver", *span, name="ordered.nmsg"))
    shuffled = _make(tmp_path, "live_resolver", *span, "--shuffle-times", "--seed", "3")
    _assert_only_times_changed(source, shuffled)
    times = _times(shuffled)
    assert sorted(times) == ordered != times
    again = _make(tmp_path, "live_resolver", *span, "--shuffle-times", "--seed", "3", name="again.nmsg")
    assert _times(again) == times


def test_offset_shifts_every_record(tmp_path: Path) -> None:
    source = _source("live_resolver")
    out = _make(tmp_path, "live_resolver", "--time-offset-days", "-730.5")
    _assert_only_times_changed(source, out)
    assert _times(out) == [t - 730 * DAY - DAY // 2 for t in _times(source)]


def test_future_record_in_the_middle(tmp_path: Path) -> None:
    source = _source("live_resolver")
    out = _make(tmp_path, "live_resolver", "--future-record", str(FUTURE))
    _assert_only_times_changed(source, out)
    expected = _times(source)
    expected[RECORDS // 2] = FUTURE
    assert _times(out) == expected


def test_times_with_name_servers(tmp_path: Path) -> None:
    """The address rewrite is the same with or without the time options: they change only the times."""
    ns = ["--name-servers", str(NAME_SERVERS), "--seed", "5"]
    wide = _make(tmp_path, "live_resolver", *ns, name="wide.nmsg")
    both = _make(tmp_path, "live_resolver", *ns, "--time-span-days", "7", "--shuffle-times", name="both.nmsg")
    _assert_only_times_changed(wide, both)
    assert sorted(_times(both)) == _times(_make(tmp_path, "live_resolver", "--time-span-days", "7"))


@pytest.mark.parametrize(
    "options",
    [
        ("--time-span-days", "3650", "--shuffle-times", "--future-record", str(FUTURE)),
        ("--time-offset-days", "-3650", "--shuffle-times"),
    ],
    ids=["span-shuffle-future", "offset-shuffle"],
)
def test_reference_counts_unchanged(tmp_path: Path, options: tuple[str, ...]) -> None:
    """Two copies of the source, retimed: ``dnsqr-edns-filter`` counts twice the reference's counts."""
    source = corpus.path("live_resolver.nmsg")
    records = 2 * len(corpus.read_payloads(source))
    out = tmp_path / "retimed.nmsg"
    assert main(["--source", str(source), "--records", str(records), "--out", str(out), *options]) == 0
    counts = tmp_path / "counts.json"
    assert edns_filter(["-r", str(out), "-w", str(tmp_path / "sel.nmsg"), "--counts-json", str(counts)]) == 0
    expected = {ns: 2 * n for ns, n in corpus.expected_counts("live_resolver").items()}
    assert json.loads(counts.read_text()) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--start-time", "1600000000"], "--start-time needs --time-span-days"),
        (["--time-span-days", "1", "--time-offset-days", "1"], "not allowed with"),
        (["--time-span-days", "0"], "--time-span-days must be more than 0"),
        (["--time-span-days", "inf"], "not a finite number of days"),
        (["--time-offset-days", "-30000"], "must lie in years 1970 to 9999"),
        (["--future-record", "-1"], "must lie in years 1970 to 9999"),
        (["--records", "0"], "--records must be at least 1"),
    ],
)
def test_time_option_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    out = tmp_path / "o.nmsg"
    with pytest.raises(SystemExit) as exc:
        main(["--source", str(corpus.path("live_resolver.nmsg")), "--out", str(out), *options])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
