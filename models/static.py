"""The static student (``e5-small-static``): a token-embedding table of e5-small, no transformer, served with numpy.

A text's vector is the mean of the table rows of its tokens (e5-small's own tokenizer, without special tokens;
tokens outside the pruned vocabulary are skipped), projected by a small matrix into e5-small's 384-dim space and
L2-normalised. Encoding is a tokenizer call (``tokenizers``, Rust) plus a gather and a sum: no torch, no
transformers (``StaticEncoder`` loads in a process where torch is unimportable).

Training (``xlir train student --kind static``, :func:`train`), in one bounded, resumable run:

1. **Vocabulary**: the ``vocab`` tokens seen most often in the training text (NTREX training part in every
   language + qa-train contexts), topped up with e5's most frequent pieces (lowest ids) when fewer were seen.
2. **model2vec distillation** of e5-small for those tokens (``model2vec.distill.inference``: each token through
   the transformer alone between ``<s>``/``</s>``, mean-pooled, PCA to ``dims`` dimensions, Zipf/SIF weights),
   cached in the run folder (``distilled.npz``) so that a rerun or ``--resume`` does not redo it.
3. **Training** (a small torch loop: ``EmbeddingBag`` mean + projection, MSE on normalised vectors =
   ``2 - 2 cos``): static(translation) -> teacher(English) on NTREX training pairs of every language,
   static(English) -> teacher(English), static(x) -> teacher(x) on qa-train contexts; teacher vectors from the one
   embedding cache (``distill_data.teacher_vectors``), cosine learning-rate schedule over ``steps``, checkpoint
   every few minutes and at the end (``checkpoint.pt``), loss curve and validation (held-back NTREX lines) in
   ``log.jsonl``.
4. **Export**: table in int8 with a scale per row, projection in fp16, the kept token ids in int32, one
   safetensors file (``models/weights/e5-small-static.safetensors``).

``tokenlearn`` was not used for step 3: it fits (texts, target vectors), but it trains through its own ``fit``
(early stopping on a random validation split, no time bound, no checkpoint to resume, targets PCA-reduced), needs
``datasets`` and a featurisation pass of its own, whereas the run here must stop at ``--max-minutes``, resume
and reuse the cached teacher vectors; the loop below is 60 lines.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import LocalEncoder, ProgressFn
from models.distill_data import Pair, load_teacher, ntrex_pairs, qa_texts, teacher_vectors
from models.registry import ResolvedModel, file_sha256, resolve_model, weights_checksum
from models.students import TrainOptions, append_log, pack, unpack
from models.train_aligned import held_out  # the aligned student's validation lines, held back here too
from xlir.errors import ModelInvalid, ModelNotFound

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
FALLBACK_NAME = "fallback.safetensors"  # derived at build time from the table's ids and the tokenizer
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "xlir-static-1"
ENCODE_CHUNK = 1024  # texts per tokenizer call (the tokenizer parallelises within a call)
BETAS = (0.9, 0.999)
PARAMS = {"loss", "tau", "threads", "dims", "vocab", "lr", "batch_size", "steps", "mono_share", "english_share",
          "mono_per_lang", "checkpoint_minutes", "val_share", "langs", "warmup", "sif", "teacher", "eval_every"}


# ---- pure numpy: the encoder's compute ----

def lookup_table(vocab_size: int, token_ids: np.ndarray) -> np.ndarray:
    """Tokenizer id -> row of the table (-1: not kept)."""
    lut = np.full(vocab_size, -1, dtype=np.int64)
    if len(token_ids) and (token_ids.min() < 0 or token_ids.max() >= vocab_size):
        raise ModelInvalid(f"the static table names token ids outside the tokenizer's {vocab_size} ids")
    lut[token_ids] = np.arange(len(token_ids))
    return lut


def flatten(id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (flat ids, length of each list)."""
    lengths = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=len(id_lists))
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def mean_rows(table: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of ``table[rows]`` per segment (segment i = the next ``lengths[i]`` entries of ``rows``; a row -1 is
    skipped); a segment with no kept row gets zeros."""
    n = len(lengths)
    seg = np.repeat(np.arange(n), lengths)
    keep = rows >= 0
    rows, seg = rows[keep], seg[keep]
    counts = np.bincount(seg, minlength=n)
    out = np.zeros((n, table.shape[1]), dtype=np.float32)
    if len(rows):
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        sums = np.add.reduceat(table[rows], np.minimum(starts, len(rows) - 1), axis=0)
        filled = counts > 0
        out[filled] = sums[filled] / counts[filled, None]
    return out


def segment_pieces(pieces: Sequence[str], kept: dict[str, int], marker: str = "\u2581",
                   skip: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Rows standing for each piece of the tokenizer's vocabulary: its own row when kept, else the greedy
    longest-first split of its string into kept pieces (a word-initial piece may start with the word marker ``▁``,
    the others are continuation pieces; a character no kept piece covers is skipped; the bare marker is never
    used; ids in ``skip`` stand for nothing). CSR form: ``rows[starts[i]:starts[i + 1]]`` for piece i."""
    starts = np.zeros(len(pieces) + 1, dtype=np.int64)
    out: list[int] = []
    longest = max((len(p) for p in kept), default=0)
    for i, piece in enumerate(pieces):
        row = kept.get(piece)
        if i in skip:
            pass
        elif row is not None:
            out.append(row)
        else:
            pos = 0
            while pos < len(piece):
                for end in range(min(len(piece), pos + longest), pos, -1):
                    sub = piece[pos:end]
                    got = kept.get(sub) if sub != marker else None
                    if got is not None:
                        out.append(got)
                        pos = end
                        break
                else:
                    pos += 1
        starts[i + 1] = len(out)
    return starts, np.asarray(out, dtype=np.int64)


def expand(flat: np.ndarray, lengths: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Token ids (segments of ``lengths``) -> the table rows standing for them (:func:`segment_pieces`'s CSR),
    with the new segment lengths."""
    counts = starts[flat + 1] - starts[flat]
    total = int(counts.sum())
    first = np.repeat(starts[flat], counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    new_lengths = np.bincount(seg, weights=counts, minlength=len(lengths)).astype(np.int64)
    return rows[first + within], new_lengths


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def embed_ids(id_lists: Sequence[Sequence[int]], lut: np.ndarray, table: np.ndarray,
              proj: np.ndarray | None, fallback: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Token id lists -> L2-normalised vectors: mean of the kept rows, times ``proj`` when there is one; with
    ``fallback`` (:func:`segment_pieces`), a token outside the table counts as the kept pieces it splits into."""
    flat, lengths = flatten(id_lists)
    if fallback is not None:
        rows, lengths = expand(flat, lengths, *fallback)
    else:
        rows = lut[flat] if len(flat) else flat
    pooled = mean_rows(table, rows, lengths)
    return l2_normalise(pooled @ proj if proj is not None else pooled)


# ---- the weights file ----

@dataclass
class StaticWeights:
    token_ids: np.ndarray  # tokenizer ids of the table's rows (int64, ascending)
    table: np.ndarray  # rows x dims, float32
    proj: np.ndarray | None  # dims x out, float32 (None: the table's space is the output)
    meta: dict[str, str]

    @property
    def dim(self) -> int:
        return int(self.proj.shape[1] if self.proj is not None else self.table.shape[1])


def write_weights(path: Path, w: StaticWeights, dtype: str = "int8") -> Path:
    """The committed file: ``table`` packed (int8 rows + fp16 scales, or fp16), ``proj`` fp16, ``token_ids``
    int32, metadata strings; written atomically."""
    from safetensors.numpy import save_file

    floats = {"table": w.table} | ({"proj": w.proj} if w.proj is not None else {})
    tensors = pack(floats, dtype)
    if "proj.int8" in tensors:  # the projection is small: keep it in fp16
        del tensors["proj.int8"], tensors["proj.scale"]
        tensors["proj"] = np.asarray(w.proj, dtype=np.float16)
    tensors["token_ids"] = np.asarray(w.token_ids, dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, **{k: str(v) for k, v in w.meta.items()}})
    tmp.replace(path)
    return path


def read_weights(path: Path) -> StaticWeights:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ModelNotFound(f"no static table at {path}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
        raw = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file must read as a model problem
        raise ModelInvalid(f"cannot read the static table {path}: {exc}") from exc
    if meta.get("format") != FORMAT or "token_ids" not in raw:
        raise ModelInvalid(f"{path} is not a static student table (format {meta.get('format')!r}, "
                           f"expected {FORMAT!r})")
    ids = raw.pop("token_ids").astype(np.int64)
    floats = unpack(raw)
    table = floats["table"]
    proj = floats.get("proj")
    if table.shape[0] != len(ids) or (proj is not None and proj.shape[0] != table.shape[1]):
        raise ModelInvalid(f"{path}: inconsistent shapes (ids {len(ids)}, table {table.shape}, "
                           f"proj {None if proj is None else proj.shape})")
    return StaticWeights(ids, np.ascontiguousarray(table), proj, meta)


def build_folder(weights: Path, base_dir: Path, out_dir: Path, fallback: bool = True) -> None:
    """The model folder: the committed table as ``model.safetensors``, e5-small's ``tokenizer.json`` from
    ``base_dir`` and (``fallback``) ``fallback.safetensors``: for each token the pruned table does not have, the
    kept pieces it splits into (:func:`segment_pieces`), so that a rare word still counts."""
    w = read_weights(weights)
    tok = base_dir / TOKENIZER_NAME
    if not tok.is_file():
        raise ModelNotFound(f"{base_dir} has no {TOKENIZER_NAME} (the static student uses its base's tokenizer)")
    expected = w.meta.get("tokenizer_sha256")
    if expected and expected != file_sha256(tok):
        raise ModelInvalid(f"the tokenizer in {base_dir} is not the one the static table was trained with "
                           f"(sha256 {expected[:12]}...): rebuild the base model (`xlir models fetch e5-small`)")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out_dir / WEIGHTS_NAME)
    shutil.copyfile(tok, out_dir / TOKENIZER_NAME)
    if fallback:
        write_fallback(out_dir / FALLBACK_NAME, load_tokenizer(tok), w.token_ids)


def write_fallback(path: Path, tokenizer: Any, token_ids: np.ndarray) -> Path:
    """The rows standing for every token id (:func:`segment_pieces`): part of the folder's weights (a
    ``*.safetensors`` file, so the folder's checksum covers it), derived from the table's ids and the tokenizer."""
    from safetensors.numpy import save_file

    size = tokenizer.get_vocab_size(with_added_tokens=True)
    pieces = [tokenizer.id_to_token(i) or "" for i in range(size)]
    kept = {pieces[int(t)]: row for row, t in enumerate(token_ids)}
    starts, rows = segment_pieces(pieces, kept, skip=frozenset(special_ids(tokenizer)))
    save_file({"starts": starts, "rows": rows}, str(path), metadata={"format": FORMAT + "-fallback"})
    return path


def read_fallback(path: Path, vocab_size: int, n_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The folder's fallback (:func:`write_fallback`), checked against the tokenizer and the table; None if absent."""
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
        starts, rows = raw["starts"].astype(np.int64), raw["rows"].astype(np.int64)
    except Exception as exc:
        raise ModelInvalid(f"cannot read {path}: {exc}") from exc
    if len(starts) != vocab_size + 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n_rows)):
        raise ModelInvalid(f"{path} does not fit the tokenizer and the table: rebuild the folder "
                           "(`xlir models fetch e5-small-static --force`)")
    return starts, rows


def load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ModelNotFound(f"no tokenizer at {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelInvalid(f"cannot read the tokenizer {path}: {exc}") from exc
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


# ---- the encoder ----

class StaticEncoder(LocalEncoder):
    """A static student folder (``model.safetensors`` + ``tokenizer.json``): numpy and ``tokenizers`` only.

    Thread-safe: the tokenizer is configured once (no truncation, no padding) and only read afterwards (the
    failures of ``models/encoders.py`` came from calls that switch its padding), the arrays are read-only.
    """

    backend = "static"
    device = "cpu"

    def __init__(self, resolved: ResolvedModel, *, chunk: int = ENCODE_CHUNK) -> None:
        self._resolved = resolved
        self._spec = resolved.spec
        folder = resolved.path
        w = read_weights(folder / WEIGHTS_NAME)
        self._tokenizer = load_tokenizer(folder / TOKENIZER_NAME)
        self._lut = lookup_table(self._tokenizer.get_vocab_size(with_added_tokens=True), w.token_ids)
        self._fallback = read_fallback(folder / FALLBACK_NAME, len(self._lut), len(w.token_ids))
        self._table = w.table
        self._proj = w.proj
        for arr in (self._lut, self._table, self._proj, *(self._fallback or ())):
            if arr is not None:
                arr.setflags(write=False)
        self._dim = w.dim
        self.meta = w.meta
        self.token_budget = 1 << 30  # no padding: the budget does not apply
        self._chunk = chunk
        self._checksum: str | None = None

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = weights_checksum(self._resolved.path)
        return self._checksum

    @property
    def vocabulary(self) -> int:
        return int(len(self._table))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize(self._tokenizer, texts)

    def oov_share(self, texts: Sequence[str]) -> dict[str, float]:
        """Shares of the tokens of ``texts``: ``pruned`` (no row of their own in the table) and ``unresolved``
        (no row at all: pruned and, with the fallback, not split into kept pieces either; they are skipped)."""
        flat, _ = flatten(self.token_ids(texts))
        if not len(flat):
            return {"pruned": 0.0, "unresolved": 0.0}
        pruned = self._lut[flat] < 0
        if self._fallback is None:
            return {"pruned": float(pruned.mean()), "unresolved": float(pruned.mean())}
        starts = self._fallback[0]
        return {"pruned": float(pruned.mean()), "unresolved": float((starts[flat + 1] == starts[flat]).mean())}

    def _encode_batched(self, texts: Sequence[str], max_rows: int, progress: ProgressFn | None) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), self._chunk):
            part = texts[start : start + self._chunk]
            out[start : start + len(part)] = embed_ids(self.token_ids(part), self._lut, self._table, self._proj,
                                                       self._fallback)
            if progress is not None:
                progress(len(part))
        return out


