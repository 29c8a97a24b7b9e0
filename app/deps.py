"""Typed dependencies; tests replace them with ``app.dependency_overrides``.

Every index route is served twice (:func:`app.main.create_app` includes :data:`app.routes.router` at ``/`` and
at ``/collections/{name}``): :func:`get_collection` resolves the collection a request addresses, the default one
when the path has no ``{name}``, so the routes themselves never know which one they serve.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from app.mining import MiningService
from app.schemas import Ready
from app.security import authorize
from app.service import DocumentService, SearchService
from app.settings import COLLECTION_RULE
from app.state import AppState, Collection


def get_state(request: Request) -> AppState:
    state: AppState = request.state.xlir
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_collection(request: Request, state: StateDep) -> Collection:
    """The collection of ``/collections/{name}/...`` (an unknown name: 404 listing the names), else the default."""
    name = request.path_params.get("name")
    return state.collection(name if isinstance(name, str) else None)


CollectionDep = Annotated[Collection, Depends(get_collection)]


def collection_name(
    name: Annotated[str, Path(description=f"a collection the server serves (GET /collections); {COLLECTION_RULE}")],
    state: StateDep,
    _: Annotated[None, Depends(authorize)],
) -> None:
    """Router dependency of the ``/collections/{name}`` routes: documents the path parameter and answers an
    unknown name with 404 (the routes' own dependencies resolve the collection through :func:`get_collection`).
    The API key is checked first (the router's own check, run once per request): a caller without one learns
    nothing, not even which names exist."""
    state.collection(name)


def get_service(collection: CollectionDep) -> SearchService:
    return collection.loaded(collection.service)


ServiceDep = Annotated[SearchService, Depends(get_service)]


def get_mining(state: StateDep) -> MiningService:
    return state.loaded(state.mining)


MiningDep = Annotated[MiningService, Depends(get_mining)]


def get_documents(collection: CollectionDep) -> DocumentService:
    return collection.loaded(collection.documents)


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]


def get_readiness(request: Request, state: StateDep) -> Ready:
    """``/ready``: every collection's readiness (unnamed), or the named collection's."""
    name = request.path_params.get("name")
    return state.collection(name).readiness() if isinstance(name, str) else state.readiness()


ReadinessDep = Annotated[Ready, Depends(get_readiness)]
