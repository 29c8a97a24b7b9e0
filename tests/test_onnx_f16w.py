"""The ``onnx-f16w`` backend: the fp32 ONNX export with its large weights stored in fp16 behind ``Cast`` nodes
(models/onnx_backend.py: fp16_weights, derive_f16w), computed in fp32 by ONNX Runtime; a derived file (f16w, int8)
used without the fp32 file beside it (the serving image ships the f16w file and the two records only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.encoders as encoders
import models.onnx_backend as ob
from models.encoders import load_encoder
from models.onnx_backend import fp16_weights
from xlir.errors import ModelInvalid

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


def row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


# --------------------------------------------------------------------------------------------------
# The transform on a small graph
# --------------------------------------------------------------------------------------------------


def small_graph(w: np.ndarray, bias: np.ndarray, v: np.ndarray) -> Any:
    """y = x @ W + bias + x @ V, with ``V`` also a graph input (an initializer the caller may override)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "bias"], ["xb"]),
             helper.make_node("MatMul", ["x", "V"], ["xv"]), helper.make_node("Add", ["xb", "xv"], ["y"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]]),
                         helper.make_tensor_value_info("V", TensorProto.FLOAT, list(v.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "bias"),
                     numpy_helper.from_array(v, "V")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_large_weights_are_stored_in_fp16_and_computed_in_fp32() -> None:
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (64, 96)).astype(np.float32)
    w[0, 0] = 1e6  # beyond the fp16 range: clipped, not inf
    bias = rng.normal(0, 0.05, 96).astype(np.float32)  # 96 elements: small, left alone
    v = rng.normal(0, 0.05, (64, 96)).astype(np.float32)  # 6144 elements, but a graph input: left alone
    model = small_graph(w, bias, v)
    x = rng.normal(0, 1, (3, 64)).astype(np.float32)
    x[:, 0] = 0.0  # the clipped weight does not reach the outputs
    before = run(model, x)

    counts = fp16_weights(model, min_elements=4096)
    assert counts == {"fp16_initializers": 1, "fp16_elements": 64 * 96, "min_elements": 4096}
    inits = {i.name: i for i in model.graph.initializer}
    assert set(inits) == {"W_fp16", "bias", "V"}
    assert inits["W_fp16"].data_type == TensorProto.FLOAT16
    assert inits["bias"].data_type == inits["V"].data_type == TensorProto.FLOAT
    half = numpy_helper.to_array(inits["W_fp16"])
    assert half[0, 0] == np.float16(65504) and np.isfinite(half).all()
    first = model.graph.node[0]  # the cast comes first and outputs the former name: the MatMul is unchanged
    assert (first.op_type, list(first.input), list(first.output)) == ("Cast", ["W_fp16"], ["W"])
    assert first.attribute[0].i == TensorProto.FLOAT
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul", "Add", "MatMul", "Add"]
    onnx.checker.check_model(model)

    after = run(model, x)
    # fp32 compute on the rounded weights: what numpy gives with the fp16 weights widened to fp32
    expected = x @ half.astype(np.float32) + bias + x @ v
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    assert 0 < np.abs(after - before).max() < 1e-2  # rounding, not another function


def test_a_name_in_use_is_not_reused() -> None:
    rng = np.random.default_rng(1)
    model = small_graph(rng.normal(0, 1, (64, 64)).astype(np.float32), np.zeros(64, np.float32),
                        np.ones((64, 64), np.float32))
    model.graph.node[1].output[0] = "W_fp16"  # an activation already named like the new initializer
    model.graph.node[3].input[0] = "W_fp16"
    fp16_weights(model, min_elements=4096)
    assert model.graph.node[0].input[0] == "W_fp16_" and "W_fp16_" in {i.name for i in model.graph.initializer}