# ---- training ----

@dataclass(frozen=True)
class Settings:
    dims: int
    vocab: int
    lr: float
    batch_size: int
    steps: int
    warmup: int
    mono_share: float
    english_share: float
    mono_per_lang: int
    checkpoint_minutes: float
    val_share: float
    langs: list[str] | None
    sif: float
    teacher: str
    eval_every: int
    threads: int
    loss: str
    tau: float


def settings(options: TrainOptions) -> Settings:
    options.check_params(PARAMS)
    if options.params.get("loss", "mse") not in ("mse", "contrastive"):
        raise ModelInvalid(f"--param loss={options.params['loss']!r}: choose mse or contrastive")
    langs = options.param("langs", "", str)
    return Settings(
        dims=options.param("dims", 256, int),
        vocab=options.param("vocab", 64000, int),
        lr=options.param("lr", 3e-3, float),
        batch_size=options.param("batch_size", 256, int),
        steps=options.param("steps", 8000, int),
        warmup=options.param("warmup", 100, int),
        mono_share=options.param("mono_share", 0.3, float),
        english_share=options.param("english_share", 0.1, float),
        mono_per_lang=options.param("mono_per_lang", 1000, int),
        checkpoint_minutes=options.param("checkpoint_minutes", 5.0, float),
        val_share=options.param("val_share", 0.04, float),
        langs=[x for x in langs.split(",") if x] or None,
        sif=options.param("sif", 1e-4, float),
        teacher=options.param("teacher", "e5-small", str),
        eval_every=options.param("eval_every", 250, int),
        threads=options.param("threads", 1, int),
        loss=options.param("loss", "mse", str),
        tau=options.param("tau", 0.05, float),
    )


