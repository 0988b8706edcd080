from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Nmsg(_message.Message):
    __slots__ = ("payloads", "payload_crcs", "sequence", "sequence_id")
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_CRCS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    payloads: _containers.RepeatedCompositeFieldContainer[NmsgPayload]
    payload_crcs: _containers.RepeatedScalarFieldContainer[int]
    sequence: int
    sequence_id: int
    def __init__(self, payloads: _Optional[_Iterable[_Union[NmsgPayload, _Mapping]]] = ..., payload_crcs: _Optional[_Iterable[int]] = ..., sequence: _Optional[int] = ..., sequence_id: _Optional[int] = ...) -> None: ...

class NmsgPayload(_message.Message):
    __slots__ = ("vid", "msgtype", "time_sec", "time_nsec", "payload", "source", "operator", "group")
    VID_FIELD_NUMBER: _ClassVar[int]
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_SEC_FIELD_NUMBER: _ClassVar[int]
    TIME_NSEC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    vid: int
    msgtype: int
    time_sec: int
    time_nsec: int
    payload: bytes
    source: int
    operator: int
    group: int
    def __init__(self, vid: _Optional[int] = ..., msgtype: _Optional[int] = ..., time_sec: _Optional[int] = ..., time_nsec: _Optional[int] = ..., payload: _Optional[bytes] = ..., source: _Optional[int] = ..., operator: _Optional[int] = ..., group: _Optional[int] = ...) -> None: ...

class NmsgFragment(_message.Message):
    __slots__ = ("id", "current", "last", "fragment", "crc")
    ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    CRC_FIELD_NUMBER: _ClassVar[int]
    id: int
    current: int
    last: int
    fragment: bytes
    crc: int
    def __init__(self, id: _Optional[int] = ..., current: _Optional[int] = ..., last: _Optional[int] = ..., fragment: _Optional[bytes] = ..., crc: _Optional[int] = ...) -> None: ...
