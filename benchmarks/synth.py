"""A deterministic synthetic multilingual passage corpus for speed tests, built from real sentences.

Run: ``python -m benchmarks.synth --n 200000 --out /tmp/synth.jsonl.gz --queries /tmp/synth-queries.jsonl``.

**Sentences** come from the benchmark data (``benchmarks.datasets.default_data_dir()``, read in place, never
copied): the paragraphs of XQuAD-R (7 languages), the contexts of the ``qa-train`` SQuAD-style files (ar, en, fr,
id, ja, ko, pt, zh) and both sides of the Tatoeba pairs (9 languages + English). Paragraphs are cut by
:func:`benchmarks.datasets.split_sentences`; each language's sentences are deduplicated and kept in file order,
without those shorter than :data:`MIN_TOKENS` or longer than :data:`MAX_TOKENS` BM25 tokens (the product's
analyzer, :func:`indexer.text.tokenize`), which is also how passage lengths are counted.

**Passages**: passage ``i`` depends only on ``(seed, i)`` (its own random generator), so any passage can be
regenerated alone and queries can be drawn without keeping the corpus. Its language is drawn with probability
proportional to the square root of that language's pool size in tokens (12 languages; plain proportions would
make Japanese over half the corpus, uniform ones would repeat the ~900 Portuguese sentences ~70 times each); then
random sentences of that language (with replacement) are appended until the passage holds ``target_tokens``
tokens (default 100), or until the next sentence would overshoot the target by more than the passage falls short
of it (then that sentence is left out), so lengths centre on the target. Records: ``id`` (``synth-0000042``),
``lang``, ``text``.

**Queries**: for ``n_queries`` passages drawn (without replacement, seeded) among the first ``n``, a window of one
of the passage's sentences: 2-6 consecutive words for languages written with spaces, 4-12 characters for Chinese
and Japanese. Records: ``qid``, ``text``, ``lang``, ``source`` (the passage's id).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np

from benchmarks.datasets import TATOEBA_PAIRS, DatasetError, default_data_dir, load_tatoeba, split_sentences
from indexer.langid import normalize_lang
from indexer.text import tokenize

__all__ = ["MAX_TOKENS", "MIN_TOKENS", "Passage", "SentencePool", "SynthCorpus", "SynthQuery", "load_pool"]

MIN_TOKENS: Final = 3
MAX_TOKENS: Final = 120
NO_SPACES: Final = frozenset({"zh", "ja"})  # query windows are cut in characters there


@dataclass(frozen=True)
class Passage:
    id: str
    lang: str
    text: str
    sentences: tuple[str, ...]
    tokens: int

    def record(self) -> dict[str, str]:
        return {"id": self.id, "lang": self.lang, "text": self.text}


@dataclass(frozen=True)
class SynthQuery:
    qid: str
    text: str
    lang: str
    source: str

    def record(self) -> dict[str, str]:
        return {"qid": self.qid, "text": self.text, "lang": self.lang, "source": self.source}


@dataclass(frozen=True)
class SentencePool:
    """Per language: the sentences (deduplicated, file order) and their BM25 token counts."""

    sentences: Mapping[str, Sequence[str]]
    tokens: Mapping[str, np.ndarray]

    @property
    def langs(self) -> list[str]:
        return sorted(self.sentences)

    def weights(self) -> np.ndarray:
        """Language probabilities (order of :attr:`langs`): proportional to sqrt(pool size in tokens)."""
        w = np.sqrt(np.asarray([float(self.tokens[lang].sum()) for lang in self.langs]))
        return w / w.sum()

    @classmethod
    def from_sentences(cls, by_lang: Mapping[str, Sequence[str]]) -> SentencePool:
        sentences: dict[str, list[str]] = {}
        tokens: dict[str, np.ndarray] = {}
        for lang in sorted(by_lang):
            seen: set[str] = set()
            kept: list[str] = []
            counts: list[int] = []
            for s in by_lang[lang]:
                s = " ".join(s.split())
                if not s or s in seen:
                    continue
                seen.add(s)
                n = len(tokenize(s))
                if MIN_TOKENS <= n <= MAX_TOKENS:
                    kept.append(s)
                    counts.append(n)
            if kept:
                sentences[lang] = kept
                tokens[lang] = np.asarray(counts, dtype=np.int64)
        if not sentences:
            raise DatasetError("no usable sentences for the synthetic corpus")
        return cls(sentences, tokens)


def squad_sentences(path: Path, lang: str) -> Iterator[str]:
    """The sentences of the contexts of a SQuAD-style file (JSON, or gzipped JSON), in file order."""
    try:
        obj = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    try:
        contexts = [p["context"] for article in obj["data"] for p in article["paragraphs"]]
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a SQuAD-style file ({type(exc).__name__}: {exc})") from exc
    for c in dict.fromkeys(contexts):  # the files repeat a context once per question group
        for start, end in split_sentences(c, lang):
            yield c[start:end]


def load_pool(data_dir: Path | None = None) -> SentencePool:
    """Read the sentence pool from ``data_dir`` (default: the benchmark data); sources that are missing are skipped,
    an empty pool is an error."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    by_lang: dict[str, list[str]] = {}
    xquad = root / "xquad-r"
    for path in sorted(xquad.glob("*.json")) if xquad.is_dir() else []:
        lang = normalize_lang(path.stem)
        by_lang.setdefault(lang, []).extend(squad_sentences(path, lang))
    qa = root / "qa-train"
    for path in sorted(qa.glob("*.json.gz")) if qa.is_dir() else []:
        lang = normalize_lang(path.name.split("-", 1)[0])
        by_lang.setdefault(lang, []).extend(squad_sentences(path, lang))
    if (root / "tatoeba").is_dir():
        pairs = [c for c in TATOEBA_PAIRS if (root / "tatoeba" / f"tatoeba.{c}-eng.{c}").is_file()]
        for code, (xx, en) in load_tatoeba(root, pairs).items():
            by_lang.setdefault(normalize_lang(code), []).extend(xx)
            by_lang.setdefault("en", []).extend(en)
    if not by_lang:
        raise DatasetError(f"{root}: none of xquad-r/, qa-train/, tatoeba/ found")
    return SentencePool.from_sentences(by_lang)