@dataclass
class Items:
    """Training items: token ids (flat + lengths) -> ``targets[target_of[i]]``, with their group (0 translation,
    1 English, 2 monolingual)."""

    flat: np.ndarray
    lengths: np.ndarray
    target_of: np.ndarray
    group: np.ndarray
    targets: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths)[:-1]))


@dataclass
class Data:
    items: Items
    val: Items  # held-back translations -> teacher(English); target_of indexes val English lines
    val_lang: np.ndarray
    info: dict[str, int]


def _items(tokenizer: Any, texts: list[str], target_of: list[int], group: list[int], targets: np.ndarray) -> Items:
    flat, lengths = flatten(tokenize(tokenizer, texts))
    return Items(flat, lengths, np.asarray(target_of, dtype=np.int64), np.asarray(group, dtype=np.int64), targets)


def prepare(s: Settings, options: TrainOptions, tokenizer: Any) -> Data:
    """Every training item tokenised, with the teacher's passage vectors as targets (from the embedding cache)."""
    pairs: list[Pair] = list(ntrex_pairs(s.langs))
    mono = list(qa_texts(s.mono_per_lang, seed=options.seed)) if s.mono_per_lang > 0 else []
    train = [p for p in pairs if not held_out(p.line, s.val_share)]
    val = [p for p in pairs if held_out(p.line, s.val_share)]
    english = sorted({(p.line, p.english) for p in pairs})
    en_index = {line: i for i, (line, _) in enumerate(english)}
    en_texts = [t for _, t in english]
    mono_texts = [t for _, t in mono]
    teacher = load_teacher(s.teacher, options.home)
    en_vecs = np.asarray(teacher_vectors(teacher, en_texts, "passage"), dtype=np.float32)
    mono_vecs = (np.asarray(teacher_vectors(teacher, mono_texts, "passage"), dtype=np.float32) if mono_texts
                 else np.zeros((0, en_vecs.shape[1]), dtype=np.float32))
    targets = np.concatenate([en_vecs, mono_vecs])
    train_en = sorted({p.line for p in train})
    texts = [p.translation for p in train] + [en_texts[en_index[line]] for line in train_en] + mono_texts
    target_of = ([en_index[p.line] for p in train] + [en_index[line] for line in train_en]
                 + [len(en_texts) + i for i in range(len(mono_texts))])
    group = [0] * len(train) + [1] * len(train_en) + [2] * len(mono_texts)
    items = _items(tokenizer, texts, target_of, group, targets)
    val_lines = sorted({p.line for p in val})
    val_index = {line: i for i, line in enumerate(val_lines)}
    val_targets = en_vecs[[en_index[line] for line in val_lines]] if val_lines else en_vecs[:0]
    val_items = _items(tokenizer, [p.translation for p in val], [val_index[p.line] for p in val], [0] * len(val),
                       val_targets)
    langs = sorted({p.lang for p in val})
    val_lang = np.asarray([langs.index(p.lang) for p in val], dtype=np.int64)
    info = {"pairs": len(train), "english": len(train_en), "mono": len(mono_texts), "val_pairs": len(val),
            "languages": len({p.lang for p in pairs})}
    return Data(items, val_items, val_lang, info)


