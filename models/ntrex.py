"""NTREX-128 (``../shared/data/ntrex``): 1,997 English news sentences (123 documents) and their human translations
into 123 languages, split **once, by document** into a training part and an evaluation part.

The split is recorded in one place, ``data/ntrex_split.json`` (the evaluation part's document ids, the rule and the
counts), and this module is its only reader: distillation trains on :func:`parallel` ``(part="train")`` only,
evaluations (the mining tasks of ``benchmarks/mining_ntrex.py``, student quality) use ``part="eval"`` only. A
document's sentences are never in both parts.

The rule (:func:`split_documents`): documents ordered by ``sha256(SALT + id)``, the first ``round(0.2 * n)`` are the
evaluation part (25 documents, 458 lines; training: 98 documents, 1,539 lines). It depends on the ids alone, not on
their order in the file; :func:`check_split` recomputes it and fails if the recorded file and the data disagree.
``python -m models.ntrex`` writes the record (run once; a changed record is a reviewed commit).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from xlir.errors import CorpusError

REPO = Path(__file__).resolve().parent.parent
SPLIT_FILE = REPO / "data" / "ntrex_split.json"
SALT = "xlir-ntrex-split-v1:"
EVAL_SHARE = 0.2
PARTS = ("train", "eval")
SOURCE = "newstest2019-src.eng.txt.gz"
REF_PREFIX, REF_SUFFIX = "newstest2019-ref.", ".txt.gz"  # newstest2019-ref-2.spa (a second reference) is not used


def data_dir() -> Path:
    """``$XLIR_BENCH_DATA/ntrex``, else ``shared/data/ntrex`` next to the repository (read in place)."""
    root = os.environ.get("XLIR_BENCH_DATA")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "ntrex"


def _read(path: Path) -> list[str]:
    if not path.is_file():
        raise CorpusError(f"{path} does not exist (NTREX-128 is read from ../shared/data/ntrex)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def document_ids(folder: Path | None = None) -> list[str]:
    """The document of each line (line i of every file belongs to document ``document_ids()[i]``)."""
    return _read((folder or data_dir()) / "DOCUMENT_IDS.tsv.gz")


def split_documents(ids: list[str] | set[str], eval_share: float = EVAL_SHARE) -> tuple[set[str], set[str]]:
    """(training documents, evaluation documents) by the module's rule."""
    docs = sorted(set(ids), key=lambda d: hashlib.sha256((SALT + d).encode()).hexdigest())
    n_eval = round(eval_share * len(docs))
    return set(docs[n_eval:]), set(docs[:n_eval])


def load_split(path: Path = SPLIT_FILE) -> set[str]:
    """The evaluation part's document ids, as recorded."""
    return set(json.loads(path.read_text(encoding="utf-8"))["eval_documents"])


def check_split(folder: Path | None = None, path: Path = SPLIT_FILE) -> None:
    """The recorded split is the rule applied to the data's documents; raises ``CorpusError`` if not."""
    _, want = split_documents(document_ids(folder))
    if load_split(path) != want:
        raise CorpusError(f"{path} does not match the split rule over the documents of {folder or data_dir()}")


def line_numbers(part: str, folder: Path | None = None) -> list[int]:
    """The line numbers (0-based) of ``part``'s sentences, in file order."""
    if part not in PARTS:
        raise CorpusError(f"unknown NTREX part {part!r}; choose from {', '.join(PARTS)}")
    held_out = load_split()
    return [i for i, doc in enumerate(document_ids(folder)) if (doc in held_out) == (part == "eval")]


def languages(folder: Path | None = None) -> list[str]:
    """The NTREX codes that have a reference file (``deu``, ``zho-CN``, ...), sorted."""
    folder = folder or data_dir()
    return sorted(p.name.removeprefix(REF_PREFIX).removesuffix(REF_SUFFIX)
                  for p in folder.glob(f"{REF_PREFIX}*{REF_SUFFIX}"))


def parallel(code: str, part: str, folder: Path | None = None) -> list[tuple[str, str]]:
    """``(English source, translation into code)`` for every line of ``part``, in file order."""
    folder = folder or data_dir()
    src, ref = _read(folder / SOURCE), _read(folder / f"{REF_PREFIX}{code}{REF_SUFFIX}")
    if len(src) != len(ref):
        raise CorpusError(f"NTREX {code}: {len(ref)} lines for {len(src)} source lines")
    return [(src[i], ref[i]) for i in line_numbers(part, folder)]


def main() -> None:
    """Write ``data/ntrex_split.json`` from the rule."""
    ids = document_ids()
    train, held_out = split_documents(ids)
    record = {"rule": f"documents ordered by sha256({SALT!r} + id); the first round({EVAL_SHARE} * n) are eval",
              "documents": {"train": len(train), "eval": len(held_out)},
              "lines": {"train": sum(d in train for d in ids), "eval": sum(d in held_out for d in ids)},
              "eval_documents": sorted(held_out)}
    SPLIT_FILE.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{SPLIT_FILE}: {record['documents']} documents, {record['lines']} lines")


if __name__ == "__main__":
    main()
