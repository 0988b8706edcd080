"""Schema Registry fixtures for integration tests (a pytest plugin, loaded by tests/conftest.py).

Started lazily, like the broker (:mod:`tests.kafka_fixture`): only when a test asks for ``registry_url``
or ``local_registry``, so other tests never build or start it. With ``$SCHEMA_REGISTRY_URL`` set the tests
use that registry (its Confluent-compatible API) instead and start nothing.

Fixtures:
- ``local_registry`` (session): the :class:`~dnsqr_pipeline.localregistry.Registry` these fixtures started
  on a free loopback port (stopped at the end of the session), or None when ``$SCHEMA_REGISTRY_URL`` names
  another one.
- ``registry_url`` (session): what ``SchemaRegistryClient({"url": ...})`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dnsqr_pipeline import localregistry
from tests.kafka_fixture import free_port_block


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localregistry.Registry | None]:
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        yield None
        return
    registry = localregistry.start(tmp_path_factory.mktemp("registry"), free_port_block(1), timeout=120)
    try:
        yield registry
    finally:
        localregistry.stop(registry.directory)


@pytest.fixture(scope="session")
def registry_url(local_registry: localregistry.Registry | None) -> str:
    return local_registry.url if local_registry else os.environ["SCHEMA_REGISTRY_URL"]
