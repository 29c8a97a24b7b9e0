"""What ``highlight: true`` costs: in-process searches (``SearchService.search``, the server's own service from
``app.state.load_state``) on the demo index, k=10, each query with and without highlights, interleaved.

Run: ``python -m benchmarks.highlight_cost --index .demo/index --out benchmarks/results/highlight_cost.json``
(``--index`` is built from ``data/sample/corpus.jsonl`` with e5-small when it does not exist). Reports per mode the
p50 / p95 of ``timings_ms["highlight"]`` and of the whole search with and without highlights, and how many
sentences each search encoded (dense hits only; a hit of one sentence needs none).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.demo_bench import CORPUS, commit, machine, pct, queries, save_results


class CountingEncoder:
    """The encoder, counting the texts ``encode_passages`` was given; ``batch_size`` set: it replaces the caller's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.passages = 0
        self.batch_size: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_passages(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.passages += len(texts)
        if self.batch_size is not None:
            kw["batch_size"] = self.batch_size
        return np.asarray(self.inner.encode_passages(texts, **kw))


def bench(index_dir: Path, modes: list[str], repeats: int, k: int, compare_batch: int | None = None) -> dict[str, Any]:
    from app.schemas import SearchRequest
    from app.settings import Settings
    from app.state import load_state

    state = load_state(Settings(index=index_dir))
    svc = state.service
    assert svc is not None, state.error
    counting = CountingEncoder(svc.encoder)
    svc.encoder = counting  # type: ignore[assignment]
    qs = queries()
    out: dict[str, Any] = {}

    async def run() -> None:
        await svc.batcher.start()
        try:
            for q in qs[:3]:  # warm-up
                await svc.search(SearchRequest(query=q, k=k, mode="dense", highlight=True))
            for mode in modes:
                off, on, hl, sentences, sources = [], [], [], [], {"bm25": 0, "dense": 0, "none": 0}
                other: list[float] = []  # --compare-batch: the highlight stage with that encoder batch size
                for q in tqdm([q for _ in range(repeats) for q in qs], desc=f"{mode}: searches", unit="query"):
                    t0 = time.perf_counter()
                    await svc.search(SearchRequest(query=q, k=k, mode=mode))
                    off.append((time.perf_counter() - t0) * 1000)
                    before = counting.passages
                    t0 = time.perf_counter()
                    resp = await svc.search(SearchRequest(query=q, k=k, mode=mode, highlight=True))
                    on.append((time.perf_counter() - t0) * 1000)
                    hl.append(resp.timings_ms["highlight"])
                    sentences.append(counting.passages - before)
                    for h in resp.results:
                        sources[h.highlight.source if h.highlight else "none"] += 1
                    if compare_batch is not None:  # interleaved, so both see the same machine load
                        counting.batch_size = compare_batch
                        resp = await svc.search(SearchRequest(query=q, k=k, mode=mode, highlight=True))
                        counting.batch_size = None
                        other.append(resp.timings_ms["highlight"])
                out[mode] = {
                    "n": len(hl), "highlight_p50_ms": pct(hl, 50), "highlight_p95_ms": pct(hl, 95),
                    "search_p50_ms_off": pct(off, 50), "search_p50_ms_on": pct(on, 50),
                    "search_p95_ms_off": pct(off, 95), "search_p95_ms_on": pct(on, 95),
                    "sentences_encoded_mean": float(np.mean(sentences)), "sources": sources,
                }
                if other:
                    out[mode]["compare_batch"] = {"batch_size": compare_batch, "highlight_p50_ms": pct(other, 50),
                                                  "highlight_p95_ms": pct(other, 95)}
        finally:
            await svc.batcher.close()

    asyncio.run(run())
    return {"encoder": counting.inner.name, "queries": len(qs), "k": k, "repeats": repeats, "modes": out}


def markdown(r: dict[str, Any]) -> str:
    compare = next((m["compare_batch"]["batch_size"] for m in r["modes"].values() if "compare_batch" in m), None)
    extra = f" highlight p50 / p95 ms, encoder batch {compare} |" if compare is not None else ""
    lines = ["| mode | searches | highlight p50 ms | highlight p95 ms | search p50 ms off -> on | "
             "search p95 ms off -> on | sentences encoded / search |" + extra,
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for mode, m in r["modes"].items():
        row = (f"| {mode} | {m['n']} | {m['highlight_p50_ms']:.1f} | {m['highlight_p95_ms']:.1f} | "
               f"{m['search_p50_ms_off']:.1f} -> {m['search_p50_ms_on']:.1f} | "
               f"{m['search_p95_ms_off']:.1f} -> {m['search_p95_ms_on']:.1f} | "
               f"{m['sentences_encoded_mean']:.1f} |")
        if extra:
            c = m.get("compare_batch")
            row += f" {c['highlight_p50_ms']:.1f} / {c['highlight_p95_ms']:.1f} |" if c else " |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, default=Path(".demo/index"))
    ap.add_argument("--modes", default="dense,hybrid,bm25")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--compare-batch", type=int, default=None,
                    help="also run each highlighted search with this encoder batch size (interleaved)")
    args = ap.parse_args(argv)
    if not (args.index / "manifest.json").exists():
        from indexer.build import BuildOptions, build_index
        from models.encoders import load_encoder

        build_index([CORPUS], args.index, load_encoder("e5-small"), BuildOptions(progress=True))
    res = {"machine": machine(), "commit": commit(), "index": str(args.index),
           **bench(args.index, args.modes.split(","), args.repeats, args.k, args.compare_batch)}
    report = markdown(res)
    save_results(args.out, res, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
