"""The one place where errors become HTTP answers, all with the body ``{"error": code, "detail": text}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xlir.errors import (
    BadQuery,
    CenteringUnavailable,
    CollectionNotFound,
    Conflict,
    CorpusError,
    DocumentNotFound,
    EncoderUnavailable,
    Forbidden,
    IndexInvalid,
    IndexNotReady,
    ModelInvalid,
    ModelNotFound,
    Overloaded,
    PathNotAllowed,
    PayloadTooLarge,
    QueryTooLong,
    RerankerNotConfigured,
    ShardUnavailable,
    Unauthorized,
    XlirError,
)

log = logging.getLogger(__name__)

STATUS: dict[type[XlirError], int] = {
    BadQuery: 422,
    QueryTooLong: 422,
    CorpusError: 422,
    RerankerNotConfigured: 400,
    CenteringUnavailable: 400,
    PathNotAllowed: 400,
    Unauthorized: 401,
    Forbidden: 403,
    PayloadTooLarge: 413,
    DocumentNotFound: 404,
    CollectionNotFound: 404,
    Conflict: 409,
    Overloaded: 429,
    IndexNotReady: 503,
    EncoderUnavailable: 503,
    IndexInvalid: 503,
    ModelNotFound: 503,
    ModelInvalid: 503,
    ShardUnavailable: 503,  # and ReplicaUnavailable; with Retry-After (RETRY_AFTER)
}


T = TypeVar("T")


def _of_class(table: Mapping[type[XlirError], T], exc: XlirError) -> T | None:
    """``table``'s entry for the most specific class of ``exc`` it has (None: none)."""
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


def status_of(exc: XlirError) -> int:
    status = _of_class(STATUS, exc)
    return 400 if status is None else status


HEADERS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": 'Bearer realm="xlir"'},
    429: {"Retry-After": "1"},
}


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    # a detail may quote the request (a field name, a value), which can hold lone surrogates: escape them, or
    # encoding the body as UTF-8 would fail
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(status_code=status, content={"error": code, "detail": detail}, headers=HEADERS.get(status))


# transient 503s: a shard or encoder replica on Ray is being replaced; clients (app/client.py) retry after it
RETRY_AFTER: dict[type[XlirError], str] = {ShardUnavailable: "1"}


def xlir_error_response(exc: XlirError) -> JSONResponse:
    """The answer to a domain error (also for middlewares, which run outside the exception handlers)."""
    resp = error_response(status_of(exc), exc.code, exc.detail)
    retry = _of_class(RETRY_AFTER, exc)
    if retry is not None:
        resp.headers["Retry-After"] = retry
    return resp


def _location(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def _xlir_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, XlirError)
    return xlir_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{_location(tuple(err.get('loc', ())))}: {msg}")
    return error_response(422, "validation_error", "; ".join(parts))


def _unparsable_body(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "body: the JSON is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "body: the request body is not UTF-8"
    return f"body: the request body cannot be parsed as JSON ({type(cause).__name__}: {str(cause)[:200]})"


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body (json.loads raised)
        return error_response(422, "validation_error", _unparsable_body(exc.__cause__))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "unexpected server error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(XlirError, _xlir_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
