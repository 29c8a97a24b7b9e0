"""xlir's cross-encoder reranker (issue 21): a small transformer that learns a correction to the first stage.

**Model.** The 4-layer student ``e5-small-l4`` (its layers and e5-small's frozen token embeddings) reads a
(query, passage) pair (``models/rerankers.py: encode_pairs``: ``query: q`` / ``passage: p`` in one sequence, capped
at ``max_length`` tokens); the mean of its last hidden states goes through a linear head **initialised to zero**.
Its output is a correction ``r``; the final score of a candidate is ``prior_weight * -log(first-stage rank) + r``
(``models/rerankers.py: residual_scores``). So the untrained model reproduces the first stage's order exactly, and
training learns where to move a candidate away from it. ``prior_weight`` is learnt with the rest.

**Data** (``benchmarks/qa_groups.py`` writes it): per qa-train question, the first stage's top candidates with their
ranks and labels, plus the other sentences of the question's paragraph. A training group is the question, one
sentence holding the answer and ``group_size - 1`` negatives drawn from the first stage's top ``hard_depth`` and the
paragraph's other sentences; the loss is the cross-entropy of the softmax over the group's final scores (listwise).
Languages are drawn with probability proportional to (questions) ** ``lang_power`` (Japanese has half the data).

**Runs** (as the students': ``models/students.py: TrainOptions``): at most ``--max-minutes`` (90), a checkpoint
every few minutes and at the end (``checkpoint.pt``: trained tensors, optimiser, sampler, step), ``--resume``;
``log.jsonl`` gets the loss curve and, after each run, the validation on the held-back 5% of questions: MRR@10 of
the first stage and of the reranked top ``val_depth``, for each interpolation weight of :data:`WEIGHTS`; the best
becomes the model's ``weight`` (0 when nothing helps: the reranker then keeps the first-stage order).

**Compact weights** (``models/weights/xlir-rerank.safetensors``): per layer, the difference to ``e5-small-l4``'s
layer in int8 with a scale per row, the head, and the scalars in the metadata; ``build_folder`` adds them back onto
the built ``e5-small-l4`` folder and exports ONNX (``onnx/model.onnx``, fp32: ONNX Runtime's dynamic int8 moved the
corrections by .33 on average, which undid the gain) for serving without torch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import MODEL_META, resolve_model
from models.rerankers import (
    ONNX_FILE,
    RERANKER_KIND,
    encode_pairs,
    load_pair_tokenizer,
    residual_order,
    residual_scores,
)
from models.students import TrainOptions, append_log, copy_folder, load_packed, save_packed
from xlir.errors import CorpusError, ModelInvalid

log = logging.getLogger(__name__)

PARAMS = {"lr", "head_lr", "batch_questions", "group_size", "max_length", "hard_depth", "lang_power",
          "checkpoint_minutes", "warmup", "base", "val_depth", "data", "init", "scope"}
LAYER_PREFIX = "encoder.layer."
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # interpolation weights tried on validation
PREFIXES = ("query: ", "passage: ")
# what a reranker folder does not take from its base's: the weights, records and exports, the sentence-transformers
# pooling modules (the reranker pools itself)
BASE_SKIP = ("model.safetensors", MODEL_META, "onnx", "modules.json", "1_Pooling", "2_Normalize",
             "config_sentence_transformers.json", "sentence_bert_config.json")


@dataclass(frozen=True)
class Settings:
    lr: float
    head_lr: float
    batch_questions: int
    group_size: int
    max_length: int
    hard_depth: int
    lang_power: float
    checkpoint_minutes: float
    warmup: int
    base: str
    val_depth: int
    data: str  # folder with docs.jsonl + groups.jsonl ("": the run folder's data/)
    init: str  # "base": e5-small-l4's layers; "committed": the built xlir-rerank folder; or a folder
    scope: str  # what ``rerank_scope=auto`` does with this model: all, or same-language (models/rerankers.py)


def settings(options: TrainOptions) -> Settings:
    options.check_params(PARAMS)
    return Settings(
        lr=options.param("lr", 5e-5, float),
        head_lr=options.param("head_lr", 1e-3, float),
        batch_questions=options.param("batch_questions", 8, int),
        group_size=options.param("group_size", 8, int),
        max_length=options.param("max_length", 96, int),
        hard_depth=options.param("hard_depth", 30, int),
        lang_power=options.param("lang_power", 0.5, float),
        checkpoint_minutes=options.param("checkpoint_minutes", 10.0, float),
        warmup=options.param("warmup", 100, int),
        base=options.param("base", "e5-small-l4", str),
        val_depth=options.param("val_depth", 20, int),
        data=options.param("data", "", str),
        init=options.param("init", "base", str),
        scope=options.param("scope", "all", str),
    )


# ---- the data ----

@dataclass(frozen=True)
class Group:
    qid: str
    lang: str
    query: str
    docs: tuple[str, ...]
    ranks: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass
class Groups:
    texts: dict[str, str]
    train: list[Group] = field(default_factory=list)
    val: list[Group] = field(default_factory=list)


def _bad(path: Path, line: int, why: str) -> CorpusError:
    return CorpusError(f"{path}:{line}: {why}")


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each line of ``path``; a line that is not JSON is an error naming it."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            try:
                yield n, json.loads(line)
            except ValueError as exc:
                raise _bad(path, n, f"not JSON ({exc})") from exc


def load_groups(folder: Path) -> Groups:
    """``docs.jsonl`` and ``groups.jsonl`` of ``folder`` (``benchmarks/qa_groups.py``); a malformed record is an
    error naming the file and the line."""
    docs_file, groups_file = folder / "docs.jsonl", folder / "groups.jsonl"
    for f in (docs_file, groups_file):
        if not f.is_file():
            raise CorpusError(f"{f}: no such file (the reranker's training data; `xlir train reranker` writes it)")
    texts: dict[str, str] = {}
    for n, rec in _records(docs_file):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("text"), str):
            raise _bad(docs_file, n, 'expected {"id": str, "text": str}')
        texts[rec["id"]] = rec["text"]
    out = Groups(texts)
    for n, rec in _records(groups_file):
        group = _group(rec, groups_file, n, texts)
        (out.val if rec["split"] == "dev" else out.train).append(group)
    return out


def _group(rec: Any, path: Path, n: int, texts: dict[str, str]) -> Group:
    if not isinstance(rec, dict):
        raise _bad(path, n, "expected a JSON object")
    for key, kind in (("qid", str), ("lang", str), ("split", str), ("query", str), ("candidates", list)):
        if not isinstance(rec.get(key), kind):
            raise _bad(path, n, f"{key!r} missing or not a {kind.__name__}")
    if rec["split"] not in ("train", "dev"):
        raise _bad(path, n, f"split {rec['split']!r}: expected train or dev")
    docs, ranks, labels = [], [], []
    for i, c in enumerate(rec["candidates"]):
        ok = (isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], int)
              and not isinstance(c[1], bool) and c[1] >= 1 and c[2] in (0, 1))
        if not ok:
            raise _bad(path, n, f"candidates[{i}]: expected [doc id, rank >= 1, label 0|1], got {c!r}")
        if c[0] not in texts:
            raise _bad(path, n, f"candidates[{i}]: doc {c[0]!r} is not in docs.jsonl")
        docs.append(c[0])
        ranks.append(c[1])
        labels.append(c[2])
    if not any(labels) and rec["split"] == "train":  # a validation question the first stage missed counts as 0
        raise _bad(path, n, "no candidate is labelled relevant (a training question needs one)")
    return Group(rec["qid"], rec["lang"], rec["query"], tuple(docs), tuple(ranks), tuple(labels))


class Sampler:
    """Seeded training groups: language by (questions) ** power, a question, one positive, ``group_size - 1``
    negatives from the first stage's top ``hard_depth`` and the other candidates (the paragraph's sentences)."""

    def __init__(self, groups: Sequence[Group], s: Settings, seed: int) -> None:
        self.by_lang: dict[str, list[Group]] = {}
        for g in groups:
            self.by_lang.setdefault(g.lang, []).append(g)
        self.langs = sorted(self.by_lang)
        weights = np.array([len(self.by_lang[x]) ** s.lang_power for x in self.langs], dtype=np.float64)
        self.p = weights / weights.sum()
        self.s = s
        self.seed, self.drawn = seed, 0

    def next(self) -> list[tuple[Group, list[int]]]:
        """One batch: (group, candidate positions with the positive first)."""
        rng = np.random.default_rng([self.seed, self.drawn])
        self.drawn += 1
        out = []
        for lang in rng.choice(self.langs, size=self.s.batch_questions, p=self.p):
            g = self.by_lang[str(lang)][int(rng.integers(len(self.by_lang[str(lang)])))]
            pos = [i for i, lab in enumerate(g.labels) if lab]
            neg = [i for i, lab in enumerate(g.labels) if not lab and (g.ranks[i] <= self.s.hard_depth
                                                                         or g.ranks[i] > len(g.ranks))]
            neg = neg or [i for i, lab in enumerate(g.labels) if not lab]
            take = min(len(neg), self.s.group_size - 1)
            chosen = [int(x) for x in rng.choice(neg, size=take, replace=False)] if take else []
            out.append((g, [int(rng.choice(pos)), *chosen]))
        return out

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "drawn": self.drawn}

    def restore(self, state: dict[str, int]) -> None:
        self.seed, self.drawn = int(state["seed"]), int(state["drawn"])


# ---- the model ----

def cross_encoder(base_dir: Path, attention: str = "sdpa") -> Any:
    """The torch module: ``base_dir``'s transformer (embeddings frozen), mean pooling, a zero-initialised head and
    the learnt prior weight (``softplus(prior_raw)``, starting at 1)."""
    import torch
    from transformers import AutoModel

    class CrossEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(base_dir), local_files_only=True, add_pooling_layer=False,
                                                  attn_implementation=attention)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, 1)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
            self.prior_raw = torch.nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus -> 1.0
            for p in self.bert.embeddings.parameters():
                p.requires_grad_(False)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

        def prior_weight(self) -> Any:
            return torch.nn.functional.softplus(self.prior_raw)

    return CrossEncoder()


def corrections(model: Any, tok: Any, pad: int, query: str, passages: Sequence[str]) -> Any:
    import torch

    ids, mask = encode_pairs(tok, query, passages, pad, *PREFIXES)
    out: Any = model(torch.from_numpy(ids), torch.from_numpy(mask))
    return out


def mrr_at_10(order: Sequence[int], labels: Sequence[int]) -> float:
    for r, i in enumerate(order[:10], start=1):
        if labels[i]:
            return 1.0 / r
    return 0.0


def validate(model: Any, tok: Any, pad: int, groups: Groups, depth: int) -> dict[str, Any]:
    """MRR@10 on the held-back questions: the first stage's, and the reranked top ``depth``'s for each weight of
    :data:`WEIGHTS` (final = prior_weight * prior + weight * correction); picks the best weight."""
    import torch

    if not groups.val:
        return {}
    model.eval()
    beta = float(model.prior_weight().detach())
    first: list[float] = []
    per_weight: dict[float, list[float]] = {w: [] for w in WEIGHTS}
    with torch.no_grad():
        for g in groups.val:
            top = [i for i in range(len(g.docs)) if g.ranks[i] <= depth]
            labels = [g.labels[i] for i in top]
            ranks = [g.ranks[i] for i in top]
            first.append(mrr_at_10(residual_order(ranks, np.zeros(len(top))), labels))
            corr = corrections(model, tok, pad, g.query, [groups.texts[g.docs[i]] for i in top]).numpy()
            for w in WEIGHTS:
                final = residual_scores(ranks, w * corr, beta)
                per_weight[w].append(mrr_at_10(residual_order(ranks, final), labels))
    model.train()
    means = {w: float(np.mean(v)) for w, v in per_weight.items()}
    best = max(WEIGHTS, key=lambda w: (round(means[w], 6), -w))  # a tie: the smaller weight (0: no change)
    return {"val_questions": len(groups.val), "val_depth": depth, "val_mrr10_first": float(np.mean(first)),
            "val_mrr10_by_weight": {str(w): round(m, 4) for w, m in means.items()}, "weight": best,
            "val_mrr10": means[best], "prior_weight": beta}


# ---- compact weights and the folder ----

def layer_tensors(model: Any) -> dict[str, np.ndarray]:
    return {f"{LAYER_PREFIX}{k}": v.detach().cpu().numpy().astype(np.float32)
            for k, v in model.bert.encoder.layer.named_parameters()}


def export(model: Any, initial: dict[str, np.ndarray], s: Settings, path: Path, info: dict[str, Any]) -> Path:
    """Layer differences to the base (int8 rows), the head (fp16) and the scalars (metadata)."""
    delta = {k: v - initial[k] for k, v in layer_tensors(model).items()}
    delta["head.weight"] = model.head.weight.detach().numpy().astype(np.float32)
    delta["head.bias"] = model.head.bias.detach().numpy().astype(np.float32)
    n = int(model.bert.config.num_hidden_layers)
    meta = {"format": "reranker-delta", "base": s.base, "layer_map": json.dumps(list(range(n))),
            "max_length": str(s.max_length), "prior_weight": repr(float(model.prior_weight().detach())),
            "weight": repr(float(info.get("weight", 1.0))), "info": json.dumps(info)}
    head = {k: delta.pop(k) for k in ("head.weight", "head.bias")}
    path = save_packed(path, delta, meta, dtype="int8")
    # the head is tiny and must stay exactly zero when untrained: fp16 in a second file beside the layers
    save_packed(path.with_name(path.stem + ".head.safetensors"), head, {"format": "reranker-head"}, dtype="fp16")
    return path


def set_scope(weights: Path, scope: str) -> None:
    """Record in committed weights what ``rerank_scope=auto`` does with the model (``all`` or ``same-language``),
    decided on the XQuAD-R dev split after training (``benchmarks/reranker.py``); tensors unchanged."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from models.rerankers import SCOPES

    if scope not in SCOPES:
        raise ModelInvalid(f"scope {scope!r}; known: {', '.join(SCOPES)}")
    with safe_open(str(weights), framework="numpy") as fh:
        meta = dict(fh.metadata() or {})
    info = json.loads(meta.get("info", "{}"))
    info["scope"] = scope
    meta["info"] = json.dumps(info)
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(load_file(str(weights)), str(tmp), metadata=meta)
    tmp.replace(weights)


