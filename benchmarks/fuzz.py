"""The fuzz run of every endpoint (issue 17): ``tests/test_fuzz.py`` with many examples, then its counts.

    python -m benchmarks.fuzz --examples 500

runs the same tests as CI (schemathesis from the OpenAPI schema, the hostile-value sweep, the hypothesis-driven
hostile requests) against a real uvicorn server, with ``--examples`` per operation and per endpoint and kind of
hostile value, and prints the requests sent per endpoint and generator, the statuses, and the 5xx count (requests
that got no answer at all are counted with them). Exit code: pytest's (0 = no 5xx, no dropped connection).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


OTHER = "other methods on the API's paths"


def operations() -> set[str]:
    """``METHOD /path`` of every operation of the API's schema, and the documentation pages."""
    from app.main import create_app
    from app.settings import Settings

    spec = create_app(Settings(index=Path("unused"), warmup=False)).openapi()
    return {f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item} | {"GET /docs", "GET /openapi.json"}


def summarize(rows: list[dict[str, object]], ops: set[str]) -> str:
    """A markdown table: requests per endpoint and generator, and how many got a 5xx (or no answer)."""
    per: dict[str, Counter[str]] = {}
    statuses: Counter[int] = Counter()
    for row in rows:
        endpoint, generator, status, count = (str(row["endpoint"]), str(row["generator"]), int(str(row["status"])),
                                              int(str(row["count"])))
        endpoint = endpoint if endpoint in ops else OTHER  # schemathesis' probes of unsupported methods
        c = per.setdefault(endpoint, Counter())
        c[generator] += count
        c["total"] += count
        if status >= 500 or status == 0:
            c["5xx"] += count
        statuses[status] += count
    generators = sorted({str(r["generator"]) for r in rows})
    head = ["endpoint", *generators, "total", "5xx"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for endpoint in sorted(per, key=lambda e: (e == OTHER, -per[e]["total"], e)):
        c = per[endpoint]
        name = endpoint if endpoint == OTHER else f"`{endpoint}`"
        lines.append("| " + " | ".join([name, *(str(c[g]) for g in generators), str(c["total"]), str(c["5xx"])]) + " |")
    total = Counter[str]()
    for c in per.values():
        total.update(c)
    lines.append("| " + " | ".join(["**all**", *(str(total[g]) for g in generators), str(total["total"]),
                                     str(total["5xx"])]) + " |")
    lines.append("")
    lines.append("statuses: " + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(statuses.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=500, help="examples per operation / endpoint and value kind")
    ap.add_argument("--report", type=Path, help="also keep the raw counts (JSON) here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = args.report or Path(tmp) / "fuzz.json"
        env = {**os.environ, "XLIR_FUZZ_EXAMPLES": str(args.examples), "XLIR_FUZZ_REPORT": str(report)}
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                             cwd=REPO, env=env)
        took = time.monotonic() - t0
        if not report.exists():
            print("no report: the server did not start", file=sys.stderr)
            return rc or 1
        rows = json.loads(report.read_text())
    print(f"\nfuzz run: --examples {args.examples}, {took:.0f} s, pytest exit code {rc}\n")
    print(summarize(rows, operations()))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
