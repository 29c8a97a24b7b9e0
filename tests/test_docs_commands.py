"""Every command of README.md and docs/*.md is run (or checked as its annotation says), the README stays under
12 KB, every relative link resolves, and docs/api.md's field tables are those of the pydantic models.

The convention is in tests/docs_blocks.py and docs/contributing.md. The checks of the convention, the size, the
links and the tables are quick and need no model; running the commands needs the real e5-small (``model``) and
real processes (``slow``): one scratch folder per page, the demo index built once per session.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.docs_blocks import (
    API_PAGE,
    COMMAND_LANGS,
    PAGES,
    PORT,
    REPO,
    TABLE_PAGES,
    Block,
    block_problem,
    blocks,
    commands,
    regenerated_api_page,
)

BIN = Path(sys.executable).parent
README_LIMIT = 12 * 1024
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # links and images


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


# ---------------------------------------------------------------------------------------------------------------
# quick checks (no model)

def test_every_block_is_run_or_annotated_with_an_allowed_reason() -> None:
    problems = []
    n_run = 0
    for page in PAGES:
        for b in blocks(page):
            p = block_problem(b)
            if p:
                problems.append(p)
            elif b.lang in COMMAND_LANGS and b.kind in (None, "server"):
                n_run += 1
    assert not problems, "\n".join(problems)
    assert n_run >= 15  # the pages do hold runnable commands, and they are found
    assert sum(len(b.expect) for page in PAGES for b in blocks(page)) >= 5  # some outputs are checked too


def test_the_parser_reads_annotations_continuations_and_heredocs(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("x\n<!-- run: help (takes hours) -->\n```bash\nxlir a --out b \\\n  --k 3   # note\n```\n\n"
                    "```console\n$ xlir b\nout\n```\n```\nbare\n```\n<!-- run: nope -->\n```sh\nls\n```\n"
                    "<!-- expect: 1 -->\n<!-- expect: a b -->\n"
                    "```bash\ncat > f <<'EOF'\n# not a comment\nEOF\necho 1\n```\n",
                    encoding="utf-8")
    bs = blocks(page)
    assert [(b.lang, b.kind, b.reason) for b in bs] == [
        ("bash", "help", "takes hours"), ("console", None, None), ("", None, None), ("sh", "nope", None),
        ("bash", None, None)]
    assert commands(bs[0]) == ["xlir a --out b    --k 3"]
    assert commands(bs[1]) == ["xlir b"]
    assert commands(bs[4]) == ["cat > f <<'EOF'\n# not a comment\nEOF", "echo 1"]
    assert "without a language" in (block_problem(bs[2]) or "")
    assert "unknown annotation" in (block_problem(bs[3]) or "")
    assert block_problem(bs[0]) is None
    assert bs[4].expect == ("1", "a b") and bs[0].expect == ()


def test_readme_is_under_12_kb() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move details to docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page, plus explicit ``<a id=...>`` ones."""
    out = set()
    text = page.read_text(encoding="utf-8")
    in_fence = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        m = re.match(r"^#+\s+(.*)$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            base, n = slug, 1
            while slug in out:
                slug, n = f"{base}-{n}", n + 1
            out.add(slug)
    out.update(re.findall(r'<a id="([^"]+)"', text))
    return out


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked (no network)
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{_page_id(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_page_id(page)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_field_tables_are_the_models() -> None:
    assert API_PAGE.read_text(encoding="utf-8").count("<!-- fields: app.schemas.") >= 8
    assert "<!-- fields: app.settings.Settings -->" in TABLE_PAGES[1].read_text(encoding="utf-8")
    for page in TABLE_PAGES:
        text = page.read_text(encoding="utf-8")
        assert regenerated_api_page(text) == text, f"{page.name}: run python -m tests.docs_blocks --write"


# ---------------------------------------------------------------------------------------------------------------
# checks of annotated blocks (no model)

def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_make_blocks_name_existing_targets() -> None:
    seen = 0
    for page in PAGES:
        for b in blocks(page):
            if b.kind not in ("ci", "make"):
                continue
            for cmd in commands(b):
                argv = shlex.split(cmd)
                assert argv[0] == "make", f"{b.where}: run: {b.kind} holds {cmd!r}, not a make command"
                res = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True,
                                     timeout=60)
                assert res.returncode == 0, f"{b.where}: make -n {' '.join(argv[1:])}: {res.stderr}"
                seen += 1
    assert seen >= 2


def test_install_blocks_match_the_makefile_and_pyproject(tmp_path: Path) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch_spec = _makefile_var("TORCH_SPEC")
    seen = []
    install_blocks = [b for page in PAGES for b in blocks(page) if b.kind == "install"]
    prose = " ".join(p.read_text(encoding="utf-8") for p in PAGES)
    for group in re.findall(r"pip install -e '\.\[([\w,]+)\]'", prose):
        for extra in group.split(","):
            assert extra in extras, f"the docs install the extra {extra!r}, which pyproject.toml does not define"
    for b in install_blocks:
        for cmd in commands(b):
            argv = shlex.split(cmd)
            assert argv[:2] == ["pip", "install"], f"{b.where}: {cmd!r}"
            if any(a.startswith("torch") for a in argv):
                assert torch_spec in argv, f"{b.where}: the Makefile installs {torch_spec}"
                assert "https://download.pytorch.org/whl/cpu" in argv, f"{b.where}: not the CPU index"
                seen.append("torch")
                continue
            target = next(a for a in argv[2:] if not a.startswith("-"))
            m = re.fullmatch(r"\.\[([\w,]+)\]", target)
            assert m and all(e in extras for e in m.group(1).split(",")), f"{b.where}: {target}"
            res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                                  "--no-build-isolation", "-e", str(REPO)], capture_output=True, text=True,
                                 timeout=300, cwd=tmp_path)
            assert res.returncode == 0 and "Would install xlir" in res.stdout, res.stdout + res.stderr
            seen.extend(m.group(1).split(","))
    assert "torch" in seen and "full" in seen


