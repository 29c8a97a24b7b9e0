"""Resident memory of a serving process with and without torch (issue 20, "Served without torch").

For each encoder backend (ONNX fp32 and int8 by default) an ``xlir serve`` process is started on the same index
in each of three conditions: ``torch`` (torch imported at start-up, as every serving process did before issue 20:
it imported torch to look for a GPU), ``full`` (the full install as it runs now: torch installed, not imported on
a machine without a GPU device) and ``serve`` (a serving install, ``pip install 'xlir[serve]'``, simulated by
``benchmarks/torchless`` on ``PYTHONPATH``, which makes torch, transformers and sentence-transformers
unimportable). After the server is ready, ``--searches`` searches are sent (sample probes and titles, one at a
time) and the server's ``VmRSS`` (and ``RssAnon``: heap, without the pages of mapped files) is read from ``/proc``,
with whether a torch library is mapped into it::

    python -m benchmarks.serving_rss --model e5-small --out benchmarks/results/torch_free_rss.json

``--model`` takes any registry model (students too); ``--index`` serves an existing index of that model instead of
building one from ``--corpus`` (``xlir index --backend onnx``, in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.demo_bench import commit, machine, queries, save_results
from benchmarks.load import local_server, rss_bytes
from indexer.layout import generation_dir

REPO = Path(__file__).resolve().parent.parent
TORCHLESS = REPO / "benchmarks" / "torchless"
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl"
MIB = 2**20


def torch_mapped(pid: int) -> bool:
    """Whether a torch shared library is mapped into process ``pid``."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libtorch" in maps or "libc10" in maps


def build_index(model: str, corpus: Path, out: Path) -> None:
    xlir = Path(sys.executable).with_name("xlir")
    subprocess.run([str(xlir), "index", str(corpus), "--out", str(out), "--model", model, "--backend", "onnx",
                    "-q"], check=True)


CONDITIONS = {
    "torch": {"PYTHONPATH": str(TORCHLESS), "XLIR_PRELOAD_TORCH": "1"},
    "full": {},
    "serve": {"PYTHONPATH": str(TORCHLESS)},
}


def measure(index: Path, backend: str, condition: str, texts: Sequence[str], log: Path | None) -> dict[str, Any]:
    env = {"XLIR_BACKEND": backend, "XLIR_WARMUP": "true", **CONDITIONS[condition]}
    t0 = time.perf_counter()
    with local_server(index, env, log=log) as server:
        ready_s = time.perf_counter() - t0
        assert server.pid is not None
        rss_ready = rss_bytes(server.pid)
        took = []
        for q in texts:
            r = httpx.post(f"{server.base}/search", json={"query": q, "k": 10}, timeout=60)
            r.raise_for_status()
            took.append(float(r.json()["took_ms"]))
        return {
            "backend": backend, "condition": condition, "searches": len(texts),
            "ready_seconds": round(ready_s, 2),
            "rss_ready_bytes": rss_ready,
            "rss_bytes": rss_bytes(server.pid),
            "anon_bytes": rss_bytes(server.pid, "RssAnon"),
            "torch_loaded": torch_mapped(server.pid),
            "median_took_ms": round(sorted(took)[len(took) // 2], 2) if took else None,
        }


CONDITION_NAMES = {"torch": "torch imported (before)", "full": "full install (now)",
                   "serve": "serving install, no torch"}


# run in a torch-free subprocess: RSS after the server's libraries, then after the model's tokenizer alone (argv 2
# "tokenizer") or a whole ONNX encoder (argv 2: its backend)
BREAKDOWN = r"""
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
start = rss()
import app.main, app.state, indexer.build, indexer.langid, faiss, numba, uvicorn
libs = rss()
from models.onnx_backend import OnnxEncoder, load_tokenizer, read_layout
from models.registry import resolve_model
resolved = resolve_model(sys.argv[1])
if sys.argv[2] == "tokenizer":
    keep = load_tokenizer(read_layout(resolved.path).transformer_dir, 512)
else:
    keep = OnnxEncoder(resolved, quantized=sys.argv[2] == "onnx-int8", spin=False)
    keep.encode_queries(["warm up"])
print(start, libs, rss())
"""


def breakdown(model: str, backends: Sequence[str]) -> dict[str, int]:
    """Where a torch-free serving process's memory goes: Python, the server's libraries, the tokenizer, the ONNX
    session of each backend (its encoder less the tokenizer)."""
    env = {**os.environ, "PYTHONPATH": str(TORCHLESS)}

    def run(what: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", BREAKDOWN, model, what], capture_output=True, text=True,
                             check=True, env=env, cwd=REPO).stdout.split()
        return [int(x) for x in out]

    python, libs, with_tok = run("tokenizer")
    res = {"python_bytes": python, "libraries_bytes": libs - python, "tokenizer_bytes": with_tok - libs}
    for backend in backends:
        _, libs_b, with_enc = run(backend)
        res[f"{backend}_session_bytes"] = with_enc - libs_b - res["tokenizer_bytes"]
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Model {res['model']}, index of {res['docs']} passages; RSS after {res['searches']} searches.", "",
             "| backend | process | RSS ready | RSS after searches | of which anonymous | torch mapped | ready in |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['backend']} | {CONDITION_NAMES[r['condition']]} | "
                     f"{r['rss_ready_bytes'] / MIB:.0f} MiB | {r['rss_bytes'] / MIB:.0f} MiB | "
                     f"{r['anon_bytes'] / MIB:.0f} MiB | {'yes' if r['torch_loaded'] else 'no'} | "
                     f"{r['ready_seconds']:.1f} s |")
    parts = res.get("breakdown")
    if parts:
        lines += ["", "Where a torch-free process's memory goes (RSS increments, measured one by one): "
                  + ", ".join(f"{k.removesuffix('_bytes').replace('_', ' ')} {v / MIB:.0f} MiB"
                              for k, v in parts.items()) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--model", default="e5-small", help="registry model (students too)")
    ap.add_argument("--backends", default="onnx,onnx-int8", help="comma-separated encoder backends")
    ap.add_argument("--corpus", type=Path, default=SAMPLE, help="corpus indexed when --index is not given")
    ap.add_argument("--index", type=Path, default=None, help="an existing index of --model")
    ap.add_argument("--conditions", default="torch,full,serve", help=f"of {', '.join(CONDITIONS)}")
    ap.add_argument("--searches", type=int, default=40)
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-component figures")
    ap.add_argument("--log", type=Path, default=None, help="the servers' output")
    ap.add_argument("--out", type=Path, default=None, help="raw results JSON (and .md beside it)")
    args = ap.parse_args(argv)

    texts = (queries() * (1 + args.searches // max(1, len(queries()))))[: args.searches]
    with tempfile.TemporaryDirectory(prefix="xlir-rss-") as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "idx"
            build_index(args.model, args.corpus, index)
        docs = json.loads((generation_dir(index) / "manifest.json").read_text())["doc_count"]
        runs = []
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            for condition in [c.strip() for c in args.conditions.split(",") if c.strip()]:
                if condition not in CONDITIONS:
                    ap.error(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
                run = measure(index, backend, condition, texts, args.log)
                runs.append(run)
                print(json.dumps(run), flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = None if args.no_breakdown else breakdown(args.model, backends)
    res = {
        "breakdown": parts,
        "model": args.model, "docs": docs, "searches": args.searches,
        "corpus": str(args.corpus) if args.index is None else None,
        "command": "python -m benchmarks.serving_rss " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "commit": commit(), "runs": runs,
    }
    report = markdown(res)
    print(report)
    save_results(args.out, res, report)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
