"""Prometheus metrics of the service, in a registry of its own (several apps in one process never collide).

HTTP requests are counted and timed by `MetricsMiddleware` under the route's template (`/items/{item_id}`,
not the raw path, so the label set stays bounded); unmatched paths count as `<unmatched>`. A request whose
client disconnects before any response is sent (e.g. mid-body) has no status: it is counted as a disconnect,
so the status counts are exactly the responses sent. The service adds
what only it knows: which path served a recommendation, LM stage fallbacks and their reason, stage
latencies, the user-vector cache, reloads and the served artifact.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("towerrec_http_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=r)
        self.errors = Counter("towerrec_http_errors", "HTTP responses with status >= 400 (5xx: server errors)",
                              ["route", "status"], registry=r)
        self.disconnects = Counter("towerrec_http_disconnects", "requests whose client left before a response "
                                   "was sent (not in towerrec_http_requests)", ["method", "route"], registry=r)
        self.latency = Histogram("towerrec_http_request_duration_seconds", "request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.served = Counter("towerrec_recommendations", "recommendations by the path that served them",
                              ["served_by"], registry=r)
        self.fallbacks = Counter("towerrec_stage_fallbacks", "LM stages skipped: timeout (over budget), busy (all "
                                 "LM slots taken), error, disabled", ["stage", "reason"], registry=r)
        self.stage_latency = Histogram("towerrec_stage_duration_seconds", "time spent per stage of a request",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.embed_batch = Histogram("towerrec_embed_batch_size", "users per user-tower forward pass",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.user_cache = Counter("towerrec_user_vector_cache", "user vector cache lookups", ["result"], registry=r)
        self.reloads = Counter("towerrec_reloads", "artifact reloads", ["outcome"], registry=r)
        self.artifact_items = Gauge("towerrec_artifact_items", "products in the served artifact", registry=r)
        self.artifact_info = Gauge("towerrec_artifact_info", "the served artifact (value 1)", ["version"], registry=r)
        self.ready = Gauge("towerrec_ready", "1 when the artifact and the configured models are loaded", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def set_artifact(self, version: str, num_items: int) -> None:
        self.artifact_info.clear()
        self.artifact_info.labels(version=version).set(1)
        self.artifact_items.set(num_items)

    def time_stage(self, stage: str):
        return _Timer(self.stage_latency.labels(stage=stage))


class _Timer:
    def __init__(self, histogram):
        self.histogram = histogram

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.histogram.observe(self.seconds)
        return False


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by its route template and status."""

    def __init__(self, app, metrics: Metrics, routes=()):
        self.app, self.metrics = app, metrics
        self.routes = routes  # to name the route of requests refused before routing (e.g. 413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status, disconnected = None, False

        async def receive_and_watch():
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_record)
        finally:
            template = getattr(scope.get("route"), "path", None) or self._match(scope)
            m = self.metrics
            if status is None and disconnected:  # nobody to answer: no status was, or will be, sent
                m.disconnects.labels(method=scope["method"], route=template).inc()
            else:
                status = 500 if status is None else status  # raised, or returned without answering: a 500
                m.requests.labels(method=scope["method"], route=template, status=str(status)).inc()
                m.latency.labels(route=template).observe(time.perf_counter() - start)
                if status >= 400:
                    m.errors.labels(route=template, status=str(status)).inc()

    def _match(self, scope) -> str:
        from starlette.routing import Match

        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route.path
        return "<unmatched>"
