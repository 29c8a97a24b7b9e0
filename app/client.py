"""The Python client of the REST API: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), on httpx.

    from xlir import Client

    with Client("http://127.0.0.1:8765") as xl:
        for hit in xl.search("Wer hat die Relativitätstheorie entwickelt?", k=3).results:
            print(f"{hit.score:.3f} {hit.lang} {hit.title}")

Typed with the server's own pydantic models (``app/schemas.py``): a request is validated before it is sent (a
``pydantic.ValidationError`` names the bad field, as the server's 422 would) and only the fields given are sent, so
the server's defaults apply; an answer is parsed into its response model.

One implementation of the API: each method of :class:`Calls` builds a :class:`Call` (method, path, JSON body, how to
parse the answer) and turns an answer into a result or an :class:`ApiError`; the two clients only send calls, one
blocking and one async, and bind the same methods (:func:`_blocking`, :func:`_awaitable`).

Retries (``max_retries``, default 3): answers 429 (overloaded) and 503 (not ready, or a replica going away) and
failures to connect (the request never reached the server, so repeating a POST is safe) are retried by the
transport of httpx-retries. Between two tries the client waits the server's ``Retry-After`` (seconds or an HTTP
date) when it sends one, else up to ``backoff * 2**n`` seconds for the n-th retry (full jitter); no wait is longer
than ``max_backoff``. Other errors (a read timeout, a 500) are not retried: the server may have acted on the request.

Errors: :class:`ApiError` (an :class:`xlir.errors.XlirError`) carries ``status``, ``code`` and ``detail`` (from the
server's JSON error body ``{"error": code, "detail": text}``), the body itself, the URL and the attempts made; one
subclass per status family (:class:`BadRequest` 400/413/422, :class:`Unauthorized` 401/403, :class:`NotFound` 404,
:class:`Overloaded` 429, :class:`Unavailable` 503, :class:`ServerError` other 5xx) and :class:`ConnectionFailed`
(no answer; the message names the URL).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar
from urllib.parse import quote

import httpx
from httpx_retries import Retry, RetryTransport
from pydantic import BaseModel, ValidationError

from app.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    CollectionList,
    DeleteResponse,
    DocumentIn,
    DocumentOut,
    EmbedKind,
    EmbedRequest,
    EmbedResponse,
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
from xlir.errors import XlirError

__all__ = [
    "ApiError", "AsyncClient", "BadRequest", "Call", "Calls", "Client", "ConnectionFailed", "NotFound", "Overloaded",
    "ServerError", "Unauthorized", "Unavailable",
]

DEFAULT_URL = "http://127.0.0.1:8765"
RETRY_STATUSES = (429, 503)
RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout)  # the request was not sent: safe for any method

R = TypeVar("R")
P = ParamSpec("P")


class ApiError(XlirError):
    """The server answered with an error (``status``), or did not answer (:class:`ConnectionFailed`, status None).

    ``code`` and ``detail`` are the server's (``{"error": code, "detail": text}``); ``body`` is the parsed JSON body
    (the text when it was not JSON); ``attempts`` counts the tries, retries included.
    """

    code = "api_error"

    def __init__(self, message: str, *, status: int | None = None, body: Any = None, url: str = "",
                 attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.url = url
        self.attempts = attempts
        server_detail = body.get("detail") if isinstance(body, dict) else None
        self.detail = server_detail if isinstance(server_detail, str) else message
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            self.code = body["error"]


class BadRequest(ApiError):
    """400, 413 or 422: the server refused the request as it was (the detail names the field and the fix)."""


class Unauthorized(ApiError):
    """401 (no or unknown API key) or 403 (the key lacks the scope)."""


class NotFound(ApiError):
    """404: no such document, collection or route."""


class Overloaded(ApiError):
    """429 after the retries: the query queue is full, or a mining job is running."""


class Unavailable(ApiError):
    """503 after the retries: the index or the model is not ready."""


class ServerError(ApiError):
    """Another 5xx: an unexpected server error (the server log has the details)."""


class ConnectionFailed(ApiError):
    """No answer: the server could not be reached (after the retries), or the connection failed mid-request."""


FAMILIES: dict[int, type[ApiError]] = {400: BadRequest, 413: BadRequest, 422: BadRequest, 401: Unauthorized,
                                       403: Unauthorized, 404: NotFound, 429: Overloaded, 503: Unavailable}


def _version() -> str:
    try:
        return importlib.metadata.version("xlir")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "dev"


def error_class(status: int) -> type[ApiError]:
    return FAMILIES.get(status, ServerError if status >= 500 else ApiError)


@dataclass(frozen=True)
class Call(Generic[R]):
    """One API call, independent of how it is sent: ``path`` is relative to the client's URL."""

    method: str
    path: str
    parse: Callable[[Any], R]
    body: Any = None
    ok: tuple[int, ...] = (200,)
    retry: bool = True
    extensions: dict[str, Any] = field(default_factory=dict)


