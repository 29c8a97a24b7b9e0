"""A large **synthetic** index for serving-speed tests (issue 5.4): real passage texts, stand-in vectors.

Run: ``python -m benchmarks.big_index --n 1000000`` (prints the index directory; about 15-25 minutes on 2 cores
the first time, then cached under ``$XLIR_HOME/cache/big-index/``).

Embedding a million passages with e5-small on 2 CPU cores would take many hours, so this index is written by
the product's own write stage (:func:`indexer.write.write_index`: docstore, BM25, shards, ``--index auto`` FAISS
plan and tuning, centroids, manifest) with one substitution, and is labelled as such in its manifest
(``build.synthetic``):

- **Texts** are real: passage ``i`` of :class:`benchmarks.synth.SynthCorpus` (seed 0, ~100 BM25 tokens, 12
  languages, sentences of the benchmark data recombined), with its language given (no language ID), so BM25 is
  built and searched over a million real multilingual passages.
- **Vectors** are not e5-small embeddings of those texts: they come from the seeded generative model of
  :func:`benchmarks.speed_faiss.synth_vectors`, whose statistics (cosines, nearest-neighbour structure, spectrum,
  IVF recall) were fitted to real e5-small passage embeddings, and are handed to the write stage in document order.
  **They are recorded under the name and weights checksum of e5-small**: that is the only way ``xlir serve``
  accepts to serve the index with the real e5-small *query* encoder (the server refuses vectors of another
  encoder), which is the point: the measured latency includes real query encoding, FAISS search over a million
  384-dim vectors and BM25 over a million documents. Dense rankings on this index are meaningless; only its speed
  is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.build import chunks, staged
from indexer.centering import AUTO, MODES
from indexer.langid import normalize_lang
from indexer.manifest import MANIFEST, Manifest
from indexer.readers import Document
from indexer.write import Batch, EncoderInfo, WriteOptions, write_index
from models.base import folder_checksum
from models.registry import resolve_model, xlir_home
from xlir.errors import ModelInvalid

CACHE_VERSION = 2  # 2: the HNSW plan above 200k vectors and the recalibrated generator
DIM = 384


def model_identity(model: str = "e5-small", home: Path | None = None) -> tuple[str, str]:
    """(name, weights checksum) of a built model, without loading it. The stand-in vectors are e5-like and 384-dim,
    so only a transformer model of that width (e5-small or one of its transformer students) can be recorded."""
    resolved = resolve_model(model, home)
    config = resolved.path / "config.json"
    width = json.loads(config.read_text()).get("hidden_size") if config.is_file() else None
    if resolved.spec.kind != "transformer" or width != DIM:
        raise ModelInvalid(f"{model}: the synthetic index stands in for a {DIM}-dim transformer encoder "
                           "(e5-small or a transformer student), not this model")
    return resolved.name, folder_checksum(resolved.path)


def documents(n: int, seed: int = 0, data_dir: Path | None = None) -> Iterator[Document]:
    from benchmarks.synth import SynthCorpus, load_pool

    corpus = SynthCorpus(load_pool(data_dir), seed=seed)
    for p in corpus.passages(n):
        yield Document(id=p.id, text=p.text, title="", lang=p.lang)


def cache_dir(n: int, seed: int, checksum: str, index_type: str, home: Path | None = None,
              centering: str = "auto") -> Path:
    root = (home or xlir_home()) / "cache" / "big-index"
    tag = "" if centering == "auto" else f"-c{centering}"
    return root / f"synth-n{n}-s{seed}-{index_type}{tag}-{checksum[:16]}-v{CACHE_VERSION}"


def build(n: int, out: Path, *, seed: int = 0, model: str = "e5-small", index_type: str = "auto",
          home: Path | None = None, progress: bool = True, centering: str = "auto") -> Manifest:
    """Build the synthetic index of ``n`` passages at ``out`` (overwritten) and label it in its manifest."""
    from benchmarks.speed_faiss import synth_vectors

    name, checksum = model_identity(model, home)
    t0 = time.perf_counter()
    vectors, _ = synth_vectors(n, DIM, seed=seed)
    t_vec = time.perf_counter() - t0

    def batches() -> Iterator[Batch]:
        start = 0
        for docs in chunks(documents(n, seed), 8192):
            yield docs, [normalize_lang(d.lang or "") for d in docs], vectors[start : start + len(docs)]
            start += len(docs)

    opts = WriteOptions(index_type=index_type, progress=progress, centering=centering)
    with staged(out, overwrite=True) as tmp:
        manifest = write_index(tmp, batches(), opts, EncoderInfo(name, checksum, DIM))
        if manifest.doc_count != n:
            raise RuntimeError(f"the index holds {manifest.doc_count} documents, expected {n}")
        manifest.build["synthetic"] = {
            "what": "texts: benchmarks.synth passages (real sentences recombined); vectors: "
                    "benchmarks.speed_faiss.synth_vectors (e5-like statistics), NOT embeddings of the texts; the "
                    f"manifest records {name}'s name and checksum so the server runs the real {name} query encoder",
            "n": n, "seed": seed, "vector_seconds": round(t_vec, 3),
        }
        manifest.sources = [f"synthetic:benchmarks.big_index(n={n}, seed={seed})"]
        manifest.write(tmp)
    return manifest


def cached(n: int, *, seed: int = 0, model: str = "e5-small", index_type: str = "auto", home: Path | None = None,
           progress: bool = True, centering: str = "auto", rebuild: bool = False) -> Path:
    """The cached synthetic index of ``n`` passages, built first if missing (or ``rebuild``)."""
    _, checksum = model_identity(model, home)
    out = cache_dir(n, seed, checksum, index_type, home, centering)
    if rebuild or not (out / MANIFEST).is_file():
        build(n, out, seed=seed, model=model, index_type=index_type, home=home, progress=progress,
              centering=centering)
    return out


def summary(path: Path) -> dict[str, Any]:
    m = Manifest.read(path)
    vs = m.vector_sets["main"]
    return {"path": str(path), "docs": m.doc_count, "index_type": vs.index_type, "centering": vs.centering,
            "shards": [s.index.get("main") for s in m.shards], "build": m.build,
            "bytes": sum(f.size for f in m.files.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="e5-small", help="the encoder whose identity the index records")
    ap.add_argument("--index", default="auto", help="FAISS kind (auto: the product's plan)")
    ap.add_argument("--centering", default="auto", choices=(AUTO, *MODES),
                    help="auto (the product default: full on this multilingual "
                    "index) | off | offset | full; the stand-in vectors carry no language signal, so centring only "
                    "removes their common direction")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    out = cached(args.n, seed=args.seed, model=args.model, index_type=args.index, progress=not args.no_progress,
                 centering=args.centering, rebuild=args.rebuild)
    print(json.dumps(summary(out), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
