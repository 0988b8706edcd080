from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DnsQRType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UDP_INVALID: _ClassVar[DnsQRType]
    UDP_QUERY_RESPONSE: _ClassVar[DnsQRType]
    UDP_UNANSWERED_QUERY: _ClassVar[DnsQRType]
    UDP_UNSOLICITED_RESPONSE: _ClassVar[DnsQRType]
    TCP: _ClassVar[DnsQRType]
    ICMP: _ClassVar[DnsQRType]
    UDP_QUERY_ONLY: _ClassVar[DnsQRType]
    UDP_RESPONSE_ONLY: _ClassVar[DnsQRType]

class UdpChecksum(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR: _ClassVar[UdpChecksum]
    ABSENT: _ClassVar[UdpChecksum]
    INCORRECT: _ClassVar[UdpChecksum]
    CORRECT: _ClassVar[UdpChecksum]
UDP_INVALID: DnsQRType
UDP_QUERY_RESPONSE: DnsQRType
UDP_UNANSWERED_QUERY: DnsQRType
UDP_UNSOLICITED_RESPONSE: DnsQRType
TCP: DnsQRType
ICMP: DnsQRType
UDP_QUERY_ONLY: DnsQRType
UDP_RESPONSE_ONLY: DnsQRType
ERROR: UdpChecksum
ABSENT: UdpChecksum
INCORRECT: UdpChecksum
CORRECT: UdpChecksum

class DnsQR(_message.Message):
    __slots__ = ("type", "query_ip", "response_ip", "proto", "query_port", "response_port", "id", "qname", "qtype", "qclass", "rcode", "query_packet", "query_time_sec", "query_time_nsec", "response_packet", "response_time_sec", "response_time_nsec", "tcp", "icmp", "timeout", "udp_checksum", "resolver_address_zeroed")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUERY_IP_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_IP_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    QUERY_PORT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PORT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    QNAME_FIELD_NUMBER: _ClassVar[int]
    QTYPE_FIELD_NUMBER: _ClassVar[int]
    QCLASS_FIELD_NUMBER: _ClassVar[int]
    RCODE_FIELD_NUMBER: _ClassVar[int]
    QUERY_PACKET_FIELD_NUMBER: _ClassVar[int]
    QUERY_TIME_SEC_FIELD_NUMBER: _ClassVar[int]
    QUERY_TIME_NSEC_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PACKET_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIME_SEC_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIME_NSEC_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    ICMP_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    UDP_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    RESOLVER_ADDRESS_ZEROED_FIELD_NUMBER: _ClassVar[int]
    type: DnsQRType
    query_ip: bytes
    response_ip: bytes
    proto: int
    query_port: int
    response_port: int
    id: int
    qname: bytes
    qtype: int
    qclass: int
    rcode: int
    query_packet: _containers.RepeatedScalarFieldContainer[bytes]
    query_time_sec: _containers.RepeatedScalarFieldContainer[int]
    query_time_nsec: _containers.RepeatedScalarFieldContainer[int]
    response_packet: _containers.RepeatedScalarFieldContainer[bytes]
    response_time_sec: _containers.RepeatedScalarFieldContainer[int]
    response_time_nsec: _containers.RepeatedScalarFieldContainer[int]
    tcp: bytes
    icmp: bytes
    timeout: float
    udp_checksum: UdpChecksum
    resolver_address_zeroed: bool
    def __init__(self, type: _Optional[_Union[DnsQRType, str]] = ..., query_ip: _Optional[bytes] = ..., response_ip: _Optional[bytes] = ..., proto: _Optional[int] = ..., query_port: _Optional[int] = ..., response_port: _Optional[int] = ..., id: _Optional[int] = ..., qname: _Optional[bytes] = ..., qtype: _Optional[int] = ..., qclass: _Optional[int] = ..., rcode: _Optional[int] = ..., query_packet: _Optional[_Iterable[bytes]] = ..., query_time_sec: _Optional[_Iterable[int]] = ..., query_time_nsec: _Optional[_Iterable[int]] = ..., response_packet: _Optional[_Iterable[bytes]] = ..., response_time_sec: _Optional[_Iterable[int]] = ..., response_time_nsec: _Optional[_Iterable[int]] = ..., tcp: _Optional[bytes] = ..., icmp: _Optional[bytes] = ..., timeout: _Optional[float] = ..., udp_checksum: _Optional[_Union[UdpChecksum, str]] = ..., resolver_address_zeroed: _Optional[bool] = ...) -> None: ...
