"""``xlir mine`` local vs ``--ray`` (issue 23, point 2): wall time of the same job on this machine, and the outputs
compared byte for byte.

``python -m benchmarks.ray_mining --out benchmarks/results/ray_mining.json`` mines NTREX-128 German against
English (``newstest2019-ref.deu`` x ``eng-US``, 1,997 sentences each; evaluation data, nothing is trained) with
e5-small:

1. locally with embedding (a fresh cache), then locally again ``--repeats`` times with the embeddings cached;
2. on a local Ray cluster (``--ray ADDRESS`` or a new one with ``--cpus``) with the same cached embeddings,
   ``--repeats`` times (the first run also builds the encoder in a worker: the cache key needs its checksum), and
   once with embedding (a second fresh cache), the output and the embedding files compared with the local ones;
3. the same cached job with the IVF plan (``--search ivf``), local and on Ray;
4. end to end as a user runs it, embeddings cached (copied into ``$XLIR_HOME/cache/mining``): ``xlir mine`` and
   ``xlir mine --ray`` (a new local cluster, started and stopped by the command), process wall time.

The inputs are decompressed into ``--folder`` (a scratch folder outside the repository).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import default_data_dir
from benchmarks.demo_bench import commit, machine
from indexer.mining import MineOptions
from indexer.mining_job import MineReport, mine_files
from indexer.ray_cluster import connect
from indexer.ray_mining import mine_files_ray
from models.encoders import load_encoder
from models.registry import xlir_home


def _prepare(data: Path, folder: Path, langs: tuple[str, str]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for lang in langs:
        path = folder / f"ntrex.{lang}.txt"
        if not path.is_file():
            with gzip.open(data / "ntrex" / f"newstest2019-ref.{lang}.txt.gz", "rt", encoding="utf-8") as fh:
                path.write_text(fh.read(), encoding="utf-8")
        out.append(path)
    return out[0], out[1]


def _run(label: str, fn: Any) -> tuple[MineReport, dict[str, Any]]:
    t0 = time.perf_counter()
    rep: MineReport = fn()
    wall = time.perf_counter() - t0
    row = {"run": label, "wall_s": round(wall, 3), "embed_s": round(rep.embed_seconds, 3),
           "index_s": round(rep.index_seconds, 3), "search_s": round(rep.search_seconds, 3),
           "score_s": round(rep.score_seconds, 3), "write_s": round(rep.write_seconds, 3), "pairs": rep.pairs,
           "embed_cached": list(rep.embed_cached), "ray_tasks": rep.ray_tasks,
           "plans": [p.describe() if p else None for p in (rep.fwd_plan, rep.bwd_plan)]}
    print(json.dumps(row), flush=True)
    return rep, row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ray_mining", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--langs", default="deu,eng-US")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ray", default=None, help="cluster address (default: a new local cluster of --cpus CPUs)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/xlir-ray-mining"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    a, b = args.langs.split(",")
    src, tgt = _prepare(args.data or default_data_dir(), args.folder, (a, b))
    for cache in ("cache-local", "cache-ray"):
        shutil.rmtree(args.folder / cache, ignore_errors=True)
    t0 = time.perf_counter()
    enc = load_encoder(args.model, workload="sentences")
    load_s = time.perf_counter() - t0
    factory = partial(load_encoder, args.model, workload="sentences")
    rows: list[dict[str, Any]] = []
    outputs: dict[str, bytes] = {}

    def local(label: str, opts: MineOptions, cache: str) -> MineReport:
        out = args.folder / f"{label}.tsv"
        rep, row = _run(label, lambda: mine_files(enc, src, tgt, out, opts, cache_dir=args.folder / cache))
        rows.append(row)
        outputs[label] = out.read_bytes()
        return rep

    def on_ray(label: str, opts: MineOptions, cache: str) -> MineReport:
        out = args.folder / f"{label}.tsv"
        rep, row = _run(label, lambda: mine_files_ray(factory, src, tgt, out, opts, cache_dir=args.folder / cache))
        rows.append(row)
        outputs[label] = out.read_bytes()
        return rep

    exact, ivf = MineOptions(), MineOptions(search="ivf")
    first = local("local-embed", exact, "cache-local")
    for r in range(args.repeats):
        local(f"local-cached-{r}", exact, "cache-local")
    t0 = time.perf_counter()
    ray = connect(args.ray, num_cpus=args.cpus)
    connect_s = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", 0))
    for r in range(args.repeats):
        on_ray(f"ray-cached-{r}", exact, "cache-local")
    ray_embed = on_ray("ray-embed", exact, "cache-ray")
    for r in range(args.repeats):
        local(f"local-ivf-cached-{r}", ivf, "cache-local")
    for r in range(args.repeats):
        on_ray(f"ray-ivf-cached-{r}", ivf, "cache-local")

    # 4. the CLI, end to end, with the embeddings in the default cache
    cli_rows = []
    default = xlir_home() / "cache" / "mining" / first.embeddings[0].path.parent.name
    default.mkdir(parents=True, exist_ok=True)
    for emb in first.embeddings:
        for f in (emb.path, emb.path.with_name(emb.path.name + ".json")):
            shutil.copy2(f, default / f.name)
    xlir = Path(sys.executable).with_name("xlir")
    for r in range(args.repeats):
        for label, extra in (("cli-local", []), ("cli-ray-new-cluster", ["--ray"])):
            out = args.folder / f"{label}-{r}.tsv"
            t0 = time.perf_counter()
            proc = subprocess.run([str(xlir), "mine", str(src), str(tgt), "--out", str(out), "-q", *extra],
                                  capture_output=True, text=True, check=True)
            row = {"run": f"{label}-{r}", "wall_s": round(time.perf_counter() - t0, 3),
                   "summary": proc.stdout.strip().splitlines()[-1]}
            print(json.dumps(row), flush=True)
            cli_rows.append(row)
            outputs[f"{label}-{r}"] = out.read_bytes()

    same_exact = all(v == outputs["local-embed"] for k, v in outputs.items() if "ivf" not in k)
    same_ivf = all(v == outputs["local-ivf-cached-0"] for k, v in outputs.items() if "ivf" in k)
    emb_diff = [float(np.abs(np.fromfile(x.path, "<f4") - np.fromfile(y.path, "<f4")).max())
                for x, y in zip(first.embeddings, ray_embed.embeddings, strict=True)]
    res = {"machine": machine(), "commit": commit(), "model": args.model, "pair": f"{a}-{b}",
           "sentences": [first.src, first.tgt], "ray_cpus": cpus, "encoder_load_s": round(load_s, 3),
           "ray_connect_s": round(connect_s, 3), "runs": rows, "cli": cli_rows, "same_output_exact": same_exact,
           "same_output_ivf": same_ivf, "embedding_max_abs_diff_local_vs_ray": emb_diff}
    print(json.dumps({k: v for k, v in res.items() if k not in ("runs", "cli")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
