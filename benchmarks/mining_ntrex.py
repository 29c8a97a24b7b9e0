"""Mining thresholds that transfer (issue 19.3): BUCC-style tasks for every NTREX-128 language vs English, built from
the evaluation part of the one NTREX split (:mod:`models.ntrex`), and the choice of the default margin, centring and
threshold (or threshold rule) by leave-languages-out.

``python -m benchmarks.mining_ntrex all --out benchmarks/results/mining_ntrex.json`` runs everything (``embed``
only embeds; ``ntrex`` and ``tatoeba`` run one part each). Data is read from ``../shared/data`` in place.

**Tasks** (:func:`make_task`). NTREX's evaluation part has 458 English lines from 25 news documents, each translated
into every language. For language xx the lines are shuffled (seed: ``sha256("xlir-ntrex-mining-v1:" + xx)``) and
dealt into three groups: **gold** (both sides kept: the pairs to find), **xx-only** (the translation is kept, its
English line is not) and **en-only** (the English line is kept, its translation is not: an English distractor from
the same news documents as the gold lines). The gold share is 0.2, 0.4 or 0.6 of the lines (chosen by the same
hash), so that a rule is tested on runs with few and with many translations; the rest is split evenly between
the two one-sided groups. Sizes: gold 92 / 183 / 275 lines, each side 275 / 320 / 366 sentences. The three
English variants (``eng-GB``, ``eng-IN``, ``eng-US``) are not mined against English: 120 languages remain.

**Mining** goes through the product (:func:`indexer.mining_search.mine_rows`, retrieval ``max``, k = 4, exact
search) with no threshold; every candidate threshold (fixed grids, and the rules of
:mod:`indexer.mining_threshold`) is then applied to the scores, and the rule values are checked to be the ones
``mine_rows`` sets itself. A mined pair is right when it is a gold pair.

**Choice** (:func:`leave_languages_out`). A candidate is (margin, centring, fixed threshold t) or (margin,
centring, rule). For each language, the candidate with the best mean F1 over the *other* languages is chosen and
scored on it; each family (margin x centring x fixed / rule) is also reported with its own threshold chosen that
way. The language's optimum is its best F1 at any threshold of the same margin and centring.

**Groups**: script (the Unicode script of most of the language's letters, :func:`script_of`) and resource: whether
the language is one of the 100 of XLM-R's pre-training data (Conneau et al. 2020, table 6; e5-small's backbone),
mapped to NTREX codes by hand in :data:`XLMR_LANGS` (varieties of a listed language count as listed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo_bench import commit, machine, save_results
from indexer.mining import MineOptions
from indexer.mining_search import ArrayRows, mine_rows
from indexer.mining_threshold import otsu_threshold, runner_up_threshold
from models import ntrex

ENGLISH = "eng"
SKIP = ("eng-GB", "eng-IN", "eng-US")  # English itself
TASK_SALT = "xlir-ntrex-mining-v1:"
GOLD_SHARES = (0.2, 0.4, 0.6)
CONDITIONS = (("absolute", "full"), ("absolute", "off"), ("ratio", "full"), ("ratio", "off"))
GRIDS = {"absolute": np.round(np.arange(0.20, 0.9501, 0.005), 4),
         "ratio": np.round(np.arange(0.90, 1.4001, 0.0025), 4)}
QUANTILES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95, 0.97, 0.98, 0.985, 0.99, 0.9925, 0.995, 0.9975,
             1.0)  # runner-up rule
TODAY = ("absolute/full", "fixed", 0.5)  # `--threshold 0.5` as the README recommends (the CLI keeps every pair)

# XLM-R's 100 pre-training languages (Conneau et al. 2020, table 6) among NTREX's codes; varieties count as listed
_XLMR = """
afr amh arb aze-Latn bel ben bos bul cat ces cym dan deu ell est eus fas fil fin fra fra-CA gle glg guj hau heb
hin hrv hun hye ind isl ita jpn kan kat kaz khm kir kmr kor lao lav lit mal mar mkd mlg mon msa mya nep nld nno
nob orm pan pol por por-BR prs pus ron rus sin slk slv snd-Arab som spa spa-MX sqi srp-Cyrl srp-Latn swa swe tam
tel tha tur uig ukr urd uzb vie xho zho-CN zho-TW"""
XLMR_LANGS = frozenset(_XLMR.split())
SCRIPT_GROUPS = {"LATIN": "Latin", "CYRILLIC": "Cyrillic", "ARABIC": "Arabic", "CJK": "CJK", "HIRAGANA": "CJK",
                 "KATAKANA": "CJK", "HANGUL": "CJK", "DEVANAGARI": "Indic", "BENGALI": "Indic", "GUJARATI": "Indic",
                 "GURMUKHI": "Indic", "TAMIL": "Indic", "TELUGU": "Indic", "KANNADA": "Indic", "MALAYALAM": "Indic",
                 "SINHALA": "Indic", "TIBETAN": "Indic", "THAI": "SE Asian", "LAO": "SE Asian", "KHMER": "SE Asian",
                 "MYANMAR": "SE Asian"}


# --------------------------------------------------------------------------------------------------
# Data and tasks
# --------------------------------------------------------------------------------------------------


def eval_texts() -> dict[str, list[str]]:
    """The evaluation part's lines of every NTREX language and of English (``eng``), in file order."""
    out: dict[str, list[str]] = {}
    for code in ntrex.languages():
        pairs = ntrex.parallel(code, "eval")
        out.setdefault(ENGLISH, [en for en, _ in pairs])
        out[code] = [xx for _, xx in pairs]
    return out


