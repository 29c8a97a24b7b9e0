"""Bitext mining benchmarks (issue 4): BUCC-style F1, Tatoeba margin vs cosine, speed at 100k x 100k, memory at 2M x 2M.
Over 500 lines: four benchmarks of one feature, sharing their data loading and report.

``python -m benchmarks.mining all --out benchmarks/results/mining.json`` runs everything; each part also runs
alone (``bucc``, ``speed``, ``scale``). Data comes from ``../shared/data`` (never copied).

**BUCC-style task.** For each Tatoeba pair xx-eng, its 1000 gold pairs are hidden in noise, then both sides
are mined with the product's code (:func:`indexer.mining_search.mine_rows`, retrieval ``max``, no threshold) and
precision / recall / F1 against the gold pairs are computed at every threshold; the F1-optimal threshold is
reported, as in BUCC. Noise, chosen so that it contains no translation of anything on the other side:

* xx side: XQuAD-R sentences of language xx and sentences of the extractive-QA training contexts of language
  xx (``qa-train``), where they exist;
* en side: sentences of the English QA contexts (TyDi QA gold passages) and the English sides of the 8 other
  Tatoeba pairs: short conversational sentences like the gold ones, the hardest distractors;
* each side capped at ``--noise`` sentences (seeded sample); any noise sentence equal to a gold sentence of its
  side is dropped.

The other pairs' xx sides are NOT used: the Tatoeba test sets of different pairs share many English sentences,
so a German donor sentence is often the translation of an English sentence of another pair, and mining finds
such true but unlabelled pairs (a first run with half the pairs giving their xx side and the other half their
English side lost up to 30 F1 points to them). What remains: an English donor sentence may still paraphrase a
gold English sentence (about 1% of the gold pairs in that first run).

The threshold tuned on one pair is not known for a new corpus: ``f1_loo`` is each pair's F1 at the mean of the
other pairs' optimal thresholds (leave one out), the figure a user with a fixed threshold would see.

**Speed.** Two files of ``--n`` real clauses each (the QA contexts of all 8 languages split into sentences and
then at commas, shuffled and dealt to the two sides: they share topics, not text) are mined by
``mine_files`` as ``xlir mine`` runs it (embedding, then IVF search), and the same cached embeddings are then
searched again by the product's exact path (FAISS flat) and by a brute-force numpy baseline (blocked matrix
products + argpartition, both directions), all scored by the same margin code. Reported: sentences/s of each
phase, the ratio vs brute force, and how many of the exact run's pairs the IVF run finds.

**Scale.** ``scale`` mines two sides of ``--n`` synthetic 384-dim vectors (a seeded Gaussian mixture on the
sphere, written to float32 files in chunks) with the code path ``xlir mine`` uses after embedding, in a child
process, and reports its peak resident memory (``ru_maxrss``). ``--nprobe 1`` keeps the search short; the
memory does not depend on nprobe.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import default_data_dir, load_tatoeba
from benchmarks.demo_bench import commit, machine, save_results
from benchmarks.synth import squad_sentences
from indexer.mining import MineOptions, mine_neighbours
from indexer.mining_search import ArrayRows, F32Rows, mine_rows
from models.registry import xlir_home

TATOEBA_LANG = {"ara": "ar", "cmn": "zh", "deu": "de", "fra": "fr", "hin": "hi", "jpn": "ja", "kor": "ko",
                "rus": "ru", "spa": "es"}
QA_FILES = {"ar": "ar-arcd-train.json.gz", "en": "en-tydiqa-goldp-train.json.gz", "fr": "fr-piaf.json.gz",
            "id": "id-facqa-train.json.gz", "ja": "ja-jaquad-train.json.gz", "ko": "ko-tydiqa-goldp-train.json.gz",
            "pt": "pt-faquad-train.json.gz", "zh": "zh-cmrc2018-train.json.gz"}
CONDITIONS = (("ratio", "full"), ("ratio", "off"), ("absolute", "full"), ("absolute", "off"))
MIN_CHARS = 8


# --------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------


def _sentences(path: Path, lang: str) -> list[str]:
    """The sentences of a SQuAD-style file, whitespace normalised, at least ``MIN_CHARS`` long, each once."""
    texts = (" ".join(s.split()) for s in squad_sentences(path, lang))
    return list(dict.fromkeys(t for t in texts if len(t) >= MIN_CHARS))


def qa_sentences(data: Path, lang: str) -> list[str]:
    name = QA_FILES.get(lang)
    return _sentences(data / "qa-train" / name, lang) if name is not None else []


def xquad_sentences(data: Path, lang: str) -> list[str]:
    path = data / "xquad-r" / f"{lang}.json"
    return _sentences(path, lang) if path.is_file() else []


def _sample(items: Sequence[str], n: int, seed: int) -> list[str]:
    items = list(items)
    if len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


QA_NOISE_PER_LANG = 2_000  # QA sentences sampled per language (ja and zh have far more)


def noise_sources(data: Path, tatoeba: Mapping[str, tuple[list[str], list[str]]]) -> dict[str, list[str]]:
    """Every list the BUCC noise is drawn from, by name; each is embedded once and shared by all pairs."""
    out: dict[str, list[str]] = {}
    for lang in sorted(set(TATOEBA_LANG.values()) | {"en"}):
        out[f"qa/{lang}"] = _sample(qa_sentences(data, lang), QA_NOISE_PER_LANG, 0)
        if lang != "en":
            out[f"xquad/{lang}"] = xquad_sentences(data, lang)
    for pair, (xx, en) in tatoeba.items():
        out[f"tatoeba/{pair}/xx"] = list(xx)
        out[f"tatoeba/{pair}/en"] = list(en)
    return out


def bucc_task(pair: str, sources: Mapping[str, list[str]], tatoeba: Mapping[str, tuple[list[str], list[str]]],
              noise: int, seed: int = 0, tatoeba_noise: bool = True) -> dict[str, Any]:
    """Gold pairs of ``pair`` hidden in noise (see the module docstring): texts of both sides and gold rows."""
    xx_gold, en_gold = tatoeba[pair]
    lang = TATOEBA_LANG[pair]
    en_donors = sorted(p for p in tatoeba if p != pair) if tatoeba_noise else []
    xx_noise = sources.get(f"xquad/{lang}", []) + sources.get(f"qa/{lang}", [])
    en_noise = sources["qa/en"] + [s for p in en_donors for s in sources[f"tatoeba/{p}/en"]]
    gold_xx, gold_en = set(xx_gold), set(en_gold)
    xx_noise = _sample([s for s in dict.fromkeys(xx_noise) if s not in gold_xx], noise, seed)
    en_noise = _sample([s for s in dict.fromkeys(en_noise) if s not in gold_en], noise, seed + 1)
    rng = np.random.default_rng(seed)
    src = list(xx_gold) + xx_noise
    tgt = list(en_gold) + en_noise
    src_order, tgt_order = rng.permutation(len(src)), rng.permutation(len(tgt))
    src_pos, tgt_pos = np.argsort(src_order), np.argsort(tgt_order)  # old row -> new row
    gold = {(int(src_pos[i]), int(tgt_pos[i])) for i in range(len(xx_gold))}
    return {"pair": pair, "src": [src[i] for i in src_order], "tgt": [tgt[i] for i in tgt_order], "gold": gold,
            "noise": {"xx": len(xx_noise), "en": len(en_noise)}, "en_donors": en_donors}


def best_f1(score: np.ndarray, src: np.ndarray, tgt: np.ndarray, gold: set[tuple[int, int]]) -> dict[str, float]:
    """P/R/F1 at the F1-optimal threshold over the mined pairs (sorted by score desc)."""
    hit = np.fromiter(((s, t) in gold for s, t in zip(src.tolist(), tgt.tolist(), strict=True)), dtype=bool,
                      count=len(src))
    tp = np.cumsum(hit)
    kept = np.arange(1, len(hit) + 1)
    prec, rec = tp / kept, tp / len(gold)
    f1 = np.where(tp > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    # a threshold keeps every pair scoring at least it: only the last of a run of equal scores is a valid cut
    valid = np.append(score[1:] < score[:-1], True)
    best = int(np.argmax(np.where(valid, f1, -1)))
    return {"f1": float(f1[best]), "precision": float(prec[best]), "recall": float(rec[best]),
            "threshold": float(score[best]), "pairs_kept": best + 1}


def f1_at(score: np.ndarray, src: np.ndarray, tgt: np.ndarray, gold: set[tuple[int, int]], threshold: float) -> float:
    keep = score >= threshold
    tp = sum((s, t) in gold for s, t in zip(src[keep].tolist(), tgt[keep].tolist(), strict=True))
    p = tp / max(int(keep.sum()), 1)
    r = tp / len(gold)
    return 0.0 if tp == 0 else 2 * p * r / (p + r)


def _encoder(model: str, backend: str = "torch") -> Any:
    from models.encoders import load_encoder

    return load_encoder(model, backend=backend, workload="sentences")


def run_bucc(data: Path, model: str, noise: int, pairs: Sequence[str] | None = None,
             tatoeba_noise: bool = True) -> dict[str, Any]:
    from benchmarks.embeddings import EmbedStats, embed

    enc = _encoder(model)
    tatoeba = load_tatoeba(data)
    stats = EmbedStats()
    sources = noise_sources(data, tatoeba)
    vector_of: dict[str, np.ndarray] = {}
    for name, texts in sources.items():
        if texts:
            vecs = embed(enc, "passage", texts, None, name, stats)
            vector_of.update(zip(texts, vecs, strict=True))
    res: dict[str, Any] = {"model": model, "noise_cap": noise, "tatoeba_noise": tatoeba_noise, "pairs": {}}
    curves: dict[str, dict[str, Any]] = {}
    for pair in pairs or sorted(tatoeba):
        task = bucc_task(pair, sources, tatoeba, noise, tatoeba_noise=tatoeba_noise)
        x = np.stack([vector_of[t] for t in task["src"]])
        y = np.stack([vector_of[t] for t in task["tgt"]])
        out: dict[str, Any] = {"src": len(task["src"]), "tgt": len(task["tgt"]), "noise": task["noise"]}
        for margin, centering in CONDITIONS:
            t0 = time.perf_counter()
            mined, rep = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(margin=margin, centering=centering,
                                                                           threshold=None))
            best: dict[str, Any] = dict(best_f1(mined.score, mined.src, mined.tgt, task["gold"]))
            best["seconds"] = round(time.perf_counter() - t0, 2)
            best["search"] = rep.fwd.kind
            out[f"{margin}/{centering}"] = best
            curves.setdefault(f"{margin}/{centering}", {})[pair] = (mined, task["gold"])
        # the IVF path on the same pools (forced: the pools are under exact_max), with the default nprobe
        mined, rep = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(centering="full", margin="absolute",
                                                                       threshold=None, search="ivf"))
        ivf: dict[str, Any] = dict(best_f1(mined.score, mined.src, mined.tgt, task["gold"]))
        ivf["search"] = rep.fwd.describe()
        out["absolute/full/ivf"] = ivf
        curves.setdefault("absolute/full/ivf", {})[pair] = (mined, task["gold"])
        res["pairs"][pair] = out
        print(f"{pair}: " + ", ".join(f"{c} F1 {out[c]['f1']:.3f} @ {out[c]['threshold']:.3f}"
                                     for c in (f"{m}/{ce}" for m, ce in CONDITIONS)), file=sys.stderr)
    names = list(res["pairs"])
    summary: dict[str, Any] = {}
    for cond, per_pair in curves.items():
        thresholds = {p: res["pairs"][p][cond]["threshold"] for p in names}
        loo = {}
        for p in names:
            others = [thresholds[o] for o in names if o != p]
            if others:
                mined, gold = per_pair[p]
                loo[p] = f1_at(mined.score, mined.src, mined.tgt, gold, float(np.mean(others)))
                res["pairs"][p][cond]["f1_loo"] = loo[p]
        summary[cond] = {"f1": float(np.mean([res["pairs"][p][cond]["f1"] for p in names])),
                         "precision": float(np.mean([res["pairs"][p][cond]["precision"] for p in names])),
                         "recall": float(np.mean([res["pairs"][p][cond]["recall"] for p in names])),
                         "threshold": float(np.mean(list(thresholds.values()))),
                         "threshold_sd": float(np.std(list(thresholds.values()))),
                         "f1_loo": float(np.mean(list(loo.values()))) if loo else None}
    res["mean"] = summary
    res["embedding"] = asdict(stats)
    return res


def run_tatoeba(data: Path, model: str) -> dict[str, Any]:
    """Accuracy of xx->en and en->xx, nearest target by cosine vs by ratio margin (k=4), centring off/full."""
    from benchmarks.embeddings import EmbedStats, embed
    from benchmarks.matrix import bitext_accuracy
    from indexer.centering import center_sides

    enc = _encoder(model)
    stats = EmbedStats()
    out: dict[str, Any] = {}
    for pair, (xx_s, en_s) in sorted(load_tatoeba(data).items()):
        xx = embed(enc, "passage", xx_s, None, f"tatoeba {pair}", stats)
        en = embed(enc, "passage", en_s, None, f"tatoeba {pair} en", stats)
        vals = {}
        for centering in ("off", "full"):
            cx, ce = center_sides(xx, en, centering)
            for margin in ("absolute", "ratio"):
                acc = (bitext_accuracy(cx, ce, margin) + bitext_accuracy(ce, cx, margin)) / 2
                vals[f"{margin}/{centering}"] = acc
        out[pair] = vals
    out["mean"] = {c: float(np.mean([out[p][c] for p in out])) for c in next(iter(out.values()))}
    return out


# --------------------------------------------------------------------------------------------------
# Speed at 100k x 100k
# --------------------------------------------------------------------------------------------------


def speed_corpus(data: Path, n: int, folder: Path) -> tuple[Path, Path]:
    """Two files of n distinct clauses each (QA contexts of all 8 languages, split into sentences, then at
    commas), shuffled and dealt to the sides, so they share topics but no text; clauses are about as long as
    the sentences bitext mining usually sees."""
    folder.mkdir(parents=True, exist_ok=True)
    src_p, tgt_p = folder / f"src-{n}.txt", folder / f"tgt-{n}.txt"
    if src_p.is_file() and tgt_p.is_file():
        return src_p, tgt_p
    clauses: dict[str, None] = {}
    for lang in sorted(QA_FILES):
        for s in qa_sentences(data, lang):
            for part in s.replace("，", ",").replace("、", ",").replace("،", ",").split(","):
                part = part.strip()
                if len(part) >= MIN_CHARS:
                    clauses.setdefault(part, None)
    units = list(clauses)
    if len(units) < 2 * n:
        raise SystemExit(f"only {len(units)} clauses available; use --n {len(units) // 2} or less")
    random.Random(0).shuffle(units)
    src_p.write_text("\n".join(units[:n]) + "\n", encoding="utf-8")
    tgt_p.write_text("\n".join(units[n : 2 * n]) + "\n", encoding="utf-8")
    return src_p, tgt_p


def brute_force_knn(x: np.ndarray, y: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: the exact top k of ``x @ y.T`` in numpy (the product's exact top-k, blocked), as (sims, ids)."""
    from indexer.topk import top_k_dot

    ids = top_k_dot(y, x, k, chunk=block)
    return np.einsum("ij,ikj->ik", x, y[ids]), ids


