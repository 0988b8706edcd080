"""``dnsqr-pipeline worker`` flags and the environment configuration of ``faust -A processors.app``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import faust
import pytest

from dnsqr_kafka.value_formats import RegistryOptions
from processors import command
from processors.aggregator import Aggregation
from processors.app import create_app, faust_credentials
from processors.settings import Settings
from processors.warmup import WarmupAssignor


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["worker", *argv])


def test_worker_flags_become_settings() -> None:
    args = parse(
        ["--raw-topic", "r", "--failures-topic", "f", "--stats-topic", "s", "--counts-topic", "c",
         "--processing-guarantee", "exactly_once", "--web-port", "7000", "--partitions", "8",
         "--bootstrap-servers", "127.0.0.1:1,127.0.0.1:2", "--window-seconds", "600"]
    )  # fmt: skip
    settings = command.settings_from_args(args)
    assert (settings.raw_topic, settings.failures_topic, settings.stats_topic, settings.counts_topic) == (
        "r",
        "f",
        "s",
        "c",
    )
    assert settings.processing_guarantee == "exactly_once"
    assert (settings.web_port, settings.partitions, settings.window_seconds) == (7000, 8, 600)
    app = create_app(settings)
    assert app.conf.processing_guarantee.value == "exactly_once"
    assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:1", "kafka://127.0.0.1:2"]
    assert app.conf.web_port == 7000
    assert app.conf.store.scheme == "memory"


def test_defaults_are_the_topic_contracts() -> None:
    settings = command.settings_from_args(parse([]))
    assert (settings.raw_topic, settings.failures_topic, settings.dlq_topic) == (
        "dnsqr.raw", "dnsqr.edns.failures", "dnsqr.raw.dlq"
    )  # fmt: skip
    assert settings.counts_topic == "dnsqr.edns.ns-counts"
    assert settings.processing_guarantee == "at_least_once"
    assert settings.window_seconds == 3600
    # schemaless Avro unless told: no registry, Avro failures
    assert settings.registry is None and settings.failures_format == "avro"


def test_value_format_flags_become_settings() -> None:
    args = parse(
        ["--schema-registry", "http://r:8081/apis/ccompat/v7", "--schema-registry-user", "u",
         "--schema-registry-password", "p", "--failures-format", "json"]
    )  # fmt: skip
    settings = command.settings_from_args(args)
    assert settings.registry == RegistryOptions("http://r:8081/apis/ccompat/v7", "u", "p")
    assert settings.failures_format == "json"


def test_standby_replicas_flag_variable_and_faust_setting() -> None:
    """``--standby-replicas`` / ``DNSQR_STANDBY_REPLICAS`` set Faust's ``table_standby_replicas``, which stays
    at Faust's default of 1 when 0 (no standbys tailed; the assignor as before)."""
    assert command.settings_from_args(parse([])).standby_replicas == 0
    settings = command.settings_from_args(parse(["--standby-replicas", "2"]))
    assert settings.standby_replicas == 2
    assert create_app(settings).conf.table_standby_replicas == 2
    assert create_app(Settings()).conf.table_standby_replicas == 1
    assert Settings.from_env({"DNSQR_STANDBY_REPLICAS": "1"}).standby_replicas == 1
    with pytest.raises(ValueError):
        Settings(standby_replicas=-1).validated()


def test_warm_up_flag_variable_and_assignor() -> None:
    """Warm-ups are on unless ``--no-warm-up`` / ``DNSQR_WARM_UP=0``; the app's assignor is the warm-up one,
    with the worker's settings."""
    assert command.settings_from_args(parse([])).warm_up
    settings = command.settings_from_args(parse(["--no-warm-up", "--standby-replicas", "1"]))
    assert not settings.warm_up
    assignor = create_app(settings).assignor
    assert isinstance(assignor, WarmupAssignor)
    assert (assignor.warm_up, assignor.standby_replicas, assignor.stats_topic) == (
        False,
        1,
        settings.stats_topic,
    )
    assert not Settings.from_env({"DNSQR_WARM_UP": "0"}).warm_up
    assert command.settings_from_args(parse([])).acceptable_recovery_lag == 10_000
    lag = command.settings_from_args(parse(["--acceptable-recovery-lag", "0"]))
    assert lag.acceptable_recovery_lag == create_app(lag).assignor.acceptable_lag == 0
    assert Settings.from_env({"DNSQR_ACCEPTABLE_RECOVERY_LAG": "5"}).acceptable_recovery_lag == 5
    with pytest.raises(ValueError):
        Settings(acceptable_recovery_lag=-1).validated()


