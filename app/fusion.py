"""Rank fusion, pure and parameterised.

- ``rrf``: reciprocal rank fusion, score = sum over runs of 1 / (k + rank), rank starting at 1
  (Cormack et al. 2009; k = 60 as in Pyserini).
- ``weighted``: interpolation of min-max normalised scores, ``sum_i w_i * norm_i(score)``; a document
  missing from a run gets that run's minimum score (min-fill), i.e. 0 after normalisation.

Both return fused hits best first, ties broken by lower row, with each run's rank and raw score kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

RRF_K = 60


@dataclass(frozen=True)
class Run:
    """One retriever's ranked list: rows best first, with their scores."""

    rows: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.scores):
            raise ValueError("rows and scores must have the same length")


@dataclass
class FusedHit:
    row: int
    score: float
    ranks: dict[str, int | None] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)


def _provenance(runs: Mapping[str, Run]) -> dict[int, FusedHit]:
    hits: dict[int, FusedHit] = {}
    for name, run in runs.items():
        for rank, (row, score) in enumerate(zip(run.rows.tolist(), run.scores.tolist(), strict=True), start=1):
            hit = hits.get(row)
            if hit is None:
                hit = hits[row] = FusedHit(row=row, score=0.0,
                                           ranks=dict.fromkeys(runs), scores=dict.fromkeys(runs))
            if hit.ranks[name] is None:  # a row listed twice in one run keeps its best rank
                hit.ranks[name] = rank
                hit.scores[name] = float(score)
    return hits


def _sorted(hits: dict[int, FusedHit], k: int | None) -> list[FusedHit]:
    out = sorted(hits.values(), key=lambda h: (-h.score, h.row))
    return out if k is None else out[:k]


def single(name: str, run: Run, k: int | None = None) -> list[FusedHit]:
    """One run as fused hits (no fusion): the score is the run's own score."""
    hits = _provenance({name: run})
    for hit in hits.values():
        hit.score = float(hit.scores[name])  # type: ignore[arg-type]
    return _sorted(hits, k)


def rrf(runs: Mapping[str, Run], k: int | None = None, rrf_k: float = RRF_K) -> list[FusedHit]:
    if rrf_k < 0:
        raise ValueError("rrf_k must be >= 0")
    hits = _provenance(runs)
    for hit in hits.values():
        hit.score = sum(1.0 / (rrf_k + r) for r in hit.ranks.values() if r is not None)
    return _sorted(hits, k)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant list maps to 1 (every member is the best of its list)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    if hi == lo:
        return np.ones_like(scores)
    return (scores - lo) / (hi - lo)


def weighted(runs: Mapping[str, Run], weights: Mapping[str, float], k: int | None = None) -> list[FusedHit]:
    missing = set(runs) - set(weights)
    if missing:
        raise ValueError(f"no weight for run(s) {sorted(missing)}")
    hits = _provenance(runs)
    norm: dict[str, dict[int, float]] = {}
    for name, run in runs.items():
        norm[name] = {}
        for row, s in zip(run.rows.tolist(), minmax(run.scores).tolist(), strict=True):
            norm[name].setdefault(row, s)
    for hit in hits.values():
        # min-fill: a row absent from a run takes that run's minimum, which normalises to 0
        hit.score = sum(weights[name] * norm[name].get(hit.row, 0.0) for name in runs)
    return _sorted(hits, k)
