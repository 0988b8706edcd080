"""The Faust app: the EDNS0 filter agent, the per-name-server aggregator, its tables and web views."""
