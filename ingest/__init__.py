"""The ingest bridge: NMSG from files, pcaps, UDP sockets, SIE channels and Kafka into the raw topic."""
