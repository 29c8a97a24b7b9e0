"""``make demo``: serve a built index, ask cross-lingual questions over REST, print the answers, stop.

Starts ``xlir serve`` in a subprocess, waits for ``GET /ready``, sends each probe of
``data/sample/probes.jsonl`` (a question in one language whose only relevant passage is in another)
to ``POST /search`` with httpx, prints the top results, and stops the server whatever happens.
Exits 1 if a probe's passage is not in the top 10 of the (default, dense) search.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.demo_bench import wait_ready

REPO = Path(__file__).resolve().parent.parent
PROBES = REPO / "data" / "sample" / "probes.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--probes", type=Path, default=PROBES)
    ap.add_argument("--limit", type=int, default=10, help="how many probes to ask")
    args = ap.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    xlir = Path(sys.executable).with_name("xlir")
    cmd = [str(xlir), "serve", "--index", str(args.index), "--port", str(args.port), "--log-level", "warning"]
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        info = wait_ready(base, proc)
        langs = info.get("languages") or {}
        assert isinstance(langs, dict)
        print(f"ready: {info['docs']} passages in {len(langs)} languages, encoder {info['encoder']}\n")
        probes = [json.loads(line) for line in args.probes.read_text(encoding="utf-8").splitlines() if line.strip()]
        failures = 0
        with httpx.Client(base_url=base, timeout=60) as client:
            for probe in probes[: args.limit]:
                r = client.post("/search", json={"query": probe["query"], "k": 10})
                r.raise_for_status()
                body = r.json()
                ids = [h["id"] for h in body["results"]]
                rank = ids.index(probe["relevant"]) + 1 if probe["relevant"] in ids else None
                failures += rank is None
                cen = body.get("centering") or {}
                print(f"POST /search {{\"query\": \"{probe['query']}\"}}   [{body['took_ms']:.0f} ms; query "
                      f"language {cen.get('query_lang')} ({cen.get('lang_source')}), centering {cen.get('mode')}]")
                for i, hit in enumerate(body["results"][:3], start=1):
                    mark = "*" if hit["id"] == probe["relevant"] else " "
                    print(f"  {mark}{i}. [{hit['lang']}] {hit['id']}: {hit['title']} | {hit['snippet'][:80]}")
                where = f"rank {rank}" if rank else "NOT in the top 10"
                print(f"  -> the answer, {probe['relevant']} (only in another language), is at {where}\n")
        asked = min(args.limit, len(probes))
        print(f"{asked - failures}/{asked} cross-lingual questions found their answer in the top 10")
        return 1 if failures else 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("server stopped")


if __name__ == "__main__":
    sys.exit(main())
