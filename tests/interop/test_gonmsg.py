"""Our codec against farsightsec's go-nmsg, an independent implementation (``-m interop``).

The peer is ``gonmsg/main.go``, built here with ``go build`` (modules from the Go module proxy, pinned by
``gonmsg/go.sum``). go-nmsg is pinned at v0.2.0: the newest versions import github.com/pebbe/zmq4
(cgo + libzmq), and v0.3.0, which has no such import, is not served by the module proxy here.

Known go-nmsg v0.2.0 limitation, shown by ``test_gonmsg_cannot_read_zlib_fragments``: for a container
with flags zlib|fragment it inflates each fragment's body before parsing it as an NmsgFragment, but
libnmsg (and go-nmsg's own writer) compress the whole blob and then split it. So go-nmsg reads plain
fragments but no compressed ones, not even nmsgtool's; we read both, including go-nmsg's.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from nmsgdns.container import FLAG_FRAGMENT, FLAG_ZLIB, parse_header
from nmsgdns.input import ContainerStreamReader
from nmsgdns.output import NmsgFileWriter
from nmsgdns.payload import make_payload, payload_data, payload_fields
from tests import corpus

pytestmark = pytest.mark.interop

GO_DIR = Path(__file__).resolve().parent / "gonmsg"


@pytest.fixture(scope="session")
def gonmsg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the peer once per session into a temporary directory."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("the go toolchain is not installed (needed to build the go-nmsg interop peer)")
    exe = tmp_path_factory.mktemp("gonmsg") / "gonmsg-interop"
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    subprocess.run([go, "build", "-o", str(exe), "."], cwd=GO_DIR, env=env, check=True, timeout=600)
    return exe


def _go_read(exe: Path, path: Path) -> list[dict]:
    proc = subprocess.run([str(exe), "read", str(path)], capture_output=True, check=True, timeout=60)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _go_write(exe: Path, path: Path, payloads: list[bytes], *args: str) -> None:
    lines = []
    for p in payloads:
        f = payload_fields(p)
        rec = {
            "vid": f.vid,
            "msgtype": f.msgtype,
            "time_sec": f.time_sec,
            "time_nsec": f.time_nsec,
            "payload": base64.b64encode(payload_data(p)).decode(),
        }
        lines.append(json.dumps(rec))
    stdin = ("\n".join(lines) + "\n").encode()
    subprocess.run([str(exe), "write", *args, str(path)], input=stdin, check=True, timeout=60)


def _write_ours(path: Path, payloads: list[bytes], **kwargs: object) -> None:
    with NmsgFileWriter(path, **kwargs) as w:  # type: ignore[arg-type]
        for p in payloads:
            w.write(p)


def _flags(path: Path) -> set[int]:
    data, off, out = path.read_bytes(), 0, set()
    while off < len(data):
        hdr = parse_header(data, off)
        out.add(hdr.flags)
        off += hdr.size + hdr.length
    return out


def _corpus_payloads(name: str) -> list[bytes]:
    with corpus.path(name).open("rb") as fh:
        return list(ContainerStreamReader(fh, name=name))


def _assert_same(records: list[dict], payloads: list[bytes]) -> None:
    assert len(records) == len(payloads)
    for rec, p in zip(records, payloads, strict=True):
        f = payload_fields(p)
        assert (rec["vid"], rec["msgtype"], rec["time_sec"], rec["time_nsec"]) == (
            f.vid,
            f.msgtype,
            f.time_sec,
            f.time_nsec,
        )
        assert base64.b64decode(rec["payload"]) == payload_data(p)
        assert base64.b64decode(rec["raw"]) == p  # Go re-marshals the envelope to the same bytes
        assert not rec.get("crc_error")


def _oversized() -> list[bytes]:
    rng = random.Random(5)
    return [
        make_payload(1, 9, 1700000000, 1, b"small"),
        make_payload(1, 9, 1700000001, 2, rng.randbytes(3000)),  # incompressible: stays fragmented
        make_payload(1, 9, 1700000002, 3, b"small again"),
    ]


@pytest.mark.parametrize("compress", [False, True])
def test_gonmsg_reads_our_files(gonmsg: Path, tmp_path: Path, compress: bool) -> None:
    payloads = _corpus_payloads("live_resolver.nmsg")
    path = tmp_path / "ours.nmsg"
    _write_ours(path, payloads, compress=compress)
    assert _flags(path) == {FLAG_ZLIB if compress else 0}
    _assert_same(_go_read(gonmsg, path), payloads)


def test_gonmsg_reads_our_fragments(gonmsg: Path, tmp_path: Path) -> None:
    payloads = _oversized()
    path = tmp_path / "frag.nmsg"
    _write_ours(path, payloads, bufsz=512)
    assert FLAG_FRAGMENT in _flags(path)
    _assert_same(_go_read(gonmsg, path), payloads)


def test_gonmsg_cannot_read_zlib_fragments(gonmsg: Path, tmp_path: Path) -> None:
    """Documents go-nmsg v0.2.0's limitation (module docstring); nmsgtool's own file fails the same way."""
    path = tmp_path / "zfrag.nmsg"
    _write_ours(path, _oversized(), bufsz=512, compress=True)
    assert FLAG_ZLIB | FLAG_FRAGMENT in _flags(path)
    for target in (path, corpus.path("sock_incomp_z.nmsg")):
        proc = subprocess.run([str(gonmsg), "read", str(target)], capture_output=True, timeout=60)
        assert proc.returncode != 0 and b"zlib" in proc.stderr


@pytest.mark.parametrize(
    ("args", "payloads", "expect_flags"),
    [
        ((), "corpus", {0}),
        (("-z",), "corpus", {FLAG_ZLIB}),
        (("-m", "512"), "oversized", {0, FLAG_FRAGMENT}),
        (("-m", "512", "-z"), "oversized", {FLAG_ZLIB, FLAG_ZLIB | FLAG_FRAGMENT}),
    ],
)
def test_we_read_gonmsg_files(
    gonmsg: Path, tmp_path: Path, args: tuple[str, ...], payloads: str, expect_flags: set[int]
) -> None:
    pls = _corpus_payloads("edge_cases.nmsg") if payloads == "corpus" else _oversized()
    path = tmp_path / "go.nmsg"
    _go_write(gonmsg, path, pls, *args)
    assert _flags(path) == expect_flags
    with path.open("rb") as fh:
        reader = ContainerStreamReader(fh, name=str(path))
        got = list(reader)
    assert got == pls  # go-nmsg serializes the envelope exactly as libnmsg does
    assert not reader.stats.drops  # its payload CRCs verify
