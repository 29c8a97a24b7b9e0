"""The benchmark matrix: file format, check, and expectations that can fail (the check never writes them)."""

import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks import matrix
from benchmarks.matrix import MATRIX, Cell, MatrixError, check, load_matrix, render, render_pivot

RECORDED = "recorded: {commit: abc1234, machine: test box, date: '2026-01-01'}\n"


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(RECORDED + text if text.startswith("\n") else text)
    return p


def test_cells_take_defaults_and_results_compare_within_tolerance(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, """
defaults: {tolerance: 0.02}
cells:
  - {dataset: xquad-r-sentence, condition: dense, lang: zh, metric: map@20, expected: 0.5}
  - {dataset: tatoeba, condition: cosine, split: dev, lang: all, metric: xx->en, expected: 0.9, tolerance: 0.001}
  - {dataset: xquad-r-sentence, condition: bm25, metric: ndcg@10, expected: 0.2}
"""))
    cells = m.cells
    assert m.recorded == {"commit": "abc1234", "machine": "test box", "date": "2026-01-01"} and m.slice == {}
    assert cells[0] == Cell("xquad-r-sentence", "dense", "test", "zh", "map@20", 0.5, 0.02)
    assert cells[1].split == "dev" and cells[1].tolerance == 0.001 and cells[2].lang == "all"
    measured = {cells[0].key: 0.519, cells[1].key: 0.8984}
    results = check(cells, measured)
    assert [r.ok for r in results] == [True, False, False]  # 0.019 <= 0.02; 0.0016 > 0.001; not measured
    table = render(results)
    assert "| xquad-r-sentence | dense | test | zh | map@20 | 0.500 | 0.519 | +0.019 | 0.020 | OK |" in table
    assert "| tatoeba | cosine | dev | all | xx->en | 0.900 | 0.898 | -0.002 | 0.001 | FAIL |" in table
    assert "| n/a |" in table and table.endswith("1/3 cells OK")
    pivot = render_pivot(results)
    assert "**xquad-r-sentence, test, map@20**" in pivot and "| dense | 0.519 |" in pivot
    assert "| cosine | 0.898 ! |" in pivot


@pytest.mark.parametrize("text,message", [
    ("cells: [", "invalid YAML"),
    ("nothing: 1", "expected a mapping with a list under 'cells'"),
    ("cells:\n  - {dataset: x, condition: y, metric: z, expected: 1}", "cell 1: missing ['tolerance']"),
    ("cells:\n  - {dataset: x, condition: y, metric: z, expected: high, tolerance: 1}", "cell 1: expected and"),
    ("cells:\n  - {datset: x}", "cell 1: unknown keys ['datset']"),
    ("cells:\n  - 3", "cell 1: expected a mapping"),
    ("\nslice: {articles: 3}\ncells: []", "'slice' takes only"),
])
def test_bad_matrix_files_name_the_file_and_cell(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text if text.startswith(("cells: [", "nothing", "\n")) else RECORDED + text)
    with pytest.raises(MatrixError, match=re.escape(message)) as err:
        load_matrix(p)
    assert str(p) in err.value.detail
    with pytest.raises(MatrixError, match="cannot read"):
        load_matrix(tmp_path / "missing.yaml")


def test_expected_values_must_name_their_recorded_run(tmp_path: Path) -> None:
    for header in ("", "recorded: {commit: abc1234, machine: box}\n"):
        p = write(tmp_path, header + "cells: []\n")
        with pytest.raises(MatrixError, match="'recorded' must name the run .*commit, machine, date"):
            load_matrix(p)
    shipped = [load_matrix(MATRIX), load_matrix(MATRIX.with_name("matrix_ci.yaml"))]
    assert all(len(m.recorded["commit"]) >= 7 and m.cells for m in shipped)
    assert shipped[1].slice and shipped[1].tolerance


MINI = """
defaults: {tolerance: 0.01}
cells:
  - {dataset: xquad-r-sentence, condition: dense, lang: zh, metric: map@20, expected: 0.5}
  - {dataset: tatoeba, condition: cosine, split: all, lang: deu, metric: xx->en, expected: 0.9, tolerance: 0.002}
"""


def fake_measure(values: dict[str, float]) -> Any:
    def measure(cells: list[Cell], *_args: Any) -> dict[tuple[str, str, str, str, str], float]:
        return {c.key: values[c.dataset] for c in cells}
    return measure


@pytest.mark.parametrize("values,code", [
    ({"xquad-r-sentence": 0.509, "tatoeba": 0.9015}, 0),  # within tolerance
    ({"xquad-r-sentence": 0.489, "tatoeba": 0.9}, 1),  # a regression of 0.011 > 0.01
    ({"xquad-r-sentence": 0.5, "tatoeba": 0.903}, 1),  # beyond the cell's own tolerance
])
def test_check_fails_beyond_tolerance_and_never_writes_the_matrix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, float], code: int) -> None:
    p = write(tmp_path, MINI)
    before = p.read_bytes()
    monkeypatch.setattr(matrix, "measure", fake_measure(values))
    assert matrix.main(["--matrix", str(p), "--data", str(tmp_path)]) == code
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.yaml"]


def test_record_writes_a_new_file_for_review_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, MINI)
    before = p.read_bytes()
    monkeypatch.setattr(matrix, "measure", fake_measure({"xquad-r-sentence": 0.6, "tatoeba": 0.95}))
    for target in (p, tmp_path / "." / "m.yaml"):  # the checked file, however it is spelled, is never written
        with pytest.raises(SystemExit) as err:
            matrix.main(["--matrix", str(p), "--record", str(target)])
        assert err.value.code == 2 and "name a new file" in capsys.readouterr().err
    out = tmp_path / "new.yaml"
    assert matrix.main(["--matrix", str(p), "--record", str(out)]) == 1  # checked against the old expectations
    assert p.read_bytes() == before
    new = load_matrix(out)
    assert [c.expected for c in new.cells] == [0.6, 0.95] and [c.tolerance for c in new.cells] == [0.01, 0.002]
    assert new.recorded["commit"] != "abc1234" and new.recorded["machine"] and new.recorded["date"]
    with pytest.raises(SystemExit):  # an existing file is not overwritten either
        matrix.main(["--matrix", str(p), "--record", str(out)])
    assert matrix.main(["--matrix", str(out)]) == 0
