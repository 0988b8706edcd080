"""``maven_cache``: jars resolved once; a complete cache is trusted without Maven, an incomplete one not."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsqr_pipeline import maven_cache


def test_a_complete_cache_needs_no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "jars"
    target.mkdir()
    (target / maven_cache.COMPLETE).write_text("x\n")
    monkeypatch.setenv("MVN", str(tmp_path / "no-such-mvn"))
    assert maven_cache.cached_dependencies(b"", target, what="the jars", expect="*.jar") == target


def test_without_maven_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "jars"
    target.mkdir()  # present but not complete (an interrupted first run): not trusted
    monkeypatch.setenv("MVN", str(tmp_path / "no-such-mvn"))
    with pytest.raises(maven_cache.MavenMissing, match=r"Maven .* to fetch the jars: apt-get install maven"):
        maven_cache.cached_dependencies(b"", target, what="the jars", expect="*.jar")


def test_a_failed_resolve_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "mvn"
    fake.write_text("#!/bin/sh\necho 'resolution failed' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MVN", str(fake))
    target = tmp_path / "cache" / "jars"
    with pytest.raises(
        maven_cache.MavenError, match=r"could not resolve the jars \(exit 1\):\nresolution failed"
    ):
        maven_cache.cached_dependencies(b"<project/>", target, what="the jars", expect="*.jar")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary sibling is gone too
