"""The student infrastructure (models/students.py, the registry's kinds, `xlir train student`, `xlir models list`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import students
from models.registry import MODEL_META, REGISTRY, resolve_model
from models.students import TrainOptions, load_packed, parse_params, save_packed
from tests.test_cli import assert_clean_error, xlir
from xlir.errors import ModelInvalid, ModelNotFound


def test_every_student_names_a_trainable_kind_and_an_existing_base() -> None:
    names = {name for name, _ in students.TRAINERS.values()}  # the students and xlir's reranker
    for spec in students.students():
        assert spec.name in names and spec.base in REGISTRY and spec.kind in students.BUILD_MODULES
    assert {s.name for s in students.students()} == names


def test_parse_params() -> None:
    assert parse_params(["lr=2e-5", " layers = 4 "]) == {"lr": "2e-5", "layers": "4"}
    assert parse_params(None) == {}
    with pytest.raises(ModelInvalid, match="key=value"):
        parse_params(["lr"])


def test_options_cast_and_bounds(tmp_path: Path) -> None:
    opts = TrainOptions(kind="aligned", name="x", params={"lr": "3e-5", "bad": "x"}, home=tmp_path)
    assert opts.param("lr", 1.0, float) == 3e-5 and opts.param("other", 7, int) == 7
    assert opts.folder == tmp_path / "runs" / "x" and opts.weights == students.weights_file("x")
    with pytest.raises(ModelInvalid, match="not a int"):
        TrainOptions(kind="aligned", name="x", params={"n": "1.5"}).param("n", 1, int)
    with pytest.raises(ModelInvalid, match="unknown --param for --kind aligned: bad"):
        opts.check_params({"lr"})
    with pytest.raises(ModelInvalid, match="unknown student kind"):
        TrainOptions(kind="huge", name="x")
    for minutes in (0, 90.5):
        with pytest.raises(ModelInvalid, match="at most|in \\(0"):
            TrainOptions(kind="static", name="x", max_minutes=minutes)


def test_packed_file_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    path = save_packed(tmp_path / "w.safetensors", {"a": a, "b": np.ones(3)}, {"format": "x", "n": "3"}, "fp16")
    back, meta = load_packed(path)
    assert meta == {"format": "x", "n": "3"} and np.allclose(back["a"], a, atol=1e-3)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ModelInvalid, match="cannot read the student weights"):
        load_packed(path)
    with pytest.raises(ModelNotFound):
        load_packed(tmp_path / "absent.safetensors")


def test_local_student_folder_declares_its_kind(tmp_path: Path) -> None:
    (tmp_path / MODEL_META).write_text(json.dumps({"kind": "static", "base": "e5-small", "query_prefix": "q: "}))
    spec = resolve_model(str(tmp_path)).spec
    assert (spec.kind, spec.base, spec.query_prefix) == ("static", "e5-small", "q: ")
    (tmp_path / MODEL_META).write_text(json.dumps({"kind": "quantum"}))
    with pytest.raises(ModelNotFound, match="unknown model kind 'quantum'"):
        resolve_model(str(tmp_path))


def test_cli_train_student_user_errors(tmp_path: Path) -> None:
    assert_clean_error(xlir("train", "student", "--kind", "huge", home=tmp_path), "unknown --kind 'huge'")
    assert_clean_error(xlir("train", "student", "--kind", "aligned", "--max-minutes", "120", home=tmp_path),
                       "--max-minutes must be in (0, 90]")
    assert_clean_error(xlir("train", "student", "--kind", "aligned", "--param", "lr", home=tmp_path),
                       "expected key=value")


def test_cli_models_list_shows_students_and_what_they_need(tmp_path: Path) -> None:
    res = xlir("models", "list", home=tmp_path)
    assert res.returncode == 0, res.stderr
    for spec in students.students():
        role = "built on" if spec.kind == "reranker" else "student of"
        assert f"{spec.name}" in res.stdout and f"[{spec.kind}, {role} {spec.base}]" in res.stdout
    assert "xlir models fetch e5-small-aligned" in res.stdout  # committed, not built in this home


def test_models_list_names_the_training_command_of_a_student_without_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import models_list

    monkeypatch.setattr(students, "WEIGHTS_DIR", tmp_path / "no-weights")  # a checkout before any training run
    models_list(home=tmp_path)
    out = capsys.readouterr().out
    for kind, (name, _) in students.TRAIN_KINDS.items():
        assert f"not trained yet ({name!r} has no trained weights" in out
        assert f"xlir train student --kind {kind}" in out


def test_a_student_built_from_older_weights_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.fetch import stale_student
    from models.registry import file_sha256

    monkeypatch.setattr(students, "WEIGHTS_DIR", tmp_path / "weights")
    weights = save_packed(students.weights_file("e5-small-linear"), {"w": np.ones((2, 2))}, {"format": "x"})
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / MODEL_META).write_text(json.dumps({"source_sha256": file_sha256(weights)}))
    spec = REGISTRY["e5-small-linear"]
    assert not stale_student(spec, folder)
    save_packed(weights, {"w": np.zeros((2, 2))}, {"format": "x"})  # a newer run committed
    assert stale_student(spec, folder)
    assert not stale_student(REGISTRY["e5-small"], folder)  # not a student: never


def test_qa_texts_contexts_then_questions_per_language(tmp_path: Path) -> None:
    import gzip
    import json

    from models.distill_data import CLIP_CHARS, QA_FILES, qa_texts
    from xlir.errors import CorpusError

    long = "word " * 200
    for lang, name in QA_FILES.items():
        paragraphs = [{"context": f"{lang} context {i} {long if i == 0 else ''}",
                       "qas": [{"question": f"{lang} question {i}?"}, {"question": f"{lang}  question {i}?"}]}
                      for i in range(3)]
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as fh:
            json.dump({"data": [{"paragraphs": paragraphs}]}, fh)
    texts = qa_texts(2, folder=tmp_path)
    assert len(texts) == 2 * len(QA_FILES) and all("question" not in t for _, t in texts)
    assert all(len(t) <= CLIP_CHARS for _, t in texts)
    both = qa_texts(2, folder=tmp_path, questions=5)
    questions = [(lang, t) for lang, t in both if "question" in t]
    assert len(questions) == 3 * len(QA_FILES)  # distinct after whitespace folding, at most what exists
    assert all(t.startswith(lang) for lang, t in both)
    assert qa_texts(2, folder=tmp_path, questions=5) == both  # seeded
    (tmp_path / QA_FILES["fr"]).unlink()
    with pytest.raises(CorpusError, match="qa-train"):
        qa_texts(2, folder=tmp_path)
