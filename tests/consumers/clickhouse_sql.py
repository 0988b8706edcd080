"""Run the README's ClickHouse script (``docs/examples/clickhouse_failures.sql``) in chdb, the embedded
ClickHouse from PyPI, on the values of a failures topic.

chdb's Kafka table engine does not run (``CREATE TABLE ... ENGINE = Kafka`` fails with "Shutdown was
called", chdb 4.4 / ClickHouse 26.9), so the values are read from the topic here, written one after
another to a file, and the script's Kafka engine clause is swapped for ``ENGINE = File(AvroConfluent,
...)`` with the same columns and the same ``format_avro_schema_registry_url``: ClickHouse's own
``AvroConfluent`` format decodes them, fetching each writer schema by the id the value carries. The
materialized view's query runs once as ``INSERT INTO <its table> <its query>`` (a view fires only on
inserts into a Kafka or other source table). Everything else runs as written.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from chdb import session

FAILURES_SQL = Path(__file__).resolve().parents[2] / "docs" / "examples" / "clickhouse_failures.sql"

_KAFKA_ENGINE = re.compile(r"ENGINE = Kafka\s+SETTINGS .*?kafka_format = 'AvroConfluent',\s+", re.S)
_VIEW = re.compile(r"CREATE MATERIALIZED VIEW \w+ TO (\w+) AS\s+(.*)", re.S)


def statements(sql: str) -> list[str]:
    """The script's statements, without comment lines."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def failures_per_name_server(values: list[bytes], registry_url: str, work_dir: Path) -> dict[str, int]:
    """The script's final query (name server, failures) over ``values`` (Confluent-framed Avro)."""
    data = work_dir / "failures.avro-confluent"
    data.write_bytes(b"".join(values))
    sql = string.Template(FAILURES_SQL.read_text()).substitute(
        BOOTSTRAP="unused", TOPIC="unused", REGISTRY_URL=registry_url
    )
    db = session.Session(str(work_dir / "chdb"))
    try:
        db.query("CREATE DATABASE IF NOT EXISTS consumer ENGINE = Atomic")
        db.query("USE consumer")
        *setup, query = statements(sql)
        swapped = 0
        for statement in setup:
            statement, n = _KAFKA_ENGINE.subn(f"ENGINE = File(AvroConfluent, '{data}')\nSETTINGS ", statement)
            swapped += n
            view = _VIEW.match(statement)
            db.query(f"INSERT INTO {view[1]} {view[2]}" if view else statement)
        if swapped != 1:
            raise AssertionError(f"{FAILURES_SQL.name}: expected one Kafka engine table, found {swapped}")
        rows = str(db.query(query, "JSONCompact"))
    finally:
        db.close()
    return {ns: int(n) for ns, n in json.loads(rows)["data"]}
