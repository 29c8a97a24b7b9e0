"""Imports run one way (issue 18.7): xlir (errors, version) -> models -> indexer -> app -> benchmarks -> cli, every
import counted (module level, inside functions, under TYPE_CHECKING), and no two modules import each other."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["xlir", "models", "indexer", "app", "benchmarks", "cli"]
# The one import allowed up the layers: the package facade `xlir/__init__.py` re-exports the Python client
# (`from xlir import Client`, issue 22.1), which is built on the server's models in app/ and so lives in app/client.py.
# It is loaded lazily (module __getattr__), so `import xlir` imports nothing above it (test_client.py checks that);
# nothing else in xlir/ imports upward.
ALLOWED_UPWARD = {"xlir -> app.client"}


def imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LAYERS:
                out.add(node.module)
                base = REPO / node.module.replace(".", "/")
                out.update(f"{node.module}.{a.name}" for a in node.names if (base / f"{a.name}.py").is_file())
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] in LAYERS)
    return out


def graph() -> dict[str, set[str]]:
    return {(pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"): imports(f)
            for pkg in LAYERS for f in sorted((REPO / pkg).glob("*.py"))}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_no_import_runs_up_a_layer() -> None:
    upward = sorted(f"{m} -> {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m))
    assert [edge for edge in upward if edge not in ALLOWED_UPWARD] == []
    assert set(upward) >= ALLOWED_UPWARD, "the facade no longer re-exports the client: drop the exception"


def test_no_two_modules_import_each_other() -> None:
    g = graph()
    pairs = sorted(f"{a} <-> {b}" for a, b in itertools.combinations(g, 2) if b in g[a] and a in g[b])
    assert pairs == []


def test_the_check_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.settings import Settings\n"
                   "def f():\n    import indexer.wal\n    from models import registry\n", encoding="utf-8")
    assert imports(src) == {"app.settings", "indexer.wal", "models", "models.registry"}
