"""HTTP routes: one call each into the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse

from app.deps import DocumentsDep, MiningDep, ServiceDep, StateDep
from app.schemas import (
    DeleteResponse,
    DocId,
    DocumentOut,
    EmbedRequest,
    EmbedResponse,
    ErrorBody,
    Health,
    MineRequest,
    MineResponse,
    Ready,
    ReloadResponse,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from app.security import authorize, require_scope

router = APIRouter(dependencies=[Depends(authorize)])  # a read key for every route but /health and /ready

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        400: "rerank requested but no reranker is configured (none built, XLIR_RERANKER=none)",
        401: "API keys are configured and the request has none, or an unknown one",
        403: "the API key lacks the scope this endpoint needs",
        404: "no document with this id",
        409: "a compaction is already running",
        413: "request body over XLIR_MAX_BODY_BYTES, or more sentences than XLIR_MINE_MAX_SENTENCES",
        422: "invalid request: empty or too long query, k out of range, unknown mode/fusion/language",
        429: "overloaded: the query queue is full, or a mining job is running",
        503: "index or model not ready (missing, half-written, or built with another encoder)",
    }.items()
}


@router.post("/search", response_model=SearchResponse, responses=ERRORS, summary="Search the index")
async def search(req: SearchRequest, service: ServiceDep) -> SearchResponse:
    return await service.search(req)


@router.post("/embed", response_model=EmbedResponse, responses=ERRORS, summary="Embed texts with the encoder")
async def embed(req: EmbedRequest, service: ServiceDep) -> EmbedResponse:
    return await service.embed(req)


@router.post("/mine", response_model=MineResponse, responses=ERRORS,
             summary="Mine parallel sentences between two lists (margin-based)")
async def mine(req: MineRequest, mining: MiningDep) -> MineResponse:
    return await mining.mine(req)


WRITE = [Depends(require_scope("write"))]


@router.post("/documents", response_model=UpsertResponse, responses=ERRORS, dependencies=WRITE,
             summary="Upsert documents (durable before the answer; searchable at once)")
async def upsert_documents(req: UpsertRequest, documents: DocumentsDep) -> UpsertResponse:
    return await documents.upsert(req)


# `:path`: an id may hold `/` (sent percent-encoded, %2F, like any other reserved character)
DocIdPath = Annotated[DocId, Path(description="the document id, percent-encoded (any id POST /documents accepts)")]


@router.get("/documents/{doc_id:path}", response_model=DocumentOut, responses=ERRORS,
            summary="Read a document as the index serves it now (live updates included)")
async def get_document(doc_id: DocIdPath, documents: DocumentsDep) -> DocumentOut:
    return await documents.get(doc_id)


@router.delete("/documents/{doc_id:path}", response_model=DeleteResponse, responses=ERRORS, dependencies=WRITE,
               summary="Delete a document (durable before the answer)")
async def delete_document(doc_id: DocIdPath, documents: DocumentsDep) -> DeleteResponse:
    return await documents.delete(doc_id)


@router.post("/reload", response_model=ReloadResponse, responses=ERRORS, dependencies=WRITE,
             summary="Load a newly published index generation (and writes of other processes) now")
async def reload(documents: DocumentsDep) -> ReloadResponse:
    return await documents.reload()


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}}, summary="Readiness: index loaded")
async def ready(state: StateDep) -> JSONResponse:
    if state.service is None or state.not_ready is not None:
        return JSONResponse(status_code=503, content=Ready(ready=False, detail=state.not_ready).model_dump())
    svc = state.service
    index = svc.index
    live = state.live.stats() if state.live is not None else {}
    body = Ready(ready=True, docs=index.size, languages=index.languages,
                 encoder=svc.encoder.name, reranker=svc.reranker.name if svc.reranker else None,
                 centering=index.centering, centroid_table_langs=svc.table.langs if svc.table else None,
                 generation=live.get("generation"), delta_docs=live.get("delta_docs"),
                 tombstones=live.get("tombstones"), reload_error=live.get("reload_error"))
    return JSONResponse(content=body.model_dump())
