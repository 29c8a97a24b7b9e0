"""ONNX Runtime encoders: ``onnx`` (an fp32 export of the transformer), ``onnx-int8`` (its dynamic quantization) and
``onnx-f16w`` (its weights stored in fp16, computed in fp32: half the file, the fp32 vectors to rounding).

The graph holds the transformer only (``input_ids``, ``attention_mask`` -> ``last_hidden_state``); the
tokenizer, the registry's prefixes, the pooling that the sentence-transformers folder declares
(``modules.json`` -> its ``Pooling`` config) and the L2 normalisation run here in Python, so an
:class:`OnnxEncoder` gives the vectors of :class:`models.encoders.SentenceTransformerEncoder` for the same folder
(same checksum: an index built with one is served by the other).

**Export** (once): ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch and sequence axes) of the
folder's ``AutoModel`` with eager attention, then ONNX Runtime's transformer optimizer for BERT-like models
(fuses embeddings + LayerNorm, attention, bias + GELU, skip + LayerNorm; the fused op counts are recorded), which
is what makes the fp32 graph faster than PyTorch on a CPU. ``onnx-int8`` is
``onnxruntime.quantization.quantize_dynamic`` (int8 weights with per-channel scales, activations quantized at
run time) of that file. ``onnx-f16w`` is a pure ``onnx`` rewrite of it (:func:`fp16_weights`): every large fp32
initializer stored in fp16 behind a ``Cast`` to fp32, which ONNX Runtime folds when it loads the session.

**Cache**: ``<model folder>/onnx/`` when the folder is a built or local one that can be written, else
``$XLIR_HOME/onnx/<checksum[:16]>/`` (always for models shipped inside an installed package). Each file has a
``<file>.json`` beside it recording the source weights checksum, the ``config.json`` hash, the export format and
the library versions; a file whose record does not match what would be exported now is exported again. Files are
written in a temporary folder beside the target and renamed into place, and the record is written after the
file (and removed before a re-export), so an export killed half way never leaves a file that is used later.

**Without torch** (a serving install, ``pip install 'xlir[serve]'``): the encoder needs onnxruntime and the
``tokenizers`` library only (the folder's ``tokenizer.json``, set up as transformers' fast tokenizer is: same token
ids). The export needs torch and transformers, so such a process uses the fp32 file that a full install exported
(``xlir models fetch`` does it) whatever library versions made it, as long as it was made from the same weights
and config, and refuses with the fix to apply when there is none; the int8 and f16w files need no torch, and one
of them is used without the fp32 file when its record names the fp32 record beside it (a serving image ships the
f16w file and the two records only).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from models.base import (
    DEFAULT_TOKEN_BUDGET,
    TORCH_HINT,
    LocalEncoder,
    ProgressFn,
    folder_checksum,
    offline_transformers,
    torch_available,
)
from models.registry import ResolvedModel, resolve_model, xlir_home
from xlir.errors import ModelInvalid

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the export recipe changes: every cached file is then exported again
OPSET = 17
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
F16W_FILE = "model-f16w.onnx"
# the files derived from the fp32 export without torch: variant -> file name (the fp32 file is ``model.onnx``)
DERIVED_FILES = {"int8": INT8_FILE, "f16w": F16W_FILE}
VARIANTS = ("fp32", "int8", "f16w")
BACKEND_OF_VARIANT = {"fp32": "onnx", "int8": "onnx-int8", "f16w": "onnx-f16w"}
VARIANT_OF_BACKEND = {b: v for v, b in BACKEND_OF_VARIANT.items()}
# fp32 initializers with at least this many elements are stored in fp16 by the f16w transform (weight matrices and
# the embedding tables; biases and LayerNorm vectors, 384-1536 elements for e5-small, stay fp32)
F16W_MIN_ELEMENTS = 4096
INSTALL_HINT = "pip install 'xlir[onnx]' (or: pip install onnxruntime onnx)"
# the libraries whose versions an export (fp32) or a quantization (int8) records: another version makes it again
EXPORT_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime")
QUANTIZE_PACKAGES = ("onnx", "onnxruntime")
DERIVE_PACKAGES = {"int8": QUANTIZE_PACKAGES, "f16w": ("onnx",)}
# config.model_type values whose graphs ONNX Runtime's BERT optimizer knows how to fuse
FUSABLE_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
STALE_TEMP_SECONDS = 3600  # temporary folders of exports older than this were killed: removed at the next export

# sentence-transformers module classes (the last part of modules.json's "type") the ONNX encoder reproduces
SUPPORTED_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}
POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
UNSUPPORTED_POOLING_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def onnx_available() -> bool:
    """Whether onnxruntime and onnx are importable (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _require_onnx() -> None:
    if not onnx_available():
        raise ModelInvalid(f"the onnx, onnx-int8 and onnx-f16w encoder backends need onnxruntime and onnx: "
                           f"{INSTALL_HINT}, or use --backend torch (XLIR_BACKEND=torch)")


# --------------------------------------------------------------------------------------------------
# The sentence-transformers folder: which modules, which pooling
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    transformer_dir: Path
    pooling: str  # cls | mean | max | mean_sqrt_len
    max_seq_length: int | None  # sentence_bert_config.json, if it says


def _pooling_mode(config: dict[str, Any], where: Path) -> str:
    if isinstance(config.get("pooling_mode"), str):  # newer configs name the mode directly
        named = str(config["pooling_mode"]).removesuffix("_tokens").removesuffix("_token")
        modes = [named] if named in POOLING_KEYS.values() else []
        if not modes:
            raise ModelInvalid(f"{where}: pooling mode {config['pooling_mode']!r} is not supported by the ONNX "
                               "backends (cls, mean, max, mean_sqrt_len): use --backend torch")
        return modes[0]
    bad = [k for k in UNSUPPORTED_POOLING_KEYS if config.get(k)]
    modes = [name for key, name in POOLING_KEYS.items() if config.get(key)]
    if bad or len(modes) != 1:
        raise ModelInvalid(f"{where}: the ONNX backends support exactly one of cls, mean, max or mean_sqrt_len "
                           f"pooling; this folder asks for {', '.join(bad + modes) or 'none'}: use --backend torch")
    return modes[0]


def read_layout(folder: Path) -> FolderLayout:
    """What the folder's ``modules.json`` says (a plain transformers folder: mean pooling, as sentence-transformers
    does). Modules other than Transformer, Pooling and Normalize (a Dense projection, ...) are refused."""
    max_len = None
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return FolderLayout(folder, "mean", None)
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"{modules_file}: unreadable ({exc})") from exc
    transformer_dir, pooling = folder, None
    for m in modules:
        mtype = str(m.get("type", ""))
        kind = SUPPORTED_MODULES.get(mtype.rsplit(".", 1)[-1]) if mtype.startswith("sentence_transformers.") else None
        if kind is None:
            raise ModelInvalid(f"{folder}: module {m.get('type')!r} is not supported by the ONNX backends "
                               "(Transformer, Pooling and Normalize only): use --backend torch")
        sub = folder / str(m.get("path", ""))
        if kind == "transformer":
            transformer_dir = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.is_file():
                max_len = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
        elif kind == "pooling":
            cfg_file = sub / "config.json"
            if not cfg_file.is_file():
                raise ModelInvalid(f"{cfg_file}: missing pooling config")
            pooling = _pooling_mode(json.loads(cfg_file.read_text(encoding="utf-8")), cfg_file)
    return FolderLayout(transformer_dir, pooling or "mean", int(max_len) if max_len else None)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Token vectors ``(batch, seq, dim)`` and the attention mask -> one vector per row, as sentence-transformers'
    Pooling module computes it."""
    m = mask[..., None].astype(np.float32)
    if mode == "cls":
        return hidden[:, 0].astype(np.float32)
    if mode == "max":
        return np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1).astype(np.float32)
    total = (hidden * m).sum(axis=1)
    count = np.maximum(m.sum(axis=1), 1e-9)
    if mode == "mean":
        return (total / count).astype(np.float32)
    if mode == "mean_sqrt_len":
        return (total / np.sqrt(count)).astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(vecs: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vecs / norms, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Export, quantization and the cache
# --------------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


def export_key(checksum: str, transformer_dir: Path, kind: str) -> dict[str, Any]:
    """What a cached file must have been made from; any difference means exporting again (the versions are those
    of the libraries that make the file: :data:`EXPORT_PACKAGES` for fp32, :data:`DERIVE_PACKAGES` for the others)."""
    config = transformer_dir / "config.json"
    config_sha = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""
    return {
        "format": EXPORT_FORMAT, "kind": kind, "opset": OPSET, "source_sha256": checksum,
        "config_sha256": config_sha,
        "versions": {p: _version(p) for p in (EXPORT_PACKAGES if kind == "fp32" else DERIVE_PACKAGES[kind])},
    }


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_current(path: Path, key: dict[str, Any], *, versions: bool = True) -> bool:
    """The file exists, its record matches ``key`` and its size is the recorded one. ``versions=False``: the
    library versions that made it may differ (a process that cannot make the file again uses it all the same)."""
    meta = read_meta(path)
    if meta is None or not path.is_file() or path.stat().st_size != meta.get("bytes"):
        return False
    return _key_matches(meta.get("key"), key, versions=versions)


def _key_matches(recorded: Any, key: dict[str, Any], *, versions: bool) -> bool:
    """A recorded key is ``key`` (``versions=False``: but for the library versions)."""
    if versions or not isinstance(recorded, dict):
        return bool(recorded == key)
    return {k: v for k, v in recorded.items() if k != "versions"} == {k: v for k, v in key.items() if k != "versions"}


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
            pass
    except OSError:
        return False
    return True


def _inside_installed_packages(folder: Path) -> bool:
    """Whether the folder lies in a site-packages directory (pip owns it: nothing of ours goes there)."""
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    roots.add(site.getusersitepackages())
    resolved = folder.resolve()
    return any(resolved.is_relative_to(Path(r).resolve()) for r in roots if r)


def cache_dir(resolved: ResolvedModel, checksum: str, home: Path | None = None) -> Path:
    """``<model folder>/onnx`` for a built or local folder that can be written, else
    ``$XLIR_HOME/onnx/<checksum[:16]>`` (always for a model shipped inside an installed package)."""
    beside = resolved.path / "onnx"
    if (resolved.spec.packaged is None and not _inside_installed_packages(resolved.path)
            and _writable_dir(beside)):
        return beside
    return (home or xlir_home()) / "onnx" / checksum[:16]


def _remove_stale_temps(folder: Path, name: str) -> None:
    now = time.time()
    for p in folder.glob(f".{name}.*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def produce(target: Path, key: dict[str, Any], make: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Write ``target`` with ``make(tmp_path)`` in a temporary folder beside it, rename it into place, then
    write its record. Until the new record exists the target counts as missing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    meta_path(target).unlink(missing_ok=True)  # the old pair is invalid from now on, whatever happens next
    _remove_stale_temps(target.parent, target.name)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
        tmp = Path(work) / target.name
        info = make(tmp)
        if not tmp.is_file():
            raise ModelInvalid(f"the export to {target} produced no file")
        os.replace(tmp, target)
    meta = {**info, "key": key, "id": uuid.uuid4().hex, "bytes": target.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json_atomic(meta_path(target), meta)
    return meta


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter's deprecation and tracer warnings, transformers' load chatter and the quantizer's advice to
    pre-process (logged on the root logger) are not the user's business."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    added_handler = logging.NullHandler() if not root.handlers else None  # keeps logging.warning from basicConfig
    drop = _Drop()
    if added_handler is not None:
        root.addHandler(added_handler)
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
        if added_handler is not None:
            root.removeHandler(added_handler)


def torch_onnx_export(module: Any, out: Path, *, output: str, output_axes: dict[int, str],
                      vocab_size: int = 250_000) -> None:
    """``torch.onnx.export`` of a module taking ``(input_ids, attention_mask)``, batch and sequence dynamic."""
    import torch

    # two rows, the second padded: the traced graph takes the masked path
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]], dtype=torch.long).clamp(max=vocab_size - 1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    # the TorchScript exporter (dynamic axes, no onnxscript needed); torch >= 2.9 defaults to the dynamo one
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    module.eval()
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            module, (ids, mask), str(out), input_names=["input_ids", "attention_mask"],
            output_names=[output], opset_version=OPSET, do_constant_folding=True,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, output: output_axes}, **legacy,
        )


def optimize_export(raw: Path, out: Path, cfg: Any) -> dict[str, int]:
    """ONNX Runtime's fusions for BERT-like graphs (``raw`` -> ``out``, ``raw`` removed); other models as they are."""
    fused: dict[str, int] = {}
    if cfg.model_type in FUSABLE_TYPES:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet_export():
            opt = optimize_model(str(raw), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                 hidden_size=int(cfg.hidden_size), opt_level=1, use_gpu=False)
            fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(out))
        raw.unlink()
    else:
        raw.replace(out)
    return fused


