#!/usr/bin/env bash
# Called by .ci/run (`bash .ci/registry-setup.sh`, from the repository root, after kafka-setup.sh, which
# installs Java and Maven): builds the local Schema Registry (Apicurio 2.4.2.Final, dnsqr_pipeline/registry/
# pom.xml) once, so the registry tests start it in seconds. Idempotent: cached in
# ~/.cache/dnsqr-pipeline/registry/ (or $DNSQR_REGISTRY_CACHE), a second run builds nothing. A failed build
# fails CI here with Maven's last lines rather than in the middle of the tests.
set -euo pipefail

PY=${PY:-.venv/bin/python}

"$PY" -c 'from dnsqr_pipeline import localregistry; print("registry-setup: runner in", localregistry.build_runner())'
