"""Transformer students (``aligned``, ``small``): multilingual knowledge distillation (Reimers & Gurevych 2020).

The student starts as a copy of its teacher's layers and is trained with a mean squared error on L2-normalised
sentence vectors (the teacher's are normalised; on unit vectors the MSE is ``2 - 2 cos``) so that

- student(translation) moves onto teacher(English) for NTREX's training part (every language, ``distill_data``),
- student(English) stays at teacher(English) (a share of the batch),
- student(x) stays at teacher(x) on monolingual qa-train contexts (and, for a small student, questions), so that
  it does not forget what it knew,

each with the ``query: `` or ``passage: `` prefix drawn per item (the target carries the same prefix). The token
embedding matrix (and the whole embedding block) is frozen; only the transformer layers listed by ``train_layers``
are trained, the upper ones (the aligned student) or all of a small student's.

**Cheap on a CPU**: the teacher's vectors are computed once and cached (``distill_data.teacher_vectors``), items are
drawn in pools and grouped by length so that batches pad little, sequences are capped at ``max_len`` tokens, the
frozen lower layers run without gradients.

**Runs**: ``train(options)`` runs for at most ``options.max_minutes``, checkpoints every few minutes and at the end
into the run folder (``checkpoint.pt``: trained tensors, optimiser, step, sampler state), appends the loss curve and
a validation (NTREX training lines held back by a hash: mean cosine to the teacher's English and xx->en top-1) to
``log.jsonl``, and writes the compact weights: for each student layer, the difference to the teacher layer it was
initialised from, in int8 with a scale per row (``models/students.py: pack``). ``build_folder`` adds them back onto
e5-small's folder. ``--resume`` continues from the checkpoint with the same data order; without a checkpoint (a
fresh machine), ``--param init=committed`` starts a new run from the committed student instead of the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.distill_data import Pair, load_teacher, ntrex_pairs, qa_texts, teacher_vectors
from models.registry import REGISTRY, resolve_model
from models.students import TrainOptions, append_log, copy_folder, load_packed, save_packed
from xlir.errors import ModelInvalid

log = logging.getLogger(__name__)

PARAMS = {"lr", "batch_size", "train_layers", "layers", "max_len", "mono_share", "english_share", "mono_per_lang",
          "questions_per_lang", "checkpoint_minutes", "warmup", "teacher", "langs", "val_share", "init"}
PREFIXES = {"query": "query: ", "passage": "passage: "}
LAYER_PREFIX = "encoder.layer."
VAL_PAIRS = 1200  # validation pairs drawn from the held-back lines (every language)


@dataclass(frozen=True)
class Settings:
    lr: float
    batch_size: int
    layer_map: list[int]  # student layer i starts from teacher layer layer_map[i]
    trained: list[int]  # student layers that are trained
    max_len: int
    mono_share: float
    english_share: float
    mono_per_lang: int
    questions_per_lang: int
    checkpoint_minutes: float
    warmup: int
    teacher: str
    langs: list[str] | None
    val_share: float
    init: str  # "teacher": the teacher's layers; "committed": the student's built folder; or a folder path


def spread_layers(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher layers spread from the first to the last (4 of 12: 0, 4, 8, 11)."""
    if not 1 <= n_student <= n_teacher:
        raise ModelInvalid(f"a student has 1 to {n_teacher} layers, not {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)})


def settings(options: TrainOptions, n_teacher: int = 12) -> Settings:
    options.check_params(PARAMS)
    small = options.kind == "small"
    n_layers = options.param("layers", 4 if small else n_teacher, int)
    layer_map = spread_layers(n_teacher, n_layers) if n_layers < n_teacher else list(range(n_teacher))
    n_trained = options.param("train_layers", n_layers if small else 6, int)
    if not 1 <= n_trained <= len(layer_map):
        raise ModelInvalid(f"--param train_layers must be 1..{len(layer_map)}")
    langs = options.param("langs", "", str)
    return Settings(
        lr=options.param("lr", 1e-4 if small else 4e-5, float),
        batch_size=options.param("batch_size", 32, int),
        layer_map=layer_map,
        trained=list(range(len(layer_map) - n_trained, len(layer_map))),
        max_len=options.param("max_len", 96, int),
        mono_share=options.param("mono_share", 0.4 if small else 0.25, float),
        english_share=options.param("english_share", 0.15 if small else 0.1, float),
        mono_per_lang=options.param("mono_per_lang", 1000 if small else 500, int),
        questions_per_lang=options.param("questions_per_lang", 500 if small else 0, int),
        checkpoint_minutes=options.param("checkpoint_minutes", 10.0, float),
        warmup=options.param("warmup", 100, int),
        teacher=options.param("teacher", "e5-small-aligned" if small else "e5-small", str),
        langs=[x for x in langs.split(",") if x] or None,
        val_share=options.param("val_share", 0.04, float),
        init=options.param("init", "teacher", str),
    )


def held_out(line: int, share: float) -> bool:
    """NTREX training lines kept back for the run's validation (a hash of the line number)."""
    return int(hashlib.sha256(f"xlir-val:{line}".encode()).hexdigest()[:8], 16) < share * 0xFFFFFFFF


@dataclass
class Data:
    """Texts and targets of a run: item i is ``texts[i]`` (prefix added) -> ``targets[target_of[i]]``."""

    texts: list[str]
    target_of: np.ndarray
    targets: np.ndarray
    group: np.ndarray  # 0 translation, 1 English, 2 monolingual
    val_pairs: list[Pair]
    val_targets: np.ndarray  # teacher passage vectors of the validation lines' English


def prepare(s: Settings, options: TrainOptions, teacher: Any, pairs: Sequence[Pair] | None = None,
            mono: Sequence[tuple[str, str]] | None = None) -> Data:
    """Every training item and the teacher targets (cached), for both prefixes."""
    pairs = list(pairs if pairs is not None else ntrex_pairs(s.langs))
    mono = list(mono if mono is not None else qa_texts(s.mono_per_lang, seed=options.seed,
                                                         questions=s.questions_per_lang))
    train = [p for p in pairs if not held_out(p.line, s.val_share)]
    val = [p for p in pairs if held_out(p.line, s.val_share)]
    val = random.Random(options.seed).sample(val, min(len(val), VAL_PAIRS))
    english = sorted({(p.line, p.english) for p in train})
    en_index = {line: i for i, (line, _) in enumerate(english)}
    en_texts = [t for _, t in english]
    mono_texts = [t for _, t in mono]
    texts: list[str] = []
    target_of: list[int] = []
    group: list[int] = []
    blocks = []
    offset = 0
    for kind, prefix in PREFIXES.items():
        en_vecs = teacher_vectors(teacher, en_texts, kind)
        mono_vecs = teacher_vectors(teacher, mono_texts, kind) if mono_texts else np.zeros((0, en_vecs.shape[1]))
        blocks += [en_vecs, mono_vecs]
        for p in train:
            texts.append(prefix + p.translation)
            target_of.append(offset + en_index[p.line])
            group.append(0)
        for i, t in enumerate(en_texts):
            texts.append(prefix + t)
            target_of.append(offset + i)
            group.append(1)
        for i, t in enumerate(mono_texts):
            texts.append(prefix + t)
            target_of.append(offset + len(en_texts) + i)
            group.append(2)
        offset += len(en_texts) + len(mono_texts)
    targets = np.concatenate(blocks).astype(np.float32)
    val_english = dict(sorted({(p.line, p.english) for p in val}))
    val_targets = teacher_vectors(teacher, list(val_english.values()), "passage") if val_english \
        else np.zeros((0, targets.shape[1]), dtype=np.float32)
    return Data(texts, np.asarray(target_of), targets, np.asarray(group), val, val_targets)


class Sampler:
    """Seeded draws of items by group share, in pools sorted by length (little padding). Its state is two
    integers, saved in the checkpoint."""

    def __init__(self, data: Data, s: Settings, seed: int) -> None:
        self.groups = [np.flatnonzero(data.group == g) for g in range(3)]
        share_mono = s.mono_share if len(self.groups[2]) else 0.0
        self.shares = np.array([1.0 - share_mono - s.english_share, s.english_share, share_mono])
        self.lengths = np.array([len(t) for t in data.texts])
        self.seed, self.drawn = seed, 0
        self.batch = s.batch_size
        self.pending: list[np.ndarray] = []

    def _pool(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.drawn])
        self.drawn += 1
        size = self.batch * 16
        counts = rng.multinomial(size, self.shares / self.shares.sum())
        items = np.concatenate([rng.choice(g, c) for g, c in zip(self.groups, counts, strict=True) if c and len(g)])
        items = items[np.argsort(self.lengths[items], kind="stable")]
        batches = [items[i : i + self.batch] for i in range(0, len(items), self.batch)]
        rng.shuffle(batches)
        return batches

    def next(self) -> np.ndarray:
        if not self.pending:
            self.pending = self._pool()
        return self.pending.pop()

    def state(self) -> dict[str, int]:
        # a resumed run starts at the next pool (the rest of the current pool is skipped: at most 15 batches)
        return {"seed": self.seed, "drawn": self.drawn}

    def restore(self, state: dict[str, int]) -> None:
        self.seed, self.drawn, self.pending = int(state["seed"]), int(state["drawn"]), []


