"""scripts/check_layers.py finds upward imports, cycles and C naming a higher layer, on made-up trees."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_layers.py"
spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
assert spec is not None and spec.loader is not None
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def tree(root: Path, files: dict[str, str]) -> Path:
    for folder in {p[1] for p in check_layers.PACKAGES.values()}:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").touch()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_a_clean_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tree(
        tmp_path,
        {
            "nmsgdns/wire.py": "import struct\n",
            "dnsqr_kafka/topics.py": "from nmsgdns import wire\n",
            "processors/app.py": "from dnsqr_kafka.topics import x\nfrom . import agents\n",
            "processors/agents.py": "from nmsgdns.wire import y\n",
            "dnsqr_pipeline/cli.py": "import processors.app\nimport sink\n",
            "processors/_fast.c": '#include "../nmsgdns/varint.h"\n/* tests/processors/test_fast.py */\n',
        },
    )
    assert check_layers.main(["x", str(repo)]) == 0
    assert "no cycle" in capsys.readouterr().out


def test_upward_and_sideways_imports_cycles_and_c_are_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tree(
        tmp_path,
        {
            "dnsqr_kafka/topics.py": "def f():\n    from dnsqr_pipeline import cli\n",
            "sink/consumer.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from processors import app\n"
            ),
            "processors/app.py": "from .agents import a\n",
            "processors/agents.py": "def g():\n    from processors.app import b\n",
            "nmsgdns/_scan.c": "/* the record of processors.failure_record */\n",
        },
    )
    assert check_layers.main(["x", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "dnsqr_kafka/topics.py:2: dnsqr_kafka imports dnsqr_pipeline (dnsqr_pipeline)" in out
    assert "sink/consumer.py:3: sink imports processors.app" in out
    assert "import cycle: processors.agents -> processors.app" in out
    assert "nmsgdns/_scan.c:1: nmsgdns C names processors.f" in out
