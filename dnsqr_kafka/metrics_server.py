"""The Prometheus ``/metrics`` endpoint of a stage that has no web server of its own (ingest, the sink).

Each stage keeps a private registry (not prometheus-client's global one), so several stages in one process
(tests, the ``run`` command) do not collide; this serves one registry on ``--metrics-port``. The workers
serve theirs on Faust's web server instead (``processors/metrics.py``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServer:
    """Serves ``registry`` over HTTP from :meth:`serve` until :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return server.server_port

    def stop(self) -> None:
        """Stop serving (nothing when not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
