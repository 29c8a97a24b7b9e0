"""The ratio margin at its edges: k at or above a side's size, sides of one sentence, neighbourhood means ~0.

With centring, the mean cosine of a sentence to a whole (centred) side is ~0, so ``cos / avg`` exploded or
flipped sign. k is clamped to the side size (and logged) and the denominator floored: scores stay finite and
rank the translations first, through the library, ``mine_rows`` (``xlir mine``) and ``POST /mine``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.mining import MIN_RATIO_DENOMINATOR, MineOptions, apply_margin, margin_scores, mine, mine_neighbours
from indexer.mining_search import ArrayRows, mine_rows
from tests.conftest import FakeEncoder, unit, write_jsonl

pytestmark = pytest.mark.usefixtures("single_faiss_thread")

N, DIM = 12, 16


def two_languages(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two sides of N translations: a meaning per pair, a strong direction per language (as raw sentence
    embeddings have), a little noise; ``y[j]`` translates ``x[perm[j]]``."""
    rng = np.random.default_rng(seed)
    meaning = rng.normal(size=(N, DIM))
    lang_a, lang_b = 3 * rng.normal(size=DIM), 3 * rng.normal(size=DIM)
    x = unit(lang_a + meaning + 0.3 * rng.normal(size=(N, DIM)))
    y = unit(lang_b + meaning + 0.3 * rng.normal(size=(N, DIM)))
    perm = rng.permutation(N)
    return x, y[perm], perm


@pytest.mark.parametrize("k", [N, N + 1, 50])
def test_k_at_or_above_the_side_size_with_centring(k: int, caplog: pytest.LogCaptureFixture) -> None:
    x, y, perm = two_languages()
    with caplog.at_level(logging.WARNING, logger="indexer.mining"):
        mined, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=k, centering="full", margin="ratio",
                                                                     threshold=None))
    pairs = sorted(zip(mined.src.tolist(), mined.tgt.tolist(), strict=True))
    assert np.isfinite(mined.score).all() and (mined.score > 0).all()
    assert pairs == sorted((int(perm[j]), j) for j in range(N))
    assert mined.k_fwd == mined.k_bwd == N  # clamped, and recorded
    assert mined.floored > 0 and "ratio margin:" in caplog.text  # the neighbourhood means were ~0, and it is said
    assert (f"k={k} is more than the {N} rows" in caplog.text) == (k > N)
    # where every neighbourhood is the whole side, the ranking is that of the cosine
    cos = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=k, centering="full", margin="absolute",
                                                                 threshold=None))[0]
    assert pairs == sorted(zip(cos.src.tolist(), cos.tgt.tolist(), strict=True))


def test_a_k_under_the_side_size_is_not_touched(caplog: pytest.LogCaptureFixture) -> None:
    x, y, _ = two_languages(1)
    with caplog.at_level(logging.WARNING, logger="indexer.mining"):
        mined, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=4, centering="off", margin="ratio"))
    assert mined.k_fwd == mined.k_bwd == 4 and mined.floored == 0 and caplog.text == ""
    assert (mined.score < 2).all()  # the usual LASER scale: raw neighbourhood means are high


def test_sides_of_one_sentence() -> None:
    e = np.eye(4, dtype=np.float32)
    for y, want in ((e[:1], 1.0), (e[1:2], 0.0), (-e[:1], -1.0 / MIN_RATIO_DENOMINATOR)):  # same, orthogonal, opposite
        (pair,) = mine(e[:1], y, k=4, margin="ratio")
        assert np.isfinite(pair.score) and pair.score == pytest.approx(want)
    # one source, its translation and its opposite: the opposite used to score exactly as well (-1 / -0.5 == 2)
    y = np.stack([e[0], -e[0], e[1]])
    scores = margin_scores(e[:1], y, [0, 0, 0], [0, 1, 2], k=3, margin="ratio")
    assert np.isfinite(scores).all()
    assert scores[0] > scores[2] > scores[1]
    assert [(p.src, p.tgt) for p in mine(e[:1], y, k=3, margin="ratio", retrieval="fwd")] == [(0, 0)]


