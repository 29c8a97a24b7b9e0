"""``create_app(settings)``: the FastAPI application; everything heavy is loaded in the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from app import errors, security
from app import metrics as app_metrics
from app.routes import router
from app.settings import Settings
from app.state import AppState, load_state, warm_up
from models.encoders import Encoder
from models.rerankers import Reranker
from xlir import __version__


class LifespanState(TypedDict):
    xlir: AppState


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
        try:
            yield {"xlir": state}
        finally:
            if state.service is not None:
                await state.service.batcher.close()
                state.service.index.close()

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
