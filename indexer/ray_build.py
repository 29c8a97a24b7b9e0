"""``xlir index CORPUS... --out DIR --ray [ADDRESS]``: the build of :mod:`indexer.build` with its per-shard work
spread over a Ray cluster, through the same write stage (:mod:`indexer.write`).

The driver reads the corpus once, as the local build does (:func:`indexer.build.document_chunks`: empty documents
skipped, a repeated id refused, chunks of ``chunk_docs``), and cuts it into ranges of ``shard_size`` documents: a
range is a shard, so the shard boundaries are the local build's. Each range is a Ray task (:func:`write_range`)
that detects languages, embeds (one encoder call per chunk of the local build, so each shard's centroid
statistics are summed in the same groups, bit for bit) and writes its shard with :class:`indexer.write.ShardWriter`
into its own part folder. The driver then hands the parts, in order, to :func:`indexer.write.finish_index` (the
language rows, BM25 merged in order, centroids, FAISS: one Ray task per shard, the manifest last) in the
``staged`` directory that is published atomically. The index is the local build's: the same docstores, raw vectors,
language rows and BM25 files, byte for byte, so every query answers the same.

- **Retries**: a task whose worker dies is run again (``max_retries``); it is idempotent: each attempt writes a
  folder of its own, renamed to ``parts/<key>`` once its done marker is written (atomically, last).
- **Resume**: the parts live beside OUT in ``.<out>.ray/`` (shared file system on several machines). A part's key
  hashes its documents (ids, texts, languages given, metadata, chunk boundaries), the encoder's checksum and the
  options that change its files; a driver killed and run again with the same command skips every range whose
  done marker matches. The folder is removed after success, and after an input error (rerunning cannot help).
- **Backpressure**: at most ``IN_FLIGHT_PER_CPU`` x the cluster's CPUs ranges are in flight; the driver holds only
  their documents.

Ray is imported only here (inside functions) and in :mod:`indexer.ray_cluster`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from indexer.build import BuildOptions, document_chunks, document_langs, staged
from indexer.langid import LanguageDetector
from indexer.manifest import Manifest
from indexer.progress import count_records, doc_bar, finish
from indexer.ray_cluster import factory_key, require_ray, worker_cached
from indexer.readers import Document, read_corpus
from indexer.write import EncoderInfo, IndexJob, ShardPart, ShardWriter, Timer, finish_index, passage_text
from models.base import Encoder
from models.ray_encoder import unwrap
from xlir.errors import RayTaskFailed, XlirError

EncoderFactory = Callable[[], Encoder]

AUTO_RANGES_PER_CPU = 4  # --ray without --shard-size: about this many ranges per cluster CPU ...
MIN_AUTO_SHARD = 10_000  # ... within these bounds
MAX_AUTO_SHARD = 1_000_000
IN_FLIGHT_PER_CPU = 2  # ranges submitted and not finished, per cluster CPU
MAX_RETRIES = 3  # a task whose worker dies is run again this many times
PART_FORMAT = 1  # bump when a part's files change: parts of another format are not resumed
DONE = "DONE.json"
SHARD_DIR, WORK_DIR = "shard", "work"


def auto_shard_size(n_docs: int | None, cpus: int) -> int:
    """The shard size of a Ray build not given one: ``n_docs`` cut into about ``AUTO_RANGES_PER_CPU`` ranges per
    CPU (so every CPU has work and a retried range is a small loss), within ``MIN_AUTO_SHARD..MAX_AUTO_SHARD``."""
    if not n_docs:
        return MAX_AUTO_SHARD
    want = math.ceil(n_docs / max(1, AUTO_RANGES_PER_CPU * max(1, cpus)))
    return max(MIN_AUTO_SHARD, min(MAX_AUTO_SHARD, want))


def work_dir(out: Path) -> Path:
    """Where a Ray build of ``out`` keeps its parts until it succeeds (beside ``out``, like the local resume
    folder)."""
    out = Path(out)
    return out.parent / f".{out.name}.ray"


def range_key(groups: Sequence[Sequence[Document]], encoder: EncoderInfo, opts: BuildOptions) -> str:
    """What a range's part depends on: its documents (as read, with their chunk boundaries), the encoder and the
    options that change its files."""
    h = hashlib.sha256()
    head = {"format": PART_FORMAT, "encoder": [encoder.name, encoder.checksum, encoder.dim],
            "batch_size": opts.batch_size, "default_lang": opts.default_lang}
    h.update(json.dumps(head, sort_keys=True).encode())
    for docs in groups:
        h.update(f"\x00group {len(docs)}\n".encode())
        for d in docs:
            h.update(json.dumps([d.id, d.title, d.text, d.lang, d.metadata], sort_keys=True,
                                ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:32]


def read_done(folder: Path, key: str) -> dict[str, Any] | None:
    """The done marker of the part in ``folder`` when it is the finished part of ``key``, else None."""
    try:
        data = json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key and data.get("format") == PART_FORMAT else None


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_range(work: str, key: str, run: str, groups: list[list[Document]], factory: EncoderFactory, job: str,
                opts: BuildOptions) -> dict[str, Any]:
    """One range (a Ray task): language -> embed -> :class:`ShardWriter`, into ``work/parts/<key>``; returns its
    done marker. Each attempt writes a folder of its own, renamed into place once complete. The encoder is built
    once per worker and ``job`` (the hash of the pickled factory) and kept for the worker's next ranges."""
    parts = Path(work) / "parts"
    final = parts / key
    attempts = Path(work) / "attempts" / run
    attempts.mkdir(parents=True, exist_ok=True)
    (attempts / f"{key}.{uuid.uuid4().hex}").touch()
    done = read_done(final, key)
    if done is not None:  # an earlier attempt finished it
        return done
    t_start = time.perf_counter()
    tmp = parts / f".{key}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    timer = Timer()
    t0 = time.perf_counter()
    encoder = worker_cached("encoder", job, factory)
    t0 = timer.add("load_encoder", t0)
    detector = LanguageDetector()
    counts = {"languages_detected": 0}
    writer = ShardWriter(tmp / SHARD_DIR, encoder.dim)
    for docs in groups:  # one encoder call per chunk of the local build (the same groups of vectors)
        texts = [passage_text(d.title, d.text) for d in docs]
        langs = document_langs(docs, texts, detector, counts)
        t0 = timer.add("langid", t0)
        vecs = encoder.encode_passages(texts, batch_size=opts.batch_size)
        timer.add("embed", t0)
        writer.add(docs, langs, vecs, timer=timer)
        t0 = time.perf_counter()
    part = writer.finish()
    part.save(tmp / WORK_DIR)
    timer.add("write", t0)
    marker = {"format": PART_FORMAT, "key": key, "count": part.count, **counts, "host": os.uname().nodename,
              "seconds": round(time.perf_counter() - t_start, 3),
              "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()}}
    _write_json_atomically(tmp / DONE, marker)
    try:
        tmp.rename(final)
    except OSError:  # another attempt put its folder there first
        if read_done(final, key) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return marker


def describe_encoder(factory: EncoderFactory, job: str) -> tuple[str, str, int]:
    """A Ray task: the name, weights checksum and dimension of the factory's encoder (nothing is embedded; the
    worker keeps the encoder for its ranges)."""
    enc = worker_cached("encoder", job, factory)
    return enc.name, enc.checksum, enc.dim


def _run_job(job: IndexJob) -> dict[str, Any]:
    return job()


def load_parts(work: Path, keys: Sequence[str]) -> Iterator[ShardPart]:
    """The finished parts of ``keys``, in order, each loaded when it is reached."""
    for key in keys:
        folder = work / "parts" / key
        yield ShardPart.load(folder / SHARD_DIR, folder / WORK_DIR)


def _get(ray: Any, ref: Any, what: str) -> Any:
    """``ray.get``: an :class:`XlirError` a task raised is raised as is (bad input: the message, no traceback);
    a task whose worker died more often than it is retried is a :class:`RayTaskFailed`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = unwrap(exc)
        if isinstance(cause, XlirError):
            raise cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError) as exc:
        raise RayTaskFailed(f"{what} failed on the Ray cluster after {MAX_RETRIES} retries "
                            f"({type(exc).__name__}); run the same command again: finished ranges are "
                            "kept and resumed") from exc


def _in_order(ray: Any, refs: Sequence[Any], what: str, bar: tqdm | None = None) -> list[Any]:
    """The results of ``refs``, in order, each fetched once as it finishes (a failure is raised at once)."""
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        results[position[ready[0]]] = _get(ray, ready[0], what)
        if bar is not None:
            bar.update(1)
    return results


def ray_jobs(ray: Any, progress: bool) -> Callable[[Sequence[IndexJob]], list[dict[str, Any]]]:
    """Run the FAISS jobs of :func:`finish_index` as Ray tasks (one CPU each), results in order."""
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_run_job)

    def run(jobs: Sequence[IndexJob]) -> list[dict[str, Any]]:
        refs = [remote.remote(job) for job in jobs]
        with tqdm(total=len(jobs), desc="faiss", unit="shard", disable=not progress or len(jobs) < 2) as bar:
            return _in_order(ray, refs, "a FAISS build", bar)

    return run


def cut_ranges(source: Iterable[Document], opts: BuildOptions,
               counts: dict[str, int]) -> Iterator[list[list[Document]]]:
    """The documents of ``source`` (read as the local build reads them) in ranges of ``opts.shard_size``, each a
    list of groups: the parts of the local build's chunks that fall in the range."""
    groups: list[list[Document]] = []
    size = 0
    for docs in document_chunks(source, opts.chunk_docs, counts):
        pos = 0
        while pos < len(docs):
            take = min(len(docs) - pos, opts.shard_size - size)
            groups.append(docs[pos : pos + take])
            pos += take
            size += take
            if size == opts.shard_size:
                yield groups
                groups, size = [], 0
    if groups:
        yield groups


def build_index_ray(paths: Sequence[Path], out: Path, encoder_factory: EncoderFactory,
                    options: BuildOptions | None = None, *, auto_shard: bool = False,
                    on_start: Callable[[dict[str, Any]], None] | None = None) -> Manifest:
    """Index the corpus files at ``paths`` into ``out`` on the Ray cluster this process is connected to
    (:func:`indexer.ray_cluster.connect`); returns the written manifest, whose ``build`` record holds ``ray``,
    ``ranges``, ``workers`` (cluster CPUs), ``resumed_ranges`` and ``retries``.

    ``encoder_factory``: a picklable zero-argument callable returning the encoder (each worker loads its own);
    ``auto_shard``: pick the shard size from the corpus size and the cluster (:func:`auto_shard_size`) instead of
    ``options.shard_size``; ``on_start(info)``: called once the shard size and the cluster are known (the CLI
    prints them). Options are those of the local build (``resume``: keep finished parts for a rerun)."""
    ray = require_ray()
    if not ray.is_initialized():
        raise XlirError("not connected to a Ray cluster: call indexer.ray_cluster.connect(address) first")
    opts = dataclasses.replace(options or BuildOptions())
    out = Path(out)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    records = count_records(paths) if opts.progress or auto_shard else None
    if auto_shard:
        opts.shard_size = auto_shard_size(records, cpus)
    if on_start is not None:
        on_start({"cpus": cpus, "shard_size": opts.shard_size, "auto_shard": auto_shard})
    work = work_dir(out)
    if not opts.resume:  # start afresh: no range of an earlier run is taken
        shutil.rmtree(work, ignore_errors=True)
    run = uuid.uuid4().hex
    job = factory_key(ray, encoder_factory)
    write_task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(write_range)
    in_flight: set[Any] = set()
    with staged(out, opts.overwrite) as tmp:
        try:
            t0 = t_start = time.perf_counter()
            encoder = EncoderInfo(*_get(ray, ray.remote(num_cpus=1)(describe_encoder).remote(encoder_factory, job),
                                        "loading the encoder"))
            timer = Timer()
            t0 = timer.add("load_encoder", t0)
            counts: dict[str, int] = {"languages_detected": 0, "skipped_empty": 0, "resumed_docs": 0}
            worker_seconds: dict[str, float] = {}
            keys: list[str] = []
            submitted = resumed = 0
            bar = doc_bar(records, opts.progress)
            limit = IN_FLIGHT_PER_CPU * cpus

            def finished(marker: dict[str, Any]) -> None:
                counts["languages_detected"] += int(marker.get("languages_detected", 0))
                for stage, sec in marker.get("stage_seconds", {}).items():
                    worker_seconds[stage] = worker_seconds.get(stage, 0.0) + float(sec)
                bar.update(int(marker["count"]))

            def harvest() -> None:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                in_flight.remove(ready[0])
                finished(_get(ray, ready[0], "a range"))

            for groups in cut_ranges(read_corpus(paths, opts.default_lang), opts, counts):
                key = range_key(groups, encoder, opts)
                keys.append(key)
                marker = read_done(work / "parts" / key, key) if opts.resume else None
                if marker is not None:
                    resumed += 1
                    counts["resumed_docs"] += sum(len(g) for g in groups)
                    finished(marker)
                    continue
                while len(in_flight) >= limit:
                    harvest()
                in_flight.add(write_task.remote(str(work), key, run, groups, encoder_factory, job, opts))
                submitted += 1
            while in_flight:
                harvest()
            finish(bar)
            timer.add("ranges", t0)
            attempts = work / "attempts" / run
            tries = len(list(attempts.iterdir())) if attempts.is_dir() else 0
            info = {**counts, "ray": True, "ranges": len(keys), "workers": cpus, "resumed_ranges": resumed,
                    "retries": max(0, tries - submitted), "shard_size_auto": auto_shard,
                    "worker_stage_seconds": {k: round(v, 3) for k, v in worker_seconds.items()}}
            manifest = finish_index(tmp, load_parts(work, keys), opts, encoder, sources=paths, build_info=info,
                                    timer=timer, map_jobs=ray_jobs(ray, opts.progress), started=t_start)
        except BaseException as exc:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            if in_flight:  # cancelling is asynchronous: a task still running could write into the folder after
                ray.wait(list(in_flight), num_returns=len(in_flight), timeout=30)
            if isinstance(exc, XlirError) and not isinstance(exc, RayTaskFailed):
                shutil.rmtree(work, ignore_errors=True)  # bad input or options: a rerun cannot succeed
            raise
    shutil.rmtree(work, ignore_errors=True)
    return manifest
