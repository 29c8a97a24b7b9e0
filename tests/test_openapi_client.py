"""The schema stays usable from other languages (issue 22.1): ``openapi-python-client`` generates a client from the
live server's ``/openapi.json`` (offline: run without a network namespace where ``unshare -n`` works), with no
warning, and the generated client calls ``/health`` and ``/search`` on that server."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index, serve_app

DOCS: list[dict[str, object]] = [
    {"id": "cat", "title": "Cats", "text": "the cat sits on the mat", "lang": "en"},
    {"id": "dog", "title": "Dogs", "text": "the dog runs in the park", "lang": "en"},
    {"id": "katze", "title": "Katzen", "text": "die katze sitzt auf der matte", "lang": "de"},
]
PACKAGE = "xlir_client"  # the generator's name for the package of a spec titled "xlir"


def generator() -> str:
    exe = Path(sys.executable).with_name("openapi-python-client")
    found = str(exe) if exe.is_file() else shutil.which("openapi-python-client")
    assert found, "openapi-python-client is not installed (pip install -e '.[dev]')"
    return found


def offline_prefix() -> list[str]:
    """``unshare -n``: no network at all, where this user may make a network namespace (root in CI)."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    idx = fake_index(tmp_path_factory.mktemp("oapi"), DOCS)
    app = create_app(Settings(index=idx, api_keys="r1:read", warmup=False, reload_interval=0),
                     encoder=FakeEncoder())
    with serve_app(app, timeout=120) as url:
        yield url


@pytest.fixture(scope="module")
def generated(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    tmp = tmp_path_factory.mktemp("generated")
    spec = httpx.get(f"{server}/openapi.json", headers={"Authorization": "Bearer r1"}, timeout=30)
    assert spec.status_code == 200, spec.text
    (tmp / "spec.json").write_bytes(spec.content)
    (tmp / "config.yaml").write_text("post_hooks: []\n")  # no formatter run: it needs nothing but the spec
    out = subprocess.run([*offline_prefix(), generator(), "generate", "--path", "spec.json", "--output-path", "out",
                          "--config", "config.yaml"], cwd=tmp, capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "warning" not in report.lower() and "error" not in report.lower(), report  # the schema generates cleanly
    sys.path.insert(0, str(tmp / "out"))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp / "out"))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generated_client_calls_health_and_search(server: str, generated: ModuleType) -> None:
    health = module("api.default.health_health_get")
    search = module("api.default.search_search_post")
    models = module("models")
    client = generated.AuthenticatedClient(base_url=server, token="r1")  # Authorization: Bearer r1
    assert health.sync(client=client).status == "ok"

    got = search.sync(client=client, body=models.SearchRequest(query="cat sits", k=2, mode=models.Mode.DENSE))
    assert isinstance(got, models.SearchResponse)
    want = httpx.post(f"{server}/search", json={"query": "cat sits", "k": 2, "mode": "dense"},
                      headers={"X-API-Key": "r1"}, timeout=30).json()
    assert [h.id for h in got.results] == [h["id"] for h in want["results"]] and got.results[0].id == "cat"
    assert got.mode == models.Mode.DENSE and got.results[0].lang == "en"

    refused = search.sync_detailed(client=generated.Client(base_url=server),
                                   body=models.SearchRequest(query="cat"))
    assert refused.status_code == 401
    assert isinstance(refused.parsed, models.ErrorBody) and refused.parsed.error == "unauthorized"
