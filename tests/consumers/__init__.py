"""Downstream consumers that read our topics without our code (issue #18): Flink SQL, ..."""
