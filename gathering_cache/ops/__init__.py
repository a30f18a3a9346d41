"""Operating the cache: fleet-wide statistics, Prometheus metrics, the CLI and the dashboard.

Built on the observer seam and the telemetry handle; nothing in the core, the backends, the
domain caches, the agent helpers or the events imports this wing.
"""
