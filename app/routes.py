"""HTTP routes: one call each into the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse

from app.deps import DocumentsDep, MiningDep, ReadinessDep, ServiceDep, StateDep
from app.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    CollectionList,
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

# the index routes: included at / (the default collection) and at /collections/{name} (app.main.create_app)
router = APIRouter(dependencies=[Depends(authorize)])  # a read key for every route but /health and /ready
# the routes of the server as a whole (encoder, liveness, the list of collections): included once
general = APIRouter(dependencies=[Depends(authorize)])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        400: "rerank requested but no reranker is configured (none built, XLIR_RERANKER=none)",
        401: "API keys are configured and the request has none, or an unknown one",
        403: "the API key lacks the scope this endpoint needs",
        404: "no document with this id, or no collection with this name",
        409: "a compaction is already running",
        413: "request body over XLIR_MAX_BODY_BYTES, more sentences than XLIR_MINE_MAX_SENTENCES, or more "
             "searches than XLIR_MAX_BATCH_SEARCHES",
        422: "invalid request: empty or too long query, k out of range, unknown mode/fusion/language (in a batch: "
             "the detail names the search, searches[i])",
        429: "overloaded: the query queue is full, or a mining job is running",
        503: "index or model not ready (missing, half-written, or built with another encoder)",
    }.items()
}


@router.post("/search", response_model=SearchResponse, responses=ERRORS, summary="Search the index")
async def search(req: SearchRequest, service: ServiceDep) -> SearchResponse:
    return await service.search(req)


@router.post("/search/batch", response_model=BatchSearchResponse, responses=ERRORS,
             summary="Run several searches in one call (their queries encoded together), answers in order")
async def search_batch(req: BatchSearchRequest, service: ServiceDep) -> BatchSearchResponse:
    return await service.search_batch(req)


@router.post("/embed", response_model=EmbedResponse, responses=ERRORS, summary="Embed texts with the encoder")
async def embed(req: EmbedRequest, service: ServiceDep) -> EmbedResponse:
    return await service.embed(req)


@general.post("/mine", response_model=MineResponse, responses=ERRORS,
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


@general.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}, 404: ERRORS[404]},
            summary="Readiness: the index loaded (unnamed: every collection, 503 while any is not ready)")
async def ready(body: ReadinessDep) -> JSONResponse:
    return JSONResponse(status_code=200 if body.ready else 503, content=body.model_dump())


@general.get("/collections", response_model=CollectionList, responses=ERRORS,
             summary="The collections this server serves (the default one answers the unnamed routes)")
async def collections(state: StateDep) -> CollectionList:
    return state.listing()
