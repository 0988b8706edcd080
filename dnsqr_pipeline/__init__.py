"""The operations command ``dnsqr-pipeline``: local Kafka, topics, and the stages wired together."""
