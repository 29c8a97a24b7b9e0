"""``create_app(settings)``: the FastAPI application; everything heavy is loaded in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TypedDict

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app import errors, logs, page, security
from app import metrics as app_metrics
from app.deps import collection_name
from app.routes import general, router
from app.settings import Settings
from app.state import AppState, load_state, shared_services, warm_up
from indexer.live import LiveStore
from models.base import Encoder
from models.rerankers import Reranker
from xlir import __version__

log = logging.getLogger(__name__)


class LifespanState(TypedDict):
    xlir: AppState


async def follow_index(live: LiveStore, interval: float) -> None:
    """Every ``XLIR_RELOAD_INTERVAL`` seconds: load a newly published generation of one collection's index (hot
    reload; queries running on the old one finish on it) or writes appended by other processes. A generation that
    fails to load is logged and reported by /ready; the current one keeps serving."""
    if not interval:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(live.refresh)
        except Exception as exc:
            log.error("index refresh failed (%s still serving %s): %s: %s", live.root, live.generation,
                      type(exc).__name__, exc)


def create_app(
    settings: Settings | None = None, *, encoder: Encoder | None = None, reranker: Reranker | None = None
) -> FastAPI:
    """Build the app. ``encoder``/``reranker`` replace the ones named by the settings (tests, embedding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[LifespanState]:
        security.log_policy(app)
        state = load_state(settings, encoder=encoder, reranker=reranker)
        batcher, dense_batcher = shared_services(state)  # one of each for every collection
        for coll in state.collections.values():
            if coll.service is not None:  # per-stage latency histograms, labelled by collection
                coll.service.on_timings = partial(metrics.observe_stages, coll.name)
        if batcher is not None:
            batcher.on_batch = metrics.observe_batch
            if settings.warmup and state.mining is not None:
                await asyncio.to_thread(warm_up, state.mining.encoder)
            await batcher.start()
        pollers = [asyncio.create_task(follow_index(c.live, settings.reload_interval))
                   for c in state.collections.values() if c.live is not None]
        try:
            yield {"xlir": state}
        finally:
            for poller in pollers:
                poller.cancel()
            for coll in state.collections.values():
                if coll.documents is not None:
                    await coll.documents.close()
            if batcher is not None:
                await batcher.close()
            if dense_batcher is not None:
                dense_batcher.close()
            for coll in state.collections.values():
                if coll.live is not None:
                    coll.live.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the files its package ships (under
    # /static-offline-docs), not from a CDN, so the documentation works offline
    app = FastAPIOffline(
        title="xlir",
        version=__version__,
        description="Cross-lingual retrieval: dense (multilingual encoder + FAISS shards), BM25 and hybrid "
        "search over one index, with optional cross-encoder reranking.",
        lifespan=lifespan,
    )
    # FastAPIOffline adds the documentation routes itself and leaves these None; security.docs_paths reads them
    app.docs_url, app.redoc_url = "/docs", "/redoc"
    page.install(app)  # the search page at /, and the offline rule of it and the documentation pages
    errors.install(app)
    security.install(app, settings)
    logs.install(app)  # the request id: outside security's answers (401, 413 carry it too), inside the metrics
    app.include_router(general)
    app.include_router(router)  # the default collection
    app.include_router(router, prefix="/collections/{name}", dependencies=[Depends(collection_name)])
    metrics = app_metrics.install(app)  # last: its middleware is the outermost
    return app
