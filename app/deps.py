"""Typed dependencies; tests replace them with ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.mining import MiningService
from app.service import DocumentService, SearchService
from app.state import AppState
from xlir.errors import IndexNotReady


def get_state(request: Request) -> AppState:
    state: AppState = request.state.xlir
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_service(state: StateDep) -> SearchService:
    if state.service is None:
        raise IndexNotReady(state.error or "the index is not loaded yet")
    return state.service


ServiceDep = Annotated[SearchService, Depends(get_service)]


def get_mining(state: StateDep) -> MiningService:
    if state.mining is None:
        raise IndexNotReady(state.error or "the index is not loaded yet")
    return state.mining


MiningDep = Annotated[MiningService, Depends(get_mining)]


def get_documents(state: StateDep) -> DocumentService:
    if state.documents is None:
        raise IndexNotReady(state.error or "the index is not loaded yet")
    return state.documents


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]
