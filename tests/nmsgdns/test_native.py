"""``nmsgdns.native``: loading the optional C extensions and the one switch that turns them all off."""

from __future__ import annotations

import pytest

from nmsgdns import native
from nmsgdns.native import PURE_PYTHON_ENV, implementation, load_extension


def test_absent_extension_is_none() -> None:
    assert load_extension("_no_such_extension") is None
    assert load_extension("_no_such_extension", "processors") is None


def test_pure_python_switch_turns_every_package_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    for name, package in (("_wirescan", "nmsgdns"), ("_avro", "dnsqr_schemas"), ("_state", "processors")):
        assert load_extension(name, package) is None


def test_built_extension_is_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    ext = load_extension("_wirescan")
    if ext is None:
        pytest.skip("nmsgdns._wirescan is not built")
    assert ext.__name__ == "nmsgdns._wirescan"


def test_implementation_flag() -> None:
    assert implementation(None) == "python"
    assert implementation(native) == "c"
