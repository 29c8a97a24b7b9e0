"""The ``onnx-f16w`` file against the ``onnx`` (fp32) one: size, session load time, memory, single-query latency and
the vectors (issue 22 point 5: the serving image ships the f16w file).

Run: ``python -m benchmarks.f16w_check --out benchmarks/results/f16w_check.json`` (about a minute on 2 cores).

Each backend runs in its own fresh process (``load_encoder("e5-small", device="cpu", backend=..., spin=False)``, as
the server loads it), the backends alternating over ``--rounds`` rounds so a load change on the machine hits them
alike: the encoder's load time (tokenizer + ONNX Runtime session: the f16w file's ``Cast`` nodes are folded here),
the process's resident memory after the load and its peak, then ``--queries`` single queries (``encode_queries``
of one text, 4 languages in turn; p50/p95 over the round), and the vectors of the 50 first-5-per-language passages
of ``data/sample/corpus.jsonl`` (``encode_passages``), compared by cosine with the fp32 file's. Figures are medians
over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo_bench import commit, machine, save_results

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("onnx", "onnx-f16w")
QUERIES = ["Wer hat die Relativitätstheorie entwickelt?", "What is the capital of France?", "東京の人口は何人ですか？",
           "¿Cuándo comenzó la guerra civil?"]

CHILD = r"""
import json, resource, statistics, sys, time
from pathlib import Path
import numpy as np

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

backend, model, n, vec_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
queries, passages = json.loads(sys.argv[5]), json.loads(sys.argv[6])
import onnxruntime, tokenizers  # the libraries' import is not the file's load
from models.encoders import load_encoder
base = rss_mb()
t0 = time.perf_counter()
enc = load_encoder(model, device="cpu", backend=backend, spin=False)
load_s = time.perf_counter() - t0
rss_load = rss_mb()
enc.encode_queries(queries[:1])
lat = []
for i in range(n):
    t = time.perf_counter()
    enc.encode_queries([queries[i % len(queries)]])
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
np.save(vec_out, enc.encode_passages(passages))
print(json.dumps({"file": enc.model_path.name, "file_bytes": enc.model_path.stat().st_size, "load_s": load_s,
                  "rss_before_mb": base, "rss_after_load_mb": rss_load, "rss_end_mb": rss_mb(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "p50_ms": statistics.median(lat), "p95_ms": lat[int(0.95 * (len(lat) - 1))]}))
"""


def sample_passages(per_lang: int = 5) -> list[str]:
    rows = [json.loads(line) for line in (REPO / "data" / "sample" / "corpus.jsonl").read_text("utf-8").splitlines()
            if line.strip()]
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r["text"])
    return [t for texts in by_lang.values() for t in texts[:per_lang]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    passages = sample_passages()
    rounds: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
    cos: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            vecs = {}
            for backend in BACKENDS:
                out = Path(tmp) / f"{backend}-{r}.npy"
                res = subprocess.run([sys.executable, "-c", CHILD, backend, args.model, str(args.queries), str(out),
                                      json.dumps(QUERIES), json.dumps(passages)],
                                     capture_output=True, text=True, cwd=REPO, timeout=600)
                if res.returncode != 0:
                    raise SystemExit(f"{backend}: {res.stderr[-2000:]}")
                rounds[backend].append(json.loads(res.stdout.strip().splitlines()[-1]))
                vecs[backend] = np.load(out)
                print(f"round {r + 1}/{args.rounds} {backend}: {rounds[backend][-1]}", file=sys.stderr)
            a, b = vecs["onnx"], vecs["onnx-f16w"]
            cos = ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).tolist()
    summary = {b: {k: (statistics.median(x[k] for x in runs) if k != "file" else runs[0][k]) for k in runs[0]}
               for b, runs in rounds.items()}
    return {"model": args.model, "machine": machine(), "commit": commit(), "rounds": args.rounds,
            "queries_per_round": args.queries, "passages": len(passages), "summary": summary, "runs": rounds,
            "cosine_f16w_vs_fp32": {"min": min(cos), "mean": float(np.mean(cos))}}


def render(res: dict[str, Any]) -> str:
    s = res["summary"]
    lines = ["| | `onnx` (fp32 file) | `onnx-f16w` |", "|---|---:|---:|"]
    rows = [("file", lambda d: f"`{d['file']}` {d['file_bytes'] / 1e6:.0f} MB"),
            ("encoder load (session, casts folded)", lambda d: f"{d['load_s']:.2f} s"),
            ("resident memory after load", lambda d: f"{d['rss_after_load_mb']:.0f} MB"),
            ("peak resident memory", lambda d: f"{d['peak_rss_mb']:.0f} MB"),
            ("single query p50 / p95", lambda d: f"{d['p50_ms']:.2f} / {d['p95_ms']:.2f} ms")]
    for name, fmt in rows:
        lines.append(f"| {name} | {fmt(s['onnx'])} | {fmt(s['onnx-f16w'])} |")
    c = res["cosine_f16w_vs_fp32"]
    lines.append(f"\nCosine f16w vs fp32 on {res['passages']} sample passages (10 languages): min {c['min']:.7f}, "
                 f"mean {c['mean']:.7f}. Medians of {res['rounds']} rounds, {res['queries_per_round']} queries each.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.f16w_check", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "f16w_check.json")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args(argv)
    if min(args.rounds, args.queries) < 1:
        ap.error("--rounds and --queries must be >= 1")
    res = run(args)
    text = render(res)
    print(text)
    save_results(args.out, res, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
