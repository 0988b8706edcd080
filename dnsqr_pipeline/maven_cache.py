"""Jars resolved once with Maven into a cache directory: ``mvn dependency:copy-dependencies`` on a pom.

The local Kafka broker (:mod:`localkafka`) runs from such a directory, and so does the Flink consumer test.
Maven copies into a temporary sibling of the target that is renamed into place only when complete (a
``.complete`` file inside), so an interrupted download or two concurrent first runs never leave a
half-filled cache that later runs would trust.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

COMPLETE = ".complete"


class MavenError(RuntimeError):
    """Maven could not resolve the jars; the message has its last output lines."""


class MavenMissing(MavenError):
    """There is no ``mvn`` (``$MVN``) to resolve them with."""


def cached_dependencies(
    pom: bytes,
    target: Path,
    *,
    what: str,
    expect: str,
    properties: Mapping[str, str] | None = None,
) -> Path:
    """``target``, holding the runtime dependencies of ``pom`` (its bytes), resolved only when not there yet.

    ``what`` names the jars in messages ("the Kafka 4.3.1 jars"); ``expect`` is a file name pattern that at
    least one resolved jar must match, so a pom resolving to nothing useful is an error, not a cache.
    """
    if (target / COMPLETE).exists():
        return target
    mvn = shutil.which(os.environ.get("MVN") or "mvn")
    if not mvn:
        raise MavenMissing(f"Maven (mvn) is needed once to fetch {what}: apt-get install maven")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".resolve-") as tmp:
        pom_file = Path(tmp) / "pom.xml"
        pom_file.write_bytes(pom)
        libs = Path(tmp) / "libs"
        cmd = [
            *(mvn, "-B", "-q", "-f", str(pom_file)),
            *(f"-D{name}={value}" for name, value in (properties or {}).items()),
            *("dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        if proc.returncode != 0 or not any(libs.glob(expect)):
            raise MavenError(
                f"Maven could not resolve {what} (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr)[-3000:]
            )
        (libs / COMPLETE).write_text(what + "\n")
        try:
            libs.rename(target)
        except OSError:
            if not (target / COMPLETE).exists():  # lost a race only if the winner finished
                raise
    return target
