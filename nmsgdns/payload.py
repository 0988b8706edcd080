"""NmsgPayload accessors that read the few envelope fields without a protobuf parse, and construction.

Payloads travel between modules as the bytes of one serialized ``NmsgPayload``. Most consumers only need
(vid, msgtype), the time or the embedded message bytes; a protobuf parse costs about a microsecond and
copies the embedded record, so these helpers walk the wire format by hand. libnmsg (protobuf-c) writes the
fields in field-number order, vid and msgtype first, so the common case is decided by four bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from nmsgdns.errors import NmsgDnsError, PayloadError
from nmsgdns.proto.nmsg_pb2 import NmsgPayload

VID_BASE = 1
MSGTYPE_DNSQR = 9

_U64 = (1 << 64) - 1


class PayloadFields(NamedTuple):
    """The envelope of one payload; ``data_start``/``data_end`` delimit field 5 inside the payload bytes."""

    vid: int
    msgtype: int
    time_sec: int
    time_nsec: int
    data_start: int
    data_end: int
    source: int | None
    operator: int | None
    group: int | None


def read_varint(
    buf: bytes, pos: int, end: int, error: type[NmsgDnsError] = PayloadError, where: str = "NmsgPayload"
) -> tuple[int, int]:
    """Decode the protobuf varint at ``pos`` (at most 10 bytes); returns (value, next position).

    Shared by the hand-written walks of payloads and container bodies; each passes the error type its
    callers expect and a name for the message.
    """
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise error(f"{where}: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def payload_fields(payload: bytes) -> PayloadFields:
    """Walk every field of a serialized NmsgPayload; raises PayloadError when it is malformed.

    Unknown fields are skipped like protobuf does; the required fields (vid, msgtype, time_sec,
    time_nsec) must be present, as libnmsg's protobuf-c would refuse the message otherwise.
    """
    end = len(payload)
    pos = 0
    vid = msgtype = time_sec = time_nsec = None
    data_start = data_end = 0
    source = operator = group = None
    while pos < end:
        key, pos = read_varint(payload, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(payload, pos, end)
            if field == 1:
                vid = value & 0xFFFFFFFF
            elif field == 2:
                msgtype = value & 0xFFFFFFFF
            elif field == 3:
                time_sec = value - (1 << 64) if value >> 63 else value
            elif field == 7:
                source = value & 0xFFFFFFFF
            elif field == 8:
                operator = value & 0xFFFFFFFF
            elif field == 9:
                group = value & 0xFFFFFFFF
        elif wire == 2:
            length, pos = read_varint(payload, pos, end)
            if pos + length > end:
                raise PayloadError("NmsgPayload: length-delimited field runs past the end")
            if field == 5:
                data_start, data_end = pos, pos + length
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise PayloadError("NmsgPayload: truncated fixed32 field")
            if field == 4:
                time_nsec = int.from_bytes(payload[pos : pos + 4], "little")
            pos += 4
        elif wire == 1:
            pos += 8
            if pos > end:
                raise PayloadError("NmsgPayload: truncated fixed64 field")
        else:
            raise PayloadError(f"NmsgPayload: unsupported wire type {wire} (field {field})")
        if field == 0:
            raise PayloadError("NmsgPayload: field number 0")
    if vid is None or msgtype is None or time_sec is None or time_nsec is None:
        raise PayloadError("NmsgPayload: a required field (vid, msgtype, time_sec, time_nsec) is missing")
    return PayloadFields(vid, msgtype, time_sec, time_nsec, data_start, data_end, source, operator, group)


def payload_type(payload: bytes) -> tuple[int, int]:
    """(vid, msgtype) of a serialized NmsgPayload.

    Fast path: libnmsg writes ``08 vid 10 msgtype`` first and both are small, so four byte reads decide
    it; anything else falls back to the full walk (which also validates).
    """
    if len(payload) >= 4 and payload[0] == 0x08 and payload[2] == 0x10 and payload[1] < 0x80 > payload[3]:
        return payload[1], payload[3]
    fields = payload_fields(payload)
    return fields.vid, fields.msgtype


def payload_time(payload: bytes) -> tuple[int, int]:
    """(time_sec, time_nsec) of a serialized NmsgPayload."""
    fields = payload_fields(payload)
    return fields.time_sec, fields.time_nsec


def payload_data_span(payload: bytes) -> tuple[int, int]:
    """Start and end of field 5 (the message-module bytes) inside the payload; (0, 0) when absent.

    The fast path recognises libnmsg's usual layout, ``08 v 10 m 18 <5-byte time_sec> 25 <4> 2a <len>``
    with the data running to the end of the payload, so the CRC check in the reader costs a few byte
    reads instead of a walk. Any other layout is walked in full.
    """
    n = len(payload)
    if (
        n > 17
        and payload[15] == 0x2A
        and payload[10] == 0x25
        and payload[4] == 0x18
        and payload[0] == 0x08
        and payload[2] == 0x10
        and payload[1] < 0x80 > payload[3]
        and payload[5] > 0x7F < payload[6]
        and payload[7] > 0x7F < payload[8]
        and payload[9] < 0x80
    ):
        b = payload[16]
        if b < 0x80:
            if 17 + b == n:
                return 17, n
        else:
            c = payload[17]
            if c < 0x80 and 18 + ((b & 0x7F) | (c << 7)) == n:
                return 18, n
    fields = payload_fields(payload)
    return fields.data_start, fields.data_end


def payload_data(payload: bytes) -> bytes:
    """The message-module bytes (field 5) of a serialized NmsgPayload, e.g. a serialized DnsQR."""
    start, end = payload_data_span(payload)
    return payload[start:end]


def decode_payload(payload: bytes) -> NmsgPayload:
    """Full protobuf parse, for callers that need every field as an object."""
    msg = NmsgPayload()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise PayloadError(f"NmsgPayload does not parse: {exc}") from exc
    return msg


def encode_varint(value: int) -> bytes:
    """Protobuf varint; negative values are encoded as 64-bit two's complement, like int64 fields."""
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def make_payload(
    vid: int,
    msgtype: int,
    time_sec: int,
    time_nsec: int,
    data: bytes | None,
    *,
    source: int | None = None,
    operator: int | None = None,
    group: int | None = None,
) -> bytes:
    """Serialize an NmsgPayload byte-for-byte as libnmsg's protobuf-c does (fields in number order).

    ``data`` None omits field 5; b"" writes it empty (libnmsg distinguishes neither for the CRC).
    """
    if not (0 <= time_nsec <= 0xFFFFFFFF):
        raise ValueError(f"time_nsec out of range: {time_nsec}")
    parts = [
        b"\x08",
        encode_varint(vid & 0xFFFFFFFF),
        b"\x10",
        encode_varint(msgtype & 0xFFFFFFFF),
        b"\x18",
        encode_varint(time_sec),
        b"\x25",
        time_nsec.to_bytes(4, "little"),
    ]
    if data is not None:
        parts += [b"\x2a", encode_varint(len(data)), data]
    for tag, value in ((b"\x38", source), (b"\x40", operator), (b"\x48", group)):
        if value is not None:
            parts += [tag, encode_varint(value & 0xFFFFFFFF)]
    return b"".join(parts)


