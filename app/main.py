"""``create_app(settings)``: the FastAPI application; everything heavy is loaded in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from app import errors, security
from app import metrics as app_metrics
from app.routes import router
from app.settings import Settings
from app.state import AppState, load_state, warm_up
from models.base import Encoder
from models.rerankers import Reranker
from xlir import __version__

log = logging.getLogger(__name__)


class LifespanState(TypedDict):
    xlir: AppState


async def follow_index(state: AppState) -> None:
    """Every ``XLIR_RELOAD_INTERVAL`` seconds: load a newly published generation (hot reload; queries running on
    the old one finish on it) or writes appended by other processes. A generation that fails to load is logged
    and reported by /ready; the current one keeps serving."""
    interval = state.settings.reload_interval
    live = state.live
    if not interval or live is None:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(live.refresh)
        except Exception as exc:
            log.error("index refresh failed (still serving %s): %s: %s", live.generation, type(exc).__name__, exc)


def create_app(
    settings: Settings | None = None, *, encoder: Encoder | None = None, reranker: Reranker | None = None
) -> FastAPI:
    """Build the app. ``encoder``/``reranker`` replace the ones named by the settings (tests, embedding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[LifespanState]:
        security.log_policy(app)
        state = load_state(settings, encoder=encoder, reranker=reranker)
        if state.service is not None:
            state.service.batcher.on_batch = metrics.observe_batch
            if settings.warmup:
                await asyncio.to_thread(warm_up, state.service.encoder)
            await state.service.batcher.start()
        poller = asyncio.create_task(follow_index(state)) if state.live is not None else None
        try:
            yield {"xlir": state}
        finally:
            if poller is not None:
                poller.cancel()
            if state.documents is not None:
                await state.documents.close()
            if state.service is not None:
                await state.service.batcher.close()
                if state.service.dense_batcher is not None:
                    state.service.dense_batcher.close()
            if state.live is not None:
                state.live.close()

    app = FastAPI(
        title="xlir",
        version=__version__,
        description="Cross-lingual retrieval: dense (multilingual encoder + FAISS shards), BM25 and hybrid "
        "search over one index, with optional cross-encoder reranking.",
        lifespan=lifespan,
    )
    errors.install(app)
    security.install(app, settings)
    app.include_router(router)
    metrics = app_metrics.install(app)  # last: its middleware is the outermost
    return app
