"""``GET /metrics`` in the Prometheus text format, from a registry owned by each app (not the global one).

- ``xlir_http_requests_total{endpoint,method,status}`` and ``xlir_http_request_duration_seconds{endpoint,method}``:
  ``endpoint`` is the route template (``/search``), never the raw path; paths no route knows are ``unmatched``.
- ``xlir_overloaded_total``: requests answered 429 (the query queue was full).
- ``xlir_batch_size``: texts per encoder call of the query batcher (fed by its ``on_batch`` hook);
  ``xlir_queue_depth``: queries waiting for the encoder at scrape time.
- ``xlir_index_documents``, ``xlir_index_documents_by_language{lang}`` (the loaded index, live updates included),
  ``xlir_index_bytes`` (files of its manifest), ``xlir_ready``: read at scrape time (the default collection's;
  ``xlir_ready`` is 0 while any collection is not ready).
- ``xlir_collection_documents{collection}``, ``xlir_collection_ready{collection}``: each served collection.
- ``xlir_stage_seconds{stage,collection}``: the wall time of each stage of a search (``encode``, ``retrieve``,
  ``fuse``, ``feedback``, ``rerank``, ``highlight``, ``total``: the response's ``timings_ms``), fed by the search
  service's ``on_timings`` hook; a stage a search did not run is not observed.

The HTTP metrics come from our own small ASGI middleware rather than prometheus-fastapi-instrumentator: it counts
the requests answered before routing (413 by the body limit, CORS preflights) under the route they were for, keeps
exact status codes and the ``endpoint`` label the dashboards use, and writes into this app's own registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import StateDep
from app.security import metrics_access
from app.state import AppState

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# stages take from tens of microseconds (fuse) to seconds (rerank on a busy CPU)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED = "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("xlir_http_requests", "HTTP requests by route template, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("xlir_http_request_duration_seconds", "time to answer, by route template and method",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.overloaded = Counter("xlir_overloaded", "requests answered 429 overloaded (query queue full)",
                                  registry=r)
        self.batch_size = Histogram("xlir_batch_size", "texts per encoder call of the query batcher",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("xlir_queue_depth", "queries waiting for the encoder", registry=r)
        self.ready = Gauge("xlir_ready", "1 when the index and the encoder are loaded", registry=r)
        self.index_docs = Gauge("xlir_index_documents", "documents in the loaded index", registry=r)
        self.index_bytes = Gauge("xlir_index_bytes", "bytes of the files listed in the index manifest", registry=r)
        self.lang_docs = Gauge("xlir_index_documents_by_language", "documents per language in the loaded index",
                               ["lang"], registry=r)
        self.stages = Histogram("xlir_stage_seconds", "wall time of each stage of a search (the response's "
                                "timings_ms), by stage and collection", ["stage", "collection"],
                                buckets=STAGE_BUCKETS, registry=r)
        self.collection_docs = Gauge("xlir_collection_documents", "documents in each served collection",
                                     ["collection"], registry=r)
        self.collection_ready = Gauge("xlir_collection_ready", "1 when the collection is loaded and serving",
                                      ["collection"], registry=r)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)
        if status == 429:
            self.overloaded.inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def observe_stages(self, collection: str, timings_ms: dict[str, float]) -> None:
        """One search's stage timings (``SearchService.on_timings``): each stage it ran, in seconds."""
        for stage, ms in timings_ms.items():
            self.stages.labels(stage, collection).observe(ms / 1000.0)

    def observe_state(self, state: AppState) -> None:
        """Gauges that describe what is loaded now (called at each scrape, so a reloaded index shows at once)."""
        svc = state.service
        self.ready.set(1 if state.ready else 0)
        self.lang_docs.clear()
        if svc is None:
            self.queue_depth.set(0)
            self.index_docs.set(0)
            self.index_bytes.set(0)
            return
        index = svc.index
        self.queue_depth.set(svc.batcher.depth)
        self.index_docs.set(index.size)
        self.index_bytes.set(sum(f.size for f in index.manifest.files.values()))
        for lang, count in index.languages.items():
            self.lang_docs.labels(lang).set(count)

    def observe_collections(self, state: AppState) -> None:
        self.collection_docs.clear()
        self.collection_ready.clear()
        for name, coll in getattr(state, "collections", {}).items():  # a bare state (tests) has none
            self.collection_ready.labels(name).set(1 if coll.not_ready is None else 0)
            self.collection_docs.labels(name).set(coll.service.index.size if coll.service is not None else 0)

    def scrape(self, state: AppState) -> bytes:
        self.observe_state(state)
        self.observe_collections(state)
        return generate_latest(self.registry)


def _match(routes: Iterable[BaseRoute], scope: Scope) -> tuple[Match, str | None]:
    """The first route matching ``scope`` (FULL before PARTIAL), looking into included routers."""
    partial: str | None = None
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.12x keeps included routers nested
        effective = getattr(route, "effective_candidates", None)  # its routes with the include's prefix
        if inner is not None and callable(effective):  # /collections/{name}/search, not /search
            match, path = _match(effective(), scope)
        elif inner is not None:
            match, path = _match(inner.routes, scope)
        else:
            match, _ = route.matches(scope)
            path = getattr(route, "path", None)
        if match is Match.FULL and path:
            return match, path
        if match is Match.PARTIAL and path and partial is None:
            partial = path
    return (Match.PARTIAL, partial) if partial else (Match.NONE, None)


def endpoint_of(scope: Scope) -> str:
    """The route template of a request: the first route that matches it, as routing chose it (also for requests
    answered before routing, e.g. 413 by the body limit), with the prefix of the router it was included with
    (``/collections/{name}/search``; ``scope["route"]`` is the router's own ``/search``); else ``unmatched``."""
    router = getattr(scope.get("app"), "router", None)
    _, path = _match(getattr(router, "routes", ()), scope)
    if path is None:
        path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP request, including those answered by other middlewares."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes every handler ends as a 500
        t0 = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(endpoint_of(scope), scope["method"], status, time.perf_counter() - t0)


router = APIRouter()


@router.get("/metrics", dependencies=[Depends(metrics_access)], response_class=Response,
            summary="Prometheus metrics (text exposition format)")
async def metrics(request: Request, state: StateDep) -> Response:
    return Response(request.app.state.metrics.scrape(state), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> Metrics:
    """A registry for this app, the middleware (outermost, so 413s and CORS answers are counted) and the route."""
    m = Metrics()
    app.state.metrics = m
    app.add_middleware(MetricsMiddleware, metrics=m)
    app.include_router(router)
    return m
