"""Query language ID on short queries (issue 19 part 2): accuracy by length and language, and what it does to retrieval.

Run: ``python -m benchmarks.langid_short [--data DIR] [--model e5-small] [--out benchmarks/results/langid_short.json]``

**Sets** (from ``../shared/data``, read in place):

- XQuAD-R answer spans: the first answer of every question of the 7 languages, kept when it is 1-5 words and has at
  least one letter (a bare number such as ``308`` carries no language); dev/test by article as
  :func:`benchmarks.datasets.load_xquad_r` splits (even articles dev, odd test).
- Tatoeba sentences of 1-5 words, both sides of the 9 pairs (10 languages; an English line shared by two pairs is
  kept once); dev = even line numbers, test = odd.
- The full XQuAD-R questions (test split), the ``lang-id`` cell of the matrix.

**Words** (:func:`word_count`): whitespace tokens; a token holding Han or kana characters counts
``ceil(characters / 2)`` words for them (a Chinese or Japanese word is about two characters) plus one for any other
letters or digits in it; a token without letters or digits counts nothing.

**Detectors** (:mod:`indexer.langid`): ``unrestricted`` (py3langid over all its languages: the service before issue
19), ``restricted`` (its posteriors renormalised over the index's languages), ``restricted+embedding`` (times the
softmax of the cosines of the raw query vector to the index's language means, temperature tuned on the dev split).
The index languages are the 7 XQuAD-R ones for the spans and questions (their means: the bench index's centroids)
and the 10 Tatoeba ones for Tatoeba (their means: the encoder's centroid table).

**End to end**: the XQuAD-R sentence pool (the bench index of :mod:`benchmarks.retrieval`), the answer spans as
queries, relevant = the question's answer sentences in every language, AP@20 through
:func:`benchmarks.retrieval.run_inprocess` with no ``lang`` in the request (the server detects it), for each
low-confidence policy (threshold chosen on dev), and with the true language as the upper bound.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from benchmarks.datasets import (
    SPLITS,
    TATOEBA_PAIRS,
    XQUAD_LANGS,
    Query,
    RetrievalDataset,
    default_data_dir,
    load_tatoeba,
    load_xquad_r,
)
from indexer.langid import LangGuess, LanguageDetector, best, combine, embedding_posteriors, normalize_lang

MAX_WORDS: Final = 5
_CJK: Final = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ALNUM: Final = re.compile(r"[^\W_]")
_LETTER: Final = re.compile(r"[^\W\d_]")


def word_count(text: str) -> int:
    """Words of ``text`` (module docstring): whitespace tokens, Han/kana runs at two characters a word."""
    n = 0
    for token in text.split():
        cjk = len(_CJK.findall(token))
        rest = _CJK.sub("", token)
        n += math.ceil(cjk / 2) + (1 if _ALNUM.search(rest) else 0)
    return n


@dataclass(frozen=True)
class Short:
    """One short query: its text, true language, split, word count and set (``xquad`` or ``tatoeba``)."""

    qid: str
    text: str
    lang: str
    split: str
    words: int
    source: str


def xquad_spans(data: Path, max_words: int = MAX_WORDS) -> list[Short]:
    """The first answer of every XQuAD-R question, 1-``max_words`` words with a letter (qid = the question's)."""
    folder = data / "xquad-r" if (data / "xquad-r").is_dir() else data
    out: list[Short] = []
    for lang in XQUAD_LANGS:
        raw = json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
        for a, article in enumerate(raw["data"]):
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    if not qa["answers"]:
                        continue
                    text = qa["answers"][0]["text"].strip()
                    n = word_count(text)
                    if 1 <= n <= max_words and _LETTER.search(text):
                        out.append(Short(f"{lang}/{qa['id']}", text, lang, SPLITS[a % 2], n, "xquad"))
    return out


def tatoeba_short(data: Path, max_words: int = MAX_WORDS) -> list[Short]:
    """Tatoeba lines of 1-``max_words`` words with a letter, both sides of every pair, each text once."""
    out: list[Short] = []
    seen: set[tuple[str, str]] = set()
    for pair, (xx, en) in load_tatoeba(data, TATOEBA_PAIRS).items():
        for side, lines in ((normalize_lang(pair), xx), ("en", en)):
            for i, text in enumerate(lines):
                text = text.strip()
                n = word_count(text)
                if not (1 <= n <= max_words and _LETTER.search(text)) or (side, text) in seen:
                    continue
                seen.add((side, text))
                out.append(Short(f"tatoeba/{pair}/{side}/{i}", text, side, SPLITS[i % 2], n, "tatoeba"))
    return out


def embed_shorts(enc: Any, shorts: Sequence[Short], what: str) -> np.ndarray:
    """Raw query vectors of ``shorts`` from the one embedding cache (one entry per language)."""
    from benchmarks.embeddings import embed_by_group

    return embed_by_group(enc, "query", [s.text for s in shorts], [s.lang for s in shorts], what)


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------

DETECTORS: Final = ("unrestricted", "restricted", "embedding", "restricted+embedding")
TEMPERATURES: Final = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
CONFIDENCE_EDGES: Final = (0.0, 0.5, 0.7, 0.9, 0.99, 1.01)


@dataclass
class Evidence:
    """Per text: the unrestricted label, the text posteriors over the allowed languages, the embedding cosines."""

    unrestricted: list[str]
    text: list[dict[str, float]]
    vecs: np.ndarray
    means: np.ndarray
    langs: list[str]

    def guesses(self, detector: str, temperature: float) -> list[LangGuess]:
        out: list[LangGuess] = []
        for i, label in enumerate(self.unrestricted):
            if detector == "unrestricted":
                out.append(LangGuess(label, 0.0, {}))
                continue
            emb = ({} if detector == "restricted"
                   else embedding_posteriors(self.vecs[i], self.means, self.langs, temperature))
            out.append(best(combine({} if detector == "embedding" else self.text[i], emb)))
        return out


def evidence(det: LanguageDetector, texts: Sequence[str], vecs: np.ndarray, means: np.ndarray,
             langs: Sequence[str]) -> Evidence:
    return Evidence([det.detect(t) for t in texts], [det.posteriors(t, langs) for t in texts], vecs, means,
                    list(langs))


def accuracy(truth: Sequence[str], found: Sequence[str], groups: Sequence[Any]) -> dict[str, float]:
    """``{"all": share right, str(group): share right in the group}`` (groups sorted)."""
    hit = np.asarray(found) == np.asarray(truth)
    g = np.asarray([str(x) for x in groups])
    out = {"all": float(hit.mean()) if len(hit) else 0.0, "n": float(len(hit))}
    out.update({k: float(hit[g == k].mean()) for k in sorted(set(g.tolist()))})
    return out


def tune_temperature(ev: Evidence, truth: Sequence[str], temps: Sequence[float] = TEMPERATURES
                     ) -> tuple[float, dict[float, float]]:
    """The temperature of the best restricted+embedding accuracy on ``ev`` (a dev set); ties to the larger."""
    scores = {t: accuracy(truth, [g.lang for g in ev.guesses("restricted+embedding", t)], truth)["all"]
              for t in temps}
    return max(sorted(scores, reverse=True), key=lambda t: scores[t]), scores


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


def span_dataset(full: RetrievalDataset, spans: Sequence[Short], split: str) -> RetrievalDataset:
    """The XQuAD-R sentence pool with the answer spans of ``split`` as queries (qrels: their question's)."""
    kept = [s for s in spans if s.split == split and s.qid in full.qrels]
    queries = [Query(s.qid, s.text, s.lang, s.split) for s in kept]
    return RetrievalDataset(f"xquad-r-spans-{split}", full.docs, queries, {q.qid: full.qrels[q.qid] for q in queries})


def e2e(index: Any, enc: Any, ds: RetrievalDataset, qvecs: np.ndarray, policy: Any, *, true_lang: bool = False,
        centering: str = "full", table: Any = None) -> dict[str, float]:
    """AP@20 (mean over the query languages, and per language) of dense retrieval through the one retrieval path
    under ``centering`` (``full``: the index's mode here), the query language detected under ``policy`` (or
    given: ``true_lang``), as the matrix's ``dense[-centering-offset][-detected]`` conditions."""
    from benchmarks import retrieval as rb

    name = "dense" if centering == "full" else f"dense-centering-{centering}"
    params = dict(rb.CONDITIONS[name if true_lang else f"{name}-detected"])
    run = rb.run_inprocess(index, enc, ds, params, qvecs=qvecs, table=table, lang_policy=policy)
    return {lang: v["map@20"] for lang, v in rb.evaluate(ds, run, ("map@20",)).items()}


def by_confidence(truth: Sequence[str], guesses: Sequence[LangGuess],
                  edges: Sequence[float] = CONFIDENCE_EDGES) -> dict[str, dict[str, float]]:
    """Per confidence bucket ``[lo, hi)``: the share of the queries in it and the accuracy there."""
    conf = np.asarray([g.confidence for g in guesses])
    hit = np.asarray([g.lang for g in guesses]) == np.asarray(truth)
    out: dict[str, dict[str, float]] = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf >= lo) & (conf < hi)
        out[f"[{lo}, {min(hi, 1.0)}]" if hi > 1 else f"[{lo}, {hi})"] = {
            "share": float(sel.mean()) if len(sel) else 0.0, "accuracy": float(hit[sel].mean()) if sel.any() else 0.0}
    return out