def student_model(teacher_dir: Path, s: Settings) -> Any:
    """The teacher's transformer with only the layers of ``layer_map`` kept; gradients only where trained. A
    folder that already has ``len(layer_map)`` layers (a student's own, ``init``) is taken as it is."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(teacher_dir), local_files_only=True, add_pooling_layer=False)
    n = model.config.num_hidden_layers
    if n != len(s.layer_map) and n <= max(s.layer_map):
        raise ModelInvalid(f"{teacher_dir} has {n} layers: neither the student's {len(s.layer_map)} nor a teacher's")
    if n != len(s.layer_map):
        model.encoder.layer = torch.nn.ModuleList([model.encoder.layer[i] for i in s.layer_map])
        model.config.num_hidden_layers = len(s.layer_map)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in s.trained:
        for p in model.encoder.layer[i].parameters():
            p.requires_grad_(True)
    return model


def encode(model: Any, tok: Any, texts: Sequence[str], max_len: int) -> Any:
    import torch

    batch = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def validate(model: Any, tok: Any, data: Data, s: Settings) -> dict[str, float]:
    """Mean cosine of student(translation) to teacher(English) and xx->en top-1 among the validation lines."""
    import torch

    if not data.val_pairs:
        return {}
    lines = sorted({p.line for p in data.val_pairs})
    row = {line: i for i, line in enumerate(lines)}
    model.eval()
    cos, hits = [], []
    with torch.no_grad():
        for i in range(0, len(data.val_pairs), 64):
            chunk = data.val_pairs[i : i + 64]
            vecs = encode(model, tok, [PREFIXES["passage"] + p.translation for p in chunk], s.max_len).numpy()
            sims = vecs @ data.val_targets.T
            gold = np.array([row[p.line] for p in chunk])
            cos.extend(sims[np.arange(len(chunk)), gold].tolist())
            hits.extend((sims.argmax(1) == gold).tolist())
    model.train()
    return {"val_cos": float(np.mean(cos)), "val_top1": float(np.mean(hits)), "val_n": len(cos)}


def layer_tensors(model: Any, layers: Sequence[int]) -> dict[str, np.ndarray]:
    """``encoder.layer.<i>.*`` tensors of the student's layers ``layers`` (student numbering)."""
    out = {}
    for i in layers:
        for name, p in model.encoder.layer[i].named_parameters():
            out[f"{LAYER_PREFIX}{i}.{name}"] = p.detach().cpu().numpy().astype(np.float32)
    return out


