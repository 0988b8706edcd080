"""The UDP receiver of NMSG datagrams: sockets fed by ``nmsgtool -s`` or an SIE channel's endpoints.

Shared by the standalone filter and the ingest bridge so both read sockets the same way: the largest
receive buffer the kernel allows (nmsgtool asks for 16 MiB) and the kernel's own drop counter
(``SO_RXQ_OVFL``) read with every datagram, so overruns are reported instead of silently lost.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from nmsgdns.chalias import Endpoint, parse_endpoint

log = logging.getLogger(__name__)

#: What nmsgtool asks for; the kernel caps SO_RCVBUF at net.core.rmem_max unless SO_RCVBUFFORCE works.
RCVBUF_WANTED = 16 * 1024 * 1024
#: Largest UDP payload; one datagram is one container.
MAX_DATAGRAM = 65535
# Linux socket option numbers missing from Python's socket module on some builds.
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_ANC_SPACE = socket.CMSG_SPACE(4)


def open_udp_socket(addr: str, port: int, rcvbuf: int = RCVBUF_WANTED) -> socket.socket:
    """A non-blocking UDP socket bound to ``addr:port`` with a large buffer and drop reporting.

    Multicast addresses are joined on all interfaces, as nmsgtool does for SIE channels.
    """
    ip = ipaddress.ip_address(addr)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # needs CAP_NET_ADMIN; fall back to the capped option
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
        except OSError:
            log.warning("%s/%d: kernel drop counter (SO_RXQ_OVFL) unavailable", addr, port)
        sock.bind((addr, port))
        if ip.is_multicast:
            if family == socket.AF_INET:
                mreq = struct.pack("4s4s", ip.packed, socket.inet_aton("0.0.0.0"))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            else:
                mreq = struct.pack("16sI", ip.packed, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr}/{port}: {exc.strerror}") from None
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < rcvbuf:
        log.warning(
            "%s/%d: receive buffer is %d bytes, wanted %d (raise net.core.rmem_max or run as root)",
            addr,
            port,
            got,
            rcvbuf,
        )
    return sock


@dataclass
class UdpReceiver:
    """Datagrams from a set of UDP sockets, with the kernel's per-socket drop counts.

    ``kernel_drops`` is the sum over sockets of the last ``SO_RXQ_OVFL`` value seen (the kernel's count
    of datagrams dropped because the receive buffer was full since the socket opened).
    """

    endpoints: list[Endpoint]
    rcvbuf: int = RCVBUF_WANTED
    datagrams: int = 0
    _drops: dict[int, int] = field(default_factory=dict)
    _sockets: list[socket.socket] = field(default_factory=list)
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def __post_init__(self) -> None:
        try:
            for addr, port in self.endpoints:
                sock = open_udp_socket(addr, port, self.rcvbuf)
                self._sockets.append(sock)
                self._selector.register(sock, selectors.EVENT_READ)
        except OSError:
            self.close()
            raise

    @property
    def kernel_drops(self) -> int:
        return sum(self._drops.values())

    def addresses(self) -> list[tuple[str, int]]:
        """The bound addresses (useful when a port was 0)."""
        return [s.getsockname()[:2] for s in self._sockets]

    def receive(self, timeout: float, max_batch: int = 1024) -> list[tuple[bytes, tuple]]:
        """Datagrams ready within ``timeout`` seconds: up to ``max_batch`` per ready socket."""
        out: list[tuple[bytes, tuple]] = []
        for key, _ in self._selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            for _ in range(max_batch):
                try:
                    data, anc, _flags, sender = sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
                except BlockingIOError:
                    break
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                        self._drops[sock.fileno()] = struct.unpack("=I", value[:4])[0]
                out.append((data, sender))
        self.datagrams += len(out)
        return out

    def close(self) -> None:
        for sock in self._sockets:
            self._selector.unregister(sock)
            sock.close()
        self._sockets.clear()
        self._selector.close()


def endpoints_of(specs: Iterable[str]) -> Iterator[Endpoint]:
    """Endpoints of several ``ADDR/PORT[..PORT2]`` specs."""
    for spec in specs:
        yield from parse_endpoint(spec)
