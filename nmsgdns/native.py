"""The optional C extensions: loading them, the one switch that turns them all off, and what runs.

Every package's per-record hot paths have a C version built by ``pip install -e .`` (setup.py) and a
pure-Python specification it is held to by the tests. The C version is optional: where no compiler was
there at install time (the slim Docker image) it is absent and the Python code runs, with the same results,
only slower. ``$NMSGDNS_PURE_PYTHON`` (:data:`PURE_PYTHON_ENV`) makes every package ignore its extensions,
to test or time the fallback (it is read at import: set it before the process starts).

A module with a C path says which one runs in an ``IMPLEMENTATION`` flag, ``"c"`` or ``"python"``
(:func:`implementation`), e.g. ``nmsgdns.wire.IMPLEMENTATION`` for the rule's scan (``nmsgdns._wirescan``).

Imports nothing of this project, so that any package may use it.
"""

from __future__ import annotations

import os
from importlib import import_module
from types import ModuleType
from typing import Literal

__all__ = ["PURE_PYTHON_ENV", "implementation", "load_extension"]

#: Set to a non-empty value to make every package ignore its C extensions (to test or time the fallback).
PURE_PYTHON_ENV = "NMSGDNS_PURE_PYTHON"


def load_extension(name: str, package: str = "nmsgdns") -> ModuleType | None:
    """The compiled extension ``<package>.<name>``, or None when it is not built (no C compiler at install
    time) or ``$NMSGDNS_PURE_PYTHON`` is set (for every package's extensions: one switch for all).

    Quietly None: the pure-Python code gives the same results, only slower, and a worker must not log a
    warning per process for it; the module's ``IMPLEMENTATION`` flag tells which one runs.
    """
    if os.environ.get(PURE_PYTHON_ENV):
        return None
    try:
        return import_module(f"{package}.{name}")
    except ImportError:
        return None


def implementation(c_version: object | None) -> Literal["c", "python"]:
    """An ``IMPLEMENTATION`` flag: ``"c"`` when the C version (an extension or one of its functions) is
    in use, ``"python"`` when it is None."""
    return "python" if c_version is None else "c"
