"""Typed dependencies; tests replace them with ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.mining import MiningService
from app.service import DocumentService, SearchService
from app.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.state.xlir
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_service(state: StateDep) -> SearchService:
    return state.loaded(state.service)


ServiceDep = Annotated[SearchService, Depends(get_service)]


def get_mining(state: StateDep) -> MiningService:
    return state.loaded(state.mining)


MiningDep = Annotated[MiningService, Depends(get_mining)]


def get_documents(state: StateDep) -> DocumentService:
    return state.loaded(state.documents)


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]
