#!/usr/bin/env bash
# Regenerates nmsgdns/proto/*_pb2.py from schemas/*.proto with the protoc bundled in grpcio-tools
# (pip install -e '.[dev]'). The generated files are committed so users need no code generator.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I schemas --python_out=nmsgdns/proto --pyi_out=nmsgdns/proto \
    schemas/nmsg.proto schemas/dnsqr.proto
python -m grpc_tools.protoc -I schemas --python_out=nmsgdns/proto --pyi_out=nmsgdns/proto \
    schemas/dnsqr_payload.proto
# protoc writes absolute imports between generated modules; they live in a package here.
sed -i 's/^import dnsqr_pb2 as/from . import dnsqr_pb2 as/' nmsgdns/proto/dnsqr_payload_pb2.py
