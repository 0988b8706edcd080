"""NmsgPayload accessors: the hand walk must agree with protobuf and with nmsgtool's JSON dump.

``replace_time`` is checked against a protobuf re-encode of the payload with the new time.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nmsgdns import payload as payload_module
from nmsgdns.container import decode_container
from nmsgdns.errors import PayloadError
from nmsgdns.payload import (
    MSGTYPE_DNSQR,
    VID_BASE,
    decode_payload,
    make_payload,
    payload_data,
    payload_data_span,
    payload_fields,
    payload_time,
    payload_type,
    replace_time,
)
from nmsgdns.proto.nmsg_pb2 import NmsgPayload
from tests import corpus


def _json_time(text: str) -> tuple[int, int]:
    """nmsgtool -J prints UTC as 'YYYY-MM-DD HH:MM:SS.nnnnnnnnn'."""
    whole, frac = text.split(".")
    dt = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()), int(frac)


def test_corpus_envelopes_match_nmsgtool_json() -> None:
    payloads = decode_container(corpus.path("live_resolver.nmsg").read_bytes()).payloads
    objs = corpus.json_lines("live_resolver.json")
    assert len(payloads) == len(objs)
    for p, obj in zip(payloads, objs, strict=True):
        assert (obj["vname"], obj["mname"]) == ("base", "dnsqr")
        assert payload_type(p) == (VID_BASE, MSGTYPE_DNSQR)
        assert payload_time(p) == _json_time(obj["time"])
        ref = decode_payload(p)
        assert payload_data(p) == ref.payload
        fields = payload_fields(p)
        assert (fields.vid, fields.msgtype, fields.time_sec, fields.time_nsec) == (
            ref.vid,
            ref.msgtype,
            ref.time_sec,
            ref.time_nsec,
        )


@pytest.mark.parametrize(
    ("vid", "msgtype", "time_sec", "time_nsec", "data", "extra"),
    [
        (1, 9, 1700000000, 123, b"x" * 5, {}),
        (1, 9, 1700000000, 0, b"y" * 300, {}),
        (1, 9, 1700000000, 999999999, b"z" * 20000, {}),
        (200, 70000, -5, 1, b"", {"source": 7, "operator": 2**32 - 1, "group": 0}),
        (0, 0, 0, 0, None, {}),
    ],
)
def test_make_payload_matches_protobuf_and_walk(
    vid: int, msgtype: int, time_sec: int, time_nsec: int, data: bytes | None, extra: dict[str, int]
) -> None:
    ours = make_payload(vid, msgtype, time_sec, time_nsec, data, **extra)
    ref = NmsgPayload(vid=vid, msgtype=msgtype, time_sec=time_sec, time_nsec=time_nsec, **extra)
    if data is not None:
        ref.payload = data
    assert ours == ref.SerializeToString()
    assert payload_type(ours) == (vid, msgtype)
    assert payload_time(ours) == (time_sec, time_nsec)
    assert payload_data(ours) == (data or b"")
    fields = payload_fields(ours)
    assert (fields.source, fields.operator, fields.group) == (
        extra.get("source"),
        extra.get("operator"),
        extra.get("group"),
    )


def test_data_span_walks_unusual_layouts() -> None:
    """Field order is free in protobuf: data first, trailing optional fields, unknown fields."""
    ref = NmsgPayload(vid=1, msgtype=9, time_sec=1, time_nsec=2, payload=b"abc", source=3)
    p = ref.SerializeToString()
    s, e = payload_data_span(p)
    assert p[s:e] == b"abc"
    reordered = b"\x2a\x03abc" + b"\x08\x01\x10\x09\x18\x01\x25" + (2).to_bytes(4, "little") + b"\x58\x05"
    s, e = payload_data_span(reordered)
    assert reordered[s:e] == b"abc"
    assert payload_type(reordered) == (1, 9)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x08",  # truncated varint
        b"\x08\x01\x10\x09",  # required times missing
        b"\x08\x01\x10\x09\x18\x01\x25\x00\x00",  # truncated fixed32
        b"\x08\x01\x10\x09\x18\x01\x25\x00\x00\x00\x00\x2a\x05ab",  # field 5 runs past the end
        b"\x0f\x01",  # wire type 7
        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # overlong varint
    ],
)
def test_malformed_payloads_raise_payload_error(bad: bytes) -> None:
    with pytest.raises(PayloadError):
        payload_fields(bad)
    with pytest.raises(PayloadError):
        payload_data_span(bad)


def test_payload_type_fast_path_needs_no_full_walk() -> None:
    """Consumers filter on (vid, msgtype) only; a payload cut after the type still answers."""
    assert payload_type(b"\x08\x01\x10\x09") == (1, 9)


def test_decode_payload_error() -> None:
    with pytest.raises(PayloadError):
        decode_payload(b"\x0a\x05ab")


def _no_walk(payload: bytes) -> None:
    raise AssertionError("payload_fields called")


def _reencoded(payload: bytes, time_sec: int) -> bytes:
    """The payload parsed by protobuf and serialized again with ``time_sec``: what replace_time must give."""
    msg = decode_payload(payload)
    msg.time_sec = time_sec
    return msg.SerializeToString()


YEAR = 365 * 86400
#: the first and last times a 5-byte varint holds, like the corpus's (1978 and 3058)
FIVE_BYTE_TIMES = (1 << 28, (1 << 35) - 1)


def test_replace_time_splices_corpus_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = corpus.read_payloads(corpus.path("live_resolver.nmsg"))  # read by ContainerStreamReader
    assert payloads
    old_times = [payload_time(p) for p in payloads]
    times = [(old_sec + YEAR, *FIVE_BYTE_TIMES) for old_sec, _nsec in old_times]
    with monkeypatch.context() as m:  # the splice must not need the full walk
        m.setattr(payload_module, "payload_fields", _no_walk)
        spliced = [[replace_time(p, t) for t in ts] for p, ts in zip(payloads, times, strict=True)]
    for p, (old_sec, old_nsec), ts, outs in zip(payloads, old_times, times, spliced, strict=True):
        for time_sec, out in zip(ts, outs, strict=True):
            assert out == _reencoded(p, time_sec)
            assert len(out) == len(p)
            assert payload_time(out) == (time_sec, old_nsec)
            assert payload_data(out) == payload_data(p)
            assert replace_time(out, old_sec) == p


@pytest.mark.parametrize("time_sec", [0, 1, 127, 128, (1 << 28) - 1, 1 << 35, 2**62, -1, -(2**63)])
@pytest.mark.parametrize(
    "extra", [{}, {"source": 7, "operator": 2**32 - 1, "group": 0}], ids=["plain", "source-operator-group"]
)
def test_replace_time_with_another_varint_length(time_sec: int, extra: dict[str, int]) -> None:
    p = make_payload(1, 9, 1700000000, 123, b"x" * 200, **extra)
    out = replace_time(p, time_sec)
    assert out == _reencoded(p, time_sec)
    assert payload_time(out) == (time_sec, 123)
    assert replace_time(out, 1700000000) == p


def test_replace_time_without_data() -> None:
    for data in (None, b""):
        p = make_payload(1, 9, 1700000000, 5, data)
        assert replace_time(p, 1800000000) == _reencoded(p, 1800000000)
        assert replace_time(p, 3) == _reencoded(p, 3)


def test_replace_time_rebuilds_unusual_layouts() -> None:
    """Data first and a second time_sec (protobuf keeps the last): the rebuild sets the one that counts."""
    reordered = b"\x2a\x03abc" + b"\x08\x01\x10\x09\x18\x01\x25" + (2).to_bytes(4, "little") + b"\x18\x05"
    assert payload_time(reordered) == (5, 2)
    out = replace_time(reordered, 1700000000)
    assert out == make_payload(1, 9, 1700000000, 2, b"abc")
    ref = NmsgPayload(vid=1, msgtype=9, time_sec=1700000000, time_nsec=2, payload=b"abc")
    assert decode_payload(out) == ref


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x08\x01\x10\x09",  # required times missing
        b"\x08\x01\x10\x09\x18\x81\x80\x80\x80\x06\x25\x00\x00\x00\x00\x2a\x05ab",  # data past the end
        b"\x08\x01\x10\x09\x18\x81\x80\x80\x80\x06\x25\x00\x00\x00\x00\x2a\x80",  # truncated length
        b"\x08\x01\x10\x09\x18\x81\x80\x80\x80\x06\x25\x00\x00\x00\x00\x2a\x01a\x0f",  # wire type 7
    ],
)
def test_replace_time_malformed_payload_raises_payload_error(bad: bytes) -> None:
    with pytest.raises(PayloadError):
        replace_time(bad, 1700000000)


def test_replace_time_out_of_int64() -> None:
    p = make_payload(1, 9, 1700000000, 0, b"")
    with pytest.raises(ValueError, match="int64"):
        replace_time(p, 1 << 63)
