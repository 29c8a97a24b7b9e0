"""The static student (models/static.py): encoding, the weights file, the folder, a training run on a fixture."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import static
from models.distill_data import Pair
from models.encoders import open_encoder
from models.registry import MODEL_META, resolve_model, weights_checksum
from models.static import StaticEncoder, StaticWeights
from models.students import TrainOptions
from tests.conftest import FakeEncoder
from xlir.errors import ModelInvalid, ModelNotFound

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["cat", "dog", "house", "tree", "red", "blue", "chat", "chien", "maison", "arbre", "rouge", "bleu",
         "katze", "hund", "haus", "baum", "rot", "blau", "big", "small", "rare"]


def write_tokenizer(path: Path) -> Path:
    """A WordLevel tokenizer over WORDS with e5's special tokens (ids 0-3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))
    return path


def weights_fixture(path: Path, dims: int = 4, out: int | None = 6, keep: int = 12) -> StaticWeights:
    rng = np.random.default_rng(0)
    ids = np.arange(len(SPECIALS), len(SPECIALS) + keep)  # the first `keep` words; the rest are not kept
    w = StaticWeights(ids, rng.standard_normal((keep, dims)).astype(np.float32),
                      rng.standard_normal((dims, out)).astype(np.float32) if out else None, {"steps": "0"})
    static.write_weights(path, w, "int8")
    return w


def make_folder(tmp: Path, **kw: Any) -> Path:
    base = tmp / "base"
    base.mkdir(exist_ok=True)
    write_tokenizer(base / "tokenizer.json")
    weights_fixture(tmp / "w.safetensors", **kw)
    out = tmp / "student"
    static.build_folder(tmp / "w.safetensors", base, out)
    (out / MODEL_META).write_text(json.dumps({"kind": "static", "base": "e5-small"}))
    return out


@pytest.fixture
def encoder(tmp_path: Path) -> StaticEncoder:
    enc = open_encoder(resolve_model(str(make_folder(tmp_path))))
    assert isinstance(enc, StaticEncoder)
    return enc


def test_mean_rows_skips_unkept_tokens_and_zero_for_empty() -> None:
    table = np.array([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], dtype=np.float32)
    rows = np.array([0, 1, -1, 2, -1, 2, 0])
    out = static.mean_rows(table, rows, np.array([3, 0, 1, 1, 2]))
    np.testing.assert_allclose(out, np.array([[0.5, 1.0], [0, 0], [4, 4], [0, 0], [2.5, 2.0]]))


def test_encode_shapes_norms_and_mean_of_rows(encoder: StaticEncoder, tmp_path: Path) -> None:
    assert (encoder.backend, encoder.device, encoder.dim, encoder.vocabulary) == ("static", "cpu", 6, 12)
    vecs = encoder.encode_passages(["cat dog", "red house tree", "nothing known here", "dog cat"])
    assert vecs.shape == (4, 6) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), [1, 1, 0, 1], atol=1e-5)  # no kept token: zeros
    np.testing.assert_allclose(vecs[0], vecs[3], atol=1e-6)  # a bag of tokens: order does not matter
    w = static.read_weights(tmp_path / "w.safetensors")  # the int8 table as served
    expected = (w.table[[0, 1]].mean(axis=0)) @ w.proj
    np.testing.assert_allclose(vecs[0], expected / np.linalg.norm(expected), atol=1e-5)
    # a token outside the pruned table ("rare" is word 20, only 12 kept) is skipped
    np.testing.assert_allclose(encoder.encode_queries(["cat rare dog"])[0], vecs[0], atol=1e-6)
    assert encoder.oov_share(["cat rare dog rare"]) == {"pruned": 0.5, "unresolved": 0.5}  # no kept piece in it
    assert encoder.encode_queries([]).shape == (0, 6)


def test_deterministic_and_batch_independent(encoder: StaticEncoder) -> None:
    texts = [" ".join(WORDS[i % 12 : i % 12 + 3]) for i in range(50)]
    a = encoder.encode_passages(texts, batch_size=7)
    b = np.concatenate([encoder.encode_queries([t]) for t in texts])
    np.testing.assert_array_equal(a, encoder.encode_passages(texts))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_no_projection_and_progress(tmp_path: Path) -> None:
    enc = StaticEncoder(resolve_model(str(make_folder(tmp_path, out=None))), chunk=3)
    seen: list[int] = []
    vecs = enc.encode_passages(["cat"] * 7, progress=seen.append)
    assert enc.dim == 4 and vecs.shape == (7, 4) and seen == [3, 3, 1]


