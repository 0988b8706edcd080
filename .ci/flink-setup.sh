#!/usr/bin/env bash
# Called by .ci/run (`bash .ci/flink-setup.sh`, from the repository root, after kafka-setup.sh, which
# installs Java and Maven): resolves the jars of the Flink SQL consumer test (tests/consumers/flink/pom.xml:
# Flink 2.2.0, its Kafka connector and avro-confluent format, ~170 MB from Maven Central) once, so the test
# (marker `consumer`) spends its time in Flink rather than in Maven. Idempotent: cached in
# ~/.cache/dnsqr-pipeline/flink/ (or $DNSQR_FLINK_CACHE), a second run downloads nothing. A failed
# resolution fails CI here with Maven's last lines rather than in the middle of the tests.
set -euo pipefail

PY=${PY:-.venv/bin/python}

"$PY" -c 'from tests.consumers import flink_sql; print("flink-setup: jars in", flink_sql.resolve_jars())'
