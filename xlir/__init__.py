"""xlir: cross-lingual dense + BM25 retrieval service.

``from xlir import Client, AsyncClient`` gives the Python client of the REST API (``app/client.py``). It is loaded
on first use (module ``__getattr__``), so ``import xlir`` stays light (no httpx, no pydantic models) and this bottom
layer imports nothing above it at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


if TYPE_CHECKING:
    from app.client import (
        ApiError,
        AsyncClient,
        BadRequest,
        Client,
        ConnectionFailed,
        NotFound,
        Overloaded,
        ServerError,
        Unauthorized,
        Unavailable,
    )

__all__ = [
    "ApiError", "AsyncClient", "BadRequest", "Client", "ConnectionFailed", "NotFound", "Overloaded", "ServerError",
    "Unauthorized", "Unavailable", "__version__",
]
CLIENT_NAMES = frozenset(__all__) - {"__version__"}
"""What the package re-exports from the client module, loaded on first use."""


def __getattr__(name: str) -> Any:
    if name in CLIENT_NAMES:
        import app.client

        value = getattr(app.client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xlir' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *CLIENT_NAMES})
