import re
from pathlib import Path

import pytest

from benchmarks.matrix import Cell, MatrixError, check, load_matrix, render, render_pivot


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_cells_take_defaults_and_results_compare_within_tolerance(tmp_path: Path) -> None:
    cells = load_matrix(write(tmp_path, """
defaults: {tolerance: 0.02}
cells:
  - {dataset: xquad-r-sentence, condition: dense, lang: zh, metric: map@20, expected: 0.5}
  - {dataset: tatoeba, condition: cosine, split: dev, lang: all, metric: xx->en, expected: 0.9, tolerance: 0.001}
  - {dataset: xquad-r-sentence, condition: bm25, metric: ndcg@10, expected: 0.2}
"""))
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
])
def test_bad_matrix_files_name_the_file_and_cell(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(MatrixError, match=re.escape(message)) as err:
        load_matrix(p)
    assert str(p) in err.value.detail
    with pytest.raises(MatrixError, match="cannot read"):
        load_matrix(tmp_path / "missing.yaml")
