"""Prometheus metrics of one serving process, exposed at ``/metrics``.

Each ``create_app`` gets its own registry, so several apps in one test process do not share
counters. Under gunicorn each worker process reports its own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Buckets in seconds: single-image predictions take a few milliseconds, batches of 100 with
# downloads can take seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 30.0, 100.0)


class ServerMetrics:
    """The counters and histograms the server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thumbnail_ml_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "thumbnail_ml_request_seconds", "HTTP request duration by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.predicted_tasks = Counter(
            "thumbnail_ml_predicted_tasks", "Tasks answered with choices", registry=self.registry,
        )
        self.prediction_errors = Counter(
            "thumbnail_ml_prediction_errors", "Tasks answered with an empty result, by reason",
            ["reason"], registry=self.registry,
        )
        self.model_loads = Counter(
            "thumbnail_ml_model_loads", "Model versions loaded by this process", registry=self.registry,
        )
        self.webhooks = Counter(
            "thumbnail_ml_webhooks", "Webhook events received, by action and outcome",
            ["action", "outcome"], registry=self.registry,
        )
        self.current_version = Info(
            "thumbnail_ml_model", "Model version served for the default lineage", registry=self.registry,
        )
        self.loaded_models = Gauge(
            "thumbnail_ml_loaded_models", "Model versions held in memory", registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