def embed_all(enc: Any, texts: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
    """Every language's evaluation lines as passages (as ``xlir mine`` embeds), one entry of the one embedding
    cache per language."""
    from benchmarks.embeddings import EmbedStats, embed

    stats = EmbedStats()
    out = {}
    for i, (code, lines) in enumerate(texts.items()):
        out[code] = embed(enc, "passage", lines, None, f"ntrex {code}", stats)
        print(f"[{i + 1}/{len(texts)}] {code}: cache hits {stats.hits}, misses {stats.misses}, "
              f"{stats.seconds:.0f} s embedding", file=sys.stderr, flush=True)
    return out


def _seed(code: str) -> int:
    return int.from_bytes(hashlib.sha256((TASK_SALT + code).encode()).digest()[:8], "little")


@dataclass(frozen=True)
class Task:
    code: str
    src_lines: np.ndarray  # the xx side: line numbers (of the evaluation part), in the task's row order
    tgt_lines: np.ndarray  # the English side
    gold: int  # gold pairs: the lines on both sides
    gold_share: float

    def hits(self, src_rows: np.ndarray, tgt_rows: np.ndarray) -> np.ndarray:
        """Which mined pairs (rows of the two sides) are gold pairs."""
        return np.asarray(self.src_lines[src_rows] == self.tgt_lines[tgt_rows], dtype=bool)


def make_task(code: str, n_lines: int) -> Task:
    """The BUCC-style task of ``code`` over ``n_lines`` parallel lines (see the module docstring)."""
    seed = _seed(code)
    share = GOLD_SHARES[seed % len(GOLD_SHARES)]
    rng = np.random.default_rng(seed)
    lines = rng.permutation(n_lines)
    n_gold = round(share * n_lines)
    n_xx = (n_lines - n_gold) // 2
    gold, xx_only, en_only = lines[:n_gold], lines[n_gold : n_gold + n_xx], lines[n_gold + n_xx :]
    src = rng.permutation(np.concatenate((gold, xx_only)))
    tgt = rng.permutation(np.concatenate((gold, en_only)))
    return Task(code=code, src_lines=src, tgt_lines=tgt, gold=len(gold), gold_share=share)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One language's mined pairs under one condition, without a threshold, best first."""

    score: np.ndarray
    hit: np.ndarray
    runner_up: np.ndarray
    gold: int

    def f1(self, thresholds: np.ndarray | float) -> np.ndarray:
        """F1 at each threshold (pairs scoring >= it kept)."""
        t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        kept = len(self.score) - np.searchsorted(self.score[::-1], t, side="left")
        tp = np.concatenate(([0], np.cumsum(self.hit)))[kept]
        return np.where(tp > 0, 2 * tp / np.maximum(kept + self.gold, 1), 0.0)

    def best(self) -> tuple[float, float]:
        """(F1, threshold) at the F1-optimal threshold."""
        f = self.f1(self.score)
        i = int(np.argmax(f))
        return float(f[i]), float(self.score[i])


def mine_task(x: np.ndarray, en: np.ndarray, task: Task, margin: str, centering: str) -> Run:
    opts = MineOptions(margin=margin, centering=centering, retrieval="max", k=4, search="exact", threshold=None)
    mined, _ = mine_rows(ArrayRows(x[task.src_lines]), ArrayRows(en[task.tgt_lines]), opts)
    assert mined.runner_up is not None
    return Run(score=mined.score, hit=task.hits(mined.src, mined.tgt), runner_up=mined.runner_up, gold=task.gold)


def candidates() -> list[tuple[str, str, float]]:
    """Every (condition, rule, parameter): fixed thresholds on each margin's grid, the runner-up quantiles, Otsu."""
    out: list[tuple[str, str, float]] = []
    for margin, centering in CONDITIONS:
        cond = f"{margin}/{centering}"
        out += [(cond, "fixed", float(t)) for t in GRIDS[margin]]
        out += [(cond, "runner-up", q) for q in QUANTILES]
        out.append((cond, "otsu", 0.0))
    return out


def threshold_of(run: Run, rule: str, param: float) -> float:
    if rule == "fixed":
        return param
    t = otsu_threshold(run.score) if rule == "otsu" else runner_up_threshold(run.runner_up, param)
    return -np.inf if t is None else t


def f1_table(runs: Mapping[str, Mapping[str, Run]], cands: Sequence[tuple[str, str, float]],
             langs: Sequence[str]) -> np.ndarray:
    """F1 of every candidate (rows) on every language (columns)."""
    table = np.zeros((len(cands), len(langs)))
    for j, lang in enumerate(langs):
        for cond in {c for c, _, _ in cands}:
            rows = [i for i, c in enumerate(cands) if c[0] == cond]
            run = runs[lang][cond]
            ts = np.array([threshold_of(run, cands[i][1], cands[i][2]) for i in rows])
            table[rows, j] = run.f1(ts)
    return table


def leave_languages_out(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each language (column): the candidate (row) with the best mean F1 over the other columns, and its F1
    on the column itself. Ties go to the first candidate."""
    n = table.shape[1]
    others = (table.sum(axis=1, keepdims=True) - table) / max(n - 1, 1)
    chosen = np.argmax(others, axis=0)
    return chosen, table[chosen, np.arange(n)]


def script_of(texts: Sequence[str]) -> str:
    """The script group of most letters of ``texts`` (Unicode character names' first word)."""
    counts: Counter[str] = Counter()
    for t in texts:
        for ch in t:
            if ch.isalpha():
                name = unicodedata.name(ch, "")
                counts[name.split(" ")[0] if name else "?"] += 1
    top = counts.most_common(1)[0][0] if counts else "?"
    return SCRIPT_GROUPS.get(top, "other")


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def _encoder(model: str) -> Any:
    from models.encoders import load_encoder

    return load_encoder(model, backend="onnx", workload="sentences")  # fp32 ONNX: the fastest at torch quality


def run_ntrex(model: str, only: Sequence[str] | None = None
              ) -> tuple[dict[str, dict[str, Run]], dict[str, Task], dict[str, list[str]], float]:
    """Every NTREX language's task (or ``only`` these) mined under every condition, without a threshold."""
    texts = eval_texts()
    if only:
        texts = {c: v for c, v in texts.items() if c == ENGLISH or c in only}
    vecs = embed_all(_encoder(model), texts)
    runs: dict[str, dict[str, Run]] = {}
    tasks: dict[str, Task] = {}
    t0 = time.perf_counter()
    for lang in (c for c in texts if c not in (ENGLISH, *SKIP)):
        tasks[lang] = make_task(lang, len(texts[lang]))
        runs[lang] = {f"{m}/{c}": mine_task(vecs[lang], vecs[ENGLISH], tasks[lang], m, c) for m, c in CONDITIONS}
    return runs, tasks, texts, time.perf_counter() - t0


def _gold_hits(gold: set[tuple[int, int]], src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    return np.fromiter(((s, t) in gold for s, t in zip(src.tolist(), tgt.tolist(), strict=True)), bool, len(src))


def run_tatoeba(model: str, noise: int = 20_000) -> tuple[dict[str, dict[str, Run]], dict[str, Any]]:
    """The BUCC-style Tatoeba task of ``benchmarks/mining.py`` (RESULTS.md 4.2, Tatoeba-style noise; 9 pairs, the
    same tasks and cached vectors) mined under every condition without a threshold, and mined end to end with the
    shipped default (``MineOptions()``: its own threshold rule, as ``xlir mine`` runs it)."""
    from benchmarks.datasets import default_data_dir, load_tatoeba
    from benchmarks.embeddings import EmbedStats, embed
    from benchmarks.mining import bucc_task, noise_sources

    data = default_data_dir()
    enc = _encoder(model)
    tatoeba = load_tatoeba(data)
    sources = noise_sources(data, tatoeba)
    stats = EmbedStats()
    vector_of: dict[str, np.ndarray] = {}
    for name, texts in sources.items():
        if texts:
            vector_of.update(zip(texts, embed(enc, "passage", texts, None, name, stats), strict=True))
    runs: dict[str, dict[str, Run]] = {}
    default = MineOptions()
    product: dict[str, Any] = {"margin": default.margin, "centering": default.centering,
                               "threshold": default.threshold, "pairs": {}}
    for pair in sorted(tatoeba):
        task = bucc_task(pair, sources, tatoeba, noise)
        x = np.stack([vector_of[t] for t in task["src"]])
        y = np.stack([vector_of[t] for t in task["tgt"]])
        gold = task["gold"]
        runs[pair] = {}
        for margin, centering in CONDITIONS:
            mined, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(margin=margin, centering=centering,
                                                                         threshold=None))
            assert mined.runner_up is not None
            runs[pair][f"{margin}/{centering}"] = Run(mined.score, _gold_hits(gold, mined.src, mined.tgt),
                                                      mined.runner_up, len(gold))
        mined, _ = mine_rows(ArrayRows(x), ArrayRows(y), default)
        tp = int(_gold_hits(gold, mined.src, mined.tgt).sum())
        product["pairs"][pair] = {"f1": 0.0 if tp == 0 else 2 * tp / (len(mined) + len(gold)),
                                  "threshold": mined.threshold, "pairs": len(mined)}
        print(f"tatoeba {pair}: default F1 {product['pairs'][pair]['f1']:.3f}", file=sys.stderr)
    product["f1"] = float(np.mean([v["f1"] for v in product["pairs"].values()]))
    product["embedding"] = {"hits": stats.hits, "misses": stats.misses}
    return runs, product


def _family(c: tuple[str, str, float]) -> str:
    return f"{c[0]} {c[1]}"


def _describe(c: tuple[str, str, float]) -> str:
    cond, rule, p = c
    return {"fixed": f"{cond} @ {p:g}", "otsu": f"{cond} otsu", "runner-up": f"{cond} runner-up q={p:g}"}[rule]


def analyse(runs: Mapping[str, Mapping[str, Run]], tasks: Mapping[str, Task], texts: Mapping[str, list[str]],
            cands: Sequence[tuple[str, str, float]], table: np.ndarray, tat: np.ndarray) -> dict[str, Any]:
    """``table``: F1 of each candidate on each NTREX language; ``tat``: on each Tatoeba pair. A candidate may become
    the default only if its mean Tatoeba F1 is not below today's (the issue's condition); among those, the choice
    is by leave-languages-out on NTREX. The unconstrained choice is reported too."""
    langs = list(runs)
    today = cands.index(TODAY)
    allowed = tat.mean(axis=1) >= tat[today].mean() - 1e-12
    oracle = {lang: {cond: runs[lang][cond].best() for cond in runs[lang]} for lang in langs}

    def lolo(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen, f1 = leave_languages_out(table[rows])
        return rows[chosen], f1

    def gaps(chosen: np.ndarray, f1: np.ndarray) -> dict[str, Any]:
        opt = np.array([oracle[lang][cands[c][0]][0] for lang, c in zip(langs, chosen, strict=True)])
        return {"f1_lolo": float(f1.mean()), "optimum": float(opt.mean()), "gap_mean": float((opt - f1).mean()),
                "gap_max": float((opt - f1).max()), "below_8": int(((opt - f1) > 0.08).sum()),
                "choices": dict(Counter(_describe(cands[i]) for i in chosen))}

    families: dict[str, Any] = {}
    for fam in dict.fromkeys(_family(c) for c in cands):
        rows = np.array([i for i, c in enumerate(cands) if _family(c) == fam])
        best_all = int(rows[np.argmax(table[rows].mean(axis=1))])
        families[fam] = {**gaps(*lolo(rows)), "chosen_all": _describe(cands[best_all]),
                         "f1_chosen_all": float(table[best_all].mean()),
                         "tatoeba_chosen_all": float(tat[best_all].mean()),
                         "tatoeba_best": float(tat[rows].mean(axis=1).max())}
    every = np.arange(len(cands))
    unconstrained = gaps(*lolo(every))
    chosen, f1 = lolo(every[allowed])
    constrained = gaps(chosen, f1)
    default = int(every[allowed][np.argmax(table[allowed].mean(axis=1))])
    dcond = cands[default][0]
    per_lang: dict[str, Any] = {}
    for j, lang in enumerate(langs):
        per_lang[lang] = {
            "script": script_of(texts[lang]), "xlmr": lang in XLMR_LANGS, "gold": tasks[lang].gold,
            "src": len(tasks[lang].src_lines), "tgt": len(tasks[lang].tgt_lines),
            "lolo_choice": _describe(cands[chosen[j]]), "f1_lolo": float(f1[j]),
            "optimum_lolo_condition": oracle[lang][cands[chosen[j]][0]][0],
            "f1_default": float(table[default, j]), "optimum": oracle[lang][dcond][0],
            "optimum_threshold": oracle[lang][dcond][1],
            "default_threshold": float(threshold_of(runs[lang][dcond], cands[default][1], cands[default][2])),
            "f1_today": float(table[today, j]), "optimum_today": oracle[lang]["absolute/full"][0],
            "optimum_any": max(v[0] for v in oracle[lang].values()),
        }
    groups: dict[str, dict[str, Any]] = {}
    for lang, v in per_lang.items():
        for g in (f"script: {v['script']}", "XLM-R languages" if v["xlmr"] else "not in XLM-R", "all"):
            groups.setdefault(g, {}).setdefault("langs", []).append(lang)
    for v in groups.values():
        members = [per_lang[lang] for lang in v["langs"]]
        for key in ("f1_lolo", "optimum_lolo_condition", "f1_default", "optimum", "f1_today", "optimum_today",
                    "optimum_any"):
            v[key] = float(np.mean([r[key] for r in members]))
        v["gap_lolo_max"] = float(max(r["optimum_lolo_condition"] - r["f1_lolo"] for r in members))
        v["n"] = len(members)
    return {"languages": len(langs), "tasks": {"gold_shares": list(GOLD_SHARES), "lines": len(texts[ENGLISH])},
            "default": _describe(cands[default]), "default_candidate": list(cands[default]),
            "f1_default_all": float(table[default].mean()), "tatoeba_default": float(tat[default].mean()),
            "today": {"f1": float(table[today].mean()), "tatoeba": float(tat[today].mean())},
            "allowed_by_tatoeba": int(allowed.sum()), "candidates": len(cands),
            "lolo": constrained, "lolo_unconstrained": unconstrained,
            "families": families, "groups": groups, "per_language": per_lang}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _f(x: float | None, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def render(res: Mapping[str, Any]) -> str:
    r = res["ntrex"]
    lines = [f"Machine: {res['machine']}; commit {res['commit']}; model {res['model']}.", "",
             f"NTREX-128 evaluation part, {r['languages']} languages vs English. Per family: F1 with the parameter "
             "chosen by leave-languages-out (LOLO), each language's optimum (same margin and centring, best "
             "threshold), the gap, the parameter chosen on all languages, and the Tatoeba BUCC-style mean F1 "
             f"with that parameter (today's setting: {_f(r['today']['tatoeba'])}):", "",
             "| margin/centring threshold | LOLO F1 | optimum | gap mean | gap max | langs > 8 below | "
             "chosen on all NTREX (F1) | Tatoeba F1 at it |", "|---|---|---|---|---|---|---|---|"]
    for fam, v in r["families"].items():
        lines.append(f"| {fam} | {_f(v['f1_lolo'])} | {_f(v['optimum'])} | {_f(v['gap_mean'])} | "
                     f"{_f(v['gap_max'])} | {v['below_8']} | {v['chosen_all']} ({_f(v['f1_chosen_all'])}) | "
                     f"{_f(v['tatoeba_chosen_all'])} |")
    for key, what in (("lolo_unconstrained", "any candidate"),
                      ("lolo", f"candidates not worse than today on Tatoeba ({r['allowed_by_tatoeba']} of "
                               f"{r['candidates']})")):
        v = r[key]
        lines += ["", f"LOLO over {what}: F1 {_f(v['f1_lolo'])}, optimum {_f(v['optimum'])}, gap mean "
                  f"{_f(v['gap_mean'])}, max {_f(v['gap_max'])}, {v['below_8']} languages more than 8 points below; "
                  "choices: " + ", ".join(f"{k} x{n}" for k, n in v["choices"].items())]
    t = res["tatoeba_default"]
    lines += ["", f"Default: **{r['default']}** (NTREX mean F1 {_f(r['f1_default_all'])}, Tatoeba "
              f"{_f(r['tatoeba_default'])}; today's absolute/full @ 0.50: NTREX {_f(r['today']['f1'])}, Tatoeba "
              f"{_f(r['today']['tatoeba'])}). Mined end to end with `MineOptions()` "
              f"({t['margin']}, {t['centering']}, threshold {t['threshold']}): Tatoeba mean F1 {_f(t['f1'])} ("
              + ", ".join(f"{p} {_f(v['f1'])} @ {_f(v['threshold'])}" for p, v in t["pairs"].items()) + ").", "",
              "| group | languages | LOLO F1 | optimum (LOLO's condition) | max gap | default F1 | optimum | "
              "today (absolute/full @ 0.50) | today's optimum | best of any condition |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(r["groups"], key=lambda g: (g != "all", not g.startswith(("XLM", "not")), g))
    for g in order:
        v = r["groups"][g]
        lines.append(f"| {g} | {v['n']} | {_f(v['f1_lolo'])} | {_f(v['optimum_lolo_condition'])} | "
                     f"{_f(v['gap_lolo_max'])} | {_f(v['f1_default'])} | {_f(v['optimum'])} | "
                     f"{_f(v['f1_today'])} | {_f(v['optimum_today'])} | {_f(v['optimum_any'])} |")
    lines += ["", "Per language (gold pairs / xx sentences / en sentences; LOLO = the setting chosen without the "
              "language; default = the shipped setting and the threshold it set in this run; optimum = best "
              "threshold of the default's margin and centring):", "",
              "| lang | script | XLM-R | gold/xx/en | LOLO F1 | default F1 (thr) | optimum (thr) | gap | today |",
              "|---|---|---|---|---|---|---|---|---|"]
    for lang, v in r["per_language"].items():
        lines.append(f"| {lang} | {v['script']} | {'y' if v['xlmr'] else 'n'} | {v['gold']}/{v['src']}/{v['tgt']} "
                     f"| {_f(v['f1_lolo'])} | {_f(v['f1_default'])} ({_f(v['default_threshold'])}) | "
                     f"{_f(v['optimum'])} ({_f(v['optimum_threshold'])}) | "
                     f"{_f(v['optimum'] - v['f1_default'])} | {_f(v['f1_today'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mining_ntrex", description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["all", "embed"])
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--languages", nargs="*", default=None, help="NTREX codes to mine (default: all but English)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON (and .md beside it)")
    args = ap.parse_args(argv)
    if args.part == "embed":
        embed_all(_encoder(args.model), eval_texts())
        return 0
    runs, tasks, texts, mine_s = run_ntrex(args.model, args.languages)
    tat_runs, product = run_tatoeba(args.model)
    cands = candidates()
    res: dict[str, Any] = {"machine": machine(), "commit": commit(), "model": args.model, "mine_seconds": mine_s}
    res["ntrex"] = analyse(runs, tasks, texts, cands, f1_table(runs, cands, list(runs)),
                           f1_table(tat_runs, cands, list(tat_runs)))
    res["tatoeba_default"] = product
    md = render(res)
    print(md)
    save_results(args.out, res, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
