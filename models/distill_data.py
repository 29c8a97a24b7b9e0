"""The training data of the students (``models/students.py``), read in place from ``../shared/data``:

- :func:`ntrex_pairs`: NTREX-128's **training part only** (``models/ntrex.py``; the evaluation part, Tatoeba and
  XQuAD-R are how the students are measured and are never read here), as ``(language, English, translation)``;
- :func:`qa_texts`: monolingual text, the contexts of ``qa-train`` (8 languages), clipped to a few hundred
  characters so that the teacher and the student see the same short text, and optionally its questions;
- :func:`teacher_vectors`: the teacher's embeddings of texts, computed once and kept in the one embedding cache
  (``models/cache.py``, ``$XLIR_HOME/cache/embeddings``), so every run and every student reuses them.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import ntrex
from models.base import Encoder
from models.cache import load_or_compute
from models.registry import xlir_home
from xlir.errors import CorpusError

REPO = Path(__file__).resolve().parent.parent
QA_FILES = {  # language -> file of ../shared/data/qa-train (SQuAD layout)
    "ar": "ar-arcd-train.json.gz", "en": "en-tydiqa-goldp-train.json.gz", "fr": "fr-piaf.json.gz",
    "id": "id-facqa-train.json.gz", "ja": "ja-jaquad-train.json.gz", "ko": "ko-tydiqa-goldp-train.json.gz",
    "pt": "pt-faquad-train.json.gz", "zh": "zh-cmrc2018-train.json.gz",
}
CLIP_CHARS = 300
NO_SPACE_LANGS = frozenset({"ja", "zh"})


@dataclass(frozen=True)
class Pair:
    lang: str  # NTREX code (``deu``, ``zho-CN``, ...)
    line: int  # line of the NTREX files (0-based)
    english: str
    translation: str


def shared_data() -> Path:
    root = os.environ.get("XLIR_BENCH_DATA")
    return Path(root) if root else REPO.parent / "shared" / "data"


def ntrex_pairs(langs: Sequence[str] | None = None, folder: Path | None = None) -> list[Pair]:
    """Every (English, translation) pair of NTREX's training part, for ``langs`` (default: every language but
    English), in language then line order. Empty translations are skipped."""
    folder = folder or ntrex.data_dir()
    codes = [c for c in (langs or ntrex.languages(folder)) if not c.startswith("eng")]
    lines = ntrex.line_numbers("train", folder)
    out: list[Pair] = []
    for code in codes:
        pairs = ntrex.parallel(code, "train", folder)
        out.extend(Pair(code, line, en, tr) for line, (en, tr) in zip(lines, pairs, strict=True) if tr.strip())
    return out


def clip(text: str, lang: str, max_chars: int = CLIP_CHARS) -> str:
    """``text`` cut to about ``max_chars`` characters, at a space where the language writes them."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if lang not in NO_SPACE_LANGS and " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut


def qa_texts(per_lang: int, seed: int = 0, folder: Path | None = None,
             questions: int = 0) -> list[tuple[str, str]]:
    """``(language, text)``: up to ``per_lang`` distinct qa-train contexts per language (clipped), then up to
    ``questions`` distinct questions per language (short, query-like text), each a seeded sample."""
    folder = folder or shared_data() / "qa-train"
    out: list[tuple[str, str]] = []
    for lang, name in sorted(QA_FILES.items()):
        path = folder / name
        if not path.is_file():
            raise CorpusError(f"{path} does not exist (qa-train is read from ../shared/data/qa-train)")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        paragraphs = [p for art in data["data"] for p in art["paragraphs"]]
        contexts = sorted({p["context"] for p in paragraphs if p["context"].strip()})
        random.Random(f"{seed}:{lang}").shuffle(contexts)
        out.extend((lang, clip(c, lang)) for c in contexts[:per_lang])
        if questions > 0:
            asked = sorted({" ".join(q["question"].split()) for p in paragraphs for q in p.get("qas", [])} - {""})
            random.Random(f"{seed}:{lang}:q").shuffle(asked)
            out.extend((lang, clip(q, lang)) for q in asked[:questions])
    return out


def load_teacher(name: str = "e5-small", home: Path | None = None, backend: str = "onnx") -> Encoder:
    """The teacher encoder for :func:`teacher_vectors` (ONNX fp32 on sentence batches by default: the fastest at
    torch quality). Here, not in the students' modules, so that ``models/encoders.py``, which opens those
    students, and the students never import each other."""
    from models.encoders import load_encoder

    teacher: Encoder = load_encoder(name, home=home, backend=backend, workload="sentences")
    return teacher


def teacher_vectors(teacher: Encoder, texts: Sequence[str], kind: str = "passage",
                    cache: Path | None = None) -> np.ndarray:
    """The teacher's vectors of ``texts`` (``kind`` ``passage`` or ``query``: the prefix it applies), from the
    embedding cache when they are there."""
    folder = cache or xlir_home() / "cache" / "embeddings"
    encode = teacher.encode_passages if kind == "passage" else teacher.encode_queries

    def compute() -> np.ndarray:
        if kind == "passage":
            return np.asarray(teacher.encode_passages(list(texts), batch_size=64), dtype=np.float32)
        return np.asarray(encode(list(texts)), dtype=np.float32)

    vecs, _ = load_or_compute(folder, teacher, f"distill-{kind}", list(texts), compute)
    return vecs
