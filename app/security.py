"""Access control and request limits: API keys with scopes, the request body limit, CORS, path confinement.

- API keys (``XLIR_API_KEYS``): ``KEY:SCOPE`` pairs separated by commas, or a JSON object ``{"KEY": "SCOPE"}``
  (a scope may also be a list). Scopes: ``read`` (search, embed, mine) and ``write`` (documents, reload), write
  implies read. A key comes as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Keys are compared as sha256
  digests with ``hmac.compare_digest``, against every configured key (no early exit). No keys = open server.
- Every route of the API router needs ``read`` except ``/health`` and ``/ready`` (:func:`authorize`, a router
  dependency, so new routes are protected by default); write routes add ``Depends(require_scope("write"))``.
- The API documentation (``/docs``, ``/redoc``, ``/openapi.json``): :class:`DocsGuard` asks for a read key when keys
  are configured, unless ``XLIR_PUBLIC_DOCS=true``.
- :class:`BodyLimit`: a pure ASGI middleware that counts the bytes actually received (not only Content-Length)
  and answers 413 past ``XLIR_MAX_BODY_BYTES``.
- :func:`confine_path`: a client- or CLI-given path must resolve (symlinks included) inside the data directory.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import xlir_error_response
from app.settings import SCOPES, Settings, parse_api_keys
from xlir.errors import Forbidden, PathNotAllowed, PayloadTooLarge, Unauthorized

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/health", "/ready"})
KEY_HELP = "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, kept as sha256 digests; empty = authentication off."""

    entries: tuple[tuple[bytes, frozenset[str]], ...] = ()

    @classmethod
    def from_spec(cls, spec: str | None) -> ApiKeys:
        keys = parse_api_keys(spec) if spec else {}
        return cls(tuple((_digest(k), scopes) for k, scopes in keys.items()))

    @property
    def open(self) -> bool:
        return not self.entries

    def scopes_of(self, key: str) -> frozenset[str] | None:
        """Scopes of ``key`` (None if unknown); compares with every configured key, in constant time each."""
        given = _digest(key)
        found: frozenset[str] | None = None
        for digest, scopes in self.entries:
            if hmac.compare_digest(given, digest):
                found = scopes
        return found

    def authorize(self, key: str | None, scope: str) -> None:
        """Raise ``Unauthorized`` (no or unknown key) or ``Forbidden`` (key without ``scope``)."""
        if self.open:
            return
        if not key:
            raise Unauthorized(f"this endpoint needs an API key with the {scope!r} scope: {KEY_HELP}")
        scopes = self.scopes_of(key)
        if scopes is None:
            raise Unauthorized(f"unknown API key; {KEY_HELP}")
        if scope not in scopes:
            raise Forbidden(f"this API key has the scope(s) {', '.join(sorted(scopes))}; this endpoint needs {scope!r}")


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>` (XLIR_API_KEYS)")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`")


def presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_api_key_header)],
) -> str | None:
    return bearer.credentials if bearer is not None else header


KeyDep = Annotated[str | None, Depends(presented_key)]


def get_api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


KeysDep = Annotated[ApiKeys, Depends(get_api_keys)]


def require_scope(scope: str) -> Callable[..., Awaitable[None]]:
    """A dependency for one route: ``@router.post("/reload", dependencies=[Depends(require_scope("write"))])``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")

    async def check(keys: KeysDep, key: KeyDep) -> None:
        keys.authorize(key, scope)

    return check


async def authorize(request: Request, keys: KeysDep, key: KeyDep) -> None:
    """Router-wide dependency: the ``read`` scope for every route except :data:`OPEN_ROUTES`."""
    route = request.scope.get("route")
    if getattr(route, "path", None) in OPEN_ROUTES:
        return
    keys.authorize(key, "read")


async def metrics_access(request: Request, keys: KeysDep, key: KeyDep) -> None:
    """``/metrics`` is open unless ``XLIR_METRICS_AUTH`` asks for a read key."""
    if request.app.state.metrics_auth:
        keys.authorize(key, "read")


def key_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key of raw ASGI headers, read as :func:`presented_key` reads it (a Bearer token, else X-API-Key)."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token:
                bearer = token
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return bearer if bearer is not None else api_key


def docs_paths(app: FastAPI) -> frozenset[str]:
    """The paths FastAPI serves its documentation on (``/docs``, its OAuth2 redirect, ``/redoc``, ``/openapi.json``)."""
    paths = (app.docs_url, app.swagger_ui_oauth2_redirect_url if app.docs_url else None, app.redoc_url,
             app.openapi_url)
    return frozenset(p for p in paths if p)


def docs_are_public(settings: Settings, keys: ApiKeys) -> bool:
    """``XLIR_PUBLIC_DOCS`` unset: open only without keys; with no keys configured there is nothing to ask for."""
    return keys.open or bool(settings.public_docs)


class DocsGuard:
    """A read key for the documentation routes (FastAPI adds them as plain routes, outside the API router)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            try:
                self.keys.authorize(key_from_headers(scope["headers"]), "read")
            except (Unauthorized, Forbidden) as exc:
                await xlir_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Reject request bodies over ``max_bytes`` with 413, counting the bytes received.

    A declared Content-Length over the limit is refused before reading; otherwise the body is read (at most
    ``max_bytes`` + one chunk are held) and replayed to the app, so a chunked or lying client is caught too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"the request body is over the limit of {self.max_bytes} bytes (XLIR_MAX_BODY_BYTES)")
        await xlir_error_response(exc)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        chunks: list[bytes] = []
        total = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                first = message
                break
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [first] if first is not None else [
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def confine_path(base: Path, user_path: str | Path) -> Path:
    """Resolve ``user_path`` (relative to ``base``, or absolute) and require it to stay inside ``base``.

    Symlinks are resolved before the check, so a link pointing outside is refused like ``..``. Raises
    ``PathNotAllowed``; the message does not reveal the server's directory layout.
    """
    text = str(user_path)
    if not text.strip() or "\x00" in text:
        raise PathNotAllowed("the path is empty or contains a NUL byte")
    root = Path(base).resolve()
    candidate = Path(text)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not target.is_relative_to(root):
        raise PathNotAllowed(f"{text!r} is outside the data directory (XLIR_DATA_DIR)")
    return target


def install(app: FastAPI, settings: Settings) -> None:
    """Keys, body limit, the documentation's access (``XLIR_PUBLIC_DOCS``) and (only when origins are configured)
    CORS."""
    app.state.api_keys = ApiKeys.from_spec(settings.api_keys.get_secret_value() if settings.api_keys else None)
    app.state.metrics_auth = settings.metrics_auth
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if not docs_are_public(settings, app.state.api_keys):
        app.add_middleware(DocsGuard, keys=app.state.api_keys, paths=docs_paths(app))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])


def log_policy(app: FastAPI) -> None:
    keys: ApiKeys = app.state.api_keys
    if keys.open:
        log.warning("no API keys configured (XLIR_API_KEYS): every endpoint is open to anyone who can reach it")
        return
    write = sum("write" in scopes for _, scopes in keys.entries)
    log.info("API keys required: %d read-only, %d with write", len(keys.entries) - write, write)
