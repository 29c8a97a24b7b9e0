"""Figures of the serving image for benchmarks/RESULTS.md: its size and layers (podman), the smoke test's result,
and an estimate of the former single-stage image (python:3.11-slim + `pip install '.[full]'` with CPU torch + the
model folder `xlir models fetch e5-small` writes), measured from the installed sizes in this virtualenv.

    .venv/bin/python docker/figures.py --image xlir --smoke build/image/smoke.json --build-seconds 310 \
        --out benchmarks/results/image.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# python:3.11-slim (Debian bookworm), uncompressed, as `docker images` reports it
PYTHON_SLIM_BYTES = 130_000_000


def closure(root: str, extras: set[str]) -> set[str]:
    """Installed distributions that ``root[extras]`` pulls in (itself excluded)."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack = [(root, extras)]
    while stack:
        name, ext = stack.pop()
        key = (canonicalize_name(name), tuple(sorted(ext)))
        dist = dists.get(key[0])
        if dist is None or key in seen:
            continue
        seen.add(key)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (ext or {""})):
                stack.append((req.name, set(req.extras)))
    return {name for name, _ in seen} - {canonicalize_name(root)}


def installed_bytes(name: str) -> int:
    dist = md.distribution(name)
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def layers(image: str) -> list[dict[str, Any]]:
    out = subprocess.run(["podman", "history", "--no-trunc", "--format", "json", image], check=True,
                         capture_output=True, text=True).stdout
    rows = []
    for layer in reversed(json.loads(out)):
        size = int(layer.get("size") or layer.get("Size") or 0)
        created_by = str(layer.get("createdBy") or layer.get("CreatedBy") or "")
        if size:
            rows.append({"bytes": size, "created_by": re.sub(r"\s+", " ", created_by)[:160]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="xlir")
    ap.add_argument("--smoke", type=Path, default=None, help="docker/smoke.py --json output")
    ap.add_argument("--build-seconds", type=float, default=None)
    ap.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "xlir" / "models" / "e5-small")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", args.image], check=True,
                              capture_output=True, text=True).stdout.strip())
    full = {n: installed_bytes(n) for n in closure("xlir", {"full"})}
    serve = {n: installed_bytes(n) for n in closure("xlir", {"serve"})}
    model = folder_bytes(args.model_dir)
    int8 = args.model_dir / "onnx" / "model-int8.onnx"
    model_single = model - (int8.stat().st_size if int8.is_file() else 0)  # fetch writes fp32 only
    estimate = PYTHON_SLIM_BYTES + sum(full.values()) + model_single
    result = {
        "image": args.image,
        "size_bytes": size,
        "layers": layers(args.image),
        "build_seconds": args.build_seconds,
        "smoke": json.loads(args.smoke.read_text()) if args.smoke else None,
        "single_stage_estimate": {
            "bytes": estimate,
            "python_slim_bytes": PYTHON_SLIM_BYTES,
            "full_install_bytes": sum(full.values()),
            "model_folder_bytes": model_single,
            "largest": sorted(((n, b) for n, b in full.items()), key=lambda x: -x[1])[:10],
            "how": "python:3.11-slim + installed sizes of xlir[full]'s dependency closure in .venv (CPU torch) + "
                   "the e5-small folder as `xlir models fetch` writes it (safetensors + ONNX fp32 export)",
        },
        "serve_install_bytes": sum(serve.values()),
        "serve_largest": sorted(((n, b) for n, b in serve.items()), key=lambda x: -x[1])[:10],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k in ("size_bytes", "build_seconds")}
                     | {"single_stage_estimate": estimate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
