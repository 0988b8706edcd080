import dnsqr_pb2 as _dnsqr_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DnsqrPayload(_message.Message):
    __slots__ = ("vid", "msgtype", "time_sec", "time_nsec", "payload")
    VID_FIELD_NUMBER: _ClassVar[int]
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_SEC_FIELD_NUMBER: _ClassVar[int]
    TIME_NSEC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    vid: int
    msgtype: int
    time_sec: int
    time_nsec: int
    payload: _dnsqr_pb2.DnsQR
    def __init__(self, vid: _Optional[int] = ..., msgtype: _Optional[int] = ..., time_sec: _Optional[int] = ..., time_nsec: _Optional[int] = ..., payload: _Optional[_Union[_dnsqr_pb2.DnsQR, _Mapping]] = ...) -> None: ...
