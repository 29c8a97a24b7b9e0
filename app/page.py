"""The search page (``app/static``: index.html, app.js, style.css) at ``/``, and the offline rule of the HTML pages.

The page and the API documentation (``/docs``, ``/redoc``: served by ``fastapi-offline`` from the files its package
ships) must work without the internet and must not call out. A Content-Security-Policy on these HTML pages lets
the browser load scripts, styles, images and data from this server only: ReDoc's bundle, for one, fetches its
sidebar logo from a CDN, which the policy stops before any request is made.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
"""The page's files: served at ``/`` (index.html) and under ``/static``."""

OFFLINE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
               "frame-ancestors 'self'; base-uri 'self'; form-action 'self'")
"""This server only (the documentation pages have inline scripts and styles; ReDoc starts a blob: worker)."""


class OfflinePages:
    """Adds :data:`OFFLINE_CSP` to the answers of ``paths`` (the page and the documentation pages)."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"content-security-policy"]
                headers.append((b"content-security-policy", OFFLINE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


def install(app: FastAPI) -> None:
    """``/`` serves the page (open like /health: the page asks for the API key and sends it with each call),
    ``/static`` its files; the page and the documentation pages get :data:`OFFLINE_CSP`."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    pages = {"/", app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(OfflinePages, paths=frozenset(p for p in pages if p))
