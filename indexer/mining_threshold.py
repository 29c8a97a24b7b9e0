"""Thresholds that a mining run sets from its own scores (issue 19.3), for languages no fixed threshold was tuned on.

A fixed threshold transfers badly: the scores of true pairs and of the best wrong match both move with the
language pair (a lower-resource language has lower cosines everywhere). These rules look at the run itself:

* ``otsu`` (:func:`otsu_threshold`): the retrieved pairs' scores are a mixture of translations (high) and the best
  wrong match of sentences without one (low); the cut is the exact Otsu split of that sample (the split that
  maximises the between-class variance, computed over the sorted scores, no histogram bins).
* ``runner-up`` (:func:`runner_up_threshold`): every sentence's *second* best candidate is almost surely not its
  translation, so the scores of the runner-ups sample how high wrong matches score in this run, whether or not
  the run has many sentences without a translation; the cut is a high quantile of that sample.

All are pure functions of score arrays; :func:`indexer.mining._select` applies them after the k-NN pass (so they
work unchanged in the chunked, resumable job of :mod:`indexer.mining_job`) and records the threshold it used.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_RULES = ("otsu", "runner-up")
RUNNER_UP_QUANTILE = 0.875  # chosen on NTREX by leave-languages-out for the absolute margin (benchmarks/RESULTS.md 7.3)


def otsu_threshold(scores: np.ndarray) -> float | None:
    """The exact Otsu cut of ``scores``: the midpoint between the two neighbouring distinct values that split the
    sample into the two classes with the largest between-class variance ``w_hi * w_lo * (mean_hi - mean_lo)^2``.
    ``None`` when the sample has fewer than two distinct values (nothing to split)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    s = s[np.isfinite(s)]
    if len(s) < 2 or s[0] == s[-1]:
        return None
    n = len(s)
    head = np.cumsum(s)[:-1]  # sum of the top k, k = 1 .. n-1
    k = np.arange(1, n, dtype=np.float64)
    between = k * (n - k) * (head / k - (s.sum() - head) / (n - k)) ** 2
    between[s[1:] == s[:-1]] = -1.0  # equal scores cannot be cut apart
    i = int(np.argmax(between))
    return float((s[i] + s[i + 1]) / 2)


def runner_up_threshold(runner_up: np.ndarray, quantile: float = RUNNER_UP_QUANTILE) -> float | None:
    """The ``quantile`` of the runner-up scores (finite ones); ``None`` when there are none (``k`` = 1)."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    r = np.asarray(runner_up, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    return float(np.quantile(r, quantile)) if len(r) else None


def rule_threshold(rule: str, scores: np.ndarray, runner_up: np.ndarray) -> float | None:
    """The threshold ``rule`` sets from a run's retrieved-pair ``scores`` and ``runner_up`` scores."""
    if rule == "otsu":
        return otsu_threshold(scores)
    if rule == "runner-up":
        return runner_up_threshold(runner_up)
    raise ValueError(f"unknown threshold rule {rule!r}; choose from {', '.join(THRESHOLD_RULES)}")


def runner_ups(scores: np.ndarray) -> np.ndarray:
    """Each row's second-highest score (rows: one sentence's candidates); empty when rows have one column."""
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        return np.empty(0, dtype=np.float64)
    return np.partition(a, a.shape[1] - 2, axis=1)[:, a.shape[1] - 2]


def parse_threshold(text: str) -> float | str | None:
    """A threshold as a user writes it (``xlir mine --threshold``): a number, a rule name, or ``none``."""
    t = text.strip().lower()
    if t == "none":
        return None
    if t in THRESHOLD_RULES:
        return t
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"threshold must be a number, {', '.join(THRESHOLD_RULES)} or none; got {text!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {text!r}")
    return value

