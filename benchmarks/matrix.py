"""The benchmark matrix: condition x dataset x language -> expected score, checked against a fresh measurement.

``make bench-quality`` (``python -m benchmarks.matrix``) reads ``benchmarks/matrix.yaml``, measures every cell
through the product (the retrieval runner of ``benchmarks/retrieval.py`` for XQuAD-R, the mining core for
Tatoeba), prints ``OK``/``FAIL`` per cell and a Markdown table, and exits 1 when a cell is outside its tolerance,
so a regression is visible at a glance (in the spirit of Pyserini's two-click reproductions).

A cell::

    - {dataset: xquad-r-sentence, condition: dense, split: test, lang: zh, metric: map@20, expected: 0.565}

``lang: all`` is the mean over the query languages; ``tolerance`` (default ``defaults.tolerance``) is absolute.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xlir.errors import XlirError

REPO = Path(__file__).resolve().parent.parent
MATRIX = REPO / "benchmarks" / "matrix.yaml"
CELL_KEYS = {"dataset", "condition", "split", "lang", "metric", "expected", "tolerance", "note"}


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
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.dataset, self.condition, self.split, self.lang, self.metric)


@dataclass(frozen=True)
class Result:
    cell: Cell
    measured: float | None

    @property
    def ok(self) -> bool:
        return self.measured is not None and abs(self.measured - self.cell.expected) <= self.cell.tolerance


def load_matrix(path: Path = MATRIX) -> list[Cell]:
    """Cells of a matrix file; a malformed file or cell is an error naming the file and the cell."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise MatrixError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        raise MatrixError(f"{path}: expected a mapping with a list under 'cells'")
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
    return cells


def check(cells: Sequence[Cell], measured: Mapping[tuple[str, str, str, str, str], float]) -> list[Result]:
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


def measure_tatoeba(cells: Sequence[Cell], data: Path, enc: Any) -> dict[tuple[str, str, str, str, str], float]:
    """Bitext retrieval accuracy, LASER/XTREME protocol: each sentence's nearest neighbour (by cosine, or by
    ratio margin with k=4) among the other side's 1000 must be its translation. Metrics ``xx->en`` and
    ``en->xx``; ``lang`` is the Tatoeba code (``ara``...) or ``all`` for the mean over the pairs."""
    from benchmarks.centering import bitext_accuracy, embed, embedding_cache_dir, tatoeba_slices
    from benchmarks.datasets import TATOEBA_PAIRS, load_tatoeba
    from indexer.centering import center_sides

    sides = load_tatoeba(data / "tatoeba")
    cache = embedding_cache_dir()
    vecs = {code: (embed(enc, "passage", xx, cache, f"tatoeba {code}"), embed(enc, "passage", en, cache,
                                                                              f"tatoeba {code}-eng"))
            for code, (xx, en) in sides.items()}
    out: dict[tuple[str, str, str, str, str], float] = {}
    for split, condition in {(c.split, c.condition) for c in cells}:
        if condition not in TATOEBA_CONDITIONS:
            raise MatrixError(f"unknown tatoeba condition {condition!r}; known: {', '.join(TATOEBA_CONDITIONS)}")
        margin, centering = TATOEBA_CONDITIONS[condition]
        per: dict[str, dict[str, float]] = defaultdict(dict)
        for code in TATOEBA_PAIRS:
            xx_all, en_all = vecs[code]
            sl = tatoeba_slices(len(xx_all))[split]
            xx, en = center_sides(xx_all[sl], en_all[sl], centering)
            per["xx->en"][code] = bitext_accuracy(xx, en, margin)
            per["en->xx"][code] = bitext_accuracy(en, xx, margin)
        for metric, vals in per.items():
            for code, v in vals.items():
                out[("tatoeba", condition, split, code, metric)] = v
            out[("tatoeba", condition, split, "all", metric)] = float(np.mean(list(vals.values())))
    return out


