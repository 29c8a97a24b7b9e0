"""Dense pseudo-relevance feedback and the gates that decide when it is safe: pure numpy, no index, no encoder.

**Rocchio on centred vectors** (:func:`rocchio`): ``q' = normalize(q_c + beta * mean(d_1 .. d_m))`` where ``q_c`` is
the centred query and ``d_i`` the centred (unit) vectors of the documents chosen from the top hits; the second dense
search uses ``q'`` (no second encoding).

**Why a gate** (issue 19): on a multilingual pool where the answer exists in several languages, the top hits are
translations of each other and averaging them cancels the language (a gain); on a pool where each text exists in
one language only, the top hits are *different* texts and averaging them drifts off topic (a loss); on a
single-language pool it costs a little too. Each gate takes the centred unit vectors of the top hits (best first)
and their languages and returns a :class:`Decision`: whether to apply feedback, why, the evidence numbers, and
which of the documents feed the new query.

- ``always`` (``feedback=dense``): every top hit.
- ``coherence`` (the issue's trial gate): the mean pairwise cosine of the top hits is above ``threshold``.
- ``languages``: at least two languages among the top hits, and the mean cosine of the pairs *in different
  languages* is above ``threshold`` (translation evidence).
- ``agree``: the documents that agree with each other (greedy from the top hit: a document joins when its cosine
  with every member is at least ``threshold``); applied when at least two agree, from those only.
- ``translations``: as ``agree``, and a document only joins if its language is not yet in the group, so the
  feedback documents are mutual translations candidates in distinct languages (one per language); applied when at
  least two languages agree. On a single-language pool (or a ``langs`` filter of one language) it never opens.

:func:`merge_rrf` is the alternative to replacing the first list by the second: reciprocal rank fusion of both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

GATES: tuple[str, ...] = ("always", "coherence", "languages", "agree", "translations")
# thresholds: the 0.5 for `coherence`; the others chosen on the XQuAD-R dev splits (benchmarks/feedback.py,
# benchmarks/RESULTS.md section 7.1)
DEFAULT_THRESHOLDS: dict[str, float] = {"always": 0.0, "coherence": 0.5, "languages": 0.5, "agree": 0.7,
                                        "translations": 0.5}


@dataclass(frozen=True)
class Decision:
    apply: bool
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)
    use: tuple[int, ...] = ()  # which documents (indices into the top hits given) feed the new query


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def rocchio(query: np.ndarray, docs: np.ndarray, beta: float) -> np.ndarray:
    """``normalize(query + beta * mean(docs))`` (both already centred); ``docs`` empty: ``query`` normalised."""
    q = np.asarray(query, dtype=np.float32)
    d = np.asarray(docs, dtype=np.float32).reshape(-1, len(q))
    if len(d) == 0:
        return unit_rows(q)
    return unit_rows(q + np.float32(beta) * d.mean(axis=0))


def cosines(docs: np.ndarray) -> np.ndarray:
    """Pairwise cosines of the rows (n x n)."""
    d = unit_rows(np.asarray(docs, dtype=np.float32))
    out: np.ndarray = d @ d.T
    return out


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def mean_pairwise(docs: np.ndarray) -> float:
    """Mean cosine over the pairs of rows (nan with fewer than two rows)."""
    n = len(docs)
    if n < 2:
        return float("nan")
    i, j = _pairs(n)
    return float(cosines(docs)[i, j].mean())


def _few(docs: np.ndarray, langs: Sequence[str], need: int = 2) -> Decision | None:
    if len(docs) != len(langs):
        raise ValueError(f"{len(docs)} document vectors but {len(langs)} languages")
    if len(docs) < need:
        return Decision(False, f"only {len(docs)} hit(s) to take feedback from", {"docs": float(len(docs))})
    return None


def gate_always(docs: np.ndarray, langs: Sequence[str], threshold: float = 0.0) -> Decision:
    """``feedback=dense``: every top hit, no condition."""
    if (few := _few(docs, langs, need=1)) is not None:
        return few
    return Decision(True, f"feedback=dense: from the top {len(docs)} hit(s)",
                    {"docs": float(len(docs)), "languages": float(len(set(langs)))}, tuple(range(len(docs))))


def gate_coherence(docs: np.ndarray, langs: Sequence[str], threshold: float = 0.5) -> Decision:
    """Open when the mean pairwise cosine of the top hits is above ``threshold``."""
    if (few := _few(docs, langs)) is not None:
        return few
    mean = mean_pairwise(docs)
    ev = {"docs": float(len(docs)), "languages": float(len(set(langs))), "mean_cosine": round(mean, 6),
          "threshold": threshold}
    if mean > threshold:
        return Decision(True, f"the top {len(docs)} hits agree (mean cosine {mean:.3f} > {threshold:g})", ev,
                        tuple(range(len(docs))))
    return Decision(False, f"the top {len(docs)} hits disagree (mean cosine {mean:.3f} <= {threshold:g})", ev)


def gate_languages(docs: np.ndarray, langs: Sequence[str], threshold: float = 0.5) -> Decision:
    """Open when the top hits hold at least two languages and the pairs in different languages agree (their mean
    cosine is above ``threshold``)."""
    if (few := _few(docs, langs)) is not None:
        return few
    n_langs = len(set(langs))
    ev = {"docs": float(len(docs)), "languages": float(n_langs), "threshold": threshold}
    if n_langs < 2:
        return Decision(False, f"the top {len(docs)} hits are all in one language ({langs[0]}): no translation "
                        "evidence", ev)
    i, j = _pairs(len(docs))
    codes = np.asarray(langs)
    cross = codes[i] != codes[j]
    mean = float(cosines(docs)[i[cross], j[cross]].mean())
    ev["cross_language_cosine"] = round(mean, 6)
    if mean > threshold:
        return Decision(True, f"{n_langs} languages among the top {len(docs)} hits and they agree (cross-language "
                        f"cosine {mean:.3f} > {threshold:g})", ev, tuple(range(len(docs))))
    return Decision(False, f"{n_langs} languages among the top {len(docs)} hits but they disagree (cross-language "
                    f"cosine {mean:.3f} <= {threshold:g})", ev)


def agreeing(docs: np.ndarray, langs: Sequence[str], threshold: float, distinct_langs: bool) -> list[int]:
    """Greedy from the top hit: a document joins when its cosine with every member is at least ``threshold``
    (and, with ``distinct_langs``, its language is not yet a member's). Returns the members, best first."""
    c = cosines(docs)
    members = [0] if len(docs) else []
    for i in range(1, len(docs)):
        if distinct_langs and langs[i] in {langs[j] for j in members}:
            continue
        if all(c[i, j] >= threshold for j in members):
            members.append(i)
    return members


def _group_gate(docs: np.ndarray, langs: Sequence[str], threshold: float, distinct: bool) -> Decision:
    if (few := _few(docs, langs)) is not None:
        return few
    members = agreeing(docs, langs, threshold, distinct)
    c = cosines(docs)
    others = c[0, 1:]
    ev = {"docs": float(len(docs)), "languages": float(len(set(langs))), "agreeing": float(len(members)),
          "agreeing_languages": float(len({langs[i] for i in members})),
          "max_cosine_to_top": round(float(others.max()), 6), "threshold": threshold}
    what = "documents in distinct languages" if distinct else "documents"
    if len(members) >= 2:
        return Decision(True, f"{len(members)} {what} among the top {len(docs)} agree (cosine >= {threshold:g}): "
                        "feedback from those", ev, tuple(members))
    return Decision(False, f"no two {what} among the top {len(docs)} agree (cosine >= {threshold:g})", ev)


def gate_agree(docs: np.ndarray, langs: Sequence[str], threshold: float = 0.7) -> Decision:
    """Feedback only from the top hits that agree with each other; open when at least two do."""
    return _group_gate(docs, langs, threshold, distinct=False)


def gate_translations(docs: np.ndarray, langs: Sequence[str], threshold: float = 0.7) -> Decision:
    """Feedback only from top hits in distinct languages that agree with each other (translation evidence); open
    when at least two languages do."""
    return _group_gate(docs, langs, threshold, distinct=True)


GATE_FUNCTIONS: dict[str, Callable[[np.ndarray, Sequence[str], float], Decision]] = {
    "always": gate_always, "coherence": gate_coherence, "languages": gate_languages, "agree": gate_agree,
    "translations": gate_translations,
}


def decide(gate: str, docs: np.ndarray, langs: Sequence[str], threshold: float | None = None) -> Decision:
    """The decision of ``gate`` (one of :data:`GATES`) at ``threshold`` (default :data:`DEFAULT_THRESHOLDS`)."""
    if gate not in GATE_FUNCTIONS:
        raise ValueError(f"unknown feedback gate {gate!r}; choose from {', '.join(GATES)}")
    t = DEFAULT_THRESHOLDS[gate] if threshold is None else float(threshold)
    return GATE_FUNCTIONS[gate](np.asarray(docs, dtype=np.float32), list(langs), t)


def feedback_query(query: np.ndarray, docs: np.ndarray, decision: Decision, beta: float) -> np.ndarray | None:
    """The second query of an open ``decision`` (Rocchio over its documents), None when it stays closed."""
    if not decision.apply:
        return None
    return rocchio(query, np.asarray(docs, dtype=np.float32)[list(decision.use)], beta)


def merge_rrf(first_rows: np.ndarray, second_rows: np.ndarray, k: int, rrf_k: float = 60.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of two ranked row lists (the first search and the feedback search): the top ``k``
    rows and their scores ``sum 1/(rrf_k + rank)``, ties by lower row."""
    score: dict[int, float] = {}
    for rows in (first_rows, second_rows):
        for rank, row in enumerate(np.asarray(rows).tolist(), start=1):
            score[int(row)] = score.get(int(row), 0.0) + 1.0 / (rrf_k + rank)
    order = sorted(score, key=lambda r: (-score[r], r))[:k]
    return np.asarray(order, dtype=np.int64), np.asarray([score[r] for r in order], dtype=np.float32)
