"""The secured local broker's users and ACLs: each stage gets what it needs and nothing of the others'."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from dnsqr_pipeline import kafka_security
from processors.settings import Settings
from processors.topology import internal_topic_specs

READ, WRITE, CREATE = AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE


def allowed(user: str) -> set[tuple[ResourceType, str, AclOperation, bool]]:
    return {
        (b.restype, b.name, b.operation, b.resource_pattern_type == ResourcePatternType.PREFIXED)
        for g in kafka_security.stage_acls()
        if g.user == user
        for b in g.bindings()
    }


def topic_ops(user: str, operation: AclOperation) -> set[str]:
    return {name for kind, name, op, _ in allowed(user) if kind == ResourceType.TOPIC and op == operation}


def test_ingest_writes_raw_and_its_dlq_only() -> None:
    assert topic_ops("ingest", WRITE) == {"dnsqr.raw", "dnsqr.raw.dlq"}
    assert not topic_ops("ingest", READ)
    assert not any(kind == ResourceType.GROUP for kind, *_ in allowed("ingest"))


def test_worker_reads_raw_and_writes_its_outputs_but_not_raw() -> None:
    settings = Settings()
    assert "dnsqr.raw" in topic_ops("worker", READ)
    assert "dnsqr.raw" not in topic_ops("worker", WRITE)
    outputs = {spec.name for spec in internal_topic_specs(settings)}
    prefixed = {name for kind, name, op, pre in allowed("worker") if pre and op == WRITE}
    for name in outputs:
        assert name in topic_ops("worker", WRITE) or any(name.startswith(p) for p in prefixed), name
    assert (ResourceType.GROUP, settings.app_id, READ, False) in allowed("worker")
    assert (ResourceType.TRANSACTIONAL_ID, f"{settings.app_id}-", WRITE, True) in allowed("worker")
    # the prefix is the app id and a dash: it does not reach the sink's group or topics
    assert not any(
        name.startswith(f"{settings.app_id}-") for name in ("dnsqr-sink", "dnsqr.edns.failures.dlq")
    )


def test_sink_reads_failures_and_writes_its_dlq_only() -> None:
    assert topic_ops("sink", READ) == {"dnsqr.edns.failures"}
    assert topic_ops("sink", WRITE) == {"dnsqr.edns.failures.dlq"}
    groups = {name for kind, name, op, _ in allowed("sink") if kind == ResourceType.GROUP and op == READ}
    assert groups == {"dnsqr-sink", "dnsqr-edns-sink"}


def test_no_stage_may_create_anything_but_its_own_topics() -> None:
    assert not topic_ops("ingest", CREATE)
    assert topic_ops("sink", CREATE) == {"dnsqr.edns.failures.dlq"}
    assert "dnsqr.raw" not in topic_ops("worker", CREATE)


def test_credentials_are_private_and_seeded_for_every_user(tmp_path: Path) -> None:
    passwords = kafka_security.create_credentials(tmp_path)
    assert (tmp_path / kafka_security.CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600
    assert kafka_security.load_credentials(tmp_path) == passwords
    assert len(set(passwords.values())) == len(kafka_security.USERS)
    args = kafka_security.scram_format_args(passwords)
    for user in kafka_security.USERS:
        assert f"SCRAM-SHA-512=[name={user},password={passwords[user]}]" in args


def test_sasl_plaintext_has_no_tls_settings() -> None:
    lines = kafka_security.listener_properties(
        security="sasl_plaintext",
        client="127.0.0.1:1",
        controller="127.0.0.1:2",
        passwords=dict.fromkeys(kafka_security.USERS, "p"),
    )
    assert "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT" in lines
    assert not [line for line in lines if line.startswith("ssl.")]
    assert kafka_security.client_flags("sasl_plaintext", "sink", None) == [
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "sink",
    ]
