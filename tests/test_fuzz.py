"""Fuzzing the REST API (issues 6.5 and 17): no request may get a 5xx, and every error has the one error body.

Two generators, both sending over loopback to a real server (uvicorn in a thread, the app with the tests' fake encoder,
a small index, API keys configured):

- schemathesis, from the app's own OpenAPI schema: every operation, valid and schema-violating bodies, path
  parameters, query strings, with any Unicode code point in strings (lone surrogates included);
- :func:`hostile_request`, hypothesis strategies aimed at what schemas do not describe: every field of every endpoint
  (and the whole body) replaced by invalid Unicode, huge and negative numbers, booleans where numbers go, strings
  beyond every limit, JSON nested up to 20,000 levels, ``NaN``, integers of thousands of digits, invalid UTF-8
  bytes, hostile document ids in the URL and hostile API key headers.

``XLIR_FUZZ_EXAMPLES`` sets the examples per operation and per endpoint and kind of hostile value (default 25);
``XLIR_FUZZ_REPORT`` names a file that receives the count of requests per endpoint and status (0: no answer, the
connection dropped); ``python -m benchmarks.fuzz`` runs this file and prints the table.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, serve_app
from tests.test_load import build_fake_index

EXAMPLES = int(os.environ.get("XLIR_FUZZ_EXAMPLES", "25"))
WRITE_KEY = "fuzz-writer-5c1e"
KEY = {"X-API-Key": WRITE_KEY}
TALLY: Counter[tuple[str, str, int]] = Counter()  # (generator, "METHOD /path template", status) -> requests

# the schema only: building the app loads nothing (the index and encoder are loaded by the lifespan)
schema = schemathesis.openapi.from_dict(create_app(Settings(index=Path("unused"), warmup=False)).openapi())
schema.config.generation.update(codec=None, with_security_parameters=False)  # any code point, surrogates too


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = build_fake_index(tmp_path_factory.mktemp("fuzz"), n=60)
    app = create_app(Settings(index=index, warmup=False, reload_interval=0, max_body_bytes=64 * 1024,
                              mine_max_sentences=50, embed_max_texts=16, api_keys=f"{WRITE_KEY}:write"),
                     encoder=FakeEncoder())
    with serve_app(app) as url:
        yield url
    report = os.environ.get("XLIR_FUZZ_REPORT")
    if report:
        rows = [{"generator": g, "endpoint": e, "status": s, "count": n} for (g, e, s), n in sorted(TALLY.items())]
        Path(report).write_text(json.dumps(rows, indent=1) + "\n")


def problem(generator: str, endpoint: str, status: int, text: str, content_type: str) -> str | None:
    """Tally one answer; what is wrong with it (a 5xx, an error without the one error body), if anything."""
    TALLY[(generator, endpoint, status)] += 1
    if status >= 500:
        return f"{endpoint} -> {status}: {text[:300]}"
    if status >= 400 and content_type.startswith("application/json") and endpoint != "GET /ready":
        body = json.loads(text)  # /ready answers its own model with 503 (never here: the index is loaded)
        if set(body) != {"error", "detail"}:
            return f"{endpoint} -> {status} without the error body: {text[:300]}"
    return None


def send(http: httpx.Client, generator: str, endpoint: str, method: str, url: str, **kw: object) -> str | None:
    """Send one request and judge its answer (a dropped connection, status 0 in the tally, is a failure too)."""
    try:
        resp = http.request(method, url, **kw)  # type: ignore[arg-type]
    except httpx.TransportError as exc:
        TALLY[(generator, endpoint, 0)] += 1
        return f"{endpoint}: no answer ({type(exc).__name__}: {exc})"
    return problem(generator, endpoint, resp.status_code, resp.text, resp.headers.get("content-type", ""))


# --- schemathesis --------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a minute or two on 2 busy cores, with the hostile requests below
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_schema_generated_request_gets_a_5xx(case: schemathesis.Case, server: str) -> None:
    resp = case.call(base_url=server, headers=KEY, timeout=30)
    ctype = resp.headers.get("content-type") or [""]  # schemathesis: header -> list of values
    found = problem("schemathesis", f"{case.method.upper()} {case.path}", resp.status_code, resp.text, ctype[0])
    assert found is None, found


# --- hostile values ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text put into a body as it is (what ``json.dumps`` cannot or will not write)."""

    text: str = field(repr=False)
    label: str = ""


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth, f"{depth} nested lists")


LONE_SURROGATES = st.characters(codec=None, categories=["Cs"])
SURROGATE_TEXT = st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), LONE_SURROGATES, st.text(max_size=8))
HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 10**30, -1, -(2**63) - 1, -(10**30), 0])
HUGE_NUMBERS = st.one_of(
    HUGE_INTS, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.5, 1.5]),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("9" * 5000, "5000 digits"), Raw("1e999")]))