def _dump(model: BaseModel) -> Any:
    """The JSON of a request model, with only the fields that were given (the server applies its defaults)."""
    return model.model_dump(mode="json", exclude_unset=True)


def _validated(model: type[BaseModel], value: BaseModel | Mapping[str, Any], fields: Mapping[str, Any]) -> Any:
    given = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else dict(value)
    return _dump(model.model_validate({**given, **fields}))


def _search_body(search: str | SearchRequest | Mapping[str, Any], fields: Mapping[str, Any]) -> Any:
    value = {"query": search} if isinstance(search, str) else search
    return _validated(SearchRequest, value, fields)


def _batch_results(data: Any) -> list[SearchResponse]:
    return BatchSearchResponse.model_validate(data).results


class Calls:
    """The API as :class:`Call` objects, and the parsing of answers: what the two clients share."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, collection: str | None = None,
                 timeout: float | None = 30.0, max_retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 30.0, headers: Mapping[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        if max_retries < 0 or backoff < 0 or max_backoff <= 0:
            raise ValueError("max_retries and backoff must be >= 0, max_backoff > 0")
        if collection is not None and not collection:
            raise ValueError("collection must not be empty (omit it for the default collection)")
        self.url = url.rstrip("/")
        self.collection = collection
        self.prefix = "" if collection is None else "/collections/" + quote(collection, safe="")
        self.max_retries = max_retries
        self.headers = {"User-Agent": f"xlir-client/{_version()}", **(headers or {})}
        if api_key:
            self.headers["X-API-Key"] = api_key
        self.timeout = timeout
        self.retry = Retry(total=max_retries, allowed_methods=["GET", "POST", "DELETE"],
                           status_forcelist=RETRY_STATUSES, retry_on_exceptions=RETRY_EXCEPTIONS,
                           backoff_factor=backoff, max_backoff_wait=max_backoff, backoff_jitter=1.0)

    # -- the API --------------------------------------------------------------------------------------------------

    def search(self, query: str | SearchRequest, **fields: Any) -> Call[SearchResponse]:
        """``POST /search``: ``query`` (text, or a whole :class:`SearchRequest`) and any other field of the request
        (``k``, ``mode``, ``langs``, ``rerank``, ...), which override the request's."""
        return Call("POST", self.prefix + "/search", SearchResponse.model_validate, _search_body(query, fields))

    def search_batch(self, searches: Sequence[str | SearchRequest | Mapping[str, Any]],
                     **fields: Any) -> Call[list[SearchResponse]]:
        """``POST /search/batch``: many searches in one call (texts, requests or dicts; ``fields`` apply to each),
        their queries encoded together; one response each, in order."""
        if isinstance(searches, str | BaseModel | Mapping):
            raise TypeError("search_batch takes a list of searches; for one, call search")
        body = _validated(BatchSearchRequest, {}, {"searches": [_search_body(s, fields) for s in searches]})
        return Call("POST", self.prefix + "/search/batch", _batch_results, body)

    def upsert(self, documents: Sequence[DocumentIn | Mapping[str, Any]]) -> Call[UpsertResponse]:
        """``POST /documents``: add or replace documents (``{"id", "text", "title", "lang"}`` or
        :class:`DocumentIn`); durable and searchable when the call returns. Needs a key with ``write``."""
        if isinstance(documents, Mapping | BaseModel):
            documents = [documents]
        body = _validated(UpsertRequest, {}, {"documents": [
            d.model_dump(exclude_unset=True) if isinstance(d, BaseModel) else dict(d) for d in documents]})
        return Call("POST", self.prefix + "/documents", UpsertResponse.model_validate, body)

    def get(self, doc_id: str) -> Call[DocumentOut]:
        """``GET /documents/{id}``: the document as served now; any id works (it is percent-encoded)."""
        return Call("GET", self._document(doc_id), DocumentOut.model_validate)

    def delete(self, doc_id: str) -> Call[DeleteResponse]:
        """``DELETE /documents/{id}``; :class:`NotFound` if there is no such document. Needs ``write``."""
        return Call("DELETE", self._document(doc_id), DeleteResponse.model_validate)

    def embed(self, texts: str | Sequence[str], kind: EmbedKind | str = EmbedKind.query,
              **fields: Any) -> Call[EmbedResponse]:
        """``POST /embed``: vectors of ``texts`` as queries or passages (``centered``, ``lang``, ``centering``)."""
        body = _validated(EmbedRequest, {}, {"texts": [texts] if isinstance(texts, str) else list(texts),
                                             "kind": kind, **fields})
        return Call("POST", self.prefix + "/embed", EmbedResponse.model_validate, body)

    def mine(self, src: Sequence[str], tgt: Sequence[str], **fields: Any) -> Call[MineResponse]:
        """``POST /mine``: parallel sentences between two lists (``k``, ``margin``, ``threshold``, ...)."""
        body = _validated(MineRequest, {}, {"src": list(src), "tgt": list(tgt), **fields})
        return Call("POST", "/mine", MineResponse.model_validate, body)

    def reload(self) -> Call[ReloadResponse]:
        """``POST /reload``: load a newly published index generation now. Needs ``write``."""
        return Call("POST", self.prefix + "/reload", ReloadResponse.model_validate)

    def collections(self) -> Call[CollectionList]:
        """``GET /collections``: the collections the server serves, the default one first."""
        return Call("GET", "/collections", CollectionList.model_validate)

    def health(self) -> Call[Health]:
        """``GET /health``: the process answers (never retried: it is the probe)."""
        return Call("GET", "/health", Health.model_validate, retry=False)

    def ready(self) -> Call[Ready]:
        """``GET /ready``: whether the index (the collection's; unnamed: every collection) is loaded; a server that
        is not ready answers ``ready=False`` (its 503 is the answer here, not an error, and is not retried)."""
        return Call("GET", self.prefix + "/ready", Ready.model_validate, ok=(200, 503), retry=False)

    def _document(self, doc_id: str) -> str:
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"a document id is a non-empty string, not {doc_id!r}")
        return f"{self.prefix}/documents/{quote(doc_id, safe='')}"  # '/' too: the id is one path segment

    # -- sending and answers --------------------------------------------------------------------------------------

    def http_options(self) -> dict[str, Any]:
        return {"base_url": self.url, "headers": self.headers, "timeout": self.timeout}

    def request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        extensions = dict(call.extensions)
        if not call.retry:
            extensions["retry"] = self.retry.copy_with(total=0)
        return http.build_request(call.method, call.path, json=call.body, extensions=extensions)

    def answer(self, call: Call[R], response: httpx.Response) -> R:
        """The result of ``call`` from the server's answer, or the :class:`ApiError` of its status family."""
        retry = response.extensions.get("retry")
        attempts = 1 + (retry.attempts_made if isinstance(retry, Retry) else 0)
        url = str(response.request.url)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = response.text
        if response.status_code in call.ok:
            try:
                return call.parse(data)
            except (ValidationError, ValueError) as exc:
                raise ApiError(f"{call.method} {url}: the answer is not what an xlir server sends ({exc})",
                               status=response.status_code, body=data, url=url, attempts=attempts) from None
        status = response.status_code
        cls = error_class(status)
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            what = f"{data.get('error', 'error')}: {data['detail']}"
        else:
            what = (data if isinstance(data, str) else json.dumps(data))[:300] or response.reason_phrase
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        raise cls(f"{call.method} {url} answered {status} {what}{tries}", status=status, body=data, url=url,
                  attempts=attempts)

    def transport_error(self, call: Call[Any], exc: httpx.TransportError) -> ConnectionFailed:
        url = f"{self.url}{call.path}"
        tries = self.max_retries + 1 if call.retry and isinstance(exc, RETRY_EXCEPTIONS) else 1
        reason = str(exc) or type(exc).__name__
        verb = "cannot connect to" if isinstance(exc, RETRY_EXCEPTIONS) else "no answer from"
        after = f" (after {tries} attempts)" if tries > 1 else ""
        return ConnectionFailed(f"{verb} {self.url} ({call.method} {url}): {reason}{after}", url=url, attempts=tries)


