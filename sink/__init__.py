"""The sink: EDNS0 failures from Kafka back into rotated NMSG files that ``nmsgtool -r`` reads."""