def special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}


def choose_vocabulary(flat: np.ndarray, vocab_size: int, size: int, exclude: set[int]) -> np.ndarray:
    """The ``size`` token ids seen most often in ``flat`` (ties: lower id first), topped up with the lowest ids
    never seen (e5's sentencepiece ids run from frequent to rare), never an id of ``exclude``; ascending."""
    counts = np.bincount(flat, minlength=vocab_size).astype(np.int64) if len(flat) else np.zeros(vocab_size, int)
    banned = np.zeros(vocab_size, dtype=bool)
    banned[[i for i in exclude if i < vocab_size]] = True
    order = np.lexsort((np.arange(vocab_size), -counts))  # count desc, id asc
    order = order[~banned[order]]
    seen = order[counts[order] > 0]
    unseen = order[counts[order] == 0]
    chosen = np.concatenate([seen[:size], unseen[: max(0, size - len(seen))]])
    return np.sort(chosen)


def distill_rows(base_dir: Path, token_ids: np.ndarray, dims: int, sif: float, bos: int, eos: int,
                 pad: int) -> np.ndarray:
    """model2vec's distillation of ``token_ids``: each token alone through the base transformer (``<s> t </s>``,
    mean-pooled), PCA to ``dims``, times its Zipf/SIF weight (by id rank, as model2vec weighs the whole
    vocabulary)."""
    from model2vec.distill.inference import apply_pca, compute_weights, create_embeddings

    from models.base import offline_transformers

    offline_transformers()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir))
    emb = create_embeddings(model=model, tokenized=[[bos, int(t), eos] for t in token_ids], device="cpu",
                            pad_token_id=pad, pooling="mean")
    emb = apply_pca(np.asarray(emb, dtype=np.float32), dims)
    weights = compute_weights(int(token_ids.max()) + 1, sif_coefficient=sif)[token_ids]
    return (emb * weights[:, None]).astype(np.float32)


