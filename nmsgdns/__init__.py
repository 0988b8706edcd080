"""The shared domain package: NMSG container codec, base:dnsqr records, the EDNS0 wire scanner and rule.

Functions over bytes, in Python, with the per-record wire scan compiled from C when a compiler was there at
install time (``nmsgdns.wire.IMPLEMENTATION``; the pure-Python fallback gives the same results). Nothing
here imports Kafka, Faust or sockets-heavy machinery, so every stage (and the standalone
``dnsqr-edns-filter``) can use it and it can be tested without a broker.
"""