def measure_retrieval(dataset: str, cells: Sequence[Cell], data: Path, enc: Any
                      ) -> dict[tuple[str, str, str, str, str], float]:
    """XQuAD-R through the product (``benchmarks.retrieval``): the pool indexed by ``xlir index`` defaults, each
    query through ``app.service.retrieve``. Conditions are ``benchmarks.retrieval.CONDITIONS``; a ``-mono`` suffix
    restricts candidates and judgments to the query's language. ``hybrid-weighted`` uses the alpha that the sweep
    on the dev split picks (recorded under the metric ``alpha``)."""
    from benchmarks import retrieval as rb
    from benchmarks.datasets import XQUAD_LEVELS, load_xquad_r
    from indexer.store import open_index

    level = dataset.removeprefix("xquad-r-")
    if not dataset.startswith("xquad-r-") or level not in XQUAD_LEVELS:
        raise MatrixError(f"unknown dataset {dataset!r}; known: tatoeba, "
                          + ", ".join(f"xquad-r-{lv}" for lv in XQUAD_LEVELS))
    full = load_xquad_r(data / "xquad-r", level=level)
    index = open_index(rb.index_for(full, enc))
    table = rb.load_centroid_table(enc)
    alphas: dict[bool, float] = {}
    out: dict[tuple[str, str, str, str, str], float] = {}
    for condition, split in sorted({(c.condition, c.split) for c in cells}):
        mono = condition.endswith("-mono")
        base = condition.removesuffix("-mono")
        if base not in rb.CONDITIONS:
            raise MatrixError(f"unknown condition {condition!r}; known: "
                              + ", ".join(f"{c}[-mono]" for c in rb.CONDITIONS))
        judged = (rb.same_language_qrels if mono else (lambda d: d))
        params = dict(rb.CONDITIONS[base])
        if base == "hybrid-weighted":
            if mono not in alphas:
                dev = judged(full.subset(split="dev"))
                alphas[mono], _ = rb.sweep_alpha(index, enc, dev, monolingual=mono, table=table)
            params["alpha"] = alphas[mono]
            out[(dataset, condition, split, "all", "alpha")] = alphas[mono]
        ds = judged(full.subset(split=None if split == "all" else split))
        run = rb.run_inprocess(index, enc, ds, params, monolingual=mono, table=table)
        for lang, metrics in rb.evaluate(ds, run).items():
            for metric, value in metrics.items():
                out[(dataset, condition, split, lang, metric)] = value
    return out


def measure(cells: Sequence[Cell], data: Path, model: str) -> dict[tuple[str, str, str, str, str], float]:
    from models.encoders import load_encoder

    enc = load_encoder(model)
    measured: dict[tuple[str, str, str, str, str], float] = {}
    by_dataset: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_dataset[c.dataset].append(c)
    for dataset, group in by_dataset.items():
        t0 = time.perf_counter()
        if dataset == "tatoeba":
            measured.update(measure_tatoeba(group, data, enc))
        else:
            measured.update(measure_retrieval(dataset, group, data, enc))
        print(f"measured {dataset} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return measured


HEADER = """\
# xlir benchmark matrix: condition x dataset x split x language x metric -> expected score (absolute tolerance).
# `make bench-quality` (python -m benchmarks.matrix) measures every cell and prints OK/FAIL; see benchmarks/matrix.py.
# Expected values are the figures measured on the reference machine (benchmarks/RESULTS.md names it and the
# commit); `python -m benchmarks.matrix --update` rewrites them from a new measurement, keeping the cells.
# Datasets: xquad-r-sentence / xquad-r-paragraph (LAReQA pool, all 7 languages; conditions of
# benchmarks/retrieval.py, "-mono" = candidates and judgments in the query's language), tatoeba (bitext
# retrieval accuracy, metrics xx->en and en->xx, lang = the Tatoeba code).
"""


def write_matrix(path: Path, cells: Sequence[Cell], measured: Mapping[tuple[str, str, str, str, str], float],
                 tolerance: float) -> None:
    rows = []
    for c in cells:
        value = measured.get(c.key, c.expected)
        row: dict[str, Any] = {"dataset": c.dataset, "condition": c.condition, "split": c.split, "lang": c.lang,
                               "metric": c.metric, "expected": round(float(value), 4)}
        if c.tolerance != tolerance:
            row["tolerance"] = c.tolerance
        rows.append(row)
    body = yaml.safe_dump({"defaults": {"tolerance": tolerance}, "cells": rows}, sort_keys=False,
                          default_flow_style=None, width=200, allow_unicode=True)
    path.write_text(HEADER + body, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.datasets import default_data_dir

    ap = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--matrix", type=Path, default=MATRIX)
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    ap.add_argument("--update", action="store_true", help="rewrite the expected values from this measurement")
    args = ap.parse_args(argv)
    cells = load_matrix(args.matrix)
    measured = measure(cells, args.data or default_data_dir(), args.model)
    if args.update:
        doc = yaml.safe_load(args.matrix.read_text(encoding="utf-8"))
        write_matrix(args.matrix, cells, measured, float((doc.get("defaults") or {}).get("tolerance", 0.01)))
        cells = load_matrix(args.matrix)
    results = check(cells, measured)
    for r in results:
        c = r.cell
        got = "n/a" if r.measured is None else f"{r.measured:.3f}"
        print(f"{'OK  ' if r.ok else 'FAIL'} {c.dataset}/{c.condition}/{c.split}/{c.lang}/{c.metric}: "
              f"{got} (expected {c.expected:.3f} +- {c.tolerance:.3f})")
    table = render(results)
    pivot = render_pivot(results)
    print("\n" + pivot + "\n" + table)
    if args.out:
        args.out.write_text(pivot + "\n" + table + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