def export_fp32(transformer_dir: Path, out: Path) -> dict[str, Any]:
    """``torch.onnx.export`` of the folder's transformer, then ONNX Runtime's fusions for BERT-like graphs."""
    offline_transformers()
    import torch
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    try:
        model = AutoModel.from_pretrained(str(transformer_dir), attn_implementation="eager", local_files_only=True)
    except Exception as exc:  # a broken folder reads as a model problem
        raise ModelInvalid(f"cannot load the transformer in {transformer_dir} for the ONNX export: {exc}") from exc
    cfg = model.config
    raw = out.with_name("raw.onnx")
    torch_onnx_export(LastHidden(model), raw, output="last_hidden_state", output_axes={0: "batch", 1: "sequence"},
                      vocab_size=int(cfg.vocab_size))
    del model
    fused = optimize_export(raw, out, cfg)
    return {"fused_ops": fused, "model_type": cfg.model_type}


def quantize_int8(src: Path, out: Path) -> dict[str, Any]:
    """Dynamic quantization: int8 weights (MatMul, attention, embeddings), activations quantized per call.

    Per-channel weight scales: with one scale per tensor the worst rows of e5-small fell to cos 0.96 against
    torch (0.81 for all-MiniLM), per channel 0.99 (0.97), at the same speed and size."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_export():
        # the fused contrib ops carry no inferred types: their outputs are float
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"quantization": "dynamic: int8 weights per output channel, uint8 activations per call"}


F16_MAX = float(np.finfo(np.float16).max)


def fp16_weights(model: Any, min_elements: int = F16W_MIN_ELEMENTS) -> dict[str, int]:
    """In place: every fp32 initializer of the main graph with at least ``min_elements`` elements is stored in fp16
    (rounded to nearest, clipped to the fp16 range) behind a ``Cast(to=FLOAT)`` node whose output carries the
    initializer's former name, so its consumers (the fused contrib ops included) are unchanged. ONNX Runtime folds
    the casts at session load (constant folding): the weights are fp32 again in memory and the compute is fp32;
    the vectors differ from the fp32 file's by the weights' rounding only. Initializers that are also graph inputs
    (overridable) are left alone. Returns the counts for the file's record."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | inputs
    kept: list[Any] = []
    casts: list[Any] = []
    elements = 0
    for init in graph.initializer:
        size = int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
        if init.data_type != onnx.TensorProto.FLOAT or init.name in inputs or size < min_elements:
            kept.append(init)
            continue
        half_name = f"{init.name}_fp16"
        while half_name in taken:
            half_name += "_"
        taken.add(half_name)
        half = np.clip(numpy_helper.to_array(init), -F16_MAX, F16_MAX).astype(np.float16)
        kept.append(numpy_helper.from_array(half, half_name))
        casts.append(helper.make_node("Cast", [half_name], [init.name], name=f"{half_name}_cast",
                                      to=onnx.TensorProto.FLOAT))
        elements += size
    nodes = list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first: the node list stays in topological order
    return {"fp16_initializers": len(casts), "fp16_elements": elements, "min_elements": min_elements}