def _help_targets(cmd: str) -> tuple[list[str], list[str]]:
    """(the program and subcommands to ask --help, the long options the command uses)."""
    argv = shlex.split(cmd)
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
        argv = argv[1:]
    if argv[:2] == ["python", "-m"]:
        prog = [sys.executable, "-m", argv[2]]
        rest = argv[3:]
    else:
        assert argv[0] == "xlir", cmd
        prog = [str(BIN / "xlir")]
        rest = argv[1:]
        while rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
            prog.append(rest.pop(0))
    options = [a.split("=")[0] for a in rest if a.startswith("--")]
    return prog, options


def test_image_blocks_run_a_container() -> None:
    for page in PAGES:
        for b in blocks(page):
            if b.kind == "image":
                assert re.search(r"^(docker|podman) run ", b.code, re.M), f"{b.where}: no container is run here"


@pytest.mark.slow
def test_help_blocks_use_options_the_commands_have() -> None:
    seen = 0
    helps: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}
    for page in PAGES:
        for b in blocks(page):
            if b.kind != "help":
                continue
            for cmd in commands(b):
                if cmd.startswith("make "):
                    res = subprocess.run(["make", "-n", *shlex.split(cmd)[1:]], cwd=REPO, capture_output=True,
                                         text=True, timeout=60)
                    assert res.returncode == 0, f"{b.where}: {cmd}: {res.stderr}"
                    continue
                prog, options = _help_targets(cmd)
                if tuple(prog) not in helps:
                    helps[tuple(prog)] = subprocess.run([*prog, "--help"], capture_output=True, text=True,
                                                        timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
                res = helps[tuple(prog)]
                assert res.returncode == 0, f"{b.where}: {' '.join(prog)} --help: {res.stderr}"
                missing = [o for o in options if o not in res.stdout]
                assert not missing, f"{b.where}: {cmd!r} uses {missing}, which --help does not list"
                seen += 1
    assert seen >= 5


# ---------------------------------------------------------------------------------------------------------------
# running the commands (real model, real processes)

def _env(bindir: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
            "XLIR_RERANKER": os.environ.get("XLIR_RERANKER", "none"), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo index as ``make demo`` builds it (``xlir index data/sample/corpus.jsonl --out .demo/index``)."""
    out = tmp_path_factory.mktemp("docs-demo") / "index"
    res = subprocess.run([str(BIN / "xlir"), "index", str(REPO / "data/sample/corpus.jsonl"), "--out", str(out),
                          "--quiet"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    return out


class Server:
    """At most one ``xlir serve`` at a time for a page's blocks."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int) -> None:
        self.workdir, self.env, self.port = workdir, env, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / ".server.log"

    def start(self, cmd: str, where: str) -> None:
        self.stop()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["bash", "-c", cmd], cwd=self.workdir, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{where}: {cmd!r} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"{where}: {cmd!r} was not ready after 180 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture
def workdir(tmp_path: Path, demo_index: Path) -> Path:
    """A scratch folder as a clone looks after ``make demo``: data/, tests/fixtures/, .demo/index (a copy)."""
    for name in ("data", "Makefile", "pyproject.toml"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixtures").symlink_to(REPO / "tests" / "fixtures")
    shutil.copytree(demo_index, tmp_path / ".demo" / "index", symlinks=True)
    return tmp_path


@pytest.fixture
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``curl`` that fails on an HTTP error (a documented request that gets a 4xx fails the test)."""
    d = tmp_path_factory.mktemp("docs-bin")
    real = shutil.which("curl")
    assert real, "curl is needed to run the documented commands"
    (d / "curl").write_text(f'#!/bin/sh\nexec {real} --fail-with-body "$@"\n')
    (d / "curl").chmod(0o755)
    return d


def _run_block(b: Block, code: str, workdir: Path, env: dict[str, str]) -> None:
    if b.lang == "python":
        script = workdir / f".block-{b.line}.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        script = code if b.lang != "console" else "\n".join(commands(replace(b, code=code)))
        argv = ["bash", "-euo", "pipefail", "-c", script]
    res = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{b.where}: exit {res.returncode}\n{code}\n---\n{out[-4000:]}"
    assert "Traceback" not in out, f"{b.where}: a traceback\n{out[-4000:]}"
    for text in b.expect:
        assert text in res.stdout, f"{b.where}: the output lacks {text!r}\n{res.stdout[-4000:]}"


def _runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in COMMAND_LANGS and b.kind in (None, "server") for b in blocks(p))]


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("page", _runnable_pages(), ids=_page_id)
def test_the_commands_of_a_page_run(page: Path, workdir: Path, bindir: Path) -> None:
    from benchmarks.demo_bench import free_port

    port = free_port()
    env = _env(bindir)
    server = Server(workdir, env, port)
    try:
        for b in blocks(page):
            if b.lang not in COMMAND_LANGS or b.kind not in (None, "server"):
                continue
            code = b.code.replace(PORT, str(port))
            if b.kind == "server":
                server.start(commands(b)[0].replace(PORT, str(port)), b.where)
                continue
            if PORT in b.code and server.proc is None:
                server.start(f"xlir serve --index .demo/index --port {port}", b.where)
            _run_block(b, code, workdir, env)
    finally:
        server.stop()
