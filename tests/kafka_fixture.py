"""Kafka broker fixtures (filled in by the local-Kafka work)."""