def run_speed(data: Path, model: str, n: int, nprobe: int | None, backend: str = "torch",
              synthetic: bool = False, sample: int = 4000) -> dict[str, Any]:
    """Real: ``mine_files`` over the two clause files (embedding measured at full size). Synthetic: the search
    and scoring run on clustered random vectors of the same shape, and the embedding rate is measured on the
    first ``sample`` clauses of each side with the same encoder (its time for 2 x n is extrapolated)."""
    from indexer.mining_job import mine_files

    folder = xlir_home() / "cache" / "bench-mining"
    src_p, tgt_p = speed_corpus(data, n, folder)
    enc = _encoder(model, backend)
    res: dict[str, Any] = {"n": n, "model": model, "backend": backend, "synthetic": synthetic}
    if synthetic:
        texts = src_p.read_text(encoding="utf-8").splitlines()[:sample] + \
            tgt_p.read_text(encoding="utf-8").splitlines()[:sample]
        enc.encode_passages(texts[:64])  # warm-up
        t0 = time.perf_counter()
        enc.encode_passages(texts, batch_size=32)
        rate = len(texts) / (time.perf_counter() - t0)
        res["embed"] = {"sentences_measured": len(texts), "sentences_per_s": rate,
                        "seconds": 2 * n / rate, "extrapolated": True}
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((4096, enc.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        sides = []
        for seed in (1, 2):
            r = np.random.default_rng(seed)
            v = centres[r.integers(0, len(centres), size=n)] + 0.5 * r.standard_normal((n, enc.dim)).astype(np.float32)
            sides.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
        x, y = sides
    else:
        opts = MineOptions(centering="off", nprobe=nprobe, threshold=None)
        rep = mine_files(enc, src_p, tgt_p, folder / f"pairs-{n}.tsv", opts, progress=True)
        res["embed"] = {"seconds": rep.embed_seconds, "cached": list(rep.embed_cached), "extrapolated": False,
                        "sentences_per_s": (rep.src_unique + rep.tgt_unique) / rep.embed_seconds
                        if not any(rep.embed_cached) else None}
        res["job"] = {"index_s": rep.index_seconds, "search_s": rep.search_seconds, "score_s": rep.score_seconds,
                      "write_s": rep.write_seconds, "plan": rep.fwd_plan.describe() if rep.fwd_plan else None}
        x, y = (rows.read(0, rows.shape[0]) for rows in rep.embeddings)
    runs: dict[str, Any] = {}
    for name, search in (("ivf", "ivf"), ("exact", "exact")):
        t0 = time.perf_counter()
        mined, srep = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(centering="off", search=search, threshold=None,
                                                                        nprobe=nprobe, memory_budget=16 << 30))
        total = time.perf_counter() - t0
        runs[name] = {"seconds": total, "index_s": srep.index_seconds, "search_s": srep.search_seconds,
                      "score_s": srep.score_seconds, "plan": srep.fwd.describe(), "pairs": len(mined),
                      "mined": mined}
        print(f"{name}: {total:.1f}s ({srep.fwd.describe()})", file=sys.stderr)
    t0 = time.perf_counter()
    fs, fi = brute_force_knn(x, y, 4)
    bs, bi = brute_force_knn(y, x, 4)
    t1 = time.perf_counter()
    mined_bf = mine_neighbours(fs, fi, bs, bi)
    t2 = time.perf_counter()
    runs["brute-force numpy"] = {"seconds": t2 - t0, "search_s": t1 - t0, "score_s": t2 - t1, "pairs": len(mined_bf),
                                 "mined": mined_bf}
    print(f"brute force: {t2 - t0:.1f}s", file=sys.stderr)
    base = runs["brute-force numpy"]["seconds"]
    ex = runs["exact"]["mined"]
    exact_pairs = set(zip(ex.src.tolist(), ex.tgt.tolist(), strict=True))
    top = len(ex) // 10  # the exact run's best-scoring tenth: the pairs a threshold would keep
    exact_top = set(zip(ex.src[:top].tolist(), ex.tgt[:top].tolist(), strict=True))
    for r in runs.values():
        m = r.pop("mined")
        got = set(zip(m.src.tolist(), m.tgt.tolist(), strict=True))
        r["speedup_vs_brute_force"] = base / r["seconds"]
        r["sentences_per_s"] = (len(x) + len(y)) / r["seconds"]
        r["pairs_shared_with_exact"] = len(got & exact_pairs) / max(len(exact_pairs), 1)
        r["top10pct_found"] = len(got & exact_top) / max(len(exact_top), 1)
    res["runs"] = runs
    return res


# --------------------------------------------------------------------------------------------------
# Memory at 2M x 2M
# --------------------------------------------------------------------------------------------------


def synthetic_side(path: Path, n: int, dim: int, centres: np.ndarray, seed: int, chunk: int = 100_000) -> None:
    """n unit vectors near random centres, written as float32 rows a chunk at a time."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            v = centres[rng.integers(0, len(centres), size=m)] + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            fh.write(v.astype("<f4").tobytes())


def scale_child(n: int, dim: int, nprobe: int, folder: Path, budget: int) -> dict[str, Any]:
    """Runs in its own process: synthetic sides on disk, mined by mine_rows; peak RSS from the kernel."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = time.perf_counter()
    for name, seed in (("src", 1), ("tgt", 2)):
        p = folder / f"{name}-{n}.f32"
        if not p.is_file() or p.stat().st_size != n * dim * 4:
            synthetic_side(p, n, dim, centres, seed)
    rss_after_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t1 = time.perf_counter()
    opts = MineOptions(nprobe=nprobe, memory_budget=budget, centering="full", threshold=None)
    mined, rep = mine_rows(F32Rows(folder / f"src-{n}.f32", n, dim), F32Rows(folder / f"tgt-{n}.f32", n, dim), opts,
                           work=folder / "work", job_key={"n": n}, progress=True)
    t2 = time.perf_counter()
    return {"n": n, "dim": dim, "nprobe": nprobe, "memory_budget_gib": budget / 2**30, "pairs": len(mined),
            "plan": rep.fwd.describe(), "index_bytes": rep.fwd.index_bytes, "write_s": t1 - t0,
            "index_s": rep.index_seconds, "search_s": rep.search_seconds, "score_s": rep.score_seconds,
            "total_mine_s": t2 - t1, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_mining_bytes": rss_after_write}


def run_scale(n: int, dim: int, nprobe: int, budget: int, keep: bool = False) -> dict[str, Any]:
    folder = xlir_home() / "cache" / "bench-mining" / f"scale-{n}"
    cmd = [sys.executable, "-m", "benchmarks.mining", "scale-child", "--n", str(n), "--dim", str(dim),
           "--nprobe", str(nprobe), "--budget", str(budget), "--folder", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=False, stdout=subprocess.PIPE, text=True, check=True)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _f(x: float | None, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def render(res: Mapping[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}; commit {res['commit']}; model {res.get('model')}.", ""]
    if "tatoeba" in res:
        t = res["tatoeba"]
        cols = list(t["mean"])
        lines += ["Tatoeba accuracy (mean of xx->en and en->xx; nearest target by cosine = `absolute`, or by "
                  "ratio margin, k=4):", "", "| pair | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {p} | " + " | ".join(_f(t[p][c]) for c in cols) + " |" for p in t]
        lines.append("")
    for key, what in (("bucc", "noise: XQuAD-R + QA sentences on the xx side, QA sentences + the English sides of "
                               "the 8 other Tatoeba pairs on the en side"),
                      ("bucc_qa_noise_only", "noise: XQuAD-R + QA sentences only (no Tatoeba sentences)")):
        if key not in res:
            continue
        b = res[key]
        conds = list(b["mean"])
        lines += [f"BUCC-style F1, {what} (1000 gold pairs per Tatoeba pair, at most {b['noise_cap']:,} noise "
                  "sentences per side, retrieval max; F1 at the F1-optimal threshold; LOO = at the mean threshold of "
                  "the other 8 pairs):", "",
                  "| pair | xx / en sentences | " + " | ".join(f"{c} F1 (P/R) @ thr" for c in conds) + " |",
                  "|---" * (len(conds) + 2) + "|"]
        for p, v in b["pairs"].items():
            cells = [f"{_f(v[c]['f1'])} ({_f(v[c]['precision'], 2)}/{_f(v[c]['recall'], 2)}) @ "
                     f"{_f(v[c]['threshold'])}" for c in conds]
            lines.append(f"| {p} | {v['src']:,} / {v['tgt']:,} | " + " | ".join(cells) + " |")
        lines.append("| **mean F1** @ mean thr (sd) | | " + " | ".join(
            f"**{_f(b['mean'][c]['f1'])}** @ {_f(b['mean'][c]['threshold'])} ({_f(b['mean'][c]['threshold_sd'])})"
            for c in conds) + " |")
        lines.append("| **F1 at a fixed threshold (LOO)** | | " + " | ".join(
            f"{_f(b['mean'][c]['f1_loo'])}" for c in conds) + " |")
        lines.append("")
    if "speed" in res:
        s = res["speed"]
        e = s["embed"]
        what = ("clustered random 384-dim vectors (search and scoring); embedding rate measured on "
                f"{e.get('sentences_measured', 0):,} real clauses and extrapolated to 2 x {s['n']:,}"
                if s.get("synthetic") else "real clauses")
        lines += [f"Speed, {s['n']:,} x {s['n']:,} sentences, {what} ({s['model']}, {s.get('backend', 'torch')}): "
                  f"embedding {e['seconds']:.0f} s" + (f" ({e['sentences_per_s']:.0f} sentences/s)"
                                                       if e["sentences_per_s"] else " (cached)")
                  + "; search + scoring:", "",
                  "| search | seconds | sentences/s | vs brute force | pairs shared with exact "
                  "| exact's top 10% found |",
                  "|---|---|---|---|---|---|"]
        for name, r in s["runs"].items():
            lines.append(f"| {name}{' (' + r['plan'] + ')' if r.get('plan') else ''} | {r['seconds']:.1f} | "
                         f"{r['sentences_per_s']:,.0f} | {r['speedup_vs_brute_force']:.1f}x | "
                         f"{r['pairs_shared_with_exact']:.3f} | {r['top10pct_found']:.3f} |")
        lines.append("")
    if "scale" in res:
        c = res["scale"]
        lines += [f"Memory, {c['n']:,} x {c['n']:,} synthetic {c['dim']}-dim vectors ({c['plan']}): peak RSS "
                  f"{c['peak_rss_bytes'] / 2**30:.2f} GiB (budget {c['memory_budget_gib']:.0f} GiB); index "
                  f"{c['index_s']:.0f} s, search {c['search_s']:.0f} s, scoring {c['score_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mining", description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["all", "bucc", "tatoeba", "speed", "scale", "scale-child"])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--noise", type=int, default=20_000, help="BUCC: noise sentences per side, at most")
    ap.add_argument("--pairs", nargs="*", default=None, help="BUCC: Tatoeba pairs (default all 9)")
    ap.add_argument("--n", type=int, default=None, help="speed: sentences per side (100000); scale: vectors (2M)")
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--backend", default="torch", help="speed: encoder backend (torch | onnx | onnx-int8)")
    ap.add_argument("--synthetic", action="store_true", help="speed: search clustered random vectors; embedding "
                    "rate measured on a sample of the real clauses")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--budget", type=int, default=8 << 30)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="merge the results into this JSON file (and .md)")
    args = ap.parse_args(argv)
    if args.part == "scale-child":
        assert args.folder is not None
        print(json.dumps(scale_child(args.n or 2_000_000, args.dim, args.nprobe or 1, args.folder, args.budget)))
        return 0
    data = args.data or default_data_dir()
    res: dict[str, Any] = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    res.update({"machine": machine(), "commit": commit(), "model": args.model})
    if args.part in ("all", "tatoeba"):
        res["tatoeba"] = run_tatoeba(data, args.model)
    if args.part in ("all", "bucc"):
        res["bucc"] = run_bucc(data, args.model, args.noise, args.pairs)
        res["bucc_qa_noise_only"] = run_bucc(data, args.model, args.noise, args.pairs, tatoeba_noise=False)
    if args.part in ("all", "speed"):
        res["speed"] = run_speed(data, args.model, args.n or 100_000, args.nprobe, args.backend, args.synthetic)
    if args.part in ("all", "scale"):
        res["scale"] = run_scale(args.n or 2_000_000, args.dim, args.nprobe or 1, args.budget)
    md = render(res)
    print(md)
    save_results(args.out, res, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
