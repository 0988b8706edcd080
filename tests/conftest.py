"""Shared fixtures: the Kafka broker fixture plugin is loaded for every test package."""

pytest_plugins = ["tests.kafka_fixture"]