# --------------------------------------------------------------------------------------------------
# The cache: made from the fp32 export, used without it
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (32 dims; its 30522 x 32 embedding table is the one initializer >= 4096 elements)
    exported to ONNX beside its weights."""
    pytest.importorskip("torch")
    from tests.conftest import tiny_st_folder

    out = tiny_st_folder(tmp_path_factory.mktemp("tiny") / "tiny-st")
    assert ob.export_for_serving(str(out)) == out / "onnx" / ob.FP32_FILE
    return out


def no_torch(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """torch counts as absent: exporting fails the test; derivations are counted."""
    calls = {"derive": 0}

    def derive(src: Path, out: Path) -> dict[str, Any]:
        calls["derive"] += 1
        return real(src, out)

    real = ob.derive_f16w
    for module in (encoders, ob):
        monkeypatch.setattr(module, "torch_available", lambda: False)
    monkeypatch.setattr(ob, "export_fp32", lambda *a, **kw: pytest.fail("a process without torch exported"))
    monkeypatch.setattr(ob, "derive_f16w", derive)
    return calls


def test_f16w_is_made_once_and_served_without_the_fp32_file(tiny_folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder)
    texts = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte.", "猫はマットの上に座っている。", ""]
    fp32 = load_encoder(str(folder), device="cpu", backend="onnx")
    ref = fp32.encode_passages(texts)
    calls = no_torch(monkeypatch)
    f16w = load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    assert (f16w.backend, f16w.model_path, calls["derive"]) == ("onnx-f16w", folder / "onnx" / ob.F16W_FILE, 1)
    assert f16w.checksum == fp32.checksum  # an index built with one is served by the other
    record = ob.read_meta(f16w.model_path)
    assert record is not None and record["key"]["kind"] == "f16w"
    assert record["key"]["from"] == ob.read_meta(fp32.model_path)["id"]  # type: ignore[index]
    assert record["f16w"]["fp16_initializers"] >= 1 and set(record["key"]["versions"]) == {"onnx"}
    assert f16w.model_path.stat().st_size < 0.75 * fp32.model_path.stat().st_size
    vecs = f16w.encode_passages(texts)
    assert row_cos(ref, vecs).min() >= 0.9999 and not np.array_equal(ref, vecs)

    # the serving image: the f16w file with its record and the fp32 record, no fp32 file
    (folder / "onnx" / ob.FP32_FILE).unlink()
    again = load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    assert again.model_path == f16w.model_path and calls["derive"] == 1
    np.testing.assert_array_equal(again.encode_passages(texts), vecs)
    # made by other onnx versions: used all the same, as nothing here can make it again
    meta = ob.read_meta(f16w.model_path)
    assert meta is not None
    meta["key"]["versions"] = {"onnx": "0.0.1"}
    ob.meta_path(f16w.model_path).write_text(json.dumps(meta))
    assert load_encoder(str(folder), device="cpu", backend="onnx-f16w").model_path == f16w.model_path
    # the fp32 backends need their file: a clear error
    with pytest.raises(ModelInvalid, match=r"no ONNX export .*copy the exported model\.onnx and its model\.onnx\.json"):
        load_encoder(str(folder), device="cpu", backend="onnx")


def test_a_derived_file_of_other_weights_or_without_the_fp32_record_is_refused(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder)
    load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    calls = no_torch(monkeypatch)
    onnx_dir = folder / "onnx"
    (onnx_dir / ob.FP32_FILE).unlink()
    fp32_record = ob.meta_path(onnx_dir / ob.FP32_FILE)
    good = fp32_record.read_text()
    # the fp32 record of other weights: the f16w file made from it is not these weights'
    meta = json.loads(good)
    meta["key"]["source_sha256"] = "0" * 64
    fp32_record.write_text(json.dumps(meta))
    with pytest.raises(ModelInvalid, match=r"or model-f16w\.onnx, its model-f16w\.onnx\.json and model\.onnx\.json"):
        load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    # another fp32 export's record (another id): the f16w file was made from an older export
    meta = json.loads(good)
    meta["id"] = "another"
    fp32_record.write_text(json.dumps(meta))
    with pytest.raises(ModelInvalid, match="exporting one needs torch"):
        load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    fp32_record.unlink()  # no record at all
    with pytest.raises(ModelInvalid, match="exporting one needs torch"):
        load_encoder(str(folder), device="cpu", backend="onnx-f16w")
    fp32_record.write_text(good)
    assert load_encoder(str(folder), device="cpu", backend="onnx-f16w").backend == "onnx-f16w"
    assert calls["derive"] == 0


def test_int8_is_served_without_the_fp32_file_too(tiny_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder)
    int8 = load_encoder(str(folder), device="cpu", backend="onnx-int8")
    ref = int8.encode_queries(["a cat"])
    no_torch(monkeypatch)
    monkeypatch.setattr(ob, "quantize_int8", lambda *a, **kw: pytest.fail("quantized again"))
    (folder / "onnx" / ob.FP32_FILE).unlink()
    again = load_encoder(str(folder), device="cpu", backend="onnx-int8")
    assert again.model_path == int8.model_path
    np.testing.assert_array_equal(again.encode_queries(["a cat"]), ref)


def test_backend_names() -> None:
    from app.settings import Settings

    assert "onnx-f16w" in encoders.BACKENDS
    assert encoders.choose_backend("onnx-f16w", "cpu", "passages") == "onnx-f16w"
    assert Settings(backend="onnx-f16w").backend == "onnx-f16w"
    with pytest.raises(ValueError, match="unknown ONNX variant 'f8'"):
        ob.ensure_onnx(None, "", variant="f8")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The real e5-small
# --------------------------------------------------------------------------------------------------


def sample_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.model
@pytest.mark.slow
def test_e5_small_f16w_gives_the_fp32_vectors_and_rankings() -> None:
    fp32 = load_encoder("e5-small", device="cpu", backend="onnx")
    f16w = load_encoder("e5-small", device="cpu", backend="onnx-f16w")
    assert f16w.checksum == fp32.checksum and f16w.model_path.name == ob.F16W_FILE
    assert f16w.model_path.stat().st_size < 0.55 * fp32.model_path.stat().st_size
    rows = sample_rows()
    by_lang: dict[str, list[str]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r["text"])
    sentences = [t for texts in by_lang.values() for t in texts[:5]]  # 50 sentences, 10 languages
    assert len(sentences) == 50 and len(by_lang) == 10
    for fn in ("encode_queries", "encode_passages"):
        cos = row_cos(getattr(fp32, fn)(sentences), getattr(f16w, fn)(sentences))
        print(f"e5-small f16w vs fp32 ({fn}): min cos {cos.min():.6f}, mean {cos.mean():.6f}")
        assert cos.min() >= 0.9999
    # the demo probes: each backend's nearest passage of the sample corpus is the same one
    probes = [json.loads(line) for line in (SAMPLE / "probes.jsonl").read_text(encoding="utf-8").splitlines() if line]
    texts = [r["text"] for r in rows]
    top1 = {}
    for enc in (fp32, f16w):
        scores = enc.encode_queries([p["query"] for p in probes]) @ enc.encode_passages(texts).T
        top1[enc.backend] = [rows[i]["id"] for i in scores.argmax(axis=1)]
    assert top1["onnx-f16w"] == top1["onnx"]  # (raw cosine, no centring: not the server's ranking, 2 of 10 right)
