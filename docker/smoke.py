"""Smoke test of the xlir image without a container runtime (`podman run` is refused on the build machines).

The image is mounted (`podman image mount`, read-only) under a writable overlay layer (as a container gets), with
/proc, /dev and /sys; an index built with the model the image serves is copied to the image's /index, owned by the
image's user; the image's own command runs in that root with `chroot --userspec` as the image's user, with the
image's environment (only the host and the port changed). Then: GET /ready, the image's HEALTHCHECK command (in
the chroot), GET / (the search page), POST /search with the sample probes (a German question whose answer is the
Arabic passage must come first), a BM25 and a hybrid search (an English word whose passage must come first), and
the server is stopped, the overlay and the image unmounted, whatever happened.

    sudo .venv/bin/python docker/smoke.py --image xlir --index build/image/smoke-index [--json out.json]

Exit 0 when every check passed, 1 when one failed (the reason printed), 2 for a usage error. Needs root (mount,
chroot). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBES = ROOT / "data" / "sample" / "probes.jsonl"
# the cross-lingual check: a German question, answered by an Arabic passage of the sample corpus
CROSS_QUERY = "Auf welchen Gelehrten aus dem mittelalterlichen Bagdad gehen die Wörter Algebra und Algorithmus zurück?"
CROSS_EXPECTED = "u-ar-1"
# the lexical check (mode bm25 and hybrid, English only): a word of one English passage
BM25_QUERY = "photosynthesis"
BM25_EXPECTED = "p02-en"


class SmokeError(Exception):
    """A failed check: the message says which and why."""


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inspect(image: str) -> dict[str, Any]:
    out = run(["podman", "image", "inspect", image]).stdout
    return dict(json.loads(out)[0])


def image_user(mount: Path, user: str) -> tuple[int, int]:
    """uid, gid of the image's USER (a name or uid[:gid]) from the image's own /etc/passwd."""
    name, _, group = user.partition(":")
    if not name:
        return 0, 0
    for line in (mount / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if name in (fields[0], fields[2]):
            return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
    raise SmokeError(f"the image's user {user!r} is not in its /etc/passwd")


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def results(body: Any) -> list[dict[str, Any]]:
    """The hits of a /search response (SearchResponse.results)."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise SmokeError(f"POST /search did not answer a SearchResponse: {str(body)[:500]}")
    return list(body["results"])


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SmokeError(f"the server exited with {proc.returncode} before it was ready:\n{tail(log)}")
        try:
            status, _ = http("GET", f"{base}/ready", timeout=2)
            if status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise SmokeError(f"the server was not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def unmount(path: Path) -> bool:
    """Unmount (lazily when busy); whether ``path`` is no longer a mount point."""
    for cmd in (["umount", str(path)], ["umount", "-l", str(path)]):
        subprocess.run(cmd, check=False, capture_output=True)
        if not os.path.ismount(path):
            return True
    return False


def chroot_cmd(mount: Path, uid: int, gid: int, workdir: str, argv: list[str]) -> list[str]:
    """argv run as uid:gid in the mounted image, in its working directory."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return [chroot, f"--userspec={uid}:{gid}", str(mount), "/bin/sh", "-c", 'cd "$0" && exec "$@"',
            workdir or "/", *argv]


def smoke(image: str, index: Path, timeout: float, port: int | None,
          extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    meta = inspect(image)
    cfg = meta.get("Config") or {}
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    cmd = [*(cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or [])]
    if not cmd:
        raise SmokeError(f"image {image} has no command")
    health = (meta.get("Healthcheck") or cfg.get("Healthcheck") or {}).get("Test") or []
    if not health or health[0] not in ("CMD", "CMD-SHELL"):
        raise SmokeError(f"image {image} has no HEALTHCHECK (build it with --format docker)")
    index_dir = env.get("XLIR_INDEX", "/index")
    port = port or free_port()
    env.update({**(extra_env or {}), "XLIR_HOST": "127.0.0.1", "XLIR_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"image": image, "size_bytes": int(meta.get("Size") or 0), "user": cfg.get("User"),
                              "cmd": cmd, "port": port, "env": extra_env or {}}

    work = Path(tempfile.mkdtemp(prefix="xlir-smoke-"))
    image_mount: Path | None = None
    mounted: list[Path] = []
    proc: subprocess.Popen[bytes] | None = None
    log = work / "server.log"
    try:
        image_mount = Path(run(["podman", "image", "mount", image]).stdout.strip())
        # the image's root is mounted read-only: a writable layer over it (overlayfs), as a container gets
        for sub in ("upper", "work", "root"):
            (work / sub).mkdir()
        root = work / "root"
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={image_mount},upperdir={work / 'upper'},workdir={work / 'work'}", str(root)])
        mounted.append(root)
        # what a container runtime provides: /proc, /dev, /sys
        for args, sub in ((["-t", "proc", "proc"], "proc"), (["--bind", "/dev"], "dev"), (["--bind", "/sys"], "sys")):
            (root / sub).mkdir(exist_ok=True)
            run(["mount", *args, str(root / sub)])
            mounted.append(root / sub)
        # what the image holds: the ONNX files of the models (the f16w file only) and no JIT compiler (numba)
        home = root / env.get("XLIR_HOME", "/opt/xlir").lstrip("/")
        result["contents"] = {
            "onnx_files": sorted(str(f.relative_to(home)) for f in home.rglob("*.onnx")),
            "jit": sorted(d.name for d in root.glob("opt/venv/lib/python3*/site-packages/*")
                          if d.name.split("-")[0] in ("numba", "llvmlite")),
        }
        uid, gid = image_user(root, str(cfg.get("User") or ""))
        if uid == 0:
            raise SmokeError(f"image {image} runs as root (USER {cfg.get('User')!r})")
        result["uid"] = uid
        # the index, copied to the image's index folder and owned by the image's user (as a mounted volume)
        idx = root / index_dir.lstrip("/")
        if not idx.is_dir():
            raise SmokeError(f"the image has no {index_dir} folder (XLIR_INDEX)")
        shutil.rmtree(idx)
        shutil.copytree(index, idx)
        for path in (idx, *idx.rglob("*")):
            os.chown(path, uid, gid, follow_symlinks=False)
        workdir = str(cfg.get("WorkingDir") or "/")

        with log.open("wb") as fh:
            proc = subprocess.Popen(chroot_cmd(root, uid, gid, workdir, cmd), env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        result["ready_s"] = round(wait_ready(base, proc, timeout, log), 2)

        argv = health[1:] if health[0] == "CMD" else ["/bin/sh", "-c", health[1]]
        hc = subprocess.run(chroot_cmd(root, uid, gid, workdir, argv), env=env, capture_output=True, text=True,
                            timeout=60)
        result["healthcheck_rc"] = hc.returncode
        if hc.returncode != 0:
            raise SmokeError(f"the HEALTHCHECK command exited with {hc.returncode}: {hc.stderr.strip()[-500:]}")

        page = urllib.request.urlopen(f"{base}/", timeout=30)  # the search page (app/static), raises unless 2xx
        result["page"] = {"status": page.status, "content_type": page.headers.get("content-type", "")}
        if "text/html" not in result["page"]["content_type"]:
            raise SmokeError(f"GET / answered {result['page']}, not the search page")

        t0 = time.perf_counter()
        status, body = http("POST", f"{base}/search", {"query": CROSS_QUERY, "k": 5})
        result["first_search_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if status != 200:
            raise SmokeError(f"POST /search answered {status}: {str(body)[:500]}")
        top = [h["id"] for h in results(body)]
        result["cross_lingual"] = {"query_lang": "de", "expected": CROSS_EXPECTED, "top5": top}
        if not top or top[0] != CROSS_EXPECTED:
            raise SmokeError(f"the German query's answer {CROSS_EXPECTED} is not first: {top}")

        probes = [json.loads(line) for line in PROBES.read_text(encoding="utf-8").splitlines() if line.strip()]
        hits1, took = 0, []
        for probe in probes:
            t0 = time.perf_counter()
            status, body = http("POST", f"{base}/search", {"query": probe["query"], "k": 10})
            took.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise SmokeError(f"POST /search answered {status} for {probe['query']!r}: {str(body)[:300]}")
            hits = results(body)
            hits1 += bool(hits) and hits[0]["id"] == probe["relevant"]
        took.sort()
        result["probes"] = {"n": len(probes), "top1": hits1, "p50_ms": round(took[len(took) // 2], 1)}

        # BM25 (bm25s; the image has no numba: its numpy backend) alone and fused with dense: the English passage
        # on photosynthesis holds the word, and is first both ways
        result["lexical"] = {}
        for mode in ("bm25", "hybrid"):
            status, body = http("POST", f"{base}/search", {"query": BM25_QUERY, "k": 5, "mode": mode, "langs": ["en"]})
            if status != 200:
                raise SmokeError(f"POST /search mode={mode} answered {status}: {str(body)[:500]}")
            top = [h["id"] for h in results(body)]
            result["lexical"][mode] = top
            if not top or top[0] != BM25_EXPECTED:
                raise SmokeError(f"mode={mode}: {BM25_EXPECTED} is not first for {BM25_QUERY!r}: {top}")
        result["ok"] = True
        return result
    finally:
        if proc is not None and not result.get("ok") and "ready_s" in result:
            print(f"server log (last lines):\n{tail(log)}", file=sys.stderr)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        still_mounted = [m for m in reversed(mounted) if not unmount(m)]
        if image_mount is not None:
            subprocess.run(["podman", "image", "unmount", image], check=False, capture_output=True)
        if still_mounted:  # never delete through a mount (/dev, /sys of the host are bound in there)
            print(f"warning: could not unmount {', '.join(map(str, still_mounted))}; left {work} in place",
                  file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="xlir")
    ap.add_argument("--index", type=Path, required=True,
                    help="an index built with the model the image serves (e5-small), e.g. from data/sample")
    ap.add_argument("--port", type=int, default=None, help="default: a free port")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for /ready")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set or override a variable of the image's environment (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if any("=" not in e for e in args.env):
        print("error: --env takes KEY=VALUE", file=sys.stderr)
        return 2
    extra_env = dict(e.split("=", 1) for e in args.env)
    for tool in ("podman", "mount", "chroot"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("error: the smoke test mounts the image and chroots into it: run it as root", file=sys.stderr)
        return 2
    if not args.index.is_dir():
        print(f"error: {args.index}: no such index folder (xlir index data/sample/corpus.jsonl --out DIR)",
              file=sys.stderr)
        return 2
    if subprocess.run(["podman", "image", "exists", args.image]).returncode != 0:
        print(f"error: no image {args.image!r}: build it with `make image`", file=sys.stderr)
        return 2
    try:
        result = smoke(args.image, args.index, args.timeout, args.port, extra_env)
    except (SmokeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        print(f"smoke test FAILED: {exc} {detail or ''}".rstrip(), file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(f"smoke test passed: ready in {result['ready_s']} s, first search {result['first_search_ms']} ms, "
          f"{result['probes']['top1']}/{result['probes']['n']} probes answered first", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
