"""Interoperability tests against independent NMSG implementations (need their toolchains)."""
