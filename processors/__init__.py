"""The Faust app: the EDNS0 filter agent, the per-name-server aggregator and its state, the web views and
metrics (``app.py`` composes them; docs/design.md maps the modules)."""
