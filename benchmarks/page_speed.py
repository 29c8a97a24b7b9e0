"""The search page's time to first result: from Enter in the query box to the results on screen.

Run: ``python -m benchmarks.page_speed --index .demo/index --out benchmarks/results/page_speed.json``
(``make demo`` builds ``.demo/index``; or ``xlir index data/sample/corpus.jsonl --out .demo/index --overwrite``).

The app (``create_app``, the real encoder of the index) is served by uvicorn in this process, on a free loopback
port; Debian's chromium (``/usr/bin/chromium``), driven by playwright, loads ``/`` and searches the demo queries
(``benchmarks.demo_bench.queries``) with the page's defaults (mode auto, feedback auto, rerank off), typing each
query and pressing Enter, with the Highlights switch on (the default: the page shows the results of a first
request at once, then asks again with ``highlight: true`` and puts the sentences in) and off. Per query:

- ``rendered``: in the page, ``performance.now()`` from the submit (Enter) to the hits inserted in the DOM;
- ``painted``: the same to the next frame drawn after that (requestAnimationFrame, then a task): the time to
  first result;
- ``highlights_shown``: the same to the highlights put in (second request);
- ``wall``: in playwright, from the Enter key press to the page reporting everything done (adds the
  browser-driver round trips);

and the server's own ``timings_ms`` (``total`` of the first request, ``highlight`` of the second), so the page's
share (HTTP, JSON, DOM) shows. Every
request to a host other than this machine is blocked and counted (it must be 0). ``--screenshot`` saves the page
after the last query as a PNG.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.demo_bench import free_port, machine, pct, queries, save_results

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
SCREENSHOT_QUERY = "Wie schützen Impfungen vor Krankheiten?"
SCREENSHOT_LANGS = ("en", "es", "fr")


@contextmanager
def served(index: Path) -> Iterator[str]:
    """The app over ``index`` on a free loopback port, in a thread of this process (as ``xlir serve`` runs it)."""
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(index=index, reload_interval=0)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start (is the index there? see the log above)")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def summarise(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 2), "p95": round(pct(values, 95), 2),
            "mean": round(sum(values) / len(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def measure(base: str, qs: list[str], warmup: list[str], highlights: list[str],
            screenshot: Path | None) -> dict[str, Any]:
    """Per setting of the page's Highlights switch (on, off): the warm-up searches, then ``qs``, each timed."""
    from playwright.sync_api import sync_playwright

    external: list[str] = []
    bodies: list[dict[str, Any]] = []

    def route(r: Any) -> None:
        parts = urlsplit(r.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            external.append(r.request.url)
            r.abort()
            return
        if r.request.method == "POST" and parts.path.endswith("/search"):
            bodies.append(json.loads(r.request.post_data or "{}"))
        r.continue_()

    rows: list[dict[str, Any]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1000, "height": 760})
        context.route("**/*", route)
        page = context.new_page()
        started = time.perf_counter()
        page.goto(base + "/")
        page.wait_for_selector("#lang-chips .chip")
        load_ms = (time.perf_counter() - started) * 1000

        def search(query: str) -> dict[str, Any]:
            done = int(page.evaluate("window.xlirPage.searches"))
            page.fill("#q", query)
            t0 = time.perf_counter()
            page.press("#q", "Enter")
            page.wait_for_function(
                "n => window.xlirPage.searches > n && window.xlirPage.done && window.xlirPage.paintedMs !== null",
                arg=done, polling=5)
            wall = (time.perf_counter() - t0) * 1000
            info = dict(page.evaluate("({...window.xlirPage})"))
            if page.is_visible("#error"):
                raise SystemExit(f"the page shows an error for {query!r}: {page.inner_text('#error')}")
            shown = info["highlightMs"]
            return {"query": query, "wall_ms": round(wall, 2), "rendered_ms": round(float(info["lastMs"]), 2),
                    "painted_ms": round(float(info["paintedMs"]), 2), "server_ms": round(float(info["serverMs"]), 2),
                    "highlights_shown_ms": round(float(shown), 2) if shown is not None else None,
                    "highlight_ms": round(float(info["timings"].get("highlight") or 0.0), 2),
                    "results": info["lastCount"], "highlighted": info["highlighted"],
                    "sent_highlight": bool(bodies[-1].get("highlight"))}

        for setting in highlights:
            page.keyboard.press("Escape")  # an empty box: the switch does not search again
            page.check(f'input[name="highlight"][value="{setting}"]')
            for q in warmup:
                search(q)
            for q in qs:
                rows.append({"highlights": setting} | search(q))
        if screenshot is not None:  # highlights on, three Latin-script languages (fonts of any machine)
            page.keyboard.press("Escape")
            page.check('input[name="highlight"][value="on"]')
            for lang in SCREENSHOT_LANGS:
                page.click(f'#lang-chips .chip[data-lang="{lang}"]')
            search(SCREENSHOT_QUERY)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
        browser.close()
    return {"rows": rows, "page_load_ms": round(load_ms, 1), "external_requests": len(external),
            "external_urls": external}


