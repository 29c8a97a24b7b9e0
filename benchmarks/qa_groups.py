"""The reranker's training data: qa-train questions with the candidates xlir's own first stage ranks for them.

For each qa-train language (:func:`benchmarks.datasets.load_qa_train`: the sentences of the language's paragraphs
are one pool, a single-language index) every question goes through the one retrieval path
(:func:`benchmarks.retrieval.run_inprocess`, the server's defaults: on a single-language index, hybrid dense + BM25)
and keeps its top ``depth`` candidates with their first-stage ranks. Two files are written into ``out_dir``:

- ``docs.jsonl``: one line per sentence, ``{"id", "text"}`` (the text as the server reranks it: title and
  sentence, :func:`indexer.write.passage_text`);
- ``groups.jsonl``: one line per question, ``{"qid", "lang", "split", "query", "candidates": [[doc id, rank,
  label], ...]}``: the first stage's top ``depth`` (rank 1..depth), plus, for training questions, the other
  sentences of the question's paragraph and its answer sentences when the first stage missed them (rank
  ``depth + 1``); label 1 for a sentence holding an answer. ``split`` is ``train`` or ``dev`` (the 5% held back
  for validation).

``models/train_reranker.py`` reads them (``load_groups``). Building them embeds the pool once (the embedding
cache keeps it) and is idempotent: a finished ``groups.jsonl`` (``prepared.json`` beside it) is reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.datasets import RetrievalDataset, default_data_dir, load_qa_train
from indexer.write import passage_text
from models.base import Encoder

DEPTH = 100
DONE = "prepared.json"


def paragraph_of(doc_id: str) -> str:
    """``lang/article/para/sent`` -> ``lang/article/para``."""
    return doc_id.rsplit("/", 1)[0]


def language_pool(dataset: RetrievalDataset, lang: str) -> RetrievalDataset:
    """One language's sentences and questions (its own single-language index)."""
    queries = [q for q in dataset.queries if q.lang == lang]
    return RetrievalDataset(f"{dataset.name}-{lang}", [d for d in dataset.docs if d.lang == lang], queries,
                            {q.qid: dataset.qrels[q.qid] for q in queries})


def group_record(qid: str, lang: str, split: str, query: str, ranked: Sequence[str], relevant: dict[str, int],
                 paragraph_docs: Sequence[str]) -> dict[str, Any]:
    """One line of ``groups.jsonl`` (see the module doc)."""
    depth = len(ranked)
    cands: list[list[Any]] = [[d, i + 1, int(relevant.get(d, 0) > 0)] for i, d in enumerate(ranked)]
    if split == "train":
        seen = set(ranked)
        extra = [d for d in list(relevant) + list(paragraph_docs) if d not in seen]
        for d in dict.fromkeys(extra):
            cands.append([d, depth + 1, int(relevant.get(d, 0) > 0)])
    return {"qid": qid, "lang": lang, "split": split, "query": query, "candidates": cands}


def prepare(out_dir: Path, encoder: Encoder, *, data_dir: Path | None = None, langs: Sequence[str] | None = None,
            max_questions: int = 6000, depth: int = DEPTH, seed: int = 0, cache_dir: Path | None = None,
            progress: bool = True) -> Path:
    """Write ``docs.jsonl`` and ``groups.jsonl`` into ``out_dir`` (see the module doc); returns ``out_dir``."""
    from benchmarks.retrieval import index_for, run_inprocess
    from indexer.store import open_index

    out_dir.mkdir(parents=True, exist_ok=True)
    key = {"encoder": encoder.checksum, "langs": sorted(langs) if langs else None, "max_questions": max_questions,
           "depth": depth, "seed": seed, "format": 1}
    done = out_dir / DONE
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        return out_dir
    dataset = load_qa_train(data_dir or default_data_dir(), langs, max_questions, seed)
    by_para: dict[str, list[str]] = {}
    for d in dataset.docs:
        by_para.setdefault(paragraph_of(d.id), []).append(d.id)
    counts: dict[str, int] = {}
    tmp_docs, tmp_groups = out_dir / "docs.jsonl.tmp", out_dir / "groups.jsonl.tmp"
    with tmp_docs.open("w", encoding="utf-8") as fd, tmp_groups.open("w", encoding="utf-8") as fg:
        for d in dataset.docs:
            fd.write(json.dumps({"id": d.id, "text": passage_text(d.title, d.text)}, ensure_ascii=False) + "\n")
        for lang in dataset.langs():
            pool = language_pool(dataset, lang)
            index = open_index(index_for(pool, encoder, cache_dir, progress=progress))
            run = run_inprocess(index, encoder, pool, {}, k=min(depth, len(pool.docs)))
            for q in pool.queries:
                ranked = [doc_id for doc_id, _ in run.hits[q.qid]]
                rel = pool.qrels[q.qid]
                rec = group_record(q.qid, lang, q.split, q.text, ranked, rel,
                                   by_para[paragraph_of(next(iter(rel)))])
                fg.write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[lang] = len(pool.queries)
    tmp_docs.replace(out_dir / "docs.jsonl")
    tmp_groups.replace(out_dir / "groups.jsonl")
    done.write_text(json.dumps({"key": key, "questions": counts, "docs": len(dataset.docs),
                                "notes": dataset.notes}, indent=1))
    return out_dir
