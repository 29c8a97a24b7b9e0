"""Progress bars of the long commands (``xlir index``, ``xlir mine``): tqdm on stderr, with a total, so each shows
the rate and the time left (``[elapsed<remaining, rate]``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from indexer.readers import _corpus_files, _open_text
from xlir.errors import CorpusError


def count_records(paths: Sequence[Path]) -> int | None:
    """Non-blank lines of the corpus files (a BEIR/MIRACL folder: its corpus files): about the number of documents
    a build reads (a TSV header row counts too), to give the bar its total. None when a file cannot be read: the
    build then reports the error itself, and the bar counts without a total."""
    total = 0
    try:
        for path in map(Path, paths):
            for f in _corpus_files(path) if path.is_dir() else [path]:
                with _open_text(f) as fh:
                    total += sum(1 for line in fh if line.strip())
    except (OSError, EOFError, UnicodeDecodeError, ValueError, CorpusError):  # the reader reports it itself
        return None
    return total


def doc_bar(total: int | None, enabled: bool, desc: str = "indexing") -> tqdm:
    """The documents' bar of a build: ``total`` documents (None: a count without an ETA), on stderr."""
    return tqdm(desc=desc, total=total, unit="doc", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


def finish(bar: tqdm) -> None:
    """Close ``bar`` at what it counted (skipped empty documents, a header row: the estimate was a bit high)."""
    if bar.total is not None and bar.n < bar.total:
        bar.total = bar.n
        bar.refresh()
    bar.close()
