"""Prometheus metrics, correct across ``--workers`` processes.

With several workers, prometheus-client's multiprocess mode keeps per-process files in
``PROMETHEUS_MULTIPROC_DIR`` and any worker can render the sum; the supervisor sets the directory
before the workers start.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Gauge, generate_latest, multiprocess

from authz_server import __version__

BUILD_INFO = Gauge(
    "authz_build_info", "Build information; always 1.", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(version=__version__).set(1)


def render_metrics() -> bytes:
    """The exposition text for a scrape: this process alone, or all workers summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
