"""The service's Prometheus metrics (prometheus_client), one registry per app.

A registry per app (not the library's global one) so that several apps in one process (tests)
count apart. With ``--workers N`` the server sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start: each writes its values there (prometheus_client's multiprocess mode) and a
scrape of the shared port, whichever worker answers it, adds up all of them (gauges: the sum
over live workers, or the lowest for ``gunctl_ready``).
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Routes with their own label; anything else (404s, scans) is "other", so that a client cannot
# grow the label set.
ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/detect", "/v1/detect/batch")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


class Metrics:
    def __init__(self, class_names: list[str] | None = None):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self._http_metrics(self.registry)
        self._model_metrics(self.registry)
        for name in class_names or ():  # every class shows up at 0 before its first detection
            self.detections.labels(class_name=name)

    def _http_metrics(self, registry) -> None:
        """Requests by route, method and status; their latency; requests in flight."""
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "gunctl_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gunctl_http_request_duration_seconds",
            "Time from a request's arrival to its response's end, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gunctl_http_requests_in_flight",
            "Requests being read, queued or answered now.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def _model_metrics(self, registry) -> None:
        """Forward passes, batch sizes, the queue, images and detections by class, readiness
        and the model's identity."""
        from prometheus_client import Counter, Gauge, Histogram

        self.inference = Histogram(
            "gunctl_inference_seconds",
            "One forward pass of the model (a micro-batch).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "gunctl_batch_size",
            "Images per forward pass.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "gunctl_queue_depth",
            "Images waiting for the inference thread.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.images = Counter("gunctl_images", "Images detected.", registry=registry)
        self.detections = Counter(
            "gunctl_detections",
            "Detections returned, by class.",
            ["class_name"],
            registry=registry,
        )
        self.ready = Gauge(
            "gunctl_ready",
            "1 once the model is loaded and warmed up.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.model = Gauge(  # the Info convention, as a gauge: Info has no multiprocess mode
            "gunctl_model_info",
            "The model this process serves (value 1).",
            ["name", "sha256", "format", "model"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def loaded(self, identity: dict[str, Any]) -> None:
        """The model is loaded and warmed up: its identity, and readiness."""
        keys = ("name", "sha256", "format", "model")
        self.model.labels(**{key: str(identity.get(key, "")) for key in keys}).set(1)
        self.ready.set(1)

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_label(path)
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int, seconds: float, records: list[dict[str, Any]]) -> None:
        self.inference.observe(seconds)
        self.batch_size.observe(size)
        self.images.inc(size)
        for record in records:
            for name in record["labels"]:
                self.detections.labels(class_name=name).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every worker's values, from the shared folder
        return generate_latest(registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_ended() -> None:
        """Drop this process's live gauges from the shared folder (multiprocess mode)."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())
