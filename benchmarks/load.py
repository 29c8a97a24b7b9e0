"""Load test of ``xlir serve`` over REST: throughput, latency percentiles, errors, lost writes, memory (issue 5, 6).
Over 500 lines: one script (plan, client loop, fault checks, report) that is run as a whole.

Run against a running server::

    xlir bench load --target http://127.0.0.1:8000 --concurrency 1,8,32 --duration 30 --mode hybrid
    python -m benchmarks.load --target URL --pid PID ...        # PID: the server's, to report its RSS

or let it start the server (``xlir serve`` in a subprocess on a free loopback port) on an index::

    python -m benchmarks.load --index DIR --concurrency 1,8,32 --duration 30 --compare-batching
    python -m benchmarks.load --synthetic 1000000 --mode hybrid --compare-batching   # benchmarks/big_index.py
    python -m benchmarks.load --index DIR --duration 60 --concurrency 32 --mix search=0.8,upsert=0.2

**Clients.** For each concurrency level ``c``: ``c`` closed-loop clients (httpx, asyncio, one connection each)
send a request, wait for the answer, send the next, for ``--warmup`` seconds (not counted) and then ``--duration``
seconds (counted). Each request is drawn from ``--mix`` (``search=0.9,upsert=0.1``; default all searches) with a
seeded generator per client. Searches use real questions: the XQuAD-R questions (7 languages, from
:func:`benchmarks.datasets.default_data_dir`), else the sample probes, or ``--queries FILE`` (JSONL with a
``query``/``text``/``question`` field, or plain lines), each client walking the list from its own offset. Latency is
client side, from send to full response. Reported per level: requests, QPS (answered requests per second, and
searches per second), p50/p95/p99 per operation, answers by class (2xx, 4xx other than 429, 429, 5xx, and
transport errors/timeouts), the server's mean query batch size over the level (from ``/metrics``), the client's
own CPU time (it shares the machine with the server), and, when the server's process id is known, the server's CPU
time per request and the requests per second the machine's cores would allow at that cost (a load-independent
estimate of capacity, useful when other jobs share the machine; contention inflates CPU time somewhat too).

**Writes.** Each upsert is one document with a unique id (``load-RUN-C-W-N``) and text (a passage of the sample
corpus plus a unique marker word). After the last level every acknowledged id (HTTP 200) is read back with
``GET /documents/{id}`` and its text compared: *lost* = acknowledged but absent or different.

**Memory.** With ``--index`` (or ``--pid``) the server's resident memory (``VmRSS`` of ``/proc/PID/status``) is read
when it is ready, when the first level's warm-up ends, and at the end (after the write check); growth is reported
against the post-warm-up figure (the first requests legitimately fill caches, e.g. the id map of the first write).

**Batched vs unbatched** (``--compare-batching``, needs ``--index``): the same levels against a server with the
default query batching and one started with ``XLIR_BATCHING=false`` (one encoder call per query), one after the
other, reported side by side with the ratio. Upserts write into the index: with ``--index`` and a mix containing
upserts the server serves a hard-linked copy of it in a temporary directory (new files only are written: the log,
``CURRENT``, generations), so the index given is left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo_bench import CORPUS, PROBES, commit, free_port, machine, save_results, wait_ready
from benchmarks.retrieval import latency_summary, server_info
from indexer.centering import AUTO, MODES

CENTERING_CHOICES = (AUTO, *MODES)

OPS = ("search", "upsert")
STATUS_CLASSES = ("2xx", "4xx", "429", "5xx", "error")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def parse_mix(spec: str) -> dict[str, float]:
    """``search=0.9,upsert=0.1`` -> normalised weights of the known operations."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"unknown operation {name!r} in --mix; choose from {', '.join(OPS)}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"--mix: {part!r} is not name=weight") from None
        if w < 0:
            raise ValueError(f"--mix: negative weight in {part!r}")
        out[name] = out.get(name, 0.0) + w
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"--mix {spec!r} has no positive weight")
    return {k: v / total for k, v in out.items() if v > 0}


