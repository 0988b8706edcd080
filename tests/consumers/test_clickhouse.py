"""ClickHouse as a consumer of the failures topic, with no code of ours: the README's
``docs/examples/clickhouse_failures.sql`` run in chdb (embedded ClickHouse) over the topic's values, which
ClickHouse's ``AvroConfluent`` format decodes with the writer schemas it fetches from the Schema Registry
(``tests/consumers/clickhouse_sql.py`` says what is swapped for the Kafka engine and why).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.consumers import clickhouse_sql
from tests.consumers.records import produce_failures
from tests.kafka_fixture import TopicFactory, read_topic

README = Path(__file__).resolve().parents[2] / "README.md"

#: name server -> failures written, ties included to show the ORDER BY
EXPECTED = {"192.0.2.1": 40, "2001:db8::53": 25, "198.51.100.7": 25, "203.0.113.9": 1}


@pytest.mark.consumer
def test_readme_shows_the_sql_verbatim() -> None:
    assert clickhouse_sql.FAILURES_SQL.read_text().strip() in README.read_text()


@pytest.mark.consumer
@pytest.mark.integration
def test_clickhouse_counts_failures_per_name_server(
    kafka_bootstrap: str, registry_url: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(partitions=3, prefix="failures")
    produce_failures(kafka_bootstrap, registry_url, topic, EXPECTED)
    values = [value for _key, value in read_topic(kafka_bootstrap, topic)]

    counts = clickhouse_sql.failures_per_name_server(values, registry_url, tmp_path)

    assert counts == EXPECTED
    # ORDER BY failures DESC, name_server
    assert list(counts) == ["192.0.2.1", "198.51.100.7", "2001:db8::53", "203.0.113.9"]
