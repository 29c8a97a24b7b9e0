"""The commands of README.md and docs/*.md, as ``tests/test_docs_commands.py`` runs them, and the field tables of
docs/api.md and docs/operations.md, generated from the pydantic models.

Convention (docs/contributing.md "Commands in the documentation"):

* every fenced block names its language; ```bash, ```sh, ```console (lines starting with ``$ ``) and ```python
  blocks are commands and are run, in the order of the page, in one scratch folder per page that holds the
  demo index ``.demo/index`` and the repository's ``data/`` and ``tests/fixtures/``; ```text, ```json, ```mermaid,
  ```yaml and ```tsv blocks are not;
* a comment line right above a command block changes how it is checked, with one of the kinds of :data:`KINDS`:
  ``<!-- run: server -->`` (the block is one ``xlir serve`` command: started in the background, the following
  blocks query it until the next server block or the end of the page), ``<!-- run: ci (why) -->`` and
  ``<!-- run: make (why) -->`` (``make`` targets: checked with ``make -n``), ``<!-- run: install -->`` (``pip
  install`` lines: the torch version must be the Makefile's ``TORCH_SPEC``, the extras must exist, the project is
  installed with ``--dry-run --no-deps``), ``<!-- run: help (why) -->`` (long or placeholder commands: each
  command's ``--help`` must answer and list every option the command uses), ``<!-- run: image (why) -->`` (the
  block runs a container: checked to do so; ``make image``'s smoke test runs the image);
* ``<!-- expect: TEXT -->`` lines (with or above the run annotation) name texts the block's output must hold;
* the port 8765 is replaced by a free port; a block that talks to 8765 without a server block before it gets
  the demo index served (``xlir serve --index .demo/index``).

``python -m tests.docs_blocks --write`` regenerates the field tables of docs/api.md and docs/operations.md
(between ``<!-- fields: MODEL -->`` and ``<!-- /fields -->``) from ``app/schemas.py`` and ``app/settings.py``; the
test fails while they differ.
"""

from __future__ import annotations

