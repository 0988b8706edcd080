"""The nmsg channel-alias file: ``-C ch202`` names a set of UDP sockets.

Format (libnmsg): one alias per line, ``NAME ADDR/PORT[..PORT2] [ADDR/PORT...]``, whitespace separated;
every line with the same NAME adds sockets. ``#`` starts a comment. The file is ``$NMSG_CHALIAS_FILE``,
else the first that exists of the locations libnmsg builds use (sysconfdir ``/usr/local/etc`` for source
builds, ``/etc/nmsg`` for distribution packages).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from nmsgdns.errors import ChannelError

DEFAULT_LOCATIONS = (
    Path("/usr/local/etc/nmsg.chalias"),
    Path("/etc/nmsg/nmsg.chalias"),
    Path("/etc/nmsg.chalias"),
)

Endpoint = tuple[str, int]


def parse_endpoint(text: str) -> list[Endpoint]:
    """``ADDR/PORT`` or ``ADDR/PORT..PORT2`` -> one (addr, port) per port, as nmsgtool ``-l`` takes it."""
    addr, sep, ports = text.rpartition("/")
    if not sep or not addr:
        raise ChannelError(f"{text!r}: expected ADDR/PORT or ADDR/PORT..PORT2")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ChannelError(f"{text!r}: {addr!r} is not an IP address") from None
    first, dots, last = ports.partition("..")
    try:
        lo = int(first)
        hi = int(last) if dots else lo
    except ValueError:
        raise ChannelError(f"{text!r}: port {ports!r} is not a number or range") from None
    if not (0 < lo <= hi <= 65535):
        raise ChannelError(f"{text!r}: port range {lo}..{hi} is not within 1..65535 ascending")
    return [(addr, port) for port in range(lo, hi + 1)]


def chalias_path(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Path:
    """The alias file to use: the explicit one, ``$NMSG_CHALIAS_FILE``, or the first default that exists."""
    if explicit:
        return Path(explicit)
    if environ.get("NMSG_CHALIAS_FILE"):
        return Path(environ["NMSG_CHALIAS_FILE"])
    for candidate in DEFAULT_LOCATIONS:
        if candidate.exists():
            return candidate
    raise ChannelError(
        "no channel alias file: set NMSG_CHALIAS_FILE or pass --chalias "
        f"(looked in {', '.join(str(p) for p in DEFAULT_LOCATIONS)})"
    )


def load_chalias(path: str | os.PathLike[str]) -> dict[str, list[Endpoint]]:
    """All aliases of the file, each with its endpoints in file order."""
    aliases: dict[str, list[Endpoint]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ChannelError(f"{path}: cannot read channel alias file: {exc.strerror}") from None
    for lineno, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ChannelError(f"{path}:{lineno}: alias {fields[0]!r} lists no ADDR/PORT")
        try:
            endpoints = [ep for spec in fields[1:] for ep in parse_endpoint(spec)]
        except ChannelError as exc:
            raise ChannelError(f"{path}:{lineno}: {exc}") from None
        aliases.setdefault(fields[0], []).extend(endpoints)
    return aliases


def channel_endpoints(name: str, path: str | os.PathLike[str] | None = None) -> list[Endpoint]:
    """The UDP endpoints of channel ``name`` (e.g. ``ch202``)."""
    source = chalias_path(path)
    aliases = load_chalias(source)
    if name not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise ChannelError(f"channel {name!r} is not in {source} (known: {known})")
    return aliases[name]
