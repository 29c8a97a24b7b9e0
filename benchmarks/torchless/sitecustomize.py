"""A Python started with this folder on ``PYTHONPATH`` cannot import torch, transformers or sentence-transformers:
the process behaves as in a serving install (``pip install 'xlir[serve]'``) while the full install stays on disk.

Python imports ``sitecustomize`` at start-up; this one puts a finder first on ``sys.meta_path`` that refuses those
packages (``ModuleNotFoundError``, as if they were not installed). Each refused import is appended to the file
``$XLIR_TORCHLESS_LOG`` (if set) with the code that asked for it, one line each, so a test or a benchmark can see
which module tried. Used by ``tests/test_torch_free.py`` and ``benchmarks/serving_rss.py``; not part of xlir.

With ``XLIR_PRELOAD_TORCH=1`` it does the opposite: torch is imported at start-up, as a serving process did before
issue 20 (it imported torch to look for a GPU), for ``benchmarks/serving_rss.py``'s comparison.
"""

from __future__ import annotations

import os
import sys
import traceback
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = frozenset({"torch", "transformers", "sentence_transformers"})


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "importlib" not in frame.filename and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno}"
    return "?"


class BlockTorch:
    """The finder: ``find_spec`` raises for the blocked top-level packages, defers (None) for everything else."""

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name.split(".")[0] not in BLOCKED:
            return None
        log = os.environ.get("XLIR_TORCHLESS_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{name}\t{_caller()}\n")
        raise ModuleNotFoundError(f"No module named {name!r} (blocked: a torch-free process)", name=name)


if os.environ.get("XLIR_PRELOAD_TORCH") == "1":
    import torch  # noqa: F401
else:
    sys.meta_path.insert(0, BlockTorch())
