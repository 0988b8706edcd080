# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv protos clean

# setup.py and the C sources: the editable install compiles the C extensions in place, so a change
# to any of them must re-run it.
$(BIN)/dnsqr-pipeline: pyproject.toml setup.py $(wildcard nmsgdns/*.c nmsgdns/*.h schemas/*.c schemas/*.h processors/*.c processors/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/dnsqr-pipeline

## Run the whole pipeline (local Kafka, ingest, Faust worker, sink) on the shipped sample capture.
demo: venv
	$(BIN)/dnsqr-pipeline demo

## Unit, corpus, interop and integration tests (starts and stops a local Kafka by itself).
test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .

## Regenerate nmsgdns/proto from schemas/*.proto.
protos: venv
	PATH=$(BIN):$$PATH bash scripts/gen-protos.sh

clean:
	rm -rf $(VENV) var build *.egg-info
