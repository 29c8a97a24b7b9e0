"""BM25 search without numba (the serving image leaves numba and llvmlite out): bm25s's numpy backend gives the same
top-k ids and scores as its numba backend on the same index, whichever backend built it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bm25s
import numpy as np
import pytest

from indexer.bm25 import BM25Builder, BM25Searcher, bm25s_backend

REPO = Path(__file__).resolve().parent.parent
DOCS = [
    ["the", "cat", "sat", "on", "the", "mat"],
    ["the", "dog", "chased", "the", "cat"],
    ["a", "bird", "in", "the", "sky"],
    ["cat", "cat", "cat"],
    ["katze", "hund", "vogel"],
    [],
]
QUERIES = [["cat"], ["the", "cat"], ["dog", "bird"], ["katze"], ["unknown"]]
# numba made unimportable before anything imports it, as in an install without it
NO_NUMBA = "import sys; sys.modules['numba'] = None; sys.modules['llvmlite'] = None\n"
SEARCH = """
import json, sys
from pathlib import Path
import bm25s
from indexer.bm25 import BM25Builder, BM25Searcher
directory = Path(sys.argv[1])
if sys.argv[2] == "build":
    builder = BM25Builder()
    for doc in json.loads(sys.argv[3]):
        builder.add(doc)
    builder.save(directory)
s = BM25Searcher(directory)
out = {"numba_available": bm25s.NUMBA_AVAILABLE, "backend": s._r.backend, "numba_loaded": "numba" in sys.modules
       and sys.modules["numba"] is not None, "hits": []}
for q in json.loads(sys.argv[4]):
    scores, rows = s.search(q, 3)
    out["hits"].append([rows.tolist(), scores.tolist()])
print(json.dumps(out))
"""


def _build(directory: Path) -> None:
    builder = BM25Builder()
    for doc in DOCS:
        builder.add(doc)
    builder.save(directory)


def _search_here(directory: Path) -> list[list[list[float]]]:
    s = BM25Searcher(directory)
    out = []
    for q in QUERIES:
        scores, rows = s.search(q, 3)
        out.append([rows.tolist(), scores.tolist()])
    return out


def _search_without_numba(directory: Path, build: bool) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", NO_NUMBA + SEARCH, str(directory), "build" if build else "load", json.dumps(DOCS),
         json.dumps(QUERIES)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_backend_choice_follows_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bm25s_backend() == "numba"  # a base dependency: installed in the dev environment
    monkeypatch.setattr(bm25s, "NUMBA_AVAILABLE", False)  # as bm25s sets it when its import of numba fails
    assert bm25s_backend() == "numpy"


def test_numba_and_numpy_backends_agree(tmp_path: Path) -> None:
    _build(tmp_path / "numba-built")
    with_numba = _search_here(tmp_path / "numba-built")
    assert BM25Searcher(tmp_path / "numba-built")._r.backend == "numba"
    # exact ranks: three "cat"s in a 3-token document, then the shorter of the two others ("the cat": the two with
    # "the" twice first); no hit for unknown terms
    assert [hits[0] for hits in with_numba] == [[3, 1, 0], [1, 0, 3], [1, 2], [4], []]
    # an index built with numba, searched without it (the serving image), and one built without it
    loaded = _search_without_numba(tmp_path / "numba-built", build=False)
    built = _search_without_numba(tmp_path / "numpy-built", build=True)
    for out in (loaded, built):
        assert out["numba_available"] is False and out["backend"] == "numpy" and out["numba_loaded"] is False
        assert [h[0] for h in out["hits"]] == [h[0] for h in with_numba]
        for (_, got), (_, want) in zip(out["hits"], with_numba, strict=True):
            np.testing.assert_array_equal(np.float32(got), np.float32(want))