def parse_levels(spec: str) -> list[int]:
    levels = [int(x) for x in spec.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency {spec!r}: give positive integers, e.g. 1,8,32")
    return levels


def read_queries(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            obj = json.loads(line)
            text = next((obj[k] for k in ("query", "text", "question") if isinstance(obj.get(k), str)), None)
            if text is None:
                raise ValueError(f"{path}: a JSON line without a query/text/question field")
            out.append(text)
        else:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def default_queries() -> tuple[str, list[str]]:
    """XQuAD-R questions (all 7 languages, interleaved) if the benchmark data is there, else the sample probes."""
    from benchmarks.datasets import DatasetError, default_data_dir, load_xquad_r

    try:
        qs = load_xquad_r(default_data_dir(), "sentence").queries
    except (DatasetError, OSError):
        return "sample probes", read_queries(PROBES)
    by_lang: dict[str, list[str]] = {}
    for q in qs:
        by_lang.setdefault(q.lang, []).append(q.text)
    mixed = [t for group in zip(*by_lang.values(), strict=False) for t in group]  # one language after another
    return f"XQuAD-R questions ({len(by_lang)} languages)", mixed


def upsert_texts() -> list[tuple[str, str, str]]:
    """(title, text, lang) of the sample corpus: what upserts send (with a unique marker added)."""
    out = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append((d.get("title", ""), d["text"], d.get("lang", "")))
    return out


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


def rss_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """Resident memory of process ``pid`` (``VmRSS``; ``RssAnon``: heap and other anonymous memory, without the
    pages of memory-mapped index files), or None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), or None if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def writable_copy(index: Path, dest: Path) -> Path:
    """A copy of ``index`` whose files are hard links (nothing is rewritten in place: updates add files)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(index, dest, copy_function=link)
    return dest


@dataclass
class Server:
    base: str
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)


@contextmanager
def local_server(index: Path, env: Mapping[str, str], *, log: Path | None = None,
                 timeout: float = 600.0) -> Iterator[Server]:
    """``xlir serve`` on a free loopback port with the extra ``XLIR_*`` environment ``env``; stopped on exit."""
    port = free_port()
    xlir = Path(sys.executable).with_name("xlir")
    cmd = [str(xlir), "serve", "--index", str(index), "--port", str(port), "--log-level", "warning"]
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, "XLIR_RELOAD_INTERVAL": "0", **env}, stdout=out,
                            stderr=subprocess.STDOUT if log is not None else None)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout=timeout)
        yield Server(base=base, pid=proc.pid, proc=proc, env=dict(env))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (lifespan closes the log)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log is not None and hasattr(out, "close"):
            out.close()


def batch_counters(base: str) -> tuple[float, float] | None:
    """(sum, count) of the server's ``xlir_batch_size`` histogram, or None without /metrics."""
    import httpx

    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    vals = {}
    for name in ("sum", "count"):
        m = re.search(rf"^xlir_batch_size_{name} ([0-9.e+-]+)$", text, re.M)
        if m is None:
            return None
        vals[name] = float(m.group(1))
    return vals["sum"], vals["count"]


# --------------------------------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    op: str
    status: str  # a STATUS_CLASSES entry
    ms: float
    code: int | None


@dataclass
class Plan:
    queries: Sequence[str]
    mix: Mapping[str, float]
    mode: str | None
    k: int
    passages: Sequence[tuple[str, str, str]]
    run_id: str
    api_key: str | None = None
    timeout: float = 30.0


def status_class(code: int) -> str:
    if 200 <= code < 300:
        return "2xx"
    if code == 429:
        return "429"
    if 400 <= code < 500:
        return "4xx"
    return "5xx"