def test_round_trip_and_checksum(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    w = static.read_weights(tmp_path / "w.safetensors")
    orig = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    assert np.all(np.abs(w.table - orig) <= np.abs(orig).max(axis=1, keepdims=True) / 254 * 1.01 + 1e-3)  # int8
    np.testing.assert_array_equal(w.token_ids, np.arange(4, 16))
    enc = open_encoder(resolve_model(str(folder)))
    assert enc.checksum == weights_checksum(folder)
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "w.safetensors").read_bytes()


def test_bad_files_are_model_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelInvalid):
        static.read_weights(bad)
    with pytest.raises(ModelNotFound):
        static.read_weights(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros((2, 2), np.float32)}, str(bad))
    with pytest.raises(ModelInvalid, match="not a static student"):
        static.read_weights(bad)
    base = tmp_path / "base"
    base.mkdir()
    weights_fixture(tmp_path / "w.safetensors")
    with pytest.raises(ModelNotFound, match="tokenizer"):
        static.build_folder(tmp_path / "w.safetensors", base, tmp_path / "out")


def test_thread_safe(encoder: StaticEncoder) -> None:
    texts = [" ".join(WORDS[(i * 7) % 12 : (i * 7) % 12 + 4]) for i in range(200)]
    want = encoder.encode_passages(texts)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(20):
                got = encoder.encode_passages(texts[k:] + texts[:k])
                np.testing.assert_array_equal(got, np.roll(want, -k, axis=0))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_loads_without_torch(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    code = ("import sys\nfor m in ('torch', 'transformers', 'sentence_transformers'): sys.modules[m] = None\n"
            "from models.registry import resolve_model\nfrom models.encoders import open_encoder\n"
            f"e = open_encoder(resolve_model({str(folder)!r}))\n"
            "print(e.backend, e.encode_queries(['cat dog']).shape, 'torch' in sys.modules and sys.modules['torch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["static", "(1,", "6)", "None"]


def test_segment_pieces_splits_pruned_tokens_into_kept_ones() -> None:
    pieces = ["<s>", "\u2581the", "\u2581Gerecht", "igkeit", "\u2581Gerechtigkeit", "\u2581", "xyz", "k", "\u2581ok"]
    kept = {"\u2581the": 0, "\u2581Gerecht": 1, "igkeit": 2, "k": 3, "\u2581": 4}
    starts, rows = static.segment_pieces(pieces, kept, skip=frozenset({0}))
    got = [rows[starts[i] : starts[i + 1]].tolist() for i in range(len(pieces))]
    # kept -> own row; "▁Gerechtigkeit" -> "▁Gerecht" + "igkeit"; "xyz" -> nothing; "▁ok" -> "k" (the bare
    # marker is never used, "o" is skipped); the special token stands for nothing
    assert got == [[], [0], [1], [2], [1, 2], [4], [], [3], [3]]
    flat, lengths = np.array([4, 1, 6, 8]), np.array([2, 0, 2])
    new_rows, new_lengths = static.expand(flat, lengths, starts, rows)
    assert new_rows.tolist() == [1, 2, 0, 3] and new_lengths.tolist() == [3, 0, 1]


def test_fallback_in_the_folder_counts_pruned_words_by_their_pieces(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = tmp_path / "base"
    base.mkdir()
    vocab = {t: i for i, t in enumerate([*SPECIALS, "cat", "dog", "catdog"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(base / "tokenizer.json"))
    rng = np.random.default_rng(1)
    w = StaticWeights(np.array([4, 5]), rng.standard_normal((2, 3)).astype(np.float32), None, {})
    static.write_weights(tmp_path / "w.safetensors", w, "fp16")
    static.build_folder(tmp_path / "w.safetensors", base, tmp_path / "with")
    static.build_folder(tmp_path / "w.safetensors", base, tmp_path / "without", fallback=False)
    for name in ("with", "without"):
        (tmp_path / name / MODEL_META).write_text(json.dumps({"kind": "static"}))
    with_fb = StaticEncoder(resolve_model(str(tmp_path / "with")))
    without = StaticEncoder(resolve_model(str(tmp_path / "without")))
    np.testing.assert_allclose(with_fb.encode_queries(["catdog"]), with_fb.encode_queries(["cat dog"]), atol=1e-6)
    assert not without.encode_queries(["catdog"]).any()  # pruned and skipped
    assert with_fb.oov_share(["catdog cat"]) == {"pruned": 0.5, "unresolved": 0.0}
    assert with_fb.checksum == weights_checksum(tmp_path / "with") != without.checksum  # the fallback is weights


def test_choose_vocabulary_by_count_then_lowest_ids() -> None:
    flat = np.array([9, 9, 9, 5, 5, 7, 0, 0, 0, 0])
    assert static.choose_vocabulary(flat, 12, 2, exclude={0}).tolist() == [5, 9]
    assert static.choose_vocabulary(flat, 12, 5, exclude={0}).tolist() == [1, 2, 5, 7, 9]


# ---- a training run on a fixture (fake teacher, fake distillation) ----

EN = ["cat dog", "red house", "blue tree", "big cat", "small dog", "red tree", "blue house", "big tree"]
FR = {"cat": "chat", "dog": "chien", "house": "maison", "tree": "arbre", "red": "rouge", "blue": "bleu",
      "big": "big", "small": "small"}
DE = {"cat": "katze", "dog": "hund", "house": "haus", "tree": "baum", "red": "rot", "blue": "blau",
      "big": "big", "small": "small"}


def fake_pairs(langs: Any = None) -> list[Pair]:
    out = []
    for code, table in (("fra", FR), ("deu", DE)):
        out += [Pair(code, i, en, " ".join(table[w] for w in en.split())) for i, en in enumerate(EN)]
    return out


@pytest.fixture
def train_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    base = home / "models" / "e5-small"
    base.mkdir(parents=True)
    write_tokenizer(base / "tokenizer.json")
    (base / MODEL_META).write_text(json.dumps({"name": "e5-small", "sha256": "x"}))
    teacher = FakeEncoder(dim=8)
    monkeypatch.setattr(static, "ntrex_pairs", fake_pairs)
    monkeypatch.setattr(static, "qa_texts", lambda n, seed=0: [("en", "cat house"), ("fr", "chien rouge")])
    monkeypatch.setattr(static, "load_teacher", lambda name, home: teacher)
    monkeypatch.setattr(static, "teacher_vectors", lambda enc, texts, kind: enc.encode_passages(list(texts)))

    def fake_distill(base_dir: Path, ids: np.ndarray, dims: int, sif: float, bos: int, eos: int,
                     pad: int) -> np.ndarray:
        return np.random.default_rng(int(ids.sum())).standard_normal((len(ids), dims)).astype(np.float32) * 0.1

    monkeypatch.setattr(static, "distill_rows", fake_distill)
    return home


def run(home: Path, tmp: Path, out: str, max_steps: int, resume: bool = False, run_dir: str = "run") -> dict:
    opts = TrainOptions(kind="static", name="e5-small-static", max_minutes=2, resume=resume, seed=3,
                        run_dir=tmp / run_dir, out=tmp / out, home=home, max_steps=max_steps,
                        params={"dims": "6", "vocab": "18", "batch_size": "16", "steps": "60", "warmup": "5",
                                "eval_every": "20", "lr": "0.05", "val_share": "0.4"})
    return static.train(opts)


def test_training_run_gives_a_loadable_student_that_learned(train_env: Path, tmp_path: Path) -> None:
    summary = run(train_env, tmp_path, "a.safetensors", 60)
    assert summary["step"] == 60 and summary["vocabulary"] == 18 and summary["stopped"] == "steps"
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in log if "loss" in r]
    assert len(curve) == 3 and curve[-1] < curve[0]
    first_val = next(r for r in log if r.get("step") == 0)
    assert summary["val_cos"] > first_val["val_cos"]
    folder = tmp_path / "student"
    static.build_folder(tmp_path / "a.safetensors", train_env / "models" / "e5-small", folder)
    (folder / MODEL_META).write_text(json.dumps({"kind": "static"}))
    enc = open_encoder(resolve_model(str(folder)))
    assert enc.dim == 8  # the teacher's space
    v = enc.encode_passages(["rouge maison", "rot haus", "bleu arbre"])  # training lines (0, 3, 7 are held out)
    t = FakeEncoder(dim=8).encode_passages(["red house", "blue tree"])
    assert v[0] @ t[0] > v[0] @ t[1] and v[1] @ t[0] > v[1] @ t[1] and v[2] @ t[1] > v[2] @ t[0]
    # same seed -> the same file; a run stopped at 30 steps and resumed gives the same weights as 60 at once
    run(train_env, tmp_path, "b.safetensors", 60, run_dir="run_b")
    wa, wb = static.read_weights(tmp_path / "a.safetensors"), static.read_weights(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(wa.table, wb.table)
    np.testing.assert_array_equal(wa.proj, wb.proj)
    run(train_env, tmp_path, "c.safetensors", 30, run_dir="run_c")
    run(train_env, tmp_path, "c.safetensors", 60, resume=True, run_dir="run_c")
    wc = static.read_weights(tmp_path / "c.safetensors")
    np.testing.assert_allclose(wa.table, wc.table, atol=1e-6)
    assert (tmp_path / "run_c" / "distilled.npz").is_file()


def test_contrastive_term_trains_too(train_env: Path, tmp_path: Path) -> None:
    opts = TrainOptions(kind="static", name="e5-small-static", run_dir=tmp_path / "r", out=tmp_path / "c.safetensors",
                        home=train_env, params={"dims": "6", "vocab": "18", "batch_size": "16", "steps": "40",
                                                "eval_every": "20", "lr": "0.05", "val_share": "0.4",
                                                "loss": "contrastive", "tau": "0.1"})
    summary = static.train(opts)
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in log if "loss" in r]
    assert summary["step"] == 40 and curve[-1] < curve[0]
    with pytest.raises(ModelInvalid, match="loss"):
        static.train(TrainOptions(kind="static", name="x", run_dir=tmp_path / "r2", home=train_env,
                                  params={"loss": "hinge"}))


def test_resume_without_checkpoint_and_unknown_param(train_env: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no checkpoint"):
        run(train_env, tmp_path, "x.safetensors", 5, resume=True)
    opts = TrainOptions(kind="static", name="e5-small-static", run_dir=tmp_path / "r", home=train_env,
                        params={"depth": "3"})
    with pytest.raises(ModelInvalid, match="unknown --param"):
        static.train(opts)


# ---- the committed student (models/weights/e5-small-static.safetensors) on the real e5-small tokenizer ----

@pytest.mark.model
@pytest.mark.slow  # the build splits the pruned pieces (~15-30 s on 2 cores)
def test_committed_static_student_builds_and_is_cross_lingual(tmp_path: Path) -> None:
    from models.fetch import cross_lingual_sanity, fetch
    from models.registry import model_dir
    from models.students import weights_file

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "e5-small").symlink_to(model_dir("e5-small"))  # the real base, built by `make models`
    assert weights_file("e5-small-static").stat().st_size < 19_000_000
    res = fetch("e5-small-static", home)
    enc = open_encoder(resolve_model("e5-small-static", home))
    assert isinstance(enc, StaticEncoder) and enc.dim == 384 and enc.checksum == res.sha256
    report = cross_lingual_sanity(enc)
    assert report.ok and min(report.translation_sims) > report.unrelated_sim + 0.03  # measured: .82 / .85 vs .77
    # sentences and their translations, not in NTREX: on average nearer their translation than the others (a weak
    # student: it finds 2 of the 4, RESULTS 8.4)
    en = ["The weather is very cold today.", "My brother plays football every weekend.",
          "The train to Berlin leaves at eight.", "She bought fresh bread at the bakery."]
    de = ["Das Wetter ist heute sehr kalt.", "Mein Bruder spielt jedes Wochenende Fußball.",
          "Der Zug nach Berlin fährt um acht.", "Sie kaufte frisches Brot in der Bäckerei."]
    sims = enc.encode_passages(de) @ enc.encode_passages(en).T
    off = ~np.eye(4, dtype=bool)
    assert np.diag(sims).mean() > sims[off].mean() and (np.argmax(sims, axis=1) == np.arange(4)).sum() >= 2
