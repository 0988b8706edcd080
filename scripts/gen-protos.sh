#!/usr/bin/env bash
# Regenerates nmsgdns/proto/*_pb2.py from schemas/*.proto with the protoc bundled in grpcio-tools
# (pip install -e '.[dev]'). The generated files are committed so users need no code generator.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I schemas --python_out=nmsgdns/proto --pyi_out=nmsgdns/proto \
    schemas/nmsg.proto schemas/dnsqr.proto
