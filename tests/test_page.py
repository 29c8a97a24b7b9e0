"""The search page at ``/`` and the offline ``/docs``, in a real browser: playwright driving Debian's chromium
against a live uvicorn server over a fake-encoder index in three languages.

Every request the browser makes is recorded; any to a host other than this machine is blocked and counted, and
the count must stay 0 (the page and the API documentation work offline). Skipped only outside CI when chromium
or playwright is missing; in CI (``CI`` set) that fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.page import OFFLINE_CSP
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index, serve_app

CHROMIUM = Path(os.environ.get("XLIR_TEST_CHROMIUM", "/usr/bin/chromium"))  # Debian's; never playwright's own
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_QUERY = 200

DOCS = [
    {"id": "en-cat", "title": "Cats", "text": "the cat sits on the mat", "lang": "en"},
    {"id": "en-dog", "title": "Dogs", "text": "the dog runs in the park", "lang": "en"},
    {"id": "en-house", "title": "Houses", "text": "the house has a red door", "lang": "en"},
    {"id": "de-cat", "title": "Katzen", "text": "die katze sitzt auf der matte", "lang": "de"},
    {"id": "de-dog", "title": "Hunde", "text": "der hund läuft im park", "lang": "de"},
    {"id": "fr-cat", "title": "Chats", "text": "le chat est assis sur le tapis", "lang": "fr"},
]


def browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("page"), DOCS)


@pytest.fixture(scope="module")
def server(index_dir: Path) -> Iterator[str]:
    app = create_app(Settings(index=index_dir, warmup=False, reload_interval=0, max_query_chars=MAX_QUERY,
                              reranker="none"),
                     encoder=FakeEncoder())
    with serve_app(app) as base:
        yield base


@dataclass
class Traffic:
    """Every request of a browser context: the URLs, the blocked external ones, the bodies of POST /search."""

    urls: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)


def open_context(browser: Any) -> tuple[Any, Traffic]:
    """A fresh browser context whose requests to any host but this machine are aborted and counted."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    traffic = Traffic()

    def route(r: Any) -> None:
        url = r.request.url
        traffic.urls.append(url)
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            traffic.external.append(url)
            r.abort()
            return
        if r.request.method == "POST" and parts.path.endswith("/search"):
            traffic.searches.append(json.loads(r.request.post_data or "{}"))
        r.continue_()

    context.route("**/*", route)
    return context, traffic


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Traffic]]:
    context, traffic = open_context(browser)
    try:
        yield context.new_page(), traffic
    finally:
        context.close()
    assert traffic.external == [], f"requests left the machine: {traffic.external}"


def result_ids(pg: Any) -> list[str]:
    return [str(x) for x in pg.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.id)")]


def search(pg: Any, query: str) -> None:
    """Type ``query``, press Enter and wait until the page has rendered that search's answer."""
    # a search that a switch started has finished
    pg.wait_for_selector('#results-region[aria-busy="false"]', state="attached")
    before = pg.evaluate("window.xlirPage.searches")
    pg.fill("#q", query)
    pg.press("#q", "Enter")
    pg.wait_for_function("n => window.xlirPage.searches > n && window.xlirPage.done", arg=before)


def active_id(pg: Any) -> str | None:
    value = pg.evaluate("document.activeElement.dataset.id || document.activeElement.id || null")
    return None if value is None else str(value)