def distilled(folder: Path, base_dir: Path, token_ids: np.ndarray, s: Settings, tokenizer: Any) -> np.ndarray:
    """:func:`distill_rows`, cached in the run folder under a key of the base weights, the ids and the settings."""
    key = hashlib.sha256(json.dumps([weights_checksum(base_dir) if any(base_dir.glob("*.safetensors")) else "",
                                     s.dims, s.sif]).encode() + token_ids.astype(np.int64).tobytes()).hexdigest()
    cache = folder / "distilled.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                log.info("model2vec distillation: reusing %s", cache)
                return np.asarray(z["rows"], dtype=np.float32)
    ids = {name: tokenizer.token_to_id(name) for name in ("<s>", "</s>", "<pad>")}
    bos = ids["<s>"] if ids["<s>"] is not None else 0
    eos = ids["</s>"] if ids["</s>"] is not None else bos
    pad = ids["<pad>"] if ids["<pad>"] is not None else 0
    t0 = time.monotonic()
    rows = distill_rows(base_dir, token_ids, s.dims, s.sif, bos, eos, pad)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "distilled.tmp.npz"
    np.savez(tmp, key=np.asarray(key), rows=rows)
    tmp.replace(cache)
    append_log(folder, {"event": "distilled", "tokens": len(token_ids), "dims": s.dims,
                        "seconds": round(time.monotonic() - t0, 1)})
    return rows