LONG_STRINGS = st.one_of(
    st.integers(1_000, 80_000).map(lambda n: "x" * n),
    st.integers(100, 30_000).map(lambda n: "苹果 " * n),
    st.integers(2_000, 3_000).map(lambda n: " ".join(["word"] * (n // 5))))
NESTED = st.one_of(st.integers(2, 1_000).map(nested), st.sampled_from([nested(10_000), nested(20_000)]),
                   st.integers(2, 50).map(lambda d: Raw('{"a":' * d + "1" + "}" * d, f"{d} nested objects")))
ODD = st.one_of(st.none(), st.booleans(), st.just(""), st.just([]), st.just({}), st.text(max_size=20),
                st.sampled_from(["\x00", "\u2028", "\ufeff", "\U0001f600" * 3, "\u0301" * 50]))
CATEGORIES = {
    "invalid unicode": st.one_of(SURROGATE_TEXT, st.lists(SURROGATE_TEXT, min_size=1, max_size=4)),
    "huge or negative numbers": HUGE_NUMBERS,
    "booleans": st.booleans(),
    "long strings": st.one_of(LONG_STRINGS, st.lists(LONG_STRINGS, min_size=1, max_size=3)),
    "deep nesting": NESTED,
    "odd values": st.one_of(ODD, st.lists(st.one_of(ODD, HUGE_INTS, SURROGATE_TEXT), max_size=5)),
}

BODIES: dict[str, dict[str, object]] = {
    "/search": {"query": "alpha beta", "k": 5, "mode": "hybrid", "fusion": "weighted", "alpha": 0.5, "rrf_k": 60,
                "langs": ["en"], "rerank": False, "rerank_depth": 10, "lang": "en", "centering": "full"},
    "/search/batch": {"searches": [{"query": "alpha beta", "k": 5, "mode": "hybrid", "langs": ["en"], "lang": "en"},
                                   {"query": "gamma", "mode": "dense", "centering": "full"}]},
    "/embed": {"texts": ["alpha beta", "gamma"], "kind": "query", "centered": True, "lang": "en",
               "centering": "full"},
    "/mine": {"src": ["alpha beta", "gamma delta"], "tgt": ["beta alpha", "delta"], "k": 1, "margin": "ratio",
              "retrieval": "max", "threshold": 0.5, "one_to_one": False, "dedup": False, "centering": "full",
              "texts": True},
    "/documents": {"documents": [{"id": "fz-1", "text": "alpha beta gamma", "title": "t", "lang": "en"}]},
    "/reload": {},
}


def field_paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a JSON value that a hostile value can replace (containers and their items)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += field_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += field_paths(v, (*prefix, i))
    return out


def put(body: object, path: tuple[str | int, ...], value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        return {**body, head: put(body[head], rest, value)}
    assert isinstance(body, list) and isinstance(head, int)
    return [put(v, rest, value) if i == head else v for i, v in enumerate(body)]


def to_json(body: object) -> bytes:
    """JSON text with every non-ASCII character escaped (lone surrogates as ``\\udxxx``) and Raw values spliced in."""
    raws: list[Raw] = []

    def mark(v: object) -> object:
        if isinstance(v, Raw):
            raws.append(v)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(body), ensure_ascii=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw.text, 1)
    return text.encode("ascii")


@dataclass
class Request:
    method: str
    endpoint: str  # the route template, for the tally
    url: str
    headers: Headers
    content: bytes | None = None


def header_bytes(raw: bytes) -> bytes:
    """What HTTP lets a header value hold: visible ASCII and bytes 0x80-0xFF (no controls, no outer spaces)."""
    return bytes(b for b in raw if 0x21 <= b <= 0xFF and b != 0x7F)


Headers = dict[str, str | bytes]
HOSTILE_KEYS: st.SearchStrategy[Headers] = st.one_of(
    st.just({}),
    st.binary(min_size=1, max_size=300).map(lambda b: {"X-API-Key": header_bytes(b) or b"k"}),
    st.binary(min_size=1, max_size=100).map(lambda b: {"Authorization": b"Bearer " + (header_bytes(b) or b"k")}))
# 1 in 10 without a valid key
KEYS: st.SearchStrategy[Headers] = st.integers(0, 9).flatmap(lambda i: st.just(dict(KEY)) if i else HOSTILE_KEYS)


@st.composite
def hostile_request(draw: st.DrawFn, endpoint: str, category: str) -> Request:
    method, _, path = endpoint.partition(" ")
    headers: Headers = {"content-type": "application/json", **draw(KEYS)}
    prefix = ""
    if path.startswith(COLLECTION):  # the same requests under a collection name, often a hostile one
        prefix, path = "/collections/" + quote_from_bytes(draw(NAMES), safe=""), path[len(COLLECTION):]
    if path == "/documents/{doc_id}":
        raw_id = draw(st.one_of(
            st.binary(min_size=1, max_size=40),  # invalid UTF-8, NUL, ...
            st.text(min_size=1, max_size=30).map(lambda t: t.encode("utf-8")),
            st.sampled_from([b"..", b".", b"a/../b", b"\xed\xa0\x80", b"\xc0\xaf", b"x" * 5000, "🍎".encode() * 1001]),
        ))
        return Request(method, endpoint, prefix + "/documents/" + quote_from_bytes(raw_id, safe=""), headers)
    if method == "GET":  # /health, /ready, /metrics and the docs: a hostile query string and body
        query = quote_from_bytes(draw(st.binary(max_size=200)), safe="=&")
        return Request(method, endpoint, f"{prefix}{path}?{query}", headers, draw(st.binary(max_size=200)))
    hostile = CATEGORIES[category]
    base: object = BODIES[path]
    places = field_paths(base)
    if not places or draw(st.integers(0, 9)) == 0:
        base = draw(hostile)  # the whole body
    else:
        for place in draw(st.lists(st.sampled_from(places), min_size=1, max_size=3, unique=True)):
            with contextlib.suppress(KeyError, IndexError, AssertionError):  # an earlier value removed that place
                base = put(base, place, draw(hostile))
    content = draw(st.one_of(st.just(to_json(base)), st.just(to_json(base)), st.just(to_json(base)),
                             st.binary(max_size=300)))  # sometimes not JSON at all
    return Request(method, endpoint, prefix + path, headers, content)


BODY_ENDPOINTS = ["POST /search", "POST /search/batch", "POST /embed", "POST /mine", "POST /documents", "POST /reload"]
OTHER_ENDPOINTS = ["GET /documents/{doc_id}", "DELETE /documents/{doc_id}", "GET /health", "GET /ready",
                   "GET /metrics", "GET /docs", "GET /openapi.json"]
# the index routes again under /collections/{name} (a hostile name too), and the list of collections
COLLECTION = "/collections/{name}"
NAMED_BODY = [f"POST {COLLECTION}{p}" for p in ("/search", "/search/batch", "/embed", "/documents", "/reload")]
NAMED_OTHER = [f"GET {COLLECTION}/documents/{{doc_id}}", f"DELETE {COLLECTION}/documents/{{doc_id}}",
               f"GET {COLLECTION}/ready", "GET /collections"]
ENDPOINTS = BODY_ENDPOINTS + NAMED_BODY + OTHER_ENDPOINTS + NAMED_OTHER
CASES = [(e, c) for e in BODY_ENDPOINTS + NAMED_BODY for c in CATEGORIES] + \
    [(e, "hostile URL") for e in OTHER_ENDPOINTS + NAMED_OTHER]
NAMES = st.one_of(st.just(b"default"), st.just(b"default"), st.just(b"nope"), st.binary(min_size=1, max_size=40),
                  st.sampled_from([b"..", b".", b"a/b", b"\xed\xa0\x80", b"x" * 5000]))


FIXED = ["a \ud800 b", ["ok", "\udfff"], "\udc80", 10**30, -(2**63) - 1, -1, 0, 1e308, -1e308, True, False, None,
         "", [], {}, "x" * 5_000, "x" * 70_000, "苹" * 20_000, Raw("NaN"), Raw("-Infinity"), Raw("9" * 5000),
         nested(10_000), nested(500)]
"""One value of each kind, put in every place of every body by the sweep below (the random test explores more)."""


def sweep() -> Iterator[tuple[str, str, bytes]]:
    for endpoint in BODY_ENDPOINTS:
        path = endpoint.partition(" ")[2]
        for place in [(), *field_paths(BODIES[path])]:
            for value in FIXED:
                yield endpoint, path, to_json(put(BODIES[path], place, value))


@pytest.mark.slow
def test_every_kind_of_hostile_value_in_every_field_is_answered_without_a_5xx(server: str) -> None:
    found: list[str | None] = []
    with httpx.Client(base_url=server, timeout=30, headers={**KEY, "content-type": "application/json"}) as http:
        for endpoint, path, content in sweep():
            found.append(send(http, "sweep", endpoint, "POST", path, content=content))
        for raw_id in (b"\xed\xa0\x80", b"\xff", b"a\x00b", b"..", b"x" * 5000, "🍎".encode() * 1001, b"a/b%"):
            url = "/documents/" + quote_from_bytes(raw_id, safe="")
            for method in ("GET", "DELETE"):
                found.append(send(http, "sweep", f"{method} /documents/{{doc_id}}", method, url))
    failures = [f for f in found if f is not None]
    assert not failures, f"{len(failures)} of {len(found)} requests failed, e.g. " + "; ".join(failures[:5])


def test_hostile_endpoints_cover_the_api() -> None:
    """Every operation of the schema has hostile requests (a new route must be added to ENDPOINTS)."""
    ops = {f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item}
    assert ops <= set(ENDPOINTS), ops - set(ENDPOINTS)


@pytest.mark.slow
@pytest.mark.parametrize(("endpoint", "category"), CASES)
def test_no_hostile_request_gets_a_5xx(endpoint: str, category: str, server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(req=hostile_request(endpoint, category))
        def run(req: Request) -> None:
            found = send(http, "hostile", endpoint, req.method, req.url, headers=req.headers, content=req.content)
            assert found is None, found

        run()
