"""Centroid tables for an encoder: per-language mean passage embeddings from monolingual text.

A query whose language has no documents in the index can still be centred with the table's centroid.
``xlir models centroids FILES...`` builds one (``make setup`` builds the default from the sample corpus);
the table records the encoder's weights checksum and is refused with another encoder.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from indexer.build import passage_text
from indexer.centering import Centroids, CentroidStats
from indexer.langid import UNDETERMINED, LanguageDetector, normalize_lang
from indexer.readers import read_corpus
from models.base import Encoder
from xlir.errors import CorpusError


def default_table_path(home: Path, encoder_checksum: str) -> Path:
    return home / "centroids" / f"{encoder_checksum[:16]}.npz"


def _texts(paths: Sequence[Path], lang: str | None, detector: LanguageDetector) -> Iterator[tuple[str, str]]:
    for path in paths:
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        if path.suffix == ".txt":
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip():
                        yield (lang or detector.detect(line)), line.strip()
        else:
            for doc in read_corpus([path]):
                text = passage_text(doc.title, doc.text)
                code = lang or (normalize_lang(doc.lang) if doc.lang else detector.detect(text))
                yield code, text


def build_table(encoder: Encoder, paths: Sequence[Path], *, lang: str | None = None, max_per_lang: int = 5000,
                batch_size: int = 32, progress: bool = True) -> Centroids:
    """Mean passage embedding per language over the texts of ``paths`` (at most ``max_per_lang`` each)."""
    detector = LanguageDetector()
    by_lang: dict[str, list[str]] = defaultdict(list)
    for code, text in _texts(paths, lang, detector):
        if code != UNDETERMINED and len(by_lang[code]) < max_per_lang:
            by_lang[code].append(text)
    if not by_lang:
        raise CorpusError(f"no text with a recognisable language in {', '.join(map(str, paths))}")
    stats = CentroidStats(encoder.dim)
    bar = tqdm(total=sum(map(len, by_lang.values())), desc="centroids", unit="text", disable=not progress)
    for code, texts in sorted(by_lang.items()):
        it = iter(texts)
        while chunk := list(itertools.islice(it, 1024)):
            stats.add([code] * len(chunk), encoder.encode_passages(chunk, batch_size=batch_size))
            bar.update(len(chunk))
    bar.close()
    return stats.centroids()
