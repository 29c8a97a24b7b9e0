"""The benchmark matrix: condition x dataset x language -> expected score, checked against a fresh measurement.

``make bench-quality`` (``python -m benchmarks.matrix``) reads ``benchmarks/matrix.yaml``, measures every cell
through the product (the retrieval runner of ``benchmarks/retrieval.py``, i.e. the server's
``app.service.SearchService.retrieve``, for
XQuAD-R and the sample corpus; the mining core for Tatoeba), prints ``OK``/``FAIL`` per cell and a Markdown table,
and exits 1 when a cell is outside its tolerance (in the spirit of Pyserini's two-click reproductions).

A cell::

    - {dataset: xquad-r-sentence, condition: dense, split: test, lang: zh, metric: map@20, expected: 0.565}

``lang: all`` is the mean over the query languages; ``tolerance`` (default ``defaults.tolerance``) is absolute.
The metric ``lang-id`` is the share of queries whose language the server's detector finds (the queries the
``-detected`` conditions centre with it). An optional ``slice`` makes a small matrix (the CI subset,
``benchmarks/matrix_ci.yaml``): ``xquad_articles`` (the first N articles), ``max_per_lang`` (queries per language
and split), ``tatoeba_pairs``, ``tatoeba_lines`` (the first N lines).

**Expectations that can fail.** The expected values are those of one recorded run, named in the file's
``recorded`` header (commit, machine, date). The check never writes the file it checks: ``--record OUT`` writes the
measured values to a *new* file, which replaces the matrix only in a reviewed commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xlir.errors import XlirError

REPO = Path(__file__).resolve().parent.parent
MATRIX = REPO / "benchmarks" / "matrix.yaml"
SAMPLE = REPO / "data" / "sample"
CELL_KEYS = {"dataset", "condition", "split", "lang", "metric", "expected", "tolerance", "note"}
SLICE_KEYS = {"xquad_articles", "max_per_lang", "tatoeba_pairs", "tatoeba_lines"}
RECORDED_KEYS = ("commit", "machine", "date")
Key = tuple[str, str, str, str, str]


class MatrixError(XlirError):
    code = "matrix_error"


@dataclass(frozen=True)
class Cell:
    dataset: str
    condition: str
    split: str
    lang: str
    metric: str
    expected: float
    tolerance: float

    @property
    def key(self) -> Key:
        return (self.dataset, self.condition, self.split, self.lang, self.metric)


@dataclass(frozen=True)
class Result:
    cell: Cell
    measured: float | None

    @property
    def ok(self) -> bool:
        return self.measured is not None and abs(self.measured - self.cell.expected) <= self.cell.tolerance


@dataclass(frozen=True)
class Matrix:
    cells: list[Cell]
    recorded: dict[str, str]  # the run the expected values come from: commit, machine, date
    tolerance: float | None = None  # defaults.tolerance
    slice: dict[str, Any] = field(default_factory=dict)


def load_matrix(path: Path = MATRIX) -> Matrix:
    """A matrix file; a malformed file, header or cell is an error naming the file (and the cell)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise MatrixError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        raise MatrixError(f"{path}: expected a mapping with a list under 'cells'")
    recorded = doc.get("recorded")
    if not isinstance(recorded, dict) or any(not recorded.get(k) for k in RECORDED_KEYS):
        raise MatrixError(f"{path}: the header 'recorded' must name the run the expected values come from: "
                          + ", ".join(RECORDED_KEYS))
    sl = doc.get("slice") or {}
    if not isinstance(sl, dict) or set(sl) - SLICE_KEYS:
        raise MatrixError(f"{path}: 'slice' takes only {sorted(SLICE_KEYS)}")
    defaults = doc.get("defaults") or {}
    cells = []
    for i, raw in enumerate(doc["cells"], start=1):
        where = f"{path}: cell {i}"
        if not isinstance(raw, dict):
            raise MatrixError(f"{where}: expected a mapping")
        unknown = set(raw) - CELL_KEYS
        if unknown:
            raise MatrixError(f"{where}: unknown keys {sorted(unknown)}")
        merged = {"split": "test", "lang": "all", **{k: v for k, v in defaults.items() if k in CELL_KEYS}, **raw}
        missing = {"dataset", "condition", "metric", "expected", "tolerance"} - set(merged)
        if missing:
            raise MatrixError(f"{where}: missing {sorted(missing)}")
        try:
            cells.append(Cell(str(merged["dataset"]), str(merged["condition"]), str(merged["split"]),
                              str(merged["lang"]), str(merged["metric"]), float(merged["expected"]),
                              float(merged["tolerance"])))
        except (TypeError, ValueError) as exc:
            raise MatrixError(f"{where}: expected and tolerance must be numbers ({exc})") from exc
    tol = defaults.get("tolerance")
    return Matrix(cells, {k: str(v) for k, v in recorded.items()}, None if tol is None else float(tol), dict(sl))