@pytest.mark.browser
def test_search_page_finds_filters_by_language_and_moves_by_keyboard(server: str, page: tuple[Any, Traffic]) -> None:
    pg, traffic = page
    pg.goto(server + "/")
    pg.wait_for_selector("#lang-chips .chip")
    assert active_id(pg) == "q"  # the query box has the focus on load
    chips = pg.eval_on_selector_all("#lang-chips .chip", "els => els.map(e => e.dataset.lang)")
    assert chips == ["en", "de", "fr"]  # the index's languages, most documents first
    assert "6 documents" in pg.inner_text("#status")
    # no reranker on this server: the switch says so and cannot be turned on
    assert pg.is_disabled('input[name="rerank"][value="on"]')
    assert "no reranker" in pg.inner_text("#rerank-note")

    pg.check('input[name="mode"][value="bm25"]')
    search(pg, "the cat sits")
    ids = result_ids(pg)
    assert ids[0] == "en-cat" and set(ids) <= {d["id"] for d in DOCS if d["lang"] == "en"}
    badges = pg.eval_on_selector_all("#results .hit .badge", "els => els.map(e => e.textContent)")
    assert badges == ["en"] * len(ids)
    assert pg.inner_text("#results .hit .title") == "Cats"
    timings = pg.inner_text("#timings")
    for stage in ("encode", "retrieve", "fuse", "total"):
        assert stage in timings, timings
    assert "mode bm25" in pg.inner_text("#summary")
    # two requests: the results at once, then the same search with highlights, which replace the snippets
    plain = {"query": "the cat sits", "k": 10, "mode": "bm25", "feedback": "auto", "rerank": False}
    assert traffic.searches == [plain, plain | {"highlight": True}]
    # the server's highlight of the top hit: its sentence with the query's terms in <mark>
    top = pg.locator("#results .hit").nth(0)
    assert top.locator("p.highlight").inner_text() == "the cat sits on the mat"
    assert {"cat", "sits"} <= set(top.locator("mark").all_inner_texts())
    assert "highlight" in pg.inner_text("#timings")
    before = pg.evaluate("window.xlirPage.searches")
    pg.check('input[name="highlight"][value="off"]')  # searches again, once, without highlights
    pg.wait_for_function("n => window.xlirPage.searches > n && window.xlirPage.done", arg=before)
    assert traffic.searches[2:] == [plain] and top.locator("mark").count() == 0
    assert top.locator("p.snippet").inner_text() == "the cat sits on the mat"

    # a language chip searches again with langs: only German documents come back
    pg.check('input[name="highlight"][value="on"]')
    pg.check('input[name="mode"][value="dense"]')
    search(pg, "katze sitzt matte")
    assert {pg.evaluate("document.querySelectorAll('#results .hit').length")} == {len(DOCS)}
    before = pg.evaluate("window.xlirPage.searches")
    pg.click('#lang-chips .chip[data-lang="de"]')
    pg.wait_for_function("n => window.xlirPage.searches > n && window.xlirPage.done", arg=before)
    assert traffic.searches[-1]["langs"] == ["de"] and traffic.searches[-1]["mode"] == "dense"
    assert pg.get_attribute('#lang-chips .chip[data-lang="de"]', "aria-pressed") == "true"
    ids = result_ids(pg)
    assert ids[0] == "de-cat" and sorted(ids) == ["de-cat", "de-dog"]
    assert set(pg.eval_on_selector_all("#results .badge", "els => els.map(e => e.textContent)")) == {"de"}

    # keyboard: arrows walk the results and back to the box, / refocuses it, Esc clears
    pg.focus("#q")
    pg.keyboard.press("ArrowDown")
    assert active_id(pg) == "de-cat"
    pg.keyboard.press("ArrowDown")
    assert active_id(pg) == "de-dog"
    pg.keyboard.press("ArrowDown")  # stays on the last one
    assert active_id(pg) == "de-dog"
    pg.keyboard.press("ArrowUp")
    assert active_id(pg) == "de-cat"
    pg.keyboard.press("ArrowUp")
    assert active_id(pg) == "q"
    pg.keyboard.press("ArrowDown")
    pg.keyboard.press("/")
    assert active_id(pg) == "q" and pg.input_value("#q") == "katze sitzt matte"  # "/" is not typed into it
    pg.keyboard.press("Escape")
    assert pg.input_value("#q") == "" and result_ids(pg) == [] and pg.inner_text("#timings") == ""
    assert pg.get_attribute("#results-region", "aria-live") == "polite"

    # a query over the server's limit: its JSON error body is shown, the results are cleared
    pg.keyboard.type("x" * (MAX_QUERY + 1))
    pg.keyboard.press("Enter")
    pg.wait_for_selector("#error:not([hidden])")
    assert pg.inner_text("#error") == (f"422 query_too_long: query has {MAX_QUERY + 1} characters; "
                                       f"the limit is {MAX_QUERY}")
    assert result_ids(pg) == []
    search(pg, "der hund läuft")  # the next good search hides the error
    assert pg.is_hidden("#error") and result_ids(pg)[0] == "de-dog"
    assert all(urlsplit(u).hostname in LOCAL_HOSTS for u in traffic.urls)


