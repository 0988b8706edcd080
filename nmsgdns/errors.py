"""Error types of the domain package.

Everything the codec and scanners raise on bad input derives from :class:`NmsgDnsError`, so a
long-running process can catch exactly "the input was bad" without hiding programming errors.
Messages name where the problem is (file and offset, or sender) and what was wrong.
"""

from __future__ import annotations


class NmsgDnsError(Exception):
    """Base class of every documented error raised on bad input."""


class ContainerError(NmsgDnsError):
    """An NMSG container is malformed: bad magic, version, length, zlib stream or protobuf body."""


class TruncatedError(ContainerError):
    """The input ended in the middle of a container."""


class FragmentError(NmsgDnsError):
    """A fragment cannot be reassembled: bounds, size cap or CRC mismatch."""


class PayloadError(NmsgDnsError):
    """A payload (NmsgPayload or the DnsQR inside it) does not decode."""


class DnsWireError(NmsgDnsError):
    """A DNS message does not parse under the reference (libwdns) rules."""


class PcapError(NmsgDnsError):
    """A pcap file cannot be read."""


class ChannelError(NmsgDnsError):
    """A channel alias is unknown or the alias file is malformed."""