def check(cells: Sequence[Cell], measured: Mapping[Key, float]) -> list[Result]:
    return [Result(c, measured.get(c.key)) for c in cells]


def render(results: Sequence[Result]) -> str:
    lines = ["| dataset | condition | split | lang | metric | expected | measured | delta | tolerance | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.cell
        m = "n/a" if r.measured is None else f"{r.measured:.3f}"
        d = "" if r.measured is None else f"{r.measured - c.expected:+.3f}"
        lines.append(f"| {c.dataset} | {c.condition} | {c.split} | {c.lang} | {c.metric} | {c.expected:.3f} | {m} "
                     f"| {d} | {c.tolerance:.3f} | {'OK' if r.ok else 'FAIL'} |")
    n_ok = sum(r.ok for r in results)
    lines += ["", f"{n_ok}/{len(results)} cells OK"]
    return "\n".join(lines)


def render_pivot(results: Sequence[Result]) -> str:
    """Per dataset, split and metric: a table with the conditions as rows and the languages as columns."""
    groups: dict[tuple[str, str, str], dict[str, dict[str, Result]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        c = r.cell
        groups[(c.dataset, c.split, c.metric)][c.condition][c.lang] = r
    out = []
    for (dataset, split, metric), rows in groups.items():
        langs = sorted({lang for row in rows.values() for lang in row}, key=lambda x: (x == "all", x))
        out += [f"**{dataset}, {split}, {metric}** (measured; `!` = outside tolerance)", "",
                "| condition | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
        for condition, row in rows.items():
            cells = []
            for lang in langs:
                res = row.get(lang)
                cells.append("" if res is None or res.measured is None
                             else f"{res.measured:.3f}{'' if res.ok else ' !'}")
            out.append(f"| {condition} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

TATOEBA_CONDITIONS = {  # condition -> (margin, centering)
    "cosine": ("absolute", "off"), "cosine-centred": ("absolute", "full"),
    "margin": ("ratio", "off"), "margin-centred": ("ratio", "full"),
}


def bitext_accuracy(src: np.ndarray, tgt: np.ndarray, margin: str, k: int = 4) -> float:
    """Share of source rows whose fwd-mined target (:func:`indexer.mining.mine`) is the row of the same index."""
    from indexer.mining import mine

    pred = np.full(len(src), -1, dtype=np.int64)
    for p in mine(src, tgt, k=k, margin=margin, retrieval="fwd"):
        pred[p.src] = p.tgt
    return float((pred == np.arange(len(src))).mean())


def tatoeba_slices(n: int) -> dict[str, slice]:
    """dev = the first half of a pair's lines, test = the second, all = every line."""
    half = n // 2
    return {"dev": slice(0, half), "test": slice(n - half, n), "all": slice(0, n)}


def measure_tatoeba(cells: Sequence[Cell], data: Path, enc: Any, sl: Mapping[str, Any]) -> dict[Key, float]:
    """Bitext retrieval accuracy, LASER/XTREME protocol: each sentence's nearest neighbour (by cosine, or by
    ratio margin with k=4) among the other side's lines must be its translation. Metrics ``xx->en`` and
    ``en->xx``; ``lang`` is the Tatoeba code (``ara``...) or ``all`` for the mean over the pairs."""
    from benchmarks.datasets import load_tatoeba
    from benchmarks.embeddings import embed
    from indexer.centering import center_sides

    n = sl.get("tatoeba_lines")
    vecs = {code: (embed(enc, "passage", xx[:n], None, f"tatoeba {code}"),
                   embed(enc, "passage", en[:n], None, f"tatoeba {code}-eng"))
            for code, (xx, en) in load_tatoeba(data / "tatoeba", sl.get("tatoeba_pairs")).items()}
    out: dict[Key, float] = {}
    for split, condition in {(c.split, c.condition) for c in cells}:
        if condition not in TATOEBA_CONDITIONS:
            raise MatrixError(f"unknown tatoeba condition {condition!r}; known: {', '.join(TATOEBA_CONDITIONS)}")
        margin, centering = TATOEBA_CONDITIONS[condition]
        per: dict[str, dict[str, float]] = defaultdict(dict)
        for code, (xx_all, en_all) in vecs.items():
            part = tatoeba_slices(len(xx_all))[split]
            xx, en = center_sides(xx_all[part], en_all[part], centering)
            per["xx->en"][code] = bitext_accuracy(xx, en, margin)
            per["en->xx"][code] = bitext_accuracy(en, xx, margin)
        for metric, vals in per.items():
            for code, v in vals.items():
                out[("tatoeba", condition, split, code, metric)] = v
            out[("tatoeba", condition, split, "all", metric)] = float(np.mean(list(vals.values())))
    return out


def load_retrieval_dataset(dataset: str, data: Path, sl: Mapping[str, Any]) -> Any:
    from benchmarks.datasets import XQUAD_LEVELS, load_sample, load_xquad_r

    if dataset == "sample":
        return load_sample(SAMPLE)
    level = dataset.removeprefix("xquad-r-")
    if not dataset.startswith("xquad-r-") or level not in XQUAD_LEVELS:
        raise MatrixError(f"unknown dataset {dataset!r}; known: tatoeba, sample, "
                          + ", ".join(f"xquad-r-{lv}" for lv in XQUAD_LEVELS))
    return load_xquad_r(data / "xquad-r", level=level, articles=sl.get("xquad_articles"))


def measure_retrieval(dataset: str, cells: Sequence[Cell], data: Path, enc: Any, sl: Mapping[str, Any]
                      ) -> dict[Key, float]:
    """XQuAD-R (or the sample corpus) through the product (``benchmarks.retrieval``): the pool indexed by
    ``xlir index`` defaults, each query through ``app.service.SearchService.retrieve``. Conditions are
    ``benchmarks.retrieval.CONDITIONS``; a ``-mono`` suffix restricts candidates and judgments to the query's
    language. ``hybrid-weighted`` uses the alpha that the sweep on the dev split picks (recorded under the metric
    ``alpha``)."""
    from benchmarks import retrieval as rb
    from indexer.langid import LanguageDetector
    from indexer.store import open_index

    full = load_retrieval_dataset(dataset, data, sl)
    index = open_index(rb.index_for(full, enc))
    table = rb.load_centroid_table(enc)
    alphas: dict[bool, float] = {}
    out: dict[Key, float] = {}
    wanted: dict[tuple[str, str], set[str]] = {(c.condition, c.split): set() for c in cells}
    for c in cells:
        wanted[(c.condition, c.split)].add(c.metric)
    for (condition, split), metrics in sorted(wanted.items()):
        mono = condition.endswith("-mono")
        base = condition.removesuffix("-mono")
        if base not in rb.CONDITIONS:
            raise MatrixError(f"unknown condition {condition!r}; known: "
                              + ", ".join(f"{c}[-mono]" for c in rb.CONDITIONS))
        judged = (rb.same_language_qrels if mono else (lambda d: d))
        params = dict(rb.CONDITIONS[base])
        ds = judged(full.subset(split=None if split == "all" else split, max_per_lang=sl.get("max_per_lang")))
        if "lang-id" in metrics:
            found = LanguageDetector().detect_many([q.text for q in ds.queries])
            hit = np.asarray(found) == [q.lang for q in ds.queries]
            per = {lang: float(hit[[q.lang == lang for q in ds.queries]].mean()) for lang in ds.langs()}
            out.update({(dataset, condition, split, lang, "lang-id"): v for lang, v in per.items()})
            out[(dataset, condition, split, "all", "lang-id")] = float(np.mean(list(per.values())))
        if base == "hybrid-weighted":
            if mono not in alphas:
                dev = judged(full.subset(split="dev", max_per_lang=sl.get("max_per_lang")))
                alphas[mono], _ = rb.sweep_alpha(index, enc, dev, monolingual=mono, table=table)
            params["alpha"] = alphas[mono]
            out[(dataset, condition, split, "all", "alpha")] = alphas[mono]
        run = rb.run_inprocess(index, enc, ds, params, monolingual=mono, table=table)
        for lang, values in rb.evaluate(ds, run).items():
            for metric, value in values.items():
                out[(dataset, condition, split, lang, metric)] = value
    index.close()
    return out


def measure(cells: Sequence[Cell], data: Path, model: str, sl: Mapping[str, Any] | None = None) -> dict[Key, float]:
    from models.encoders import load_encoder

    enc = load_encoder(model)
    measured: dict[Key, float] = {}
    by_dataset: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_dataset[c.dataset].append(c)
    for dataset, group in by_dataset.items():
        t0 = time.perf_counter()
        if dataset == "tatoeba":
            measured.update(measure_tatoeba(group, data, enc, sl or {}))
        else:
            measured.update(measure_retrieval(dataset, group, data, enc, sl or {}))
        print(f"measured {dataset} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return measured


HEADER = """\
# xlir benchmark matrix: condition x dataset x split x language x metric -> expected score (absolute tolerance).
# `python -m benchmarks.matrix --matrix THIS_FILE` measures every cell and prints OK/FAIL; see benchmarks/matrix.py.
# The expected values are the figures of the run named under `recorded` (commit, machine, date). The check never
# writes this file: `--record NEW_FILE` writes a run's figures to a new file, which replaces this one only in a
# reviewed commit. Datasets: xquad-r-sentence / xquad-r-paragraph (LAReQA pool, all 7 languages; conditions of
# benchmarks/retrieval.py, "-mono" = candidates and judgments in the query's language), sample (data/sample, the
# 10 cross-lingual probes), tatoeba (bitext retrieval accuracy, metrics xx->en and en->xx, lang = the Tatoeba code).
"""


def write_matrix(path: Path, matrix: Matrix, measured: Mapping[Key, float], recorded: Mapping[str, str]) -> None:
    """``matrix`` with the expected values replaced by ``measured`` and the header naming ``recorded``."""
    rows = []
    for c in matrix.cells:
        if c.key not in measured:
            raise MatrixError(f"cannot record {'/'.join(c.key)}: it was not measured")
        row: dict[str, Any] = {"dataset": c.dataset, "condition": c.condition, "split": c.split, "lang": c.lang,
                               "metric": c.metric, "expected": round(float(measured[c.key]), 4)}
        if c.tolerance != matrix.tolerance:
            row["tolerance"] = c.tolerance
        rows.append(row)
    doc: dict[str, Any] = {"recorded": dict(recorded), "defaults": {"tolerance": matrix.tolerance}}
    if matrix.slice:
        doc["slice"] = matrix.slice
    body = yaml.safe_dump({**doc, "cells": rows}, sort_keys=False, default_flow_style=None, width=200,
                          allow_unicode=True)
    path.write_text(HEADER + body, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.datasets import default_data_dir

    ap = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--matrix", type=Path, default=MATRIX, help="the expectations to check (never written)")
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--record", type=Path, default=None, metavar="OUT",
                    help="write this run's figures as a new matrix file OUT (for review; never the checked file)")
    args = ap.parse_args(argv)
    if args.record is not None and (args.record.exists() or args.record.resolve() == args.matrix.resolve()):
        ap.error(f"--record {args.record}: exists (or is the matrix being checked); name a new file")
    matrix = load_matrix(args.matrix)
    measured = measure(matrix.cells, args.data or default_data_dir(), args.model, matrix.slice)
    if args.record is not None:
        from benchmarks.demo_bench import commit, machine

        write_matrix(args.record, matrix, measured,
                     {"commit": commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d")})
        print(f"recorded: {args.record} (review it, then commit it in place of {args.matrix})", file=sys.stderr)
    results = check(matrix.cells, measured)
    for r in results:
        c = r.cell
        got = "n/a" if r.measured is None else f"{r.measured:.3f}"
        print(f"{'OK  ' if r.ok else 'FAIL'} {c.dataset}/{c.condition}/{c.split}/{c.lang}/{c.metric}: "
              f"{got} (expected {c.expected:.3f} +- {c.tolerance:.3f})")
    print(f"expected values recorded at commit {matrix.recorded['commit']} on {matrix.recorded['machine']}")
    table = render(results)
    pivot = render_pivot(results)
    print("\n" + pivot + "\n" + table)
    if args.out:
        args.out.write_text(pivot + "\n" + table + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