@pytest.mark.browser
def test_highlights_are_escaped_and_marked_by_code_point(server: str, page: tuple[Any, Traffic]) -> None:
    """The page renders ``hit.highlight`` (text + code-point spans) as text with <mark>s, never as HTML."""
    pg, _ = page
    hit = {"id": "x1", "score": 1.0, "lang": "en", "title": "<i>T</i>", "snippet": "plain snippet",
           "ranks": {"dense": 1}, "scores": {"dense": 1.0},
           "highlight": {"text": "🐈 <b>cat</b> & mat", "spans": [[5, 8], [15, 21], [2, 3]], "source": "bm25"}}
    plain = dict(hit, id="x2", highlight=None)
    body = {"query": "cat", "mode": "dense", "fusion": None, "reranked": False, "took_ms": 1.5,
            "centering": None, "timings_ms": {"encode": 0.5, "retrieve": 0.7, "total": 1.5}, "results": [hit, plain]}
    pg.route("**/search", lambda r: r.fulfill(status=200, content_type="application/json", body=json.dumps(body)))
    pg.goto(server + "/")
    search(pg, "cat")
    first = pg.locator("#results .hit").nth(0)
    assert first.locator(".title").inner_text() == "<i>T</i>" and first.locator("i").count() == 0
    assert first.locator("p.highlight").inner_text() == "🐈 <b>cat</b> & mat"
    assert first.locator("b").count() == 0  # the text was not parsed as HTML
    # spans are code points (the cat emoji is one), sorted, clipped to the text ([15, 21] ends past it)
    assert first.locator("mark").all_inner_texts() == ["<", "cat", "mat"]
    second = pg.locator("#results .hit").nth(1)
    assert second.locator("p.snippet").inner_text() == "plain snippet" and second.locator("mark").count() == 0
    stages = pg.eval_on_selector_all("#timings .stage", "els => els.map(e => e.textContent)")
    assert stages == ["encode 0.5 ms", "retrieve 0.7 ms", "total 1.5 ms"]


@pytest.mark.browser
def test_api_key_is_kept_and_sent(index_dir: Path, browser: Any) -> None:
    settings = Settings(index=index_dir, warmup=False, reload_interval=0, api_keys="sesame:read", reranker="none")
    with serve_app(create_app(settings, encoder=FakeEncoder())) as base:
        context, traffic = open_context(browser)
        try:
            pg = context.new_page()
            pg.goto(base + "/")
            pg.wait_for_selector("#lang-chips .chip")  # /ready is open: the chips come without a key
            pg.fill("#q", "the cat")
            pg.press("#q", "Enter")
            pg.wait_for_selector("#error:not([hidden])")
            assert pg.inner_text("#error").startswith("401 unauthorized: this endpoint needs an API key")
            pg.click(".key summary")
            pg.fill("#api-key", "sesame")
            pg.press("#api-key", "Tab")  # change: stored
            assert pg.evaluate("localStorage.getItem('xlir.apiKey')") == "sesame"
            pg.reload()
            assert pg.input_value("#api-key") == "sesame"  # kept across loads
            search(pg, "the cat sits")
            assert pg.is_hidden("#error") and "en-cat" in result_ids(pg)
        finally:
            context.close()
        assert traffic.external == []