def ridge_projection(x: np.ndarray, y: np.ndarray, lam: float = 1e-3) -> np.ndarray:
    """Least squares ``x @ P ~ y`` with a ridge ``lam * trace(x'x)/d``: the projection's starting point."""
    xtx = x.T @ x
    reg = lam * np.trace(xtx) / max(1, xtx.shape[0])
    return np.linalg.solve(xtx + reg * np.eye(xtx.shape[0]), x.T @ y).astype(np.float32)


def evaluate(table: np.ndarray, proj: np.ndarray, rows: np.ndarray, val: Items, val_lang: np.ndarray) -> dict:
    """Held-back NTREX lines: mean cosine of static(translation) to teacher(English), and xx->en top-1 (the
    static translation against the static English of the same held-back lines, per language)."""
    if not len(val.lengths):
        return {}
    vecs = l2_normalise(mean_rows(table, rows, val.lengths) @ proj)
    cos = float(np.mean(np.sum(vecs * val.targets[val.target_of], axis=1)))
    hits = []
    for lang in np.unique(val_lang):
        sel = val_lang == lang
        sims = vecs[sel] @ val.targets.T  # against teacher(English) of the held-back lines
        hits.append(np.mean(np.argmax(sims, axis=1) == val.target_of[sel]))
    return {"val_cos": round(cos, 4), "val_top1_vs_teacher_en": round(float(np.mean(hits)), 4)}


