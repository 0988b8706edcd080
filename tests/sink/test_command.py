"""``dnsqr-pipeline sink`` flags: defaults, sizes, and the configuration they make."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sink import command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["sink", *argv])


def test_defaults() -> None:
    args = parse("--output-dir", "out")
    assert args.func is command.run
    assert args.output_dir == Path("out")
    assert (args.failures_topic, args.group, args.dlq_topic) == ("dnsqr.edns.failures", "dnsqr-sink", None)
    assert (args.rotate_bytes, args.rotate_seconds, args.zlib) == (64 * 1024 * 1024, 300.0, False)
    assert (args.idle_exit, args.max_records, args.file_prefix) == (None, None, "failures")
    assert args.bootstrap_servers  # the shared Kafka flags are there


def test_flags() -> None:
    args = parse(
        "--output-dir", "o", "--failures-topic", "t", "--group", "g", "--rotate-bytes", "512K",
        "--rotate-seconds", "0", "-z", "--idle-exit", "2.5", "--max-records", "10", "--dlq-topic", "d",
        "--bootstrap-servers", "127.0.0.1:1",
    )  # fmt: skip
    assert (args.failures_topic, args.group, args.dlq_topic) == ("t", "g", "d")
    assert (args.rotate_bytes, args.rotate_seconds, args.zlib) == (512 * 1024, 0.0, True)
    assert (args.idle_exit, args.max_records, args.bootstrap_servers) == (2.5, 10, "127.0.0.1:1")


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("4k", 4096), ("64M", 64 << 20), ("2G", 2 << 30)])
def test_byte_size(text: str, value: int) -> None:
    assert command.byte_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "x", "1.5M", "0", "-1K"])
def test_byte_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        command.byte_size(text)