def build_folder(weights: Path, base_dir: Path, out_dir: Path) -> None:
    """The reranker's folder from the committed weights and the built base (``e5-small-l4``) folder: the model
    (``model.safetensors`` + ``config.json``, for training from it), the head, the tokenizer, ``xlir-model.json``
    (the fetch adds the checksums) and the ONNX int8 export."""
    from safetensors.numpy import load_file, save_file

    delta, meta = load_packed(weights)
    if meta.get("format") != "reranker-delta":
        raise ModelInvalid(f"{weights} is not a reranker's weights (format {meta.get('format')!r})")
    head, _ = load_packed(weights.with_name(weights.stem + ".head.safetensors"))
    state = load_file(str(base_dir / "model.safetensors"))
    unknown = set(delta) - set(state)
    if unknown:
        raise ModelInvalid(f"{weights} names tensors {base_dir} does not have: {sorted(unknown)[:3]}")
    for k, d in delta.items():
        state[k] = (state[k] + d).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_folder(base_dir, out_dir, skip=BASE_SKIP)
    save_file(state, str(out_dir / "model.safetensors"))
    save_file({k: v.astype(np.float32) for k, v in head.items()}, str(out_dir / "head.safetensors"))
    info = json.loads(meta.get("info", "{}"))
    record = {"kind": RERANKER_KIND, "base": meta["base"], "max_length": int(meta["max_length"]),
              "prior_weight": float(meta["prior_weight"]), "weight": float(meta["weight"]),
              "scope": info.get("scope", "all"), "query_prefix": PREFIXES[0], "passage_prefix": PREFIXES[1],
              "pooling": "mean", "onnx": ONNX_FILE, "trained": info}
    (out_dir / MODEL_META).write_text(json.dumps(record, indent=2))
    export_onnx(out_dir)


