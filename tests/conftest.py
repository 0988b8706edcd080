"""Shared fixtures: the Kafka broker and Schema Registry fixture plugins are loaded for every test package."""

pytest_plugins = ["tests.kafka_fixture", "tests.registry_fixture"]