def _signature(build: Callable[..., Any], returns: str) -> inspect.Signature:
    """``build``'s signature with the result it gives once sent (``Call[X]`` becomes ``returns`` of ``X``): what
    ``help()`` and editors show for the methods of the clients."""
    sig = inspect.signature(build)
    ret = str(sig.return_annotation)
    inner = ret[len("Call["):-1] if ret.startswith("Call[") else ret
    return sig.replace(return_annotation=returns.format(inner))


def _blocking(build: Callable[Concatenate[Calls, P], Call[R]]) -> Callable[Concatenate[Client, P], R]:
    """The blocking method of a :class:`Calls` method: build the call, send it, return the answer."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.send(build(self.calls, *args, **kwargs))

    wrapped = functools.wraps(build)(method)
    wrapped.__signature__ = _signature(build, "{}")  # type: ignore[attr-defined]
    return wrapped


def _awaitable(build: Callable[Concatenate[Calls, P], Call[R]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[R]]:
    """The async method of a :class:`Calls` method."""

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.send(build(self.calls, *args, **kwargs))

    wrapped = functools.wraps(build)(method)
    wrapped.__signature__ = _signature(build, "Awaitable[{}]")  # type: ignore[attr-defined]
    return wrapped


class Client:
    """A blocking client: ``Client(url, api_key=None, collection=None)``; use it in a ``with`` block or ``close()``.

    ``collection`` sends the index calls (search, documents, embed, ready, reload) to ``/collections/{name}/...``;
    health, mine and collections are the server's. ``transport`` replaces httpx's own (tests, proxies); the
    retries wrap it.
    """

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, collection: str | None = None,
                 timeout: float | None = 30.0, max_retries: int = 3, backoff: float = 0.25, max_backoff: float = 30.0,
                 headers: Mapping[str, str] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.calls = Calls(url, api_key=api_key, collection=collection, timeout=timeout, max_retries=max_retries,
                           backoff=backoff, max_backoff=max_backoff, headers=headers)
        self._http = httpx.Client(transport=RetryTransport(transport or httpx.HTTPTransport(), retry=self.calls.retry),
                                  **self.calls.http_options())

    search = _blocking(Calls.search)
    search_batch = _blocking(Calls.search_batch)
    upsert = _blocking(Calls.upsert)
    get = _blocking(Calls.get)
    delete = _blocking(Calls.delete)
    embed = _blocking(Calls.embed)
    mine = _blocking(Calls.mine)
    reload = _blocking(Calls.reload)
    collections = _blocking(Calls.collections)
    health = _blocking(Calls.health)
    ready = _blocking(Calls.ready)

    def send(self, call: Call[R]) -> R:
        try:
            response = self._http.send(self.calls.request(self._http, call))
        except httpx.TransportError as exc:
            raise self.calls.transport_error(call, exc) from exc
        return self.calls.answer(call, response)

    @property
    def url(self) -> str:
        return self.calls.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, collection={self.calls.collection!r})"


class AsyncClient:
    """The asyncio client, with the same methods as :class:`Client` (awaitable); ``async with`` or ``aclose()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, collection: str | None = None,
                 timeout: float | None = 30.0, max_retries: int = 3, backoff: float = 0.25, max_backoff: float = 30.0,
                 headers: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.calls = Calls(url, api_key=api_key, collection=collection, timeout=timeout, max_retries=max_retries,
                           backoff=backoff, max_backoff=max_backoff, headers=headers)
        self._http = httpx.AsyncClient(
            transport=RetryTransport(transport or httpx.AsyncHTTPTransport(), retry=self.calls.retry),
            **self.calls.http_options())

    search = _awaitable(Calls.search)
    search_batch = _awaitable(Calls.search_batch)
    upsert = _awaitable(Calls.upsert)
    get = _awaitable(Calls.get)
    delete = _awaitable(Calls.delete)
    embed = _awaitable(Calls.embed)
    mine = _awaitable(Calls.mine)
    reload = _awaitable(Calls.reload)
    collections = _awaitable(Calls.collections)
    health = _awaitable(Calls.health)
    ready = _awaitable(Calls.ready)

    async def send(self, call: Call[R]) -> R:
        try:
            response = await self._http.send(self.calls.request(self._http, call))
        except httpx.TransportError as exc:
            raise self.calls.transport_error(call, exc) from exc
        return self.calls.answer(call, response)

    @property
    def url(self) -> str:
        return self.calls.url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r}, collection={self.calls.collection!r})"