WIKI = [
    {"id": "w-river", "title": "Rhein", "text": "der rhein ist ein fluss", "lang": "de"},
    {"id": "w-mountain", "title": "Mont Blanc", "text": "le mont blanc est une montagne", "lang": "fr"},
    {"id": "w-lake", "title": "Lago", "text": "el lago es grande", "lang": "es"},
]


@pytest.mark.browser
def test_collection_picker_searches_the_chosen_collection(index_dir: Path, browser: Any,
                                                          tmp_path: Path) -> None:
    wiki = fake_index(tmp_path, WIKI)
    settings = Settings(collections={"news": index_dir, "wiki": wiki}, warmup=False, reload_interval=0,
                        reranker="none")
    with serve_app(create_app(settings, encoder=FakeEncoder())) as base:
        context, traffic = open_context(browser)
        try:
            pg = context.new_page()
            pg.goto(base + "/")
            pg.wait_for_selector("#lang-chips .chip")
            assert pg.is_visible("#collection")
            assert pg.eval_on_selector_all("#collection option", "els => els.map(e => e.value)") == ["news", "wiki"]
            assert pg.eval_on_selector_all("#lang-chips .chip", "els => els.map(e => e.dataset.lang)") == [
                "en", "de", "fr"]
            pg.check('input[name="highlight"][value="off"]')
            search(pg, "the cat sits")  # the default collection: the unnamed route
            assert "en-cat" in result_ids(pg) and urlsplit(traffic.urls[-1]).path == "/search"
            pg.select_option("#collection", "wiki")  # its languages, and the same query searched in it
            pg.wait_for_function("() => document.querySelector('#lang-chips .chip[data-lang=\"es\"]') !== null")
            pg.wait_for_selector('#results-region[aria-busy="false"]', state="attached")
            assert pg.eval_on_selector_all("#lang-chips .chip", "els => els.map(e => e.dataset.lang)") == [
                "de", "es", "fr"]
            assert sorted(result_ids(pg)) == ["w-lake", "w-mountain", "w-river"]
            assert urlsplit(traffic.urls[-1]).path == "/collections/wiki/search"
        finally:
            context.close()
        assert traffic.external == []


@pytest.mark.browser
@pytest.mark.parametrize(("path", "rendered"), [
    ("/docs", ".swagger-ui .opblock-summary-path[data-path='/search']"),
    ("/redoc", "[data-section-id='operation/search_search_post'], h1:has-text('xlir')"),
])
def test_api_documentation_works_offline(server: str, page: tuple[Any, Traffic], path: str, rendered: str) -> None:
    pg, traffic = page
    pg.goto(server + path)
    pg.wait_for_selector(rendered, timeout=20_000)
    assert traffic.external == []
    assert any(urlsplit(u).path == "/openapi.json" for u in traffic.urls)
    if path == "/docs":
        assert "POST" in pg.inner_text(".swagger-ui .opblock-post .opblock-summary-method")


def test_page_and_docs_are_served_from_this_server_with_the_offline_policy(index_dir: Path) -> None:
    """Without a browser: the page and its files, the documentation's bundled assets, and the policy header."""
    settings = Settings(index=index_dir, warmup=False, reload_interval=0, reranker="none")
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="q"' in page.text and page.headers["content-security-policy"] == OFFLINE_CSP
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
        docs, redoc = c.get("/docs"), c.get("/redoc")
        assert "/static-offline-docs/swagger-ui-bundle.js" in docs.text
        assert "/static-offline-docs/redoc.standalone.js" in redoc.text
        for r in (docs, redoc, c.get("/docs/oauth2-redirect")):
            assert r.status_code == 200 and r.headers["content-security-policy"] == OFFLINE_CSP
            assert "https://" not in r.text  # nothing from a CDN
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            assert c.get(f"/static-offline-docs/{asset}").status_code == 200, asset
        search = c.post("/search", json={"query": "the cat"})
        assert search.status_code == 200 and "content-security-policy" not in search.headers
        assert c.get("/static/missing.js").json()["error"] == "not_found"
        assert "/" not in c.get("/openapi.json").json()["paths"]