def derive_f16w(src: Path, out: Path) -> dict[str, Any]:
    """The fp32 file with its large weights stored in fp16 (:func:`fp16_weights`): half the size, fp32 compute."""
    import onnx

    model = onnx.load(str(src))
    counts = fp16_weights(model)
    onnx.save(model, str(out))
    return {"f16w": counts}


def _record_matches(path: Path, key: dict[str, Any], *, versions: bool) -> bool:
    """The file's record (the file itself may be absent) was written for ``key``."""
    return _key_matches((read_meta(path) or {}).get("key"), key, versions=versions)


def resolve_variant(quantized: bool, variant: str | None) -> str:
    """``variant`` (``quantized=True`` is ``int8``, neither is ``fp32``), checked against :data:`VARIANTS`."""
    variant = variant or ("int8" if quantized else "fp32")
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return variant


def ensure_onnx(resolved: ResolvedModel, checksum: str, *, quantized: bool = False, variant: str | None = None,
                home: Path | None = None, layout: FolderLayout | None = None) -> Path:
    """The cached ONNX file of a model (exported, quantized or converted now when missing or stale): ``variant``
    ``fp32`` (the export), ``int8`` (its dynamic quantization; ``quantized=True`` is the same) or ``f16w`` (its
    weights stored in fp16).

    A derived file (int8, f16w) whose record names the fp32 export recorded beside it (``model.onnx.json``) is used
    without the fp32 file: a serving image ships the derived file and the two records only. Without torch, a file
    made with other library versions is used all the same when it cannot be made again here."""
    _require_onnx()
    variant = resolve_variant(quantized, variant)
    layout = layout or read_layout(resolved.path)
    folder = cache_dir(resolved, checksum, home)
    fp32 = folder / FP32_FILE
    key = export_key(checksum, layout.transformer_dir, "fp32")
    can_export = torch_available()
    derived = folder / DERIVED_FILES[variant] if variant != "fp32" else None
    dkey: dict[str, Any] = {}
    if derived is not None:
        dkey = {**export_key(checksum, layout.transformer_dir, variant), "from": (read_meta(fp32) or {}).get("id")}
        if _record_matches(fp32, key, versions=can_export) and is_current(derived, dkey):
            return derived
    if not can_export:  # a serving install: it cannot export, it uses what a full install exported
        if not is_current(fp32, key, versions=False):
            if (derived is not None and _record_matches(fp32, key, versions=False)
                    and is_current(derived, dkey, versions=False)):
                return derived  # made by other onnx versions, and there is no fp32 file here to make it again
            wanted = f"{FP32_FILE} and its {meta_path(fp32).name}"
            if derived is not None:
                wanted = (f"{FP32_FILE} and its {meta_path(fp32).name} (or {derived.name}, its "
                          f"{meta_path(derived).name} and {meta_path(fp32).name})")
            raise ModelInvalid(
                f"no ONNX export of {resolved.name} for these weights in {folder}, and exporting one needs torch and "
                f"transformers, which this install lacks: run `xlir models fetch {resolved.name}` (it exports) on a "
                f"machine with the full install ({TORCH_HINT}) and copy the exported {wanted} into {folder} (or "
                f"{TORCH_HINT} here)")
    elif not is_current(fp32, key):
        log.info("exporting %s to ONNX in %s (once)", resolved.name, folder)
        produce(fp32, key, lambda tmp: export_fp32(layout.transformer_dir, tmp))
    if derived is None:
        return fp32
    dkey = {**dkey, "from": (read_meta(fp32) or {}).get("id")}  # the fp32 file may have been exported just now
    if not is_current(derived, dkey):
        log.info("deriving the %s file of %s in %s (once)", variant, resolved.name, folder)
        make = quantize_int8 if variant == "int8" else derive_f16w  # looked up now (tests replace them)
        produce(derived, dkey, lambda tmp: make(fp32, tmp))
    return derived


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an added-token record."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(transformer_dir: Path, max_length: int) -> tuple[Any, int]:
    """The folder's tokenizer in the ``tokenizers`` library (no transformers, no torch), set up as transformers'
    fast tokenizer is for ``tok(texts, truncation=True, max_length=max_length)``: the special tokens of the file's
    post-processor added, longest-first truncation on the right to ``max_length`` tokens (special tokens
    included), no padding. Returns it with the id of the padding token (``tokenizer_config.json``'s).

    A folder without ``tokenizer.json`` needs transformers to convert its tokenizer."""
    from tokenizers import Tokenizer

    file = transformer_dir / "tokenizer.json"
    if file.is_file():
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:
            raise ModelInvalid(f"{file}: the tokenizers library cannot read it ({exc})") from exc
    else:
        if importlib.util.find_spec("transformers") is None:
            raise ModelInvalid(f"{transformer_dir} has no tokenizer.json, and converting its tokenizer needs "
                               f"transformers: {TORCH_HINT}, or save the tokenizer as tokenizer.json")
        offline_transformers()
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True, use_fast=True)
            tok = hf.backend_tokenizer
        except Exception as exc:
            raise ModelInvalid(f"cannot load the tokenizer of {transformer_dir}: {exc}") from exc
    tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    tok.no_padding()
    config_file = transformer_dir / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"{config_file}: unreadable ({exc})") from exc
    pad_name = _token_name(config.get("pad_token")) if isinstance(config, dict) else None
    pad_id = tok.token_to_id(pad_name) if pad_name else None
    return tok, int(pad_id) if pad_id is not None else 0