def replace_time(payload: bytes, time_sec: int) -> bytes:
    """The serialized NmsgPayload with field 3 (``time_sec``) set to ``time_sec``, every other field kept.

    For generators that give recorded captures other times (spread, shifted, out of order) while the
    records stay what they were. Fast path: libnmsg's layout ``08 vid 10 msgtype 18 <time_sec> 25
    <time_nsec> 2a <len> <data>``, data to the end, with the new varint as long as the old one (5 bytes
    for any time from 1978 to 3058): a splice, every other byte unchanged, the layout checked in a few
    byte reads. Any other payload is rebuilt by ``make_payload`` from its fields (vid, msgtype,
    time_nsec, data, source, operator, group), in libnmsg's field order, which gives the same bytes for
    every payload libnmsg writes; unknown fields are dropped. Raises PayloadError on a malformed payload,
    ValueError when ``time_sec`` is not an int64.
    """
    if not -(1 << 63) <= time_sec < (1 << 63):
        raise ValueError(f"time_sec out of the int64 range: {time_sec}")
    new = encode_varint(time_sec)
    end = 5 + len(new)  # where the old varint ends when it is as long as the new one
    n = len(payload)
    if (
        n > end + 6
        and payload[4] == 0x18
        and payload[0] == 0x08
        and payload[2] == 0x10
        and payload[1] < 0x80 > payload[3]
        and payload[end - 1] < 0x80
        and min(payload[5 : end - 1], default=0x80) > 0x7F
        and payload[end] == 0x25
        and payload[end + 5] == 0x2A
    ):
        length, data_start = read_varint(payload, end + 6, n)
        if data_start + length == n:
            return payload[:5] + new + payload[end:]
    fields = payload_fields(payload)
    return make_payload(
        fields.vid,
        fields.msgtype,
        time_sec,
        fields.time_nsec,
        payload[fields.data_start : fields.data_end] if fields.data_end else None,
        source=fields.source,
        operator=fields.operator,
        group=fields.group,
    )