def export(model: Any, initial: dict[str, np.ndarray], s: Settings, path: Path, info: dict[str, Any]) -> Path:
    """The compact weights: per student layer, (trained - initial) in int8 with row scales; untouched layers are
    not written (they are the teacher layer they started from)."""
    now = layer_tensors(model, s.trained)
    delta = {k: v - initial[k] for k, v in now.items()}
    meta = {"format": "layer-delta", "layer_map": json.dumps(s.layer_map), "trained": json.dumps(s.trained),
            "teacher": s.teacher, "info": json.dumps(info)}
    return save_packed(path, delta, meta, dtype="int8")


def build_folder(weights: Path, base_dir: Path, out_dir: Path) -> None:
    """e5-small's folder (``base_dir``) with the student's layers: teacher layer ``layer_map[i]`` plus the committed
    difference, the others dropped. The teacher of a small student is itself built from e5-small, so its layers
    are first rebuilt from its own committed file (``teacher`` in the metadata)."""
    from safetensors.numpy import load_file, save_file

    delta, meta = load_packed(weights)
    if meta.get("format") != "layer-delta":
        raise ModelInvalid(f"{weights} is not a transformer student's weights (format {meta.get('format')!r})")
    layer_map = json.loads(meta["layer_map"])
    state = load_file(str(base_dir / "model.safetensors"))
    teacher = meta.get("teacher", "e5-small")
    if teacher != "e5-small":  # the teacher's own layers first (one level: a student of a student of e5-small)
        from models.students import weights_file

        tdelta, tmeta = load_packed(weights_file(teacher))
        state = _apply(state, tdelta, json.loads(tmeta["layer_map"]))
    state = _apply(state, delta, layer_map)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_folder(base_dir, out_dir)
    save_file(state, str(out_dir / "model.safetensors"))
    config = json.loads((base_dir / "config.json").read_text())
    config["num_hidden_layers"] = len(layer_map)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))


def _apply(state: dict[str, np.ndarray], delta: dict[str, np.ndarray], layer_map: list[int]) -> dict[str, np.ndarray]:
    """Base state with student layer i = base layer layer_map[i] (+ delta), layers outside the map dropped."""
    out = {k: v for k, v in state.items() if not k.startswith(LAYER_PREFIX)}
    for i, src in enumerate(layer_map):
        prefix = f"{LAYER_PREFIX}{src}."
        for key, value in state.items():
            if key.startswith(prefix):
                name = f"{LAYER_PREFIX}{i}.{key[len(prefix):]}"
                out[name] = (value + delta[name]).astype(np.float32) if name in delta else value
    unknown = set(delta) - set(out)
    if unknown:
        raise ModelInvalid(f"student weights name tensors the model does not have: {sorted(unknown)[:3]}")
    return out


