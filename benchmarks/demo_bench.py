"""The demo setup measured: cross-lingual quality per mode, indexing throughput, query latency, baselines.

Run: ``xlir bench demo [--out FILE.json]`` (``make bench-demo``). It indexes ``data/sample/corpus.jsonl`` with
e5-small into a temporary directory, then measures on that index:

- quality: for each cross-lingual probe (a question whose only answer is in another language), the answer's
  rank under dense (each centring mode), BM25, hybrid RRF and hybrid weighted, and the mean reciprocal rank
  (query language detected, as a client that sends no ``lang`` gets);

- indexing: docs/s for the whole pipeline and the share of each stage;
- query latency (p50/p95) per mode, in-process (``SearchService``) and through ``xlir serve`` (httpx);
- BM25 query time of xlir's bm25s index against rank-bm25 (the baseline) on the same tokens, as a ratio.

Prints a Markdown section for ``benchmarks/RESULTS.md`` and writes the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "sample" / "corpus.jsonl"
PROBES = REPO / "data" / "sample" / "probes.jsonl"


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(f"{base}/ready", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout:.0f}s")


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {gpu}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def save_results(out: Path | None, res: dict[str, Any], report: str | None = None) -> None:
    """The raw figures as JSON at ``out`` (and ``report`` beside it as ``.md``); nothing without ``--out``."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    if report is not None:
        out.with_suffix(".md").write_text(report + "\n", encoding="utf-8")