CLOCKS = {"painted_ms": "**Enter -> first results painted** (page)",
          "rendered_ms": "Enter -> first results in the DOM (page)",
          "server_ms": "server: retrieval of the first request (`timings_ms.total`)",
          "page_share_ms": "HTTP + JSON + DOM of the first request (in the DOM - retrieval)",
          "highlights_shown_ms": "Enter -> highlights shown (page, second request)",
          "highlight_ms": "server: highlights (`timings_ms.highlight` of the second request)",
          "wall_ms": "Enter -> all done (playwright)"}


def report(res: dict[str, Any]) -> str:
    lines = [
        f"{res['queries']} queries per setting (after {res['warmup']} warm-up searches), index `{res['index']}` "
        f"({res['docs']} documents, {res['languages']} languages, encoder {res['encoder']}), the page's defaults "
        f"(mode auto, feedback auto, rerank off, k 10) with its Highlights switch on (the default) and off. "
        f"Page load {res['page_load_ms']:.0f} ms; requests to other hosts: {res['external_requests']}.",
        "",
        "| clock | " + " | ".join(f"highlights {h}: p50 ms | p95 ms" for h in res["summary"]) + " |",
        "|---|" + "---:|---:|" * len(res["summary"]),
    ]
    for key, name in CLOCKS.items():
        cells = [f"{s[key]['p50']:.1f} | {s[key]['p95']:.1f}" if key in s else "- | -"
                 for s in res["summary"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=Path(".demo/index"))
    ap.add_argument("--queries", type=int, default=20, help="measured queries (the demo queries, in order)")
    ap.add_argument("--warmup", type=int, default=3, help="searches before measuring (not counted)")
    ap.add_argument("--highlights", choices=["on", "off", "both"], default="both",
                    help="the page's Highlights switch (both: on, then off)")
    ap.add_argument("--out", type=Path, default=None, help="raw figures as JSON")
    ap.add_argument("--screenshot", type=Path, default=None, help="a PNG of the page after the last query")
    args = ap.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if not args.index.is_dir():
        raise SystemExit(f"no index at {args.index}: xlir index data/sample/corpus.jsonl --out {args.index}")
    qs = queries()
    if len(qs) < args.queries + args.warmup:
        raise SystemExit(f"only {len(qs)} demo queries; ask for fewer")
    warm, measured = (qs[-args.warmup:] if args.warmup else []), qs[:args.queries]
    settings = ["on", "off"] if args.highlights == "both" else [args.highlights]

    with served(args.index) as base:
        import httpx

        ready = httpx.get(base + "/ready", timeout=30).json()
        got = measure(base, measured, warm, settings, args.screenshot)
    rows = got["rows"]
    for r in rows:
        r["page_share_ms"] = round(r["rendered_ms"] - r["server_ms"], 2)
    summary = {h: {key: summarise(values) for key in CLOCKS
                   if (values := [float(r[key]) for r in rows if r["highlights"] == h and r[key] is not None])}
               for h in settings}
    res: dict[str, Any] = {
        "benchmark": "page_speed", "machine": machine(), "commit": "(lead fills in)", "index": str(args.index),
        "docs": ready.get("docs"), "languages": len(ready.get("languages") or {}), "encoder": ready.get("encoder"),
        "queries": len(measured), "warmup": len(warm), "page_load_ms": got["page_load_ms"],
        "external_requests": got["external_requests"], "external_urls": got["external_urls"],
        "highlighted_hits": {h: sum(r["highlighted"] for r in rows if r["highlights"] == h) for h in settings},
        "hits": {h: sum(r["results"] for r in rows if r["highlights"] == h) for h in settings},
        "summary": summary, "rows": rows,
    }
    print(report(res))
    save_results(args.out, res)


if __name__ == "__main__":
    main()