def load_folder(folder: Path, attention: str = "sdpa") -> Any:
    """The torch module of a built reranker folder (its layers and its head); ``attention="eager"`` for the ONNX
    export (the graph ONNX Runtime fuses)."""
    import torch
    from safetensors.torch import load_file

    model = cross_encoder(folder, attention)
    head = load_file(str(folder / "head.safetensors"))
    with torch.no_grad():
        model.head.weight.copy_(head["head.weight"])
        model.head.bias.copy_(head["head.bias"])
        meta = json.loads((folder / MODEL_META).read_text())
        beta = max(float(meta.get("prior_weight", 1.0)), 1e-6)
        model.prior_raw.copy_(torch.tensor(math.log(math.expm1(beta))))
    model.eval()
    return model


def export_onnx(folder: Path) -> Path:
    """``onnx/model.onnx``: the module (ids, mask -> correction) exported and fused, fp32 (dynamic int8 quantization
    moved the corrections by .33 on average against torch, more than the gain it was trained for)."""
    import torch

    from models.onnx_backend import optimize_export, torch_onnx_export

    model = load_folder(folder, attention="eager")

    class Score(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids, attention_mask)

    target = folder / ONNX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = target.with_name("raw.onnx")
    torch_onnx_export(Score(), raw, output="score", output_axes={0: "batch"})
    optimize_export(raw, target, model.bert.config)
    return target