@dataclass
class LevelRun:
    samples: list[Sample]
    seconds: float  # from the end of the warm-up to the last answer
    acked: dict[str, str]  # acknowledged writes: id -> text
    rss_at_start: int | None = None  # the server's RSS when the warm-up ended
    anon_at_start: int | None = None  # and its anonymous part (RssAnon)
    server_cpu: float | None = None  # CPU seconds the server used during the counted period


async def run_level(base: str, concurrency: int, duration: float, warmup: float, plan: Plan, seed: int = 0,
                    pid: int | None = None) -> LevelRun:
    """``concurrency`` closed-loop clients for ``warmup`` + ``duration`` seconds (only the latter counted)."""
    import httpx

    ops = list(plan.mix)
    weights = np.asarray([plan.mix[o] for o in ops])
    headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
    samples: list[Sample] = []
    acked: dict[str, str] = {}
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient, w: int) -> None:
        rng = np.random.default_rng([seed, concurrency, w])
        qi = int(rng.integers(len(plan.queries)))
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            op = ops[int(rng.choice(len(ops), p=weights))] if len(ops) > 1 else ops[0]
            doc_id = text = ""
            if op == "search":
                body: dict[str, Any] = {"query": plan.queries[qi % len(plan.queries)], "k": plan.k}
                if plan.mode:
                    body["mode"] = plan.mode
                qi += 1
                req = client.post("/search", json=body)
            else:
                title, passage, lang = plan.passages[int(rng.integers(len(plan.passages)))]
                doc_id = f"load-{plan.run_id}-c{concurrency}-w{w}-{n}"
                text = f"{passage} xlirload{plan.run_id}c{concurrency}w{w}n{n}"
                n += 1
                doc = {"id": doc_id, "title": title, "text": text, **({"lang": lang} if lang else {})}
                req = client.post("/documents", json={"documents": [doc]})
            try:
                resp = await req
                code: int | None = resp.status_code
                cls = status_class(resp.status_code)
            except httpx.HTTPError:
                code, cls = None, "error"
            t1 = time.perf_counter()
            if op == "upsert" and code == 200:
                acked[doc_id] = text
            if t0 >= t_measure:
                samples.append(Sample(op, cls, (t1 - t0) * 1000.0, code))

    rss: list[tuple[int | None, int | None]] = []
    cpu: list[float | None] = []

    async def mark() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        rss.append((rss_bytes(pid), rss_bytes(pid, "RssAnon")) if pid is not None else (None, None))
        cpu.append(cpu_seconds(pid) if pid is not None else None)

    async with httpx.AsyncClient(base_url=base, timeout=plan.timeout, limits=limits, headers=headers) as client:
        await asyncio.gather(mark(), *(client_loop(client, w) for w in range(concurrency)))
    seconds = max(time.perf_counter() - t_measure, 1e-9)
    cpu_end = cpu_seconds(pid) if pid is not None else None
    server_cpu = cpu_end - cpu[0] if cpu and cpu[0] is not None and cpu_end is not None else None
    return LevelRun(samples, seconds, acked, *(rss[0] if rss else (None, None)), server_cpu)


