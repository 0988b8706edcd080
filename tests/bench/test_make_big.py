"""bench/make_big.py --name-servers: only ``response_ip`` changes, its family is kept, the draws are Zipf.

Checked against the source capture decoded by protobuf (not by the generator's own walk), on small
outputs, without Kafka.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from bench.make_big import main, response_ip_span
from nmsgdns.edns import EdnsFilter
from nmsgdns.payload import make_payload
from nmsgdns.proto.dnsqr_payload_pb2 import DnsqrPayload
from nmsgdns.proto.dnsqr_pb2 import DnsQR
from tests import corpus

RECORDS = 6000
NAME_SERVERS = 40
ZIPF = 0.8


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