# ---- a training run ----

def train(options: TrainOptions, *, groups: Groups | None = None, base_dir: Path | None = None) -> dict[str, Any]:
    """One bounded run (module doc); ``groups``/``base_dir`` are for tests."""
    import torch
    from tqdm import tqdm

    s = settings(options)
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    folder = options.folder
    ckpt_path = options.checkpoint()
    if groups is None:
        groups = load_groups(Path(s.data) if s.data else folder / "data")
    if not groups.train:
        raise CorpusError("the reranker's training data has no training question")
    bdir = base_dir or resolve_model(s.base, options.home).path
    tok, pad = load_pair_tokenizer(bdir, s.max_length)
    model = cross_encoder(bdir)
    initial = layer_tensors(model)  # the exported difference is always to the base's layers
    if s.init != "base" and not options.resume:
        start = resolve_model(options.name, options.home).path if s.init == "committed" else Path(s.init)
        log.info("starting from %s (init=%s)", start, s.init)
        model = load_folder(start)
        model.train()
    model.train()
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("bert.")]
    head = [model.head.weight, model.head.bias, model.prior_raw]
    opt = torch.optim.AdamW([{"params": body, "lr": s.lr}, {"params": head, "lr": s.head_lr}], weight_decay=0.0)
    sampler = Sampler(groups.train, s, options.seed)
    step, seconds_before = 0, 0.0
    if options.resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["optimizer"])
        sampler.restore(ck["sampler"])
        step, seconds_before = int(ck["step"]), float(ck["seconds"])
        initial = {k: np.asarray(v) for k, v in ck["initial"].items()}

    def lr_scale(k: int) -> float:
        return min(1.0, (k + 1) / max(1, s.warmup))

    def save() -> None:
        trained = {k: v for k, v in model.state_dict().items() if not k.startswith("bert.embeddings.")}
        tmp = ckpt_path.with_name("checkpoint.pt.tmp")
        torch.save({"model": trained, "optimizer": opt.state_dict(), "sampler": sampler.state(), "step": step,
                    "seconds": seconds_before + (time.monotonic() - t0), "initial": initial}, tmp)
        tmp.replace(ckpt_path)

    t0 = time.monotonic()
    deadline = t0 + options.max_minutes * 60
    next_ckpt = t0 + s.checkpoint_minutes * 60
    append_log(folder, {"event": "start", "step": step, "resume": options.resume, "seed": options.seed,
                        "settings": dict(s.__dict__), "train_questions": len(groups.train),
                        "val_questions": len(groups.val)})
    total = options.max_steps
    bar = tqdm(total=total, initial=step if total else 0, unit="step", desc=f"train {options.name}",
               dynamic_ncols=True)
    losses: list[float] = []
    while time.monotonic() < deadline and (options.max_steps is None or step < options.max_steps):
        batch = sampler.next()
        for pg, base_lr in zip(opt.param_groups, (s.lr, s.head_lr), strict=True):
            pg["lr"] = base_lr * lr_scale(step)
        ids_list: list[tuple[np.ndarray, np.ndarray]] = []
        sizes: list[int] = []
        ranks: list[int] = []
        for grp, pos in batch:
            ids_list.append(encode_pairs(tok, grp.query, [groups.texts[grp.docs[i]] for i in pos], pad, *PREFIXES))
            sizes.append(len(pos))
            ranks.extend(grp.ranks[i] for i in pos)
        width = max(ids.shape[1] for ids, _ in ids_list)
        ids = np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad) for a, _ in ids_list])
        mask = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for _, m in ids_list])
        corr = model(torch.from_numpy(ids), torch.from_numpy(mask))
        logits = model.prior_weight() * torch.from_numpy(-np.log(np.asarray(ranks, dtype=np.float32))) + corr
        loss = torch.zeros(())
        at = 0
        for n in sizes:  # the positive is first in each group
            loss = loss - torch.log_softmax(logits[at: at + n], dim=0)[0]
            at += n
        loss = loss / len(sizes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body + head, 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        left = max(0.0, deadline - time.monotonic())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", left=f"{left / 60:.0f}min")
        if step % 50 == 0:
            append_log(folder, {"event": "loss", "step": step, "loss": float(np.mean(losses[-50:])),
                                "prior_weight": float(model.prior_weight().detach()),
                                "seconds": round(seconds_before + time.monotonic() - t0, 1)})
        if time.monotonic() >= next_ckpt:
            save()
            next_ckpt = time.monotonic() + s.checkpoint_minutes * 60
    bar.close()
    save()
    val = validate(model, tok, pad, groups, s.val_depth)
    append_log(folder, {"event": "validation", "step": step, **val})
    seconds = seconds_before + time.monotonic() - t0
    info = {"steps": step, "seconds": round(seconds, 1), "questions": step * s.batch_questions,
            "group_size": s.group_size, "scope": s.scope, **val}
    path = export(model, initial, s, options.weights, info)
    summary = {"event": "end", "name": options.name, "step": step, "run_seconds": round(time.monotonic() - t0, 1),
               "train_seconds": round(seconds, 1), "loss": float(np.mean(losses[-50:])) if losses else math.nan,
               **val, "weights": str(path), "weights_mb": round(path.stat().st_size / 2**20, 2)}
    append_log(folder, summary)
    return summary

