"""Fuzzing the REST API from its own OpenAPI schema (issue 6.5): schemathesis generates requests for every operation
(valid and schema-violating bodies, path parameters, query strings) and sends them over loopback to a real server
(uvicorn in a thread, the app with the tests' fake encoder and a small index). No request may get a 5xx, and every
error must have the one error body ``{"error", "detail"}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, serve_app
from tests.test_load import build_fake_index

# the schema only: building the app loads nothing (the index and encoder are loaded by the lifespan)
schema = schemathesis.openapi.from_dict(create_app(Settings(index=Path("unused"), warmup=False)).openapi())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = build_fake_index(tmp_path_factory.mktemp("fuzz"), n=60)
    app = create_app(Settings(index=index, warmup=False, reload_interval=0, max_body_bytes=64 * 1024,
                              mine_max_sentences=50, embed_max_texts=16),
                     encoder=FakeEncoder())
    with serve_app(app) as url:
        yield url


@pytest.mark.slow  # about a minute on 2 busy cores
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx(case: schemathesis.Case, server: str) -> None:
    resp = case.call(base_url=server, timeout=30)
    assert resp.status_code < 500, f"{case.method} {case.formatted_path} -> {resp.status_code}: {resp.text[:500]}"
    ctype = resp.headers.get("content-type") or [""]  # schemathesis: header -> list of values
    if resp.status_code >= 400 and ctype[0].startswith("application/json"):
        body = resp.json()
        if case.path != "/ready":  # /ready answers its own model with 503 (never here: the index is loaded)
            assert set(body) == {"error", "detail"}, body