def test_apply_margin_near_a_zero_neighbourhood_mean() -> None:
    cos = np.array([0.9, 0.5, 0.1, -0.3])
    for avg in (0.0, 1e-12, -1e-9, -0.2, MIN_RATIO_DENOMINATOR / 2):
        s = apply_margin(cos, np.full(4, avg), np.full(4, avg), "ratio")
        assert np.isfinite(s).all()
        assert (np.diff(s) < 0).all()  # a higher cosine scores higher, whatever the sign of the mean
    crowded = apply_margin(0.5, np.array([0.2, 0.6, 0.9]), np.array([0.2, 0.6, 0.9]), "ratio")
    assert (np.diff(crowded) < 0).all()  # a more crowded neighbourhood scores lower
    np.testing.assert_allclose(apply_margin(0.5, 0.3, 0.5, "ratio"), 0.5 / 0.4)  # above the floor: LASER's


def test_neighbour_lists_with_a_zero_mean_score_finite() -> None:
    sims = np.array([[0.4, -0.4], [0.3, -0.3]], dtype=np.float32)  # each row's neighbourhood mean is 0
    ids = np.array([[0, 1], [1, 0]])
    mined = mine_neighbours(sims, ids, sims, ids, margin="ratio", retrieval="intersect")
    assert np.isfinite(mined.score).all() and (mined.score > 0).all()  # a positive cosine never scores < 0
    assert sorted(zip(mined.src.tolist(), mined.tgt.tolist(), strict=True)) == [(0, 0), (1, 1)]


# --------------------------------------------------------------------------- through POST /mine and xlir mine


def test_post_mine_with_k_above_the_side_size(tmp_path: Path) -> None:
    x, y, perm = two_languages(2)
    table = {f"src {i}": x[i].tolist() for i in range(N)} | {f"tgt {j}": y[j].tolist() for j in range(N)}
    enc = FakeEncoder(dim=DIM, table=table)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "src 0", "lang": "de"}])
    build_index([corpus], tmp_path / "idx", enc, BuildOptions(progress=False))
    with TestClient(create_app(Settings(index=tmp_path / "idx", warmup=False), encoder=enc)) as client:
        r = client.post("/mine", json={"src": [f"src {i}" for i in range(N)], "tgt": [f"tgt {j}" for j in range(N)],
                                       "k": 64, "margin": "ratio", "centering": "full", "texts": False})
    assert r.status_code == 200, r.text
    pairs = r.json()["pairs"]
    assert all(np.isfinite(p["score"]) for p in pairs)
    assert sorted((p["src"], p["tgt"]) for p in pairs) == sorted((int(perm[j]), j) for j in range(N))


def test_xlir_mine_says_k_was_clamped(tmp_path: Path) -> None:
    words = ["river", "bread", "window", "music", "winter", "doctor", "bridge", "forest", "island", "harbor",
             "garden", "coffee"]
    src = [f"The {w} near the old town is quiet in the morning." for w in words]
    tgt = [s.upper() for s in reversed(src)]
    (tmp_path / "a.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(tgt) + "\n")
    out = tmp_path / "pairs.tsv"
    res = subprocess.run([str(Path(sys.executable).with_name("xlir")), "mine", str(tmp_path / "a.txt"),
                          str(tmp_path / "b.txt"), "--out", str(out), "--model", "minilm-en", "--k", "40",
                          "--margin", "ratio", "--centering", "full", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "k=40 is more than the 12 rows of the searched side: the margin uses k=12" in res.stderr
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    scores = [float(r[header.index("score")]) for r in rows]
    assert len(rows) == 12 and all(np.isfinite(scores))
    assert {(r[header.index("src_line")], r[header.index("tgt_line")]) for r in rows} == {
        (str(i + 1), str(12 - i)) for i in range(12)}
