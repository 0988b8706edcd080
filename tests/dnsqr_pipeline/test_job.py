"""Pure parts of ``dnsqr_pipeline.job`` (no broker): how client properties reach the stages."""

from __future__ import annotations

from dnsqr_pipeline.job import balanced, stage_kafka, worker_command
from processors.settings import Settings


def test_credentials_become_flags_and_the_password_an_environment_variable() -> None:
    got = stage_kafka(
        {
            "bootstrap.servers": "b1:9093,b2:9093",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "dnsqr",
            "sasl.password": "s3cret",
            "ssl.ca.location": "/etc/ca.pem",
        }
    )
    assert got.common == [
        "--bootstrap-servers",
        "b1:9093,b2:9093",
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "dnsqr",
        "--ssl-ca-location",
        "/etc/ca.pem",
    ]
    assert "s3cret" not in got.common + got.librdkafka  # not on any command line (ps shows those)
    assert got.env == {"KAFKA_SASL_PASSWORD": "s3cret"}
    assert got.librdkafka == []


def test_other_properties_go_to_the_librdkafka_stages_only() -> None:
    got = stage_kafka({"bootstrap.servers": "127.0.0.1:9092", "socket.timeout.ms": "10000"})
    assert got.common == ["--bootstrap-servers", "127.0.0.1:9092"]
    assert got.librdkafka == ["--kafka-config", "socket.timeout.ms=10000"]
    assert got.env == {}


def test_a_job_worker_without_warm_ups_gets_the_flag() -> None:
    flags = stage_kafka({"bootstrap.servers": "127.0.0.1:9092"})
    assert "--no-warm-up" in worker_command(Settings(warm_up=False), flags)
    assert "--no-warm-up" not in worker_command(Settings(), flags)
    assert "--acceptable-recovery-lag" in worker_command(Settings(acceptable_recovery_lag=0), flags)
    command = worker_command(Settings(hot_windows=0, hot_totals=25_000), flags)
    assert command[command.index("--hot-windows") + 1] == "0"
    assert command[command.index("--hot-totals") + 1] == "25000"


def test_a_group_is_balanced_when_no_member_holds_more_than_its_share() -> None:
    assert balanced([2, 2], 4)
    assert not balanced([4, 0], 4), "a joiner warming up while the owner keeps its partitions"
    assert balanced([2, 2, 0], 4), "three members on four partitions: a share is 2"
    assert not balanced([3, 1], 4)
    assert balanced([1, 1, 0], 2)
