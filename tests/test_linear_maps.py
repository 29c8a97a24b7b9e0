"""The linear-map student (models/linear_maps.py): closed-form fits, per-language application, the stored folder and
the training path, all with a fake base encoder (no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.distill_data import Pair
from models.linear_maps import (
    WEIGHTS_NAME,
    LinearMapEncoder,
    MapConfig,
    apply_maps,
    build_folder,
    fit_map,
    least_squares,
    load_maps,
    procrustes,
    ridge,
    save_maps,
    shrink,
    spread,
    train,
)
from models.registry import MODEL_META, ModelSpec, ResolvedModel, weights_checksum
from models.students import TrainOptions
from tests.conftest import FakeEncoder
from xlir.errors import ModelInvalid

DIM = 16
GERMAN = "Der Hund läuft jeden Morgen schnell über die Straße und bellt laut die Nachbarn an."
FRENCH = "Le chien traverse la rue tous les matins et aboie très fort contre les voisins."
ENGLISH = "The dog runs across the street every morning and barks loudly at the neighbours."
JAPANESE = "犬は毎朝通りを走って近所の人に大きな声で吠えます。"


def rotation(seed: int, dim: int = DIM) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def permutation(seed: int, dim: int = DIM) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[np.random.default_rng(seed).permutation(dim)]


def test_procrustes_recovers_a_rotation_exactly() -> None:
    q = rotation(1)
    x = unit_rows(200, 2)
    w = procrustes(x, x @ q)
    np.testing.assert_allclose(w, q, atol=1e-10)
    np.testing.assert_allclose(w.T @ w, np.eye(DIM), atol=1e-10)  # orthogonal


def test_least_squares_and_ridge_recover_a_known_map() -> None:
    a = np.random.default_rng(3).standard_normal((DIM, DIM))  # not orthogonal
    x = unit_rows(300, 4)
    np.testing.assert_allclose(least_squares(x, x @ a), a, atol=1e-9)
    np.testing.assert_allclose(ridge(x, x @ a, 0.0), a, atol=1e-9)
    # the ridge pulls toward the identity, not toward zero
    np.testing.assert_allclose(ridge(x, x @ a, 1e9), np.eye(DIM), atol=1e-5)
    # procrustes is the orthogonal map nearest the fit, not the fit itself
    assert np.abs(procrustes(x, x @ a) - a).max() > 0.1


def test_shrinkage_one_is_the_identity_and_zero_the_fit() -> None:
    q = rotation(5)
    assert np.array_equal(shrink(q, 1.0), np.eye(DIM))
    assert np.array_equal(shrink(q, 0.0), q)
    np.testing.assert_allclose(shrink(q, 0.25), 0.75 * q + 0.25 * np.eye(DIM))
    x = unit_rows(50, 6)
    assert np.array_equal(fit_map(x, x @ q, "procrustes", shrinkage=1.0), np.eye(DIM, dtype=np.float32))
    with pytest.raises(ValueError, match="shrinkage"):
        shrink(q, 1.5)
    with pytest.raises(ValueError, match="unknown fitting method"):
        fit_map(x, x @ q, "svd")


def test_apply_maps_by_language_and_renormalises() -> None:
    x = unit_rows(4, 7)
    p = permutation(8)
    got = apply_maps(x * 3.0, ["de", "en", "de", "xx"], {"de": p})
    np.testing.assert_allclose(got[[0, 2]], x[[0, 2]] @ p, atol=1e-6)
    np.testing.assert_allclose(got[[1, 3]], x[[1, 3]], atol=1e-6)  # no map: identity, re-normalised


def test_spread_keeps_order_and_reaches_both_ends() -> None:
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread(list(range(5)), 0) == [0, 1, 2, 3, 4]
    assert spread(list(range(5)), 9) == [0, 1, 2, 3, 4]


def folder(tmp_path: Path, maps: dict[str, np.ndarray], **config: object) -> ResolvedModel:
    """A built linear-maps folder of ``maps`` (what ``xlir models fetch`` writes) and its resolved entry."""
    weights = save_maps(tmp_path / "w.safetensors", maps, MapConfig(base="fake", **config))  # type: ignore[arg-type]
    base_dir = tmp_path / "base"
    base_dir.mkdir(exist_ok=True)
    out = tmp_path / "lin"
    build_folder(weights, base_dir, out)
    (out / MODEL_META).write_text(json.dumps({"name": "lin", "sha256": weights_checksum(out), "kind": "linear",
                                              "base": "fake"}))
    spec = ModelSpec(name="lin", description="", languages="multilingual", kind="linear", base="fake")
    return ResolvedModel("lin", out, spec)


def test_encoder_applies_each_detected_languages_map(tmp_path: Path) -> None:
    p_de, p_fr = permutation(10), permutation(11)
    base = FakeEncoder(dim=DIM)
    enc = LinearMapEncoder(folder(tmp_path, {"de": p_de, "fr": p_fr}, dtype="fp16"), base)
    texts = [GERMAN, FRENCH, ENGLISH, JAPANESE, "12345"]
    raw = base.encode_passages(texts)
    got = enc.encode_passages(texts, batch_size=2)
    assert enc.guesser.detect(texts) == ["de", "fr", "en", "ja", "und"]
    # permutation deltas are exact in fp16: the mapped vectors are exactly the permuted ones
    assert np.array_equal(got[0], raw[0] @ p_de) and np.array_equal(got[1], raw[1] @ p_fr)
    np.testing.assert_allclose(got[2:], raw[2:], atol=1e-7)  # English, a language without a map, no letters
    np.testing.assert_allclose(enc.encode_queries([GERMAN])[0], raw[0] @ p_de, atol=1e-7)
    assert enc.dim == DIM and enc.name == "lin" and enc.backend == "torch"
    assert base.passage_calls[-1] == texts  # the raw texts go to the base, which applies its own prefixes


def test_documents_only_maps_leave_queries_alone(tmp_path: Path) -> None:
    base = FakeEncoder(dim=DIM)
    enc = LinearMapEncoder(folder(tmp_path, {"de": permutation(12)}, apply="passages"), base)
    np.testing.assert_allclose(enc.encode_queries([GERMAN]), base.encode_queries([GERMAN]), atol=1e-7)
    assert not np.allclose(enc.encode_passages([GERMAN]), base.encode_passages([GERMAN]), atol=1e-3)


def test_round_trip_through_the_folder_and_open_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.encoders

    q = rotation(13).astype(np.float32)
    shrunk = shrink(q, 0.5).astype(np.float32)
    resolved = folder(tmp_path, {"de": shrunk})  # int8, the default
    base = FakeEncoder(dim=DIM)
    seen: dict[str, object] = {}

    def fake_load(name: str, **kwargs: object) -> FakeEncoder:
        seen.update(name=name, **kwargs)
        return base

    monkeypatch.setattr(models.encoders, "load_encoder", fake_load)
    enc = models.encoders.open_encoder(resolved, device="cpu", backend="onnx", workload="sentences")
    assert isinstance(enc, LinearMapEncoder)
    assert seen["name"] == "fake" and seen["backend"] == "onnx" and seen["workload"] == "sentences"
    assert enc.checksum == weights_checksum(resolved.path) == json.loads((resolved.path / MODEL_META).read_text())[
        "sha256"]
    maps, config = load_maps(resolved.path / WEIGHTS_NAME)
    assert config.apply == "both" and config.dtype == "int8" and sorted(maps) == ["de"]
    # int8 rows of W - I: at most half a step (the row's largest entry / 127) off, plus the fp16 scale's rounding
    step = np.abs(shrunk - np.eye(DIM)).max(axis=1, keepdims=True) / 127
    assert (np.abs(maps["de"] - shrunk) <= 0.5 * step * 1.01 + 1e-6).all()
    got = enc.encode_passages([GERMAN])[0]
    want = base.encode_passages([GERMAN])[0] @ shrunk
    assert float(got @ (want / np.linalg.norm(want))) > 0.9999
    with pytest.raises(ModelInvalid, match="not a linear-maps file|cannot read"):
        (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
        build_folder(tmp_path / "bad.safetensors", tmp_path / "base", tmp_path / "bad")


def test_training_on_a_fixture_gives_a_loadable_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLIR_HOME", str(tmp_path / "home"))
    rotations = {"deu": rotation(20), "fra": rotation(21)}
    english = [f"english sentence number {i}" for i in range(40)]
    en_vecs = unit_rows(40, 22)
    table: dict[str, np.ndarray] = {t: v for t, v in zip(english, en_vecs, strict=True)}
    pairs: list[Pair] = []
    for code, q in rotations.items():
        for i, en in enumerate(english):
            text = GERMAN if (code, i) == ("deu", 0) else FRENCH if (code, i) == ("fra", 0) else f"{code} line {i}"
            table[text] = en_vecs[i] @ q.T  # so that text @ q == English
            pairs.append(Pair(code, 100 + i, en, text))
    teacher = FakeEncoder(dim=DIM, table={k: v.tolist() for k, v in table.items()})
    out = tmp_path / "w.safetensors"
    opts = TrainOptions(kind="linear", name="e5-small-linear", out=out, run_dir=tmp_path / "run",
                        params={"method": "procrustes", "shrinkage": "0", "min_pairs": "10", "dtype": "fp16",
                                "max_lines": "0"})
    summary = train(opts, teacher=teacher, pairs=pairs)
    assert summary["maps"] == 2 and summary["pairs"] == 80 and out.is_file()
    maps, config = load_maps(out)
    assert config.pairs == {"de": 40, "fr": 40} and config.method == "procrustes"
    for code, label in (("deu", "de"), ("fra", "fr")):
        np.testing.assert_allclose(maps[label], rotations[code], atol=2e-3)  # fp16
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start", "map", "map", "end"]
    assert all(r["cos_after"] > 0.999 for r in log if r["event"] == "map")
    # the run's vectors are in the embedding cache: a second run embeds nothing
    teacher.passage_calls.clear()
    train(opts, teacher=teacher, pairs=pairs)
    assert teacher.passage_calls == []
    # the written weights make a model whose German and French vectors land on their English ones
    enc = LinearMapEncoder(folder_from(out, tmp_path), teacher)
    got = enc.encode_passages([GERMAN, FRENCH])
    assert float(got[0] @ en_vecs[0]) > 0.999 and float(got[1] @ en_vecs[0]) > 0.999
    assert float(teacher.encode_passages([GERMAN])[0] @ en_vecs[0]) < 0.9
    # max_lines: that many pairs per code, spread over its lines (a ridge toward the identity, the default method)
    opts.params.update(max_lines="20", method="ridge", lam="1e-6")
    summary = train(opts, teacher=teacher, pairs=pairs)
    maps, config = load_maps(out)
    assert config.pairs == {"de": 20, "fr": 20} and config.max_lines == 20 and summary["pairs"] == 40
    np.testing.assert_allclose(maps["de"], rotations["deu"], atol=5e-3)  # 20 exact pairs (> 16 dims) pin it down


def folder_from(weights: Path, tmp_path: Path) -> ResolvedModel:
    (tmp_path / "base").mkdir(exist_ok=True)
    build_folder(weights, tmp_path / "base", tmp_path / "trained")
    return ResolvedModel("trained", tmp_path / "trained", ModelSpec(name="trained", description="", languages="",
                                                                   kind="linear", base="fake"))


def test_training_rejects_bad_params(tmp_path: Path) -> None:
    def opts(**params: str) -> TrainOptions:
        return TrainOptions(kind="linear", name="e5-small-linear", out=tmp_path / "w.safetensors",
                            run_dir=tmp_path / "run", params=params)

    with pytest.raises(ModelInvalid, match="unknown --param"):
        train(opts(lr="1"), teacher=FakeEncoder(), pairs=[])
    with pytest.raises(ModelInvalid, match="unknown fitting method"):
        train(opts(method="svd"), teacher=FakeEncoder(), pairs=[])
    with pytest.raises(ModelInvalid, match="no map label"):
        train(opts(langs="deu,xyz"), teacher=FakeEncoder(), pairs=[])
    with pytest.raises(ModelInvalid, match="no NTREX training pairs"):
        train(opts(), teacher=FakeEncoder(), pairs=[])


@pytest.mark.model
def test_the_committed_maps_move_translations_onto_english(tmp_path: Path) -> None:
    """The committed weights built into a folder (as ``xlir models fetch`` does) over the real e5-small: the maps
    raise the cosine of German and Chinese sentences to their English translations."""
    from models.encoders import load_encoder
    from models.students import build, weights_file

    if not weights_file("e5-small-linear").is_file():
        pytest.skip("models/weights/e5-small-linear.safetensors is not trained")
    build("e5-small-linear", tmp_path / "lin")
    e5 = load_encoder("e5-small", device="cpu", backend="torch")
    spec = ModelSpec(name="lin", description="", languages="", kind="linear", base="e5-small")
    lin = LinearMapEncoder(ResolvedModel("lin", tmp_path / "lin", spec), e5)
    assert len(lin.maps) >= 80 and {"de", "zh", "ar", "hi", "ru", "es"} <= set(lin.maps)
    texts = [ENGLISH, GERMAN, "这只狗每天早上跑过街道，对着邻居大声吠叫。"]
    raw, mapped = e5.encode_passages(texts), lin.encode_passages(texts)
    assert np.allclose(mapped[0], raw[0], atol=1e-6)  # English: identity
    for i in (1, 2):
        assert float(mapped[i] @ mapped[0]) > float(raw[i] @ raw[0]) + 0.01