def test_hot_windows_flag_and_variable() -> None:
    """``--hot-windows`` / ``DNSQR_HOT_WINDOWS``: 2 by default, 0 freezes none; the aggregator's states
    take it."""
    assert command.settings_from_args(parse([])).hot_windows == 2
    settings = command.settings_from_args(parse(["--hot-windows", "0"]))
    assert settings.hot_windows == 0
    assert Settings.from_env({"DNSQR_HOT_WINDOWS": "5"}).hot_windows == 5
    with pytest.raises(ValueError, match="hot_windows"):
        Settings(hot_windows=-1).validated()
    aggregation = Aggregation(0, marks=False, hot_windows=3)
    assert aggregation.new_state().hot_windows == 3


def test_hot_totals_flag_and_variable() -> None:
    """``--hot-totals`` / ``DNSQR_HOT_TOTALS``: 500,000 name servers by default, 0 for no budget; the
    aggregator's states take it."""
    assert command.settings_from_args(parse([])).hot_totals == 500_000
    assert command.settings_from_args(parse(["--hot-totals", "0"])).hot_totals == 0
    assert Settings.from_env({"DNSQR_HOT_TOTALS": "25000"}).hot_totals == 25_000
    with pytest.raises(ValueError, match="hot_totals"):
        Settings(hot_totals=-1).validated()
    assert Aggregation(0, marks=False, hot_totals=7).new_state().hot_totals_budget == 7


def test_restore_buffer_flag_and_variable() -> None:
    """``--restore-buffer-mb`` / ``DNSQR_RESTORE_BUFFER_MB``: megabytes, 0 pauses at the first record."""
    assert command.settings_from_args(parse([])).restore_buffer_bytes == 64 * 2**20
    assert command.settings_from_args(parse(["--restore-buffer-mb", "0.5"])).restore_buffer_bytes == 2**19
    assert Settings.from_env({"DNSQR_RESTORE_BUFFER_MB": "0"}).restore_buffer_bytes == 1
    with pytest.raises(ValueError):
        Settings(restore_buffer_mb=-1).validated()


def test_commit_interval_flag_and_variable() -> None:
    """``--commit-interval`` / ``DNSQR_COMMIT_INTERVAL``: seconds between Faust's commits."""
    assert command.settings_from_args(parse([])).commit_interval == 0.5
    settings = command.settings_from_args(parse(["--commit-interval", "2"]))
    assert create_app(settings).conf.broker_commit_interval == 2.0
    assert Settings.from_env({"DNSQR_COMMIT_INTERVAL": "0.25"}).commit_interval == 0.25
    with pytest.raises(ValueError):
        Settings(commit_interval=0).validated()


def test_librdkafka_properties_are_refused() -> None:
    with pytest.raises(SystemExit):
        command.settings_from_args(parse(["--kafka-config", "linger.ms=5"]))


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP": "127.0.0.1:9999",
            "DNSQR_RAW_TOPIC": "raw2",
            "DNSQR_PARTITIONS": "12",
            "DNSQR_SNAPSHOT_INTERVAL": "0.5",
            "DNSQR_WEB_ENABLED": "false",
            "DNSQR_PROCESSING_GUARANTEE": "exactly_once",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    )
    assert settings.bootstrap_servers == "127.0.0.1:9999"
    assert (settings.raw_topic, settings.partitions, settings.snapshot_interval) == ("raw2", 12, 0.5)
    assert settings.web_enabled is False
    creds = faust_credentials(settings.credentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("u", "p", "PLAIN")
    with pytest.raises(ValueError):
        Settings.from_env({"DNSQR_PROCESSING_GUARANTEE": "twice"})


def test_module_level_app_for_the_faust_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNSQR_RAW_TOPIC", "from-env")
    monkeypatch.delitem(sys.modules, "processors.app", raising=False)
    import processors.app as module

    app = module.app
    assert isinstance(app, faust.App)
    assert app.agents["dnsqr-edns-filter"].channel.get_topic_name() == "from-env"
    assert set(app.agents) == {"dnsqr-edns-filter", "dnsqr-ns-aggregator"}


def test_faust_cli_finds_the_app() -> None:
    faust = Path(sys.executable).with_name("faust")
    out = subprocess.run(
        [str(faust), "-A", "processors.app", "agents"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "dnsqr-edns-filter" in out and "dnsqr-ns-aggregator" in out


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True)])
def test_views_beyond_loopback_are_logged_as_unauthenticated(
    host: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    create_app(command.settings_from_args(parse(["--web-host", host])))
    assert ("no authentication" in caplog.text) is warned