class SynthCorpus:
    """Passage ``i`` of the corpus with ``seed``; see the module docstring."""

    def __init__(self, pool: SentencePool, seed: int = 0, target_tokens: int = 100) -> None:
        if target_tokens < 1:
            raise ValueError("target_tokens must be >= 1")
        self.pool = pool
        self.seed = seed
        self.target_tokens = target_tokens
        self._langs = pool.langs
        self._cum = np.cumsum(pool.weights())

    def passage(self, i: int) -> Passage:
        rng = np.random.default_rng([self.seed, 0, i])
        lang = self._langs[min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self._langs) - 1)]
        sents, counts = self.pool.sentences[lang], self.pool.tokens[lang]
        picked: list[str] = []
        total = 0
        while total < self.target_tokens:
            j = int(rng.integers(len(sents)))
            n = int(counts[j])
            if picked and total + n - self.target_tokens > self.target_tokens - total:
                break  # stopping short is closer to the target than this sentence's overshoot
            picked.append(sents[j])
            total += n
        sep = "" if lang in NO_SPACES else " "
        return Passage(id=f"synth-{i:07d}", lang=lang, text=sep.join(picked), sentences=tuple(picked), tokens=total)

    def passages(self, n: int, start: int = 0) -> Iterator[Passage]:
        for i in range(start, start + n):
            yield self.passage(i)

    def queries(self, n_queries: int, n_passages: int) -> list[SynthQuery]:
        """``n_queries`` queries, each a window of a sentence of a distinct passage among the first ``n_passages``."""
        if n_queries > n_passages:
            raise ValueError(f"cannot draw {n_queries} queries from {n_passages} passages")
        rng = np.random.default_rng([self.seed, 1])
        rows = np.sort(rng.choice(n_passages, size=n_queries, replace=False))
        out = []
        for qi, row in enumerate(rows.tolist()):
            p = self.passage(row)
            sentence = p.sentences[int(rng.integers(len(p.sentences)))]
            if p.lang in NO_SPACES:
                units, lo, hi, sep = list(sentence), 4, 12, ""
            else:
                units, lo, hi, sep = sentence.split(), 2, 6, " "
            size = min(len(units), int(rng.integers(lo, hi + 1)))
            start = int(rng.integers(len(units) - size + 1))
            out.append(SynthQuery(qid=f"q{qi:05d}", text=sep.join(units[start : start + size]), lang=p.lang,
                                  source=p.id))
        return out


def _open_out(path: Path, gz: bool) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


def write_jsonl(path: Path, records: Iterator[dict[str, str]]) -> int:
    """Stream ``records`` to ``path`` (gzipped if it ends with ``.gz``) through a temporary file; returns the count."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with _open_out(tmp, path.suffix == ".gz") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="passages (default 200,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-tokens", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True, help="passages JSONL (.gz to compress)")
    ap.add_argument("--queries", type=Path, default=None, help="also write queries JSONL here")
    ap.add_argument("--n-queries", type=int, default=1000)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    corpus = SynthCorpus(load_pool(args.data_dir), seed=args.seed, target_tokens=args.target_tokens)
    n = write_jsonl(args.out, (p.record() for p in corpus.passages(args.n)))
    print(f"{n} passages -> {args.out}")
    if args.queries is not None:
        qs = corpus.queries(min(args.n_queries, args.n), args.n)
        write_jsonl(args.queries, (q.record() for q in qs))
        print(f"{len(qs)} queries -> {args.queries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
