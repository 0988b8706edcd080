"""Writers that fill containers exactly as libnmsg 1.3.3 does, so our files match nmsgtool's byte for byte.

libnmsg's rule (nmsg/container.c): a container's estimated size starts at 10 (the header); each payload
adds its length, 2 to 5 bytes of tag and length varint, and 6 for its CRC field. A payload goes into a
non-empty container only while ``estimate + len + 32 < bufsz``; otherwise the container is written first.
After adding, if ``estimate (+ 18 when sequencing) > bufsz`` the container is "overfull" (only possible
for a single payload larger than the buffer) and is sent as fragments of ``bufsz - 32`` bytes.

Sequencing (libnmsg turns it on for socket outputs only): ``sequence`` counts containers from 0, a
fragmented container using one number; ``sequence_id`` is random per output.

Two deliberate departures from libnmsg, both in the fragment path, both making output readable where
libnmsg's is not:
- libnmsg announces ``last = len // chunk``, one too high when the blob is an exact multiple of the
  chunk size, so its receivers never complete the set; we announce the index of the real final chunk.
- With zlib, when an overfull container compresses to at most one chunk, libnmsg writes the compressed
  blob with no header; we write it as an ordinary zlib container (header + blob).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import BinaryIO

from nmsgdns.container import (
    BUFSZ_MAX,
    BUFSZ_MIN,
    FLAG_FRAGMENT,
    FLAG_ZLIB,
    HEADER_SIZE,
    Fragment,
    deflate,
    encode_body,
    encode_fragment,
    encode_header,
    nmsg_crc,
)

#: What libnmsg keeps free below bufsz when filling, and subtracts from bufsz for a fragment chunk.
_SLACK = 32
#: Estimated cost of the optional sequence (6) and sequence_id (12) fields.
_SEQ_SIZE = 18


def payload_estimate(length: int) -> int:
    """libnmsg's estimate of what one payload of ``length`` bytes adds to a container."""
    return length + 2 + (length >= 1 << 7) + (length >= 1 << 14) + (length >= 1 << 21) + 6


class ContainerPacker:
    """Packs payload bytes into complete containers (header + body), libnmsg-style.

    ``add`` returns the containers completed by that call: usually none, the previous container when
    this payload did not fit, or the fragments of an oversized payload. ``flush`` returns what is
    pending. Used by file writers, socket senders and the Kafka ingest, which want bytes, not I/O.
    """

    def __init__(
        self,
        bufsz: int,
        *,
        compress: bool = False,
        crcs: bool = True,
        sequence: bool = False,
        sequence_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if bufsz < BUFSZ_MIN:
            raise ValueError(f"bufsz {bufsz} is below libnmsg's minimum {BUFSZ_MIN}")
        self.bufsz = bufsz
        self.compress = compress
        self.crcs = crcs
        self.sequence = sequence
        self._rng = rng if rng is not None else random.Random()
        self.sequence_id = (
            (sequence_id if sequence_id is not None else self._rng.getrandbits(64)) if sequence else None
        )
        self.next_sequence = 0
        self._payloads: list[bytes] = []
        self._estimate = HEADER_SIZE
        self._seq_size = _SEQ_SIZE if sequence else 0

    @property
    def pending(self) -> int:
        """Payloads waiting in the current container."""
        return len(self._payloads)

    @property
    def estimate(self) -> int:
        """libnmsg's size estimate of the current container."""
        return self._estimate

    def add(self, payload: bytes) -> list[bytes]:
        """Add one serialized NmsgPayload (embedded as-is); returns containers completed by it."""
        out: list[bytes] = []
        n = len(payload)
        if self._payloads and self._estimate + n + _SLACK >= self.bufsz:
            out.extend(self._emit())
        self._payloads.append(payload)
        self._estimate += payload_estimate(n)
        if self._estimate + self._seq_size > self.bufsz:
            out.extend(self._emit())
        return out

    def flush(self) -> list[bytes]:
        """Containers for whatever is pending (an empty list when nothing is)."""
        return self._emit() if self._payloads else []

    def _emit(self) -> list[bytes]:
        overfull = self._estimate + self._seq_size > self.bufsz
        seq = None
        if self.sequence:
            seq = self.next_sequence
            self.next_sequence = (self.next_sequence + 1) & 0xFFFFFFFF
        body = encode_body(self._payloads, crcs=self.crcs, sequence=seq, sequence_id=self.sequence_id)
        self._payloads = []
        self._estimate = HEADER_SIZE
        flags = 0
        if self.compress:
            body = deflate(body)
            flags = FLAG_ZLIB
        chunk = self.bufsz - _SLACK
        if not overfull or len(body) <= chunk:
            return [encode_header(flags, len(body)) + body]
        return self._fragments(body, flags | FLAG_FRAGMENT, chunk)

    def _fragments(self, blob: bytes, flags: int, chunk: int) -> list[bytes]:
        frag_id = self._rng.getrandbits(32)
        crc = nmsg_crc(blob)
        last = (len(blob) - 1) // chunk
        out = []
        for i in range(last + 1):
            body = encode_fragment(Fragment(frag_id, i, last, blob[i * chunk : (i + 1) * chunk], crc))
            out.append(encode_header(flags, len(body)) + body)
        return out


class NmsgFileWriter:
    """Writes payloads to an NMSG file the way ``nmsgtool -w`` does (1 MiB containers, no sequencing).

    Given a path it opens and finally closes the file; given a binary file object it writes to it and
    leaves closing to the caller. ``close()`` writes the last, partly filled container; without it that
    container is lost (the reference filter's bug, see the corpus README).
    """

    def __init__(
        self,
        path_or_binary_file: str | Path | BinaryIO,
        *,
        bufsz: int = BUFSZ_MAX,
        compress: bool = False,
    ) -> None:
        if isinstance(path_or_binary_file, (str, Path)):
            self._fh: BinaryIO = open(path_or_binary_file, "wb")  # noqa: SIM115 - closed in close()
            self._owns = True
        else:
            self._fh = path_or_binary_file
            self._owns = False
        self._packer = ContainerPacker(bufsz, compress=compress)
        self.payloads_written = 0
        self.containers_written = 0
        self.bytes_written = 0
        self.closed = False

    def _write(self, containers: list[bytes]) -> None:
        for c in containers:
            self._fh.write(c)
            self.containers_written += 1
            self.bytes_written += len(c)

    def write(self, payload: bytes) -> None:
        """Queue one serialized NmsgPayload; full containers are written as they complete."""
        if self.closed:
            raise ValueError("write to a closed NmsgFileWriter")
        self._write(self._packer.add(payload))
        self.payloads_written += 1

    def close(self) -> None:
        """Write the pending container and close (or flush, for a caller's file object)."""
        if self.closed:
            return
        self.closed = True
        self._write(self._packer.flush())
        if self._owns:
            self._fh.close()
        else:
            self._fh.flush()

    def __enter__(self) -> NmsgFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