def queries() -> list[str]:
    probes = [json.loads(x)["query"] for x in PROBES.read_text(encoding="utf-8").splitlines() if x.strip()]
    corpus = [json.loads(x) for x in CORPUS.read_text(encoding="utf-8").splitlines() if x.strip()]
    return probes + [d["title"] for d in corpus[::10]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_inprocess(index_dir: Path, qs: list[str], repeats: int) -> dict[str, dict[str, float]]:
    from app.schemas import SearchRequest
    from app.settings import Settings
    from app.state import load_state

    state = load_state(Settings(index=index_dir))
    assert state.service is not None, state.error
    svc = state.service
    out: dict[str, dict[str, float]] = {}

    async def run() -> None:
        await svc.batcher.start()
        for mode in ("bm25", "dense", "hybrid"):
            lat = []
            for _ in range(repeats):
                for q in qs:
                    t0 = time.perf_counter()
                    await svc.search(SearchRequest(query=q, k=10, mode=mode))
                    lat.append((time.perf_counter() - t0) * 1000)
            out[mode] = {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "n": len(lat)}
        await svc.batcher.close()

    asyncio.run(run())
    return out


def bench_rest(index_dir: Path, qs: list[str], repeats: int) -> dict[str, dict[str, float]]:
    port = free_port()
    xlir = Path(sys.executable).with_name("xlir")
    proc = subprocess.Popen([str(xlir), "serve", "--index", str(index_dir), "--port", str(port),
                             "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        out: dict[str, dict[str, float]] = {}
        with httpx.Client(base_url=base, timeout=60) as c:
            for mode in ("bm25", "dense", "hybrid"):
                lat = []
                for _ in range(repeats):
                    for q in qs:
                        t0 = time.perf_counter()
                        r = c.post("/search", json={"query": q, "k": 10, "mode": mode})
                        r.raise_for_status()
                        lat.append((time.perf_counter() - t0) * 1000)
                out[mode] = {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "n": len(lat)}
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


MODES: dict[str, dict[str, Any]] = {
    "dense, centering off": {"mode": "dense", "centering": "off"},
    "dense, centering offset": {"mode": "dense", "centering": "offset"},
    "defaults (auto = dense here, centering full)": {},
    "bm25": {"mode": "bm25"},
    "hybrid rrf, centering full": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid weighted 0.5, centering full": {"mode": "hybrid", "fusion": "weighted", "alpha": 0.5},
    "hybrid weighted 0.7, centering full": {"mode": "hybrid", "fusion": "weighted", "alpha": 0.7},
    "hybrid weighted 0.8, centering full": {"mode": "hybrid", "fusion": "weighted", "alpha": 0.8},
    "hybrid weighted 0.8, centering off": {"mode": "hybrid", "fusion": "weighted", "alpha": 0.8, "centering": "off"},
}


def bench_quality(index_dir: Path) -> dict[str, dict[str, Any]]:
    from app.schemas import SearchRequest
    from app.settings import Settings
    from app.state import load_state

    state = load_state(Settings(index=index_dir))
    assert state.service is not None, state.error
    svc = state.service
    probes = [json.loads(x) for x in PROBES.read_text(encoding="utf-8").splitlines() if x.strip()]
    out: dict[str, dict[str, Any]] = {}

    async def run() -> None:
        await svc.batcher.start()
        for name, params in MODES.items():
            ranks: list[int | None] = []
            for p in probes:
                res = await svc.search(SearchRequest.model_validate({"query": p["query"], "k": 100, **params}))
                ids = [h.id for h in res.results]
                ranks.append(ids.index(p["relevant"]) + 1 if p["relevant"] in ids else None)
            mrr = sum(1.0 / r for r in ranks if r) / len(ranks)
            out[name] = {"ranks": ranks, "mrr": mrr, "top1": sum(r == 1 for r in ranks),
                         "top10": sum(bool(r and r <= 10) for r in ranks)}
        await svc.batcher.close()

    asyncio.run(run())
    out["_probes"] = {"pairs": [f"{p['query_lang']}->{p['relevant']}" for p in probes]}
    return out


def bench_bm25_vs_rank_bm25(index_dir: Path, qs: list[str], repeats: int) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    from indexer.build import passage_text
    from indexer.store import open_index
    from indexer.text import tokenize

    index = open_index(index_dir)
    docs = [index.doc(i) for i in range(index.size)]
    corpus_tokens = [tokenize(passage_text(d["title"], d["text"])) or [""] for d in docs]
    baseline = BM25Okapi(corpus_tokens, k1=1.2, b=0.75)
    toks = [tokenize(q) for q in qs]
    t0 = time.perf_counter()
    for _ in range(repeats):
        for t in toks:
            index.bm25_search(t, 10)
    ours = (time.perf_counter() - t0) / (repeats * len(toks)) * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        for t in toks:
            s = baseline.get_scores(t)
            np.argsort(-s)[:10]
    base = (time.perf_counter() - t0) / (repeats * len(toks)) * 1000
    return {"xlir_bm25s_ms": ours, "rank_bm25_ms": base, "speedup": base / ours}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from indexer.build import BuildOptions, build_index
    from models.encoders import load_encoder

    qs = queries()
    enc = load_encoder("e5-small")
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "idx"
        t0 = time.perf_counter()
        m = build_index([CORPUS], index_dir, enc, BuildOptions(progress=False))
        wall = time.perf_counter() - t0
        stages = m.build["stage_seconds"]
        total = sum(stages.values())
        res = {
            "machine": machine(),
            "commit": commit(),
            "docs": m.doc_count,
            "index_seconds": wall,
            "docs_per_second": m.doc_count / wall,
            "stage_share": {k: v / total for k, v in stages.items()},
            "queries": len(qs),
            "quality": bench_quality(index_dir),
            "inprocess": bench_inprocess(index_dir, qs, args.repeats),
            "rest": bench_rest(index_dir, qs, args.repeats),
            "bm25_vs_rank_bm25": bench_bm25_vs_rank_bm25(index_dir, qs, 20),
        }
    save_results(args.out, res)
    print(markdown(res))
    return 0


def markdown(r: dict[str, Any]) -> str:
    q = r["quality"]
    pairs = q["_probes"]["pairs"]
    lines = [
        f"Machine: {r['machine']}. Commit {r['commit']}.",
        "",
        "**Cross-lingual probes** (10 questions, each answered only by a passage in another language; rank of "
        "that passage among 300, k=100):",
        "",
        "| mode | " + " | ".join(pairs) + " | MRR | top-1 | top-10 |",
        "|---|" + "---|" * (len(pairs) + 3),
    ]
    for name in MODES:
        row = q[name]
        cells = [str(x) if x else ">100" for x in row["ranks"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mrr']:.3f} | {row['top1']} | {row['top10']} |")
    lines += ["",
        f"Demo corpus: {r['docs']} passages, 10 languages; "
        f"{r['queries']} queries (10 cross-lingual probes + 30 titles), k=10, encoder e5-small (torch, fp32, CPU).",
        "",
        f"**Indexing** (read, language, embed, BM25, FAISS flat, docstore, checksums): {r['docs']} docs in "
        f"{r['index_seconds']:.1f} s = **{r['docs_per_second']:.1f} docs/s**; share of time: "
        + ", ".join(f"{k} {v:.1%}" for k, v in sorted(r["stage_share"].items(), key=lambda kv: -kv[1])) + ".",
        "",
        "| mode | in-process p50 (ms) | in-process p95 (ms) | REST p50 (ms) | REST p95 (ms) |",
        "|---|---|---|---|---|",
    ]
    for mode in ("bm25", "dense", "hybrid"):
        a, b = r["inprocess"][mode], r["rest"][mode]
        lines.append(f"| {mode} | {a['p50_ms']:.1f} | {a['p95_ms']:.1f} | {b['p50_ms']:.1f} | {b['p95_ms']:.1f} |")
    bb = r["bm25_vs_rank_bm25"]
    lines += ["", f"BM25 top-10 per query on the same tokens: xlir (bm25s, numba) {bb['xlir_bm25s_ms']:.3f} ms vs "
              f"rank-bm25 {bb['rank_bm25_ms']:.3f} ms: **{bb['speedup']:.1f}x** (baseline / xlir)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