THRESHOLDS: Final = (0.3, 0.5, 0.7, 1.01)  # 1.01: the low-confidence shift always


def markdown(rows: Mapping[str, Mapping[str, float]], cols: Sequence[str], first: str, digits: int = 3) -> str:
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[c]:.{digits}f}" if c in vals else "" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.langid_short", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/langid_short.json"))
    ap.add_argument("--dev-per-lang", type=int, default=None, help="at most this many dev spans per language in the "
                    "e2e sweep (default all)")
    ap.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    args = ap.parse_args(argv)
    from app.service import UNRESTRICTED, QueryLangPolicy
    from benchmarks import retrieval as rb
    from indexer.store import open_index
    from models.encoders import load_encoder

    t0 = time.perf_counter()
    data = args.data or default_data_dir()
    enc = load_encoder(args.model)
    spans, tat = xquad_spans(data), tatoeba_short(data)
    print(f"{len(spans)} answer spans, {len(tat)} Tatoeba sentences", file=sys.stderr)
    span_vecs, tat_vecs = embed_shorts(enc, spans, "spans"), embed_shorts(enc, tat, "tatoeba")
    if args.embed_only:
        return 0
    full = load_xquad_r(data, "sentence")
    index = open_index(rb.index_for(full, enc))
    table = rb.load_centroid_table(enc)
    cents = index.require_centroids("full")
    xq = [lang for lang in cents.langs if lang in XQUAD_LANGS]
    xq_means = cents.means[[cents.langs.index(lang) for lang in xq]]
    tat_langs = sorted({s.lang for s in tat})
    if table is None or not set(tat_langs) <= set(table.langs):
        raise SystemExit("error: the encoder's centroid table (xlir models centroids) must hold the Tatoeba languages")
    tat_means = table.means[[table.langs.index(lang) for lang in tat_langs]]
    questions = full.subset(split="test")
    q_vecs = rb.query_vectors(enc, questions.queries)
    det = LanguageDetector()
    ev_spans = evidence(det, [s.text for s in spans], span_vecs, xq_means, xq)
    ev_tat = evidence(det, [s.text for s in tat], tat_vecs, tat_means, tat_langs)
    ev_q = evidence(det, [q.text for q in questions.queries], q_vecs, xq_means, xq)
    print(f"evidence in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    dev = [i for i, s in enumerate(spans) if s.split == "dev"]
    dev_ev = Evidence([ev_spans.unrestricted[i] for i in dev], [ev_spans.text[i] for i in dev], span_vecs[dev],
                      xq_means, xq)
    temp, temp_scores = tune_temperature(dev_ev, [spans[i].lang for i in dev])
    print(f"temperature {temp} (dev accuracy {temp_scores})", file=sys.stderr)

    result: dict[str, Any] = {"temperature": temp, "temperature_dev_accuracy": temp_scores,
                              "sets": {"spans": len(spans), "tatoeba": len(tat), "questions": len(questions.queries)}}
    acc: dict[str, dict[str, dict[str, float]]] = {}

    def measure(name: str, ev: Evidence, truth: Sequence[str], keep: Sequence[int], by: Sequence[Any]) -> None:
        for d in DETECTORS:
            found = [g.lang for g in ev.guesses(d, temp)]
            acc.setdefault(name, {})[d] = accuracy([truth[i] for i in keep], [found[i] for i in keep],
                                                   [by[i] for i in keep])

    test = [i for i, s in enumerate(spans) if s.split == "test"]
    measure("spans-test-by-words", ev_spans, [s.lang for s in spans], test, [s.words for s in spans])
    measure("spans-test-by-lang", ev_spans, [s.lang for s in spans], test, [s.lang for s in spans])
    measure("spans-dev-by-words", ev_spans, [s.lang for s in spans], dev, [s.words for s in spans])
    tt = [i for i, s in enumerate(tat) if s.split == "test"]
    measure("tatoeba-test-by-words", ev_tat, [s.lang for s in tat], tt, [s.words for s in tat])
    measure("tatoeba-test-by-lang", ev_tat, [s.lang for s in tat], tt, [s.lang for s in tat])
    qs = questions.queries
    measure("questions-test-by-lang", ev_q, [q.lang for q in qs], range(len(qs)), [q.lang for q in qs])
    result["accuracy"] = acc
    for name, rows in acc.items():
        cols = [c for c in next(iter(rows.values())) if c != "n"]
        print(f"\n**{name}** (n = {int(next(iter(rows.values()))['n'])})\n\n{markdown(rows, cols, 'detector')}")

    test_guesses = ev_spans.guesses("restricted+embedding", temp)
    result["spans_test_by_confidence"] = by_confidence([spans[i].lang for i in test], [test_guesses[i] for i in test])
    print("\n**spans-test, restricted+embedding, by confidence**\n\n"
          + markdown(result["spans_test_by_confidence"], ["share", "accuracy"], "confidence"))

    # end to end: threshold and low-confidence policy on dev, then every policy on test
    vec_of = {s.qid: span_vecs[i] for i, s in enumerate(spans)}
    ds_dev = span_dataset(full, spans, "dev").subset(max_per_lang=args.dev_per_lang)
    ds_test = span_dataset(full, spans, "test")
    dev_vecs = np.stack([vec_of[q.qid] for q in ds_dev.queries])
    test_vecs = np.stack([vec_of[q.qid] for q in ds_test.queries])
    modes = ("full", "offset")
    sweep: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
    candidates: dict[str, Any] = {"argmax": QueryLangPolicy(temperature=temp, low="argmax"),
                                  "unrestricted (before)": UNRESTRICTED}
    for low in ("mixture", "fallback"):
        for t in THRESHOLDS:
            candidates[f"{low} < {t}"] = QueryLangPolicy(temperature=temp, min_confidence=t, low=low,
                                                         weigh_outside=False)
    for t in THRESHOLDS[:-1]:  # the confidence times the text's mass on the index's languages
        candidates[f"fallback, weigh outside < {t}"] = QueryLangPolicy(temperature=temp, min_confidence=t,
                                                                       low="fallback", weigh_outside=True)
    for name, pol in candidates.items():
        for m in modes:
            sweep[m][name] = e2e(index, enc, ds_dev, dev_vecs, pol, centering=m, table=table)
        print(f"dev {name}: " + ", ".join(f"{m} {sweep[m][name]['all']:.5f}" for m in modes), file=sys.stderr)

    def dev_score(name: str) -> float:
        return float(np.mean([sweep[m][name]["all"] for m in modes]))

    chosen = max(candidates, key=dev_score)  # the first of equals: argmax, then the lower thresholds
    result["e2e_dev"] = sweep
    result["chosen"] = {"name": chosen, "policy": vars(candidates[chosen]), "dev_score": dev_score(chosen)}
    for m in modes:
        sweep[m]["true language"] = e2e(index, enc, ds_dev, dev_vecs, UNRESTRICTED, true_lang=True, centering=m,
                                        table=table)
    print(f"chosen on dev (mean AP@20 of full and offset): {chosen}", file=sys.stderr)
    if candidates[chosen] != QueryLangPolicy():
        print(f"warning: the service default {QueryLangPolicy()} is not the dev choice {candidates[chosen]}",
              file=sys.stderr)

    def best_of(prefix: str, weigh: bool = False) -> str:
        return max((k for k in candidates if k.startswith(prefix) and ("weigh" in k) == weigh), key=dev_score)

    policies: dict[str, Any] = {
        "unrestricted (before)": UNRESTRICTED,
        "restricted, argmax": QueryLangPolicy(temperature=None, low="argmax"),
        "restricted+embedding, argmax": candidates["argmax"],
        f"restricted+embedding, {best_of('mixture')} (best mixture on dev)": candidates[best_of("mixture")],
        f"restricted+embedding, {best_of('fallback')} (best fallback on dev)": candidates[best_of("fallback")],
        f"restricted+embedding, {best_of('fallback', True)} (best on dev of its kind)":
            candidates[best_of("fallback", True)],
        "language-agnostic always (fallback < 1.01)": candidates["fallback < 1.01"],
        "mixture always (mixture < 1.01)": candidates["mixture < 1.01"],
    }
    test_rows: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
    for m in modes:
        for name, pol in policies.items():
            test_rows[m][name] = e2e(index, enc, ds_test, test_vecs, pol, centering=m, table=table)
            print(f"test {m} {name}: {test_rows[m][name]['all']:.4f}", file=sys.stderr)
        test_rows[m]["true language"] = e2e(index, enc, ds_test, test_vecs, UNRESTRICTED, true_lang=True,
                                            centering=m, table=table)
    result["e2e_test"] = test_rows
    result["e2e_queries"] = {"dev": len(ds_dev.queries), "test": len(ds_test.queries)}
    cols = ["all", *XQUAD_LANGS]
    for m in modes:
        print(f"\n**e2e dev, centring {m} (AP@20, {len(ds_dev.queries)} spans)**\n\n"
              f"{markdown(sweep[m], cols, 'policy', 4)}")
        print(f"\n**e2e test, centring {m} (AP@20, {len(ds_test.queries)} spans)**\n\n"
              f"{markdown(test_rows[m], cols, 'policy', 4)}")

    # the matrix's -detected conditions: the full questions, test split
    extra: dict[str, dict[str, float]] = {}
    for m in modes:
        for name, pol in {"unrestricted (before)": UNRESTRICTED, f"chosen ({chosen})": candidates[chosen]}.items():
            extra[f"{m}, {name}"] = e2e(index, enc, questions, q_vecs, pol, centering=m, table=table)
        extra[f"{m}, true language"] = e2e(index, enc, questions, q_vecs, UNRESTRICTED, true_lang=True, centering=m,
                                           table=table)
        print(f"done questions {m}", file=sys.stderr)
    result["e2e_test_questions"] = extra
    print(f"\n**e2e test, full questions (AP@20, {len(questions.queries)})**\n\n"
          f"{markdown(extra, cols, 'centring, policy', 4)}")
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
