"""Fixtures of the consumer tests."""

from __future__ import annotations

import os

import pytest

from tests.consumers import flink_sql


@pytest.fixture(scope="session")
def flink_jars() -> None:
    """The Flink jars, resolved once; a skip with the reason where Java or Maven is missing (not in CI).
    Session-scoped and first in the tests' arguments, so it runs before the broker and registry fixtures."""
    try:
        flink_sql.java()
        flink_sql.resolve_jars()
    except flink_sql.FlinkUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Flink consumer test: {exc}")
        pytest.skip(str(exc))