import enum
import importlib
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_LANGS = {"bash", "sh", "console", "python"}
OTHER_LANGS = {"text", "json", "mermaid", "yaml", "tsv"}
# what an annotation may say instead of "run it"; each but server/install needs a reason in parentheses
KINDS = {
    "server": "started in the background and queried by the blocks after it",
    "ci": "make targets that CI runs (.ci/run); checked with make -n",
    "make": "make targets that take minutes or need tools beyond the test's reach; checked with make -n",
    "install": "pip install lines; checked against the Makefile and pyproject.toml, the project with --dry-run",
    "help": "long runs or placeholder inputs; --help must list every option used",
    "image": "needs a container runtime (refused here): make image's smoke test runs the image instead",
}
NEEDS_REASON = {"ci", "make", "help", "image"}
PORT = "8765"

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_EXPECT = re.compile(r"^<!--\s*expect:\s*(.+?)\s*-->$")
_ANNOTATION = re.compile(r"^<!--\s*run:\s*(?P<kind>[a-z-]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str | None  # None: run it
    reason: str | None
    expect: tuple[str, ...] = ()  # texts the block's output must hold (``<!-- expect: TEXT -->``)

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page.name
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the annotation above each (problems raise ValueError naming the line)."""
    lines = page.read_text(encoding="utf-8").split("\n")
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2)
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"{page.name}:{start + 1}: the fence is never closed")
        indent = len(m.group(1))
        code = "\n".join(line[indent:] for line in lines[start + 1:j])
        kind = reason = None
        expect: list[str] = []
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        while k >= 0 and lines[k].lstrip().startswith(("<!-- run:", "<!-- expect:")):
            line = lines[k].strip()
            e = _EXPECT.match(line)
            if e:
                expect.insert(0, e.group(1))
            else:
                a = _ANNOTATION.match(line)
                if not a:
                    raise ValueError(f"{page.name}:{k + 1}: unreadable annotation {line!r}")
                kind, reason = a.group("kind"), a.group("reason")
            k -= 1
        out.append(Block(page, start + 1, lang, code, kind, reason, tuple(expect)))
        i = j + 1
    return out


def block_problem(b: Block) -> str | None:
    """Why ``b`` breaks the convention (None when it is run or annotated as it should be)."""
    if not b.lang:
        return f"{b.where}: a fence without a language (```text for output, ```bash for commands)"
    if b.lang not in COMMAND_LANGS | OTHER_LANGS:
        return f"{b.where}: unknown fence language {b.lang!r} (commands: {sorted(COMMAND_LANGS)}, others: " \
               f"{sorted(OTHER_LANGS)})"
    if b.expect and (b.lang not in COMMAND_LANGS or b.kind not in (None,)):
        return f"{b.where}: an expect: on a block that is not run as it is"
    if b.kind is None:
        return None
    if b.lang not in COMMAND_LANGS:
        return f"{b.where}: an annotation on a ```{b.lang} block, which is never run"
    if b.kind not in KINDS:
        return f"{b.where}: unknown annotation run: {b.kind} (allowed: {', '.join(KINDS)})"
    if b.kind in NEEDS_REASON and not (b.reason or "").strip():
        return f"{b.where}: run: {b.kind} needs a reason in parentheses"
    if b.kind == "server" and len(commands(b)) != 1:
        return f"{b.where}: a server block holds exactly one command"
    return None


def commands(b: Block) -> list[str]:
    """The shell commands of a block: comments dropped, continuation lines joined; ``$ `` lines of console."""
    raw = b.code.split("\n")
    if b.lang == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    out: list[str] = []
    buf = ""
    heredoc: str | None = None
    for line in raw:
        if heredoc is not None:
            buf += "\n" + line
            if line.strip() == heredoc:
                out.append(buf)
                buf, heredoc = "", None
            continue
        stripped = _strip_comment(line).rstrip()
        if not stripped and not buf:
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        h = re.search(r"<<-?\s*'?(\w+)'?", buf)
        if h:
            heredoc = h.group(1)
            continue
        out.append(buf.strip())
        buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


# ---------------------------------------------------------------------------------------------------------------
# field tables of docs/api.md

API_PAGE = REPO / "docs" / "api.md"
TABLE_PAGES = [API_PAGE, REPO / "docs" / "operations.md"]
_TABLE = re.compile(r"(<!-- fields: (?P<model>[\w.]+) -->\n)(?P<body>.*?)(<!-- /fields -->)", re.S)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" if not isinstance(a, str) else f'`"{a}"`' for a in args)
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " or ".join(f'`"{m.value}"`' for m in tp)
    return getattr(tp, "__name__", str(tp))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        factory = field.default_factory
        if factory in (dict, list, set, tuple):
            return f"`{factory()!r}`"
        return f"`{factory.__name__}()`"
    d = field.default
    if d is None:
        return "`null`"
    if isinstance(d, enum.Enum):
        return f'`"{d.value}"`'
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    if isinstance(d, str):
        return f'`"{d}"`'
    if isinstance(d, PurePath):
        return f"`{d}`"
    return f"`{d!r}`"


def field_table(model_path: str) -> str:
    """The markdown table of a pydantic model's fields: name, type, default, description (from the model)."""
    module, _, name = model_path.rpartition(".")
    model = getattr(importlib.import_module(module), name)
    prefix = model.model_config.get("env_prefix", "")  # settings: the environment variable's name
    rows = [f"| {'variable' if prefix else 'field'} | type | default | description |", "|---|---|---|---|"]
    for fname, f in model.model_fields.items():
        desc = " ".join((f.description or "").split())
        shown = (prefix + fname).upper() if prefix else fname
        default = _default(f)
        if prefix and default.startswith('`"') and default.endswith('"`'):
            default = f"`{default[2:-2]}`"  # an environment variable holds no JSON string
        cells = [f"`{shown}`", _type_name(f.annotation), default, desc]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def regenerated_api_page(text: str) -> str:
    return _TABLE.sub(lambda m: m.group(1) + field_table(m.group("model")) + m.group(4), text)


def main(argv: list[str]) -> int:
    stale = 0
    for page in TABLE_PAGES:
        text = page.read_text(encoding="utf-8")
        new = regenerated_api_page(text)
        if "--write" in argv and new != text:
            page.write_text(new, encoding="utf-8")
            print(f"wrote {page.relative_to(REPO)}")
        elif new != text:
            print(f"{page.relative_to(REPO)}: field tables out of date; run python -m tests.docs_blocks --write")
            stale += 1
    if not stale:
        print("field tables up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
