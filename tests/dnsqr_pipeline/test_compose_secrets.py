"""``kafka secrets``: the secured Compose profile's files, and the compose file that uses them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dnsqr_pipeline import compose_secrets, kafka_security
from tests.corpus import REPO_ROOT


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_secrets_are_written_once_each_reader_its_own(tmp_path: Path) -> None:
    assert compose_secrets.write_compose_secrets(tmp_path, "kafka-secured")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert not compose_secrets.write_compose_secrets(tmp_path, "kafka-secured")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    passwords = {user: (tmp_path / user / "password").read_text() for user in kafka_security.CLIENT_USERS}
    assert len(set(passwords.values())) == len(passwords)
    cas = {(tmp_path / user / "ca.pem").read_bytes() for user in kafka_security.CLIENT_USERS}
    assert len(cas) == 1
    for path in [*(tmp_path / "broker").iterdir(), *(tmp_path / u / "password" for u in passwords)]:
        assert path.stat().st_mode & 0o777 == 0o600, path

    props = _props(tmp_path / "broker" / "server.properties")
    assert props["advertised.listeners"] == f"CLIENT://kafka-secured:{compose_secrets.CLIENT_PORT}"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    assert props["controller.quorum.bootstrap.servers"] == compose_secrets.CONTROLLER_ADDRESS
    assert props["ssl.truststore.certificates"].replace("\\n", "\n") == cas.pop().decode().strip()
    args = (tmp_path / "broker" / "format-args").read_text().splitlines()
    for user, password in passwords.items():
        assert f"SCRAM-SHA-512=[name={user},password={password}]" in args
    assert "name=broker," in " ".join(args)


def _compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.skipif(_compose() is None, reason="needs docker-compose or docker compose (no engine)")
def test_compose_file_with_the_secured_profile_is_valid() -> None:
    command = _compose()
    assert command is not None
    for profile in ([], ["--profile", "secured"]):
        proc = subprocess.run(
            [*command, *profile, "config", "-q"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
