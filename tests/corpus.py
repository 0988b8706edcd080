"""Where the ground-truth corpus lives and how to read it.

The corpus (``tests/data/nmsg``: copies of the team's shared corpus, so a clone alone runs the tests) was
made by the real nmsgtool and the reference C filter; tests compare against it and never against output
our own code produced. ``$NMSG_CORPUS_DIR`` points them at another copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dpkt

from nmsgdns.input import ContainerStreamReader

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = Path(os.environ.get("NMSG_CORPUS_DIR", REPO_ROOT / "tests" / "data" / "nmsg"))

#: Every case NAME that has NAME.nmsg, NAME.json, NAME.filtered.nmsg and NAME.expected_counts.json.
CASES = ("live_resolver", "edge_cases", "sock_m512", "incompressible", "sock_incomp_z")
#: Cases that also have a zlib variant NAME.z.nmsg.
ZLIB_CASES = ("live_resolver", "edge_cases")
#: Cases captured from nmsgtool -s as UDP datagrams (NAME.udp.pcap).
SOCKET_CASES = ("sock_m512", "sock_incomp_z")
#: Cases converted from NAME.pcap by nmsgtool -p.
PCAP_CASES = ("live_resolver", "edge_cases", "incompressible")


def read_payloads(file: Path) -> list[bytes]:
    """Every payload of an NMSG file, read by our reader (fragments reassembled); a CRC mismatch or any
    other drop fails the test."""
    with file.open("rb") as fh:
        reader = ContainerStreamReader(fh, name=str(file))
        payloads = list(reader)
    assert reader.stats.total_drops == 0, (file, reader.stats.as_dict())
    return payloads


def path(name: str) -> Path:
    """Path of a corpus file, e.g. ``path("edge_cases.nmsg")``."""
    return CORPUS_DIR / name


def json_lines(name: str) -> list[dict]:
    """The objects of an ``nmsgtool -J`` dump, one per line."""
    with path(name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def expected_counts(case: str) -> dict[str, int]:
    """The reference filter's per-name-server selection counts for ``case``."""
    return json.loads(path(f"{case}.expected_counts.json").read_text(encoding="utf-8"))


def udp_datagrams(case: str) -> list[bytes]:
    """The UDP payloads of ``NAME.udp.pcap`` in capture order: the datagrams ``nmsgtool -s`` sent."""
    out = []
    with path(f"{case}.udp.pcap").open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                out.append(bytes(ip.data.data))
    return out