def summarize(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    counts = Counter(s.status for s in samples)
    ok = [s for s in samples if s.status == "2xx"]
    out: dict[str, Any] = {
        "requests": len(samples),
        "seconds": seconds,
        "qps": len(samples) / seconds,
        "ok_qps": len(ok) / seconds,
        "status": {c: counts.get(c, 0) for c in STATUS_CLASSES},
        "codes": dict(sorted(Counter(str(s.code) for s in samples).items())),
    }
    for op in OPS:
        mine = [s for s in samples if s.op == op]
        if not mine:
            continue
        good = [s.ms for s in mine if s.status == "2xx"]
        out[op] = {"requests": len(mine), "ok": len(good), "qps": len(good) / seconds,
                   "latency_ms": latency_summary(good),
                   "latency_all_ms": latency_summary([s.ms for s in mine])}
    over = [s.ms for s in samples if s.status == "429"]
    if over:
        out["429_latency_ms"] = latency_summary(over)
    return out


async def verify_writes(base: str, acked: Mapping[str, str], api_key: str | None = None, concurrency: int = 8
                        ) -> dict[str, Any]:
    """Read every acknowledged id back (``GET /documents/{id}``): found with the same text, or lost."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ids = list(acked)
    missing: list[str] = []
    different: list[str] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, doc_id: str) -> None:
        async with sem:
            try:
                r = await client.get(f"/documents/{doc_id}")
            except httpx.HTTPError as exc:
                errors.append(f"{doc_id}: {type(exc).__name__}")
                return
        if r.status_code == 404:
            missing.append(doc_id)
        elif r.status_code != 200:
            errors.append(f"{doc_id}: HTTP {r.status_code}")
        elif r.json().get("text") != acked[doc_id]:
            different.append(doc_id)

    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        await asyncio.gather(*(one(client, i) for i in ids))
    found = len(ids) - len(missing) - len(different) - len(errors)
    return {"acknowledged": len(ids), "found": found, "lost": len(missing) + len(different),
            "missing": sorted(missing)[:20], "different": sorted(different)[:20], "read_errors": errors[:20]}


def run_levels(server: Server, levels: Sequence[int], duration: float, warmup: float, plan: Plan,
               acked_out: dict[str, str] | None = None) -> dict[str, Any]:
    """Every level against ``server``, then the write check and the memory figures (``acked_out`` receives the
    acknowledged writes, id -> text)."""
    res: dict[str, Any] = {"levels": [], "env": server.env}
    rss: dict[str, int | None] = {}
    anon: dict[str, int | None] = {}
    if server.pid is not None:
        rss["ready"] = rss_bytes(server.pid)
        anon["ready"] = rss_bytes(server.pid, "RssAnon")
    acked_all: dict[str, str] = {}
    for i, c in enumerate(levels):
        before = batch_counters(server.base)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        lr = asyncio.run(run_level(server.base, c, duration, warmup, plan, seed=i, pid=server.pid))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        after = batch_counters(server.base)
        acked_all.update(lr.acked)
        if i == 0:
            rss["after_warmup"], anon["after_warmup"] = lr.rss_at_start, lr.anon_at_start
        level = {"concurrency": c, **summarize(lr.samples, lr.seconds)}
        level["client_cpu_seconds"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if lr.server_cpu is not None and level["requests"]:
            # what a request costs the server in CPU, whatever else shares the machine; 2 cores give at most
            # cores / cost requests per second (an estimate: contention inflates CPU time too)
            level["server_cpu_seconds"] = lr.server_cpu
            level["server_cpu_ms_per_request"] = 1000.0 * lr.server_cpu / level["requests"]
            level["cpu_bound_qps"] = (os.cpu_count() or 1) * 1000.0 / level["server_cpu_ms_per_request"]
        if before is not None and after is not None and after[1] > before[1]:
            level["mean_batch_size"] = (after[0] - before[0]) / (after[1] - before[1])
            level["encoder_calls"] = after[1] - before[1]
        res["levels"].append(level)
        print(one_line(level), flush=True)
    if acked_out is not None:
        acked_out.update(acked_all)
    if any("upsert" in lv for lv in res["levels"]) or acked_all:
        res["writes"] = asyncio.run(verify_writes(server.base, acked_all, plan.api_key))
    if server.pid is not None:
        rss["end"] = rss_bytes(server.pid)
        anon["end"] = rss_bytes(server.pid, "RssAnon")
        for key, d in (("rss_growth", rss), ("anon_growth", anon)):
            start = d.get("after_warmup") or d.get("ready")
            if start and d["end"]:
                res[key] = (d["end"] - start) / start
        res["rss_bytes"] = rss
        res["anon_bytes"] = anon
    return res


def one_line(level: Mapping[str, Any]) -> str:
    s = level.get("search", {}).get("latency_ms", {})
    st = level["status"]
    extra = f", batch {level['mean_batch_size']:.1f}" if "mean_batch_size" in level else ""
    up = level.get("upsert")
    ups = f", upserts {up['ok']}/{up['requests']}" if up else ""
    return (f"c={level['concurrency']:>3}: {level['qps']:7.1f} req/s, search p50 {s.get('p50', float('nan')):.1f} "
            f"p95 {s.get('p95', float('nan')):.1f} p99 {s.get('p99', float('nan')):.1f} ms; 2xx {st['2xx']} 4xx "
            f"{st['4xx']} 429 {st['429']} 5xx {st['5xx']} errors {st['error']}{ups}{extra}")


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f} MiB"


def level_table(run: Mapping[str, Any]) -> list[str]:
    lines = ["| concurrency | req/s | search/s | search p50 / p95 / p99 ms | upserts ok | upsert p50 / p99 ms | "
             "2xx | 4xx | 429 | 5xx | errors | mean batch | server CPU ms / request (req/s the cores allow) |",
             "|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for lv in run["levels"]:
        s = lv.get("search", {})
        sl = s.get("latency_ms", {})
        u = lv.get("upsert", {})
        ul = u.get("latency_ms", {})
        st = lv["status"]
        lines.append(
            f"| {lv['concurrency']} | {lv['qps']:.1f} | {_fmt(s.get('qps'))} | {_fmt(sl.get('p50'))} / "
            f"{_fmt(sl.get('p95'))} / {_fmt(sl.get('p99'))} | {u.get('ok', '-')} | {_fmt(ul.get('p50'))} / "
            f"{_fmt(ul.get('p99'))} | {st['2xx']} | {st['4xx']} | {st['429']} | {st['5xx']} | {st['error']} | "
            f"{_fmt(lv.get('mean_batch_size'))} | {_fmt(lv.get('server_cpu_ms_per_request'))} "
            f"({_fmt(lv.get('cpu_bound_qps'), 0)}) |")
    return lines


def comparison_table(batched: Mapping[str, Any], unbatched: Mapping[str, Any]) -> list[str]:
    lines = ["| concurrency | unbatched search/s | batched search/s | ratio | unbatched p50 / p99 ms | "
             "batched p50 / p99 ms | mean batch (batched) | server CPU ms / request: unbatched, batched |",
             "|---:|---:|---:|---:|---|---|---:|---|"]
    for b, u in zip(batched["levels"], unbatched["levels"], strict=True):
        bs, us = b.get("search", {}), u.get("search", {})
        bl, ul = bs.get("latency_ms", {}), us.get("latency_ms", {})
        ratio = bs["qps"] / us["qps"] if us.get("qps") and bs.get("qps") is not None else None
        lines.append(f"| {b['concurrency']} | {_fmt(us.get('qps'))} | {_fmt(bs.get('qps'))} | {_fmt(ratio, 2)}x | "
                     f"{_fmt(ul.get('p50'))} / {_fmt(ul.get('p99'))} | {_fmt(bl.get('p50'))} / "
                     f"{_fmt(bl.get('p99'))} | {_fmt(b.get('mean_batch_size'))} | "
                     f"{_fmt(u.get('server_cpu_ms_per_request'))}, {_fmt(b.get('server_cpu_ms_per_request'))} |")
    return lines


def run_summary(run: Mapping[str, Any]) -> list[str]:
    out = []
    w = run.get("writes")
    if w:
        out.append(f"Writes: {w['acknowledged']} acknowledged, {w['found']} found afterwards with their text, "
                   f"{w['lost']} lost" + (f", {len(w['read_errors'])} read errors" if w["read_errors"] else "") + ".")
    for key, what in (("rss_bytes", "Server RSS"), ("anon_bytes", "of which anonymous (RssAnon: heap, not the "
                                                           "pages of memory-mapped index files)")):
        d = run.get(key)
        if d:
            growth = run.get("rss_growth" if key == "rss_bytes" else "anon_growth")
            out.append(f"{what}: {_mib(d.get('ready'))} when ready, {_mib(d.get('after_warmup'))} after the first "
                       f"warm-up, {_mib(d.get('end'))} at the end"
                       + (f" (growth {100 * growth:+.1f}% since the warm-up)." if growth is not None else "."))
    total5 = sum(lv["status"]["5xx"] for lv in run["levels"])
    terr = sum(lv["status"]["error"] for lv in run["levels"])
    out.append(f"5xx: {total5}; transport errors/timeouts: {terr}.")
    return out


def _shard_params(shards: Sequence[Mapping[str, Any] | None]) -> str:
    out = []
    for p in shards:
        if not p:
            continue
        tuning = p.get("tuning") or {}
        bits = [f"{k} {p[k]}" for k in ("nlist", "nprobe", "efSearch") if k in p]
        if "recall_at_10" in tuning:
            bits.append(f"tuned to recall@10 {tuning['recall_at_10']}")
        out.append(", ".join(bits) or str(p.get("type")))
    return "; ".join(out)


def markdown(res: Mapping[str, Any]) -> str:
    head = [
        f"Machine: {res['machine']}. Commit {res['commit']}. Load average before the run "
        f"{res['loadavg_start'][0]:.1f}, after {res['loadavg_end'][0]:.1f} (2 cores: above ~2 means other jobs "
        "shared them). The client runs on the same machine.",
        f"Index: {res.get('index_info', {}).get('docs', '?')} documents ({res.get('index', res.get('target'))}); "
        f"queries: {res['queries']}; mode {res['mode'] or 'server default'}, k={res['k']}; mix {res['mix']}; "
        f"{res['duration']:.0f} s per level after {res['warmup']:.0f} s of warm-up.",
        "",
    ]
    syn = res.get("synthetic")
    if syn:
        head[-1:-1] = [f"**Synthetic index** (benchmarks/big_index.py): real multilingual passage texts for BM25, "
                       f"stand-in vectors (e5-like statistics, not embeddings of the texts) under a FAISS "
                       f"`{syn['index_type']}` index ({_shard_params(syn['shards'])}), centring "
                       f"`{syn.get('centering')}`; queries are encoded by the real "
                       "model, so latency includes real query encoding, dense search and BM25 at this size."]
    body: list[str] = []
    if "unbatched" in res:
        body += ["Batched (default settings) vs unbatched (`XLIR_BATCHING=false`), searches per second:", "",
                 *comparison_table(res["batched"], res["unbatched"]), ""]
        for name in ("batched", "unbatched"):
            body += [f"{name}:", "", *level_table(res[name]), "", *run_summary(res[name]), ""]
    else:
        body += [*level_table(res["run"]), "", *run_summary(res["run"]), ""]
    return "\n".join(head + body)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xlir bench load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--index", type=Path, help="start `xlir serve` on this index (loopback, free port)")
    where.add_argument("--synthetic", type=int, metavar="N", help="like --index, on the cached synthetic index of N "
                       "passages (benchmarks/big_index.py: real texts, stand-in vectors; built first if missing)")
    ap.add_argument("--synthetic-kind", default="auto", help="with --synthetic: the FAISS kind of that index "
                    "(auto: the product's plan; flat: exact)")
    ap.add_argument("--synthetic-model", default="e5-small", help="with --synthetic: the encoder whose identity "
                    "the index records, hence the server's query encoder (a 384-dim model: e5-small or a student)")
    ap.add_argument("--synthetic-centering", default="auto", choices=CENTERING_CHOICES,
                    help="with --synthetic: the centring that index is "
                    "built with (auto: the product default, full on this multilingual index; off: the stand-in "
                    "vectors as generated)")
    ap.add_argument("--pid", type=int, default=None, help="with --target: the server's process id, for its RSS")
    ap.add_argument("--concurrency", default="1,8,32", help="levels, e.g. 1,8,32")
    ap.add_argument("--duration", type=float, default=30.0, help="counted seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each level")
    ap.add_argument("--mode", default=None, help="search mode sent (auto | dense | bm25 | hybrid); default: the "
                    "server's")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--mix", default="search=1", help="operations and weights, e.g. search=0.8,upsert=0.2")
    ap.add_argument("--queries", type=Path, default=None, help="queries file (JSONL or one per line)")
    ap.add_argument("--compare-batching", action="store_true",
                    help="with --index: run batched and unbatched servers and compare")
    ap.add_argument("--env", action="append", default=[], metavar="XLIR_NAME=VALUE",
                    help="with --index: extra server environment (repeatable), e.g. XLIR_BACKEND=onnx")
    ap.add_argument("--api-key", default=None, help="sent as a bearer token (write scope for upserts)")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (seconds)")
    ap.add_argument("--server-log", type=Path, default=None, help="with --index: append the server's output here")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (and a .md report beside it)")
    return ap


def _env(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ValueError(f"--env {p!r}: expected NAME=VALUE, e.g. XLIR_BACKEND=onnx or OMP_WAIT_POLICY=PASSIVE")
        out[name] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        mix = parse_mix(args.mix)
        levels = parse_levels(args.concurrency)
        extra_env = _env(args.env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.synthetic is not None:
        from benchmarks import big_index

        args.index = big_index.cached(args.synthetic, model=args.synthetic_model, index_type=args.synthetic_kind,
                                      centering=args.synthetic_centering)
        print(f"synthetic index of {args.synthetic:,} passages: {args.index}", flush=True)
    if args.compare_batching and args.index is None:
        print("error: --compare-batching starts its own servers: give --index, not --target", file=sys.stderr)
        return 2
    qname, queries = ("file " + str(args.queries), read_queries(args.queries)) if args.queries else default_queries()
    plan = Plan(queries=queries, mix=mix, mode=args.mode, k=args.k, passages=upsert_texts(),
                run_id=f"{int(time.time()) % 100000:05d}{os.getpid() % 1000:03d}", api_key=args.api_key,
                timeout=args.timeout)
    res: dict[str, Any] = {"machine": machine(), "commit": commit(), "loadavg_start": os.getloadavg(),
                           "queries": f"{qname}, {len(queries)}", "mode": args.mode, "k": args.k, "mix": mix,
                           "levels": levels, "duration": args.duration, "warmup": args.warmup}
    if args.target:
        res["target"] = args.target
        res["index_info"] = server_info(args.target)
        res["run"] = run_levels(Server(args.target.rstrip("/"), args.pid), levels, args.duration, args.warmup, plan)
    else:
        res["index"] = str(args.index)
        if args.synthetic is not None:
            res["synthetic"] = big_index.summary(args.index)
        configs = {"batched": {}, "unbatched": {"XLIR_BATCHING": "false"}} if args.compare_batching \
            else {"run": {}}
        with tempfile.TemporaryDirectory(prefix="xlir-load-") as tmp:
            for i, (name, env) in enumerate(configs.items()):
                index = args.index
                if "upsert" in mix:  # the server writes into its index: give it a copy
                    index = writable_copy(args.index, Path(tmp) / f"index-{i}")
                settings = {"XLIR_VERIFY": "size", **extra_env, **env}
                print(f"== {name}: xlir serve {index} {settings}", flush=True)
                with local_server(index, settings, log=args.server_log) as server:
                    res.setdefault("index_info", server_info(server.base))
                    res[name] = run_levels(server, levels, args.duration, args.warmup, plan)
    res["loadavg_end"] = os.getloadavg()
    report = markdown(res)
    print(report)
    save_results(args.out, res, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