def train(options: TrainOptions, *, data: Data | None = None, teacher_dir: Path | None = None) -> dict[str, Any]:
    """One bounded run (see the module docstring); ``data``/``teacher_dir`` are for tests."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    tdir = teacher_dir or resolve_model(settings(options).teacher, options.home).path
    s = settings(options, int(json.loads((tdir / "config.json").read_text())["num_hidden_layers"]))
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    folder = options.folder
    ckpt_path = options.checkpoint()
    if data is None:
        spec = REGISTRY.get(s.teacher)
        teacher = load_teacher(s.teacher, options.home)
        log.info("teacher %s (%s); preparing data", s.teacher, spec.description if spec else tdir)
        data = prepare(s, options, teacher)
        del teacher
    tok = AutoTokenizer.from_pretrained(str(tdir), local_files_only=True)
    model = student_model(tdir, s)
    initial = layer_tensors(model, s.trained)  # the exported difference is always to the teacher's layers
    if s.init != "teacher" and not options.resume:
        start = resolve_model(options.name, options.home).path if s.init == "committed" else Path(s.init)
        log.info("starting from %s (init=%s), not from the teacher's layers", start, s.init)
        model = student_model(start, s)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    sampler = Sampler(data, s, options.seed)
    step, seconds_before = 0, 0.0
    if options.resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["layer_map"] != s.layer_map or ck["trained"] != s.trained:
            raise ModelInvalid(f"{ckpt_path} was trained with other layers ({ck['layer_map']}, {ck['trained']})")
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["optimizer"])
        sampler.restore(ck["sampler"])
        step, seconds_before = int(ck["step"]), float(ck["seconds"])
        initial = {k: np.asarray(v) for k, v in ck["initial"].items()}
    targets = torch.from_numpy(data.targets)

    def lr_at(k: int) -> float:
        return s.lr * min(1.0, (k + 1) / max(1, s.warmup))

    def save() -> None:
        trained_state = {k: v for k, v in model.state_dict().items()
                         if any(k.startswith(f"{LAYER_PREFIX}{i}.") for i in s.trained)}
        tmp = ckpt_path.with_name("checkpoint.pt.tmp")
        torch.save({"model": trained_state, "optimizer": opt.state_dict(), "sampler": sampler.state(), "step": step,
                    "seconds": seconds_before + (time.monotonic() - t0), "layer_map": s.layer_map,
                    "trained": s.trained, "initial": initial}, tmp)
        tmp.replace(ckpt_path)

    t0 = time.monotonic()
    deadline = t0 + options.max_minutes * 60
    next_ckpt = t0 + s.checkpoint_minutes * 60
    append_log(folder, {"event": "start", "step": step, "resume": options.resume, "seed": options.seed,
                        "settings": {k: v for k, v in s.__dict__.items()}, "items": len(data.texts)})
    total = options.max_steps if options.max_steps is not None else None
    bar = tqdm(total=total, initial=step if total else 0, unit="step", desc=f"train {options.name}",
               dynamic_ncols=True)
    losses: list[float] = []
    while time.monotonic() < deadline and (options.max_steps is None or step < options.max_steps):
        rows = sampler.next()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        vecs = encode(model, tok, [data.texts[i] for i in rows], s.max_len)
        loss = ((vecs - targets[data.target_of[rows]]) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        left = max(0.0, deadline - time.monotonic())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", left=f"{left / 60:.0f}min")
        if step % 50 == 0:
            append_log(folder, {"event": "loss", "step": step, "loss": float(np.mean(losses[-50:])),
                                "lr": lr_at(step), "seconds": round(seconds_before + time.monotonic() - t0, 1)})
        if time.monotonic() >= next_ckpt:
            save()
            next_ckpt = time.monotonic() + s.checkpoint_minutes * 60
    bar.close()
    save()
    val = validate(model, tok, data, s)
    seconds = seconds_before + time.monotonic() - t0
    info = {"steps": step, "seconds": round(seconds, 1), "examples": step * s.batch_size, **val}
    export(model, initial, s, options.weights, info)
    summary = {"event": "end", "name": options.name, "kind": options.kind, "step": step,
               "run_seconds": round(time.monotonic() - t0, 1), "train_seconds": round(seconds, 1),
               "loss": float(np.mean(losses[-50:])) if losses else math.nan, **val,
               "weights": str(options.weights), "weights_mb": round(options.weights.stat().st_size / 2**20, 2)}
    append_log(folder, summary)
    return summary
