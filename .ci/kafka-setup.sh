#!/usr/bin/env bash
# Called by .ci/run (`bash .ci/kafka-setup.sh`, from the repository root, after the venv is installed):
# installs what the local Kafka needs on a fresh machine and resolves its jars once, so the integration
# tests' broker starts in seconds. Idempotent: a second run installs and downloads nothing.
set -euo pipefail

PY=${PY:-.venv/bin/python}

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# compose files are only validated here (no engine): the v2 plugin if present, else Debian's docker-compose
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
fi
if ((${#missing[@]})); then
    echo "kafka-setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Maven Central -> ~/.cache/dnsqr-pipeline/kafka-<version>-<pom hash>/ (skipped when cached)
"$PY" -c 'from dnsqr_pipeline import localkafka; print("kafka-setup: jars in", localkafka.resolve_jars())'

if docker compose version >/dev/null 2>&1; then
    docker compose config -q
else
    docker-compose config -q
fi
echo "kafka-setup: docker-compose.yml is valid"
