"""Transformer students (models/train_aligned.py) on a tiny BERT built here: the layer choice, the compact weights,
a few training steps, resume, determinism and the folder built from the committed file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import students
from models.distill_data import Pair
from models.students import TrainOptions, load_packed, pack, save_packed, unpack
from models.train_aligned import Data, build_folder, held_out, settings, spread_layers, train
from xlir.errors import ModelInvalid, ModelNotFound


def tiny_data(dim: int = 16) -> Data:
    rng = np.random.default_rng(0)
    texts = ["passage: die katze sitzt", "query: le chat", "passage: the cat sits", "query: the dog runs",
             "passage: haus", "query: le chien", "passage: the house", "query: maison"]
    targets = rng.normal(size=(4, dim)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    return Data(texts=texts, target_of=np.array([0, 0, 0, 1, 2, 1, 2, 3]), targets=targets,
                group=np.array([0, 0, 1, 1, 0, 0, 2, 2]),
                val_pairs=[Pair("deu", 0, "the cat sits", "die katze sitzt"), Pair("fra", 1, "the dog", "le chien")],
                val_targets=targets[:2])


def options(tmp_path: Path, name: str = "run", **kw: object) -> TrainOptions:
    params = {"batch_size": "4", "warmup": "1", "train_layers": "2", "lr": "1e-3"}
    params.update({k: str(v) for k, v in kw.pop("params", {}).items()})  # type: ignore[attr-defined]
    return TrainOptions(kind=str(kw.pop("kind", "aligned")), name=name, max_minutes=5, run_dir=tmp_path / name,
                        out=tmp_path / f"{name}.safetensors", params=params, **kw)  # type: ignore[arg-type]


def test_spread_layers_keeps_first_and_last() -> None:
    assert spread_layers(12, 4) == [0, 4, 7, 11]
    assert spread_layers(12, 3) == [0, 6, 11]
    assert spread_layers(12, 12) == list(range(12))
    with pytest.raises(ModelInvalid):
        spread_layers(12, 13)


def test_settings_defaults_and_unknown_param(tmp_path: Path) -> None:
    s = settings(TrainOptions(kind="aligned", name="x"))
    assert s.layer_map == list(range(12)) and s.trained == [6, 7, 8, 9, 10, 11] and s.teacher == "e5-small"
    small = settings(TrainOptions(kind="small", name="y"))
    assert small.layer_map == [0, 4, 7, 11] and small.trained == [0, 1, 2, 3] and small.teacher == "e5-small-aligned"
    assert (s.questions_per_lang, small.questions_per_lang, s.init) == (0, 500, "teacher")
    with pytest.raises(ModelInvalid, match="unknown --param"):
        settings(TrainOptions(kind="aligned", name="x", params={"lrr": "1"}))
    with pytest.raises(ModelInvalid, match="max-minutes"):
        TrainOptions(kind="aligned", name="x", max_minutes=91)


def test_pack_int8_round_trip_within_a_row_step() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 30)).astype(np.float32)
    b = rng.normal(size=30).astype(np.float32)
    back = unpack(pack({"a": a, "b": b}, "int8"))
    step = np.abs(a).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(back["a"] - a) <= step / 2 + 1e-6)
    assert np.allclose(back["b"], b, atol=1e-2) and back["b"].dtype == np.float32
    assert pack({"a": a}, "int8")["a.int8"].dtype == np.int8


def test_held_out_is_a_stable_share() -> None:
    picked = [held_out(i, 0.1) for i in range(5000)]
    assert 0.08 < np.mean(picked) < 0.12
    assert picked == [held_out(i, 0.1) for i in range(5000)]


def test_train_export_build_round_trip(tmp_path: Path, tiny_bert: Path) -> None:
    from safetensors.numpy import load_file

    summary = train(options(tmp_path, max_steps=3), data=tiny_data(), teacher_dir=tiny_bert)
    assert summary["step"] == 3 and 0 <= summary["val_top1"] <= 1
    delta, meta = load_packed(tmp_path / "run.safetensors")
    assert json.loads(meta["trained"]) == [2, 3] and meta["format"] == "layer-delta"
    assert {k.split(".")[2] for k in delta} == {"2", "3"}  # only the trained layers are committed
    out = tmp_path / "built"
    build_folder(tmp_path / "run.safetensors", tiny_bert, out)
    base, built = load_file(str(tiny_bert / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert np.array_equal(built["encoder.layer.0.output.dense.weight"], base["encoder.layer.0.output.dense.weight"])
    key = "encoder.layer.3.output.dense.weight"
    assert not np.allclose(built[key], base[key])  # trained
    assert np.allclose(built[key], base[key] + delta[key])
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())[
        "num_hidden_layers"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start", "end"]


def test_same_seed_same_weights_and_resume_continues(tmp_path: Path, tiny_bert: Path) -> None:
    train(options(tmp_path, "a", max_steps=4), data=tiny_data(), teacher_dir=tiny_bert)
    train(options(tmp_path, "b", max_steps=4), data=tiny_data(), teacher_dir=tiny_bert)
    da, _ = load_packed(tmp_path / "a.safetensors")
    db, _ = load_packed(tmp_path / "b.safetensors")
    assert da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)
    with pytest.raises(ModelInvalid, match="--resume"):  # a run folder with a checkpoint is not started over
        train(options(tmp_path, "a", max_steps=6), data=tiny_data(), teacher_dir=tiny_bert)
    summary = train(options(tmp_path, "a", max_steps=6, resume=True), data=tiny_data(), teacher_dir=tiny_bert)
    assert summary["step"] == 6
    dc, _ = load_packed(tmp_path / "a.safetensors")
    assert any(not np.array_equal(da[k], dc[k]) for k in da)
    with pytest.raises(ModelNotFound, match="no checkpoint"):
        train(options(tmp_path, "c", max_steps=1, resume=True), data=tiny_data(), teacher_dir=tiny_bert)


def test_new_run_can_start_from_the_committed_student(tmp_path: Path, tiny_bert: Path) -> None:
    """A fresh machine has no checkpoint: ``init`` starts from the built student, and what it exports is still the
    difference to the teacher (with no step, the same weights as the committed file, up to int8 rounding)."""
    train(options(tmp_path, "a", max_steps=4), data=tiny_data(), teacher_dir=tiny_bert)
    build_folder(tmp_path / "a.safetensors", tiny_bert, tmp_path / "built")
    da, _ = load_packed(tmp_path / "a.safetensors")
    train(options(tmp_path, "b", max_steps=0, params={"init": str(tmp_path / "built")}), data=tiny_data(),
          teacher_dir=tiny_bert)
    db, _ = load_packed(tmp_path / "b.safetensors")
    assert da.keys() == db.keys()
    for k in da:
        step = np.abs(da[k]).max(axis=-1, keepdims=True) / 127 if da[k].ndim > 1 else np.abs(da[k]).max() / 127
        assert np.all(np.abs(da[k] - db[k]) <= 1.01 * step + 1e-7), k
    assert any(np.abs(v).max() > 0 for v in db.values())  # not the teacher's layers
    train(options(tmp_path, "c", max_steps=2, params={"init": str(tmp_path / "built")}), data=tiny_data(),
          teacher_dir=tiny_bert)
    dc, _ = load_packed(tmp_path / "c.safetensors")
    assert any(not np.allclose(da[k], dc[k], atol=1e-3) for k in da)  # and it trains on from there


def test_small_student_keeps_spread_layers(tmp_path: Path, tiny_bert: Path) -> None:
    from safetensors.numpy import load_file

    opts = options(tmp_path, "s", kind="small", max_steps=2, params={"layers": 2, "teacher": "e5-small"})
    train(opts, data=tiny_data(), teacher_dir=tiny_bert)
    out = tmp_path / "built-small"
    build_folder(tmp_path / "s.safetensors", tiny_bert, out)
    built, base = load_file(str(out / "model.safetensors")), load_file(str(tiny_bert / "model.safetensors"))
    assert not any(k.startswith("encoder.layer.2.") for k in built)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    delta, _ = load_packed(tmp_path / "s.safetensors")
    key = "attention.self.query.weight"  # student layer 1 started from teacher layer 3
    want = base[f"encoder.layer.3.{key}"] + delta[f"encoder.layer.1.{key}"]
    assert np.allclose(built[f"encoder.layer.1.{key}"], want)


def test_build_refuses_foreign_weights(tmp_path: Path, tiny_bert: Path) -> None:
    path = save_packed(tmp_path / "x.safetensors", {"w": np.ones((2, 2))}, {"format": "static-table"})
    with pytest.raises(ModelInvalid, match="not a transformer student"):
        build_folder(path, tiny_bert, tmp_path / "out")


def test_untrained_student_has_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(students, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(Exception, match="xlir train student --kind aligned"):
        students.build("e5-small-aligned", tmp_path / "out")