def train(options: TrainOptions) -> dict[str, Any]:
    """One bounded run (see the module docstring); returns its summary, also the last line of ``log.jsonl``."""
    import torch
    from tqdm import tqdm

    t_start = time.monotonic()
    deadline = t_start + options.max_minutes * 60
    s = settings(options)
    folder = options.folder
    ckpt_path = options.checkpoint()
    base = resolve_model(s.teacher, options.home)
    tokenizer = load_tokenizer(base.path / TOKENIZER_NAME)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    data = prepare(s, options, tokenizer)
    items = data.items
    token_ids = choose_vocabulary(items.flat, vocab_size, s.vocab, special_ids(tokenizer))
    lut = lookup_table(vocab_size, token_ids)
    rows = lut[items.flat]
    val_rows = lut[data.val.flat]
    covered = float((rows >= 0).mean()) if len(rows) else 0.0
    init_table = distilled(folder, base.path, token_ids, s, tokenizer)

    torch.manual_seed(options.seed)
    if options.resume:
        ckpt = torch.load(ckpt_path, weights_only=False)
        if not np.array_equal(ckpt["token_ids"], token_ids) or ckpt["settings"] != s.__dict__:
            raise ModelInvalid(f"--resume: the checkpoint in {folder} was trained with another vocabulary or "
                               "other settings; start a new run (without --resume)")
        table0, proj0, step = ckpt["table"], ckpt["proj"], int(ckpt["step"])
    else:
        sample = np.random.default_rng(options.seed).choice(len(items.lengths), min(20000, len(items.lengths)),
                                                            replace=False)
        sel_rows, sel_len = _gather(rows, items.starts, items.lengths, np.sort(sample))
        x = mean_rows(init_table, sel_rows, sel_len)
        proj0 = ridge_projection(x, items.targets[items.target_of[np.sort(sample)]])
        table0, step, ckpt = init_table, 0, None
        append_log(folder, {"event": "start", "seed": options.seed, "settings": s.__dict__, **data.info,
                            "vocabulary": len(token_ids), "train_token_coverage": round(covered, 4)})
    torch.set_num_threads(s.threads)
    table = torch.from_numpy(np.array(table0, dtype=np.float32))
    # the table's Adam moments, updated lazily (only the rows of the batch: torch's SparseAdam was 2-4x slower)
    moment1 = torch.zeros_like(table) if ckpt is None else torch.from_numpy(ckpt["moment1"])
    moment2 = torch.zeros_like(table) if ckpt is None else torch.from_numpy(ckpt["moment2"])
    proj = torch.nn.Parameter(torch.from_numpy(np.asarray(proj0, dtype=np.float32)).clone())
    opt_proj = torch.optim.Adam([proj], lr=s.lr * 0.1)
    if ckpt is not None:
        opt_proj.load_state_dict(ckpt["opt_proj"])
    if step == 0:
        append_log(folder, {"step": 0, **evaluate(init_table, proj0, val_rows, data.val, data.val_lang)})

    groups = [np.flatnonzero((items.group == g) & (items.lengths > 0)) for g in range(3)]
    shares = np.array([1.0 - s.mono_share - s.english_share, s.english_share, s.mono_share])
    shares = np.where([len(g) > 0 for g in groups], shares, 0.0)
    shares = shares / shares.sum()
    targets_t = torch.from_numpy(items.targets)
    starts = items.starts
    total = s.steps if options.max_steps is None else min(s.steps, options.max_steps)

    def lr_at(k: int) -> float:
        if k < s.warmup:
            return (k + 1) / s.warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (k - s.warmup) / max(1, s.steps - s.warmup))))

    def save() -> None:
        tmp = folder / "checkpoint.tmp.pt"
        torch.save({"table": table.numpy().copy(), "proj": proj.detach().numpy().copy(),
                    "moment1": moment1.numpy().copy(), "moment2": moment2.numpy().copy(),
                    "opt_proj": opt_proj.state_dict(), "step": step, "token_ids": token_ids,
                    "settings": s.__dict__}, tmp)
        tmp.replace(ckpt_path)

    bar = tqdm(total=total, initial=step, unit="step", desc=f"train {options.name}", dynamic_ncols=True,
               mininterval=1.0)
    last_ckpt = time.monotonic()
    losses: list[float] = []
    stopped = "steps"
    while step < total:
        if time.monotonic() >= deadline:
            stopped = "max_minutes"
            break
        rng = np.random.default_rng([options.seed, step])
        counts = rng.multinomial(s.batch_size, shares)
        batch = np.concatenate([rng.choice(g, c) for g, c in zip(groups, counts, strict=True) if c])
        b_rows, b_len = _gather(rows, starts, items.lengths, batch)
        keep = b_rows >= 0
        seg = np.repeat(np.arange(len(batch)), b_len)[keep]
        n_kept = np.bincount(seg, minlength=len(batch))
        ok = n_kept > 0
        offsets = np.concatenate(([0], np.cumsum(n_kept)[:-1]))[ok]
        lr = s.lr * lr_at(step)
        for group in opt_proj.param_groups:
            group["lr"] = lr * 0.1
        uniq, inverse = np.unique(b_rows[keep], return_inverse=True)
        rows_t = torch.from_numpy(uniq)
        sub = table[rows_t].requires_grad_(True)
        pooled = torch.nn.functional.embedding_bag(torch.from_numpy(inverse.reshape(-1)), sub,
                                                   torch.from_numpy(offsets), mode="mean")
        out = torch.nn.functional.normalize(pooled @ proj, dim=1)
        target = targets_t[torch.from_numpy(items.target_of[batch[ok]])]
        loss = ((out - target) ** 2).sum(dim=1).mean()  # = 2 - 2 cos on unit vectors
        if s.loss == "contrastive":  # + in-batch InfoNCE; items with the same target are not negatives
            tgt_idx = torch.from_numpy(items.target_of[batch[ok]])
            logits = (out @ target.T) / s.tau
            same = (tgt_idx[:, None] == tgt_idx[None, :]) & ~torch.eye(len(tgt_idx), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.arange(len(tgt_idx)))
        opt_proj.zero_grad()
        loss.backward()
        opt_proj.step()
        step += 1
        with torch.no_grad():  # Adam on the batch's rows (bias correction by the global step)
            grad = sub.grad
            assert grad is not None
            m1 = moment1[rows_t].mul_(BETAS[0]).add_(grad, alpha=1 - BETAS[0])
            m2 = moment2[rows_t].mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
            moment1[rows_t], moment2[rows_t] = m1, m2
            table[rows_t] -= lr * (m1 / (1 - BETAS[0] ** step)) / ((m2 / (1 - BETAS[1] ** step)).sqrt() + 1e-8)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % s.eval_every == 0 or step == total:
            record = {"step": step, "loss": round(float(np.mean(losses[-s.eval_every:])), 5),
                      "lr": round(s.lr * lr_at(step), 6), "minutes": round((time.monotonic() - t_start) / 60, 2)}
            record.update(evaluate(table.numpy(), proj.detach().numpy(), val_rows, data.val,
                                   data.val_lang))
            append_log(folder, record)
        if time.monotonic() - last_ckpt > s.checkpoint_minutes * 60:
            save()
            last_ckpt = time.monotonic()
    bar.close()
    save()
    table_np = table.numpy().copy()
    pmat = proj.detach().numpy().copy()
    final = evaluate(table_np, pmat, val_rows, data.val, data.val_lang)
    tok_file = base.path / TOKENIZER_NAME
    meta = {"base": s.teacher, "tokenizer_sha256": file_sha256(tok_file), "steps": str(step), "seed": str(options.seed),
            "dims": str(s.dims), "vocabulary": str(len(token_ids))}
    write_weights(options.weights, StaticWeights(token_ids, table_np, pmat, meta), "int8")
    summary = {"event": "end", "kind": "static", "name": options.name, "step": step, "stopped": stopped,
               "minutes": round((time.monotonic() - t_start) / 60, 2), "weights": str(options.weights),
               "weights_mb": round(options.weights.stat().st_size / 1e6, 2), "vocabulary": len(token_ids),
               "train_token_coverage": round(covered, 4), **final}
    append_log(folder, summary)
    return summary


def _gather(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, which: np.ndarray) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """The rows of items ``which`` concatenated, with their lengths."""
    lens = lengths[which]
    if not len(which):
        return rows[:0], lens
    idx = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in which])
    return rows[idx], lens
