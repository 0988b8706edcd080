"""The shared domain package: NMSG container codec, base:dnsqr records, the EDNS0 wire scanner and rule.

Pure Python over bytes. Nothing here imports Kafka, Faust or sockets-heavy machinery, so every stage
(and the standalone ``dnsqr-edns-filter``) can use it and it can be tested without a broker.
"""