def export_for_serving(name_or_path: str, home: Path | None = None) -> Path | None:
    """The fp32 ONNX file of a transformer model, exported now if missing or stale (``xlir models fetch`` calls
    it, so that a serving install without torch finds the file in the model folder). None when there is nothing
    to export: a model of another kind (a static student needs no runtime, a linear one uses its base's export),
    or this install cannot export (no torch or no onnx) and no usable file exists; a folder whose modules the
    ONNX backends do not support raises :class:`ModelInvalid`."""
    resolved = resolve_model(name_or_path, home)
    if getattr(resolved.spec, "kind", "transformer") != "transformer":
        return None
    layout = read_layout(resolved.path)
    checksum = folder_checksum(resolved.path)
    if not (torch_available() and onnx_available()):
        fp32 = cache_dir(resolved, checksum, home) / FP32_FILE
        usable = is_current(fp32, export_key(checksum, layout.transformer_dir, "fp32"), versions=False)
        return fp32 if usable else None
    return ensure_onnx(resolved, checksum, quantized=False, home=home, layout=layout)


def cpu_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when set (a Ray task or
    actor gets its CPU share there, so two 1-CPU tasks on 2 cores do not both spin 2 threads)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(omp)) if omp.isdigit() and int(omp) > 0 else cores


def session_options(threads: int, spin: bool) -> Any:
    """ONNX Runtime session options of every xlir model: ``threads`` intra-op threads, sequential, full graph
    optimisation, quiet.

    ONNX Runtime's threads busy-wait for the next call by default (``spin``): right for back-to-back batches, but in
    the server they would burn a core while BM25 and FAISS run between encodings (measured: 33 ms of CPU per query
    instead of 25 ms with 10 ms of other work per call, for 2.5 ms more latency per single encoding)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


# --------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------


class OnnxEncoder(LocalEncoder):
    """The :class:`models.encoders.Encoder` protocol on ONNX Runtime (CPU; CUDA when onnxruntime-gpu is there)."""

    def __init__(self, resolved: ResolvedModel, *, quantized: bool = False, variant: str | None = None,
                 device: str = "cpu", home: Path | None = None, threads: int | None = None,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, spin: bool = True) -> None:
        _require_onnx()
        import onnxruntime as ort

        variant = resolve_variant(quantized, variant)
        self._resolved = resolved
        self._spec = resolved.spec
        self.variant = variant
        self.backend = BACKEND_OF_VARIANT[variant]
        self.token_budget = token_budget
        layout = read_layout(resolved.path)
        self.pooling = layout.pooling
        self._checksum = folder_checksum(resolved.path)
        providers = ["CPUExecutionProvider"]
        self.device = "cpu"
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelInvalid(f"backend {self.backend} on {device} needs onnxruntime-gpu; "
                                   "use --backend torch on a GPU")
            providers, self.device = ["CUDAExecutionProvider", "CPUExecutionProvider"], device
        config_file = layout.transformer_dir / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        limits = [self._spec.max_seq_length, layout.max_seq_length or 512]
        max_pos = config.get("max_position_embeddings")
        if isinstance(max_pos, int) and max_pos > 0:
            limits.append(max_pos)
        self.max_seq_length = min(limits)
        self._tok, self._pad_id = load_tokenizer(layout.transformer_dir, self.max_seq_length)
        self.model_path = ensure_onnx(resolved, self._checksum, variant=variant, home=home, layout=layout)
        opts = session_options(threads or cpu_cores(), spin)
        self.spin = spin
        try:
            self._session = ort.InferenceSession(str(self.model_path), opts, providers=providers)
        except Exception as exc:
            raise ModelInvalid(f"onnxruntime cannot load {self.model_path}: {exc}; delete the file to export "
                               "it again") from exc
        dim = self._session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            dim = config.get("hidden_size")
        if not isinstance(dim, int):
            raise ModelInvalid(f"{self.model_path} does not declare its hidden size")
        self._dim = int(dim)
        # the tokenizer is shared by the threads that encode; its settings never change after this point (the calls
        # only read it), and the lock, held for the tokenization only, keeps it that way
        self._tokenizer_lock = threading.Lock()

    @property
    def checksum(self) -> str:
        return self._checksum

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._tokenizer_lock:
            out = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return [list(e.ids) for e in out]

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self._ids(texts)]

    def _run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        hidden = self._session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return l2_normalize(pool(hidden, mask, self.pooling))

    def _encode_batched(self, texts: Sequence[str], max_rows: int, progress: ProgressFn | None) -> np.ndarray:
        ids = self._ids(texts)
        return self._in_batches([len(x) for x in ids], max_rows, progress,
                                lambda rows: self._run([ids[i] for i in rows]))
