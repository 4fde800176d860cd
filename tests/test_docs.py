"""The manual points at things that exist: code references, links, and the mkdocs navigation.

The pages are README.md and docs/**/*.md. A code reference is a path in backticks (inline code or a fenced
block), optionally with a symbol: `stabench/engine/diffusion.py:raw_weights`, `stabench/engine/ema.py:MultiEMA.update`,
`tests/records/test_stats.py`, `tests/models/test_backbones.py::test_name`. A path is relative to the repository
root, or to the `stabench/` package (`models/layers.py`); a bare file name (`fidelity.py`) must name exactly
one file of the repository. The symbol must be defined in that file: a top-level function, class or
assignment, or a name inside a class (`Class.method`).
"""

from __future__ import annotations

import ast
import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SKIPPED_DIRS = {"site", "build", "dist", "runs", "wandb", "node_modules", "__pycache__"}
# Top-level folders of the repository: a path starting with one of these names a repository file.
REPO_DIRS = ("stabench", "tests", "benchmarks", "docs", "results", "baselines", "search_spaces", ".ci")
FILE_SUFFIXES = ("py", "md", "yaml", "yml", "json", "toml", "pt", "csv", "parquet", "tex", "html")

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
PY_REF = re.compile(
    r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.py)(?![\w-])"  # a path ending in .py
    r"(?:(::|:)([A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)*))?"  # an optional :symbol or ::test
)
REPO_PATH = re.compile(  # a repository file named by its path from the root, e.g. search_spaces/lsc.yaml
    rf"(?<![\w./<>*-])((?:{'|'.join(map(re.escape, REPO_DIRS))})/[\w./-]*\.(?:{'|'.join(FILE_SUFFIXES)}))\b"
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def code_texts(text: str) -> list[str]:
    """The contents of every fenced block and every inline code span of a Markdown page."""
    fences = [m.group(0) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return fences + [m.group(2) for m in INLINE_CODE.finditer(prose)]


def prose_of(text: str) -> str:
    """A page without its fenced blocks and inline code, where links live."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


@cache
def repo_files() -> dict[str, list[Path]]:
    """Every file of the repository's own folders, by file name."""
    by_name: dict[str, list[Path]] = {}
    for top in ROOT.iterdir():
        if not top.is_dir() or top.name.startswith(".") or top.name in SKIPPED_DIRS or top.name.endswith("egg-info"):
            continue
        for path in top.rglob("*"):
            if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
                by_name.setdefault(path.name, []).append(path)
    return by_name


def resolve(path: str) -> Path | str:
    """The repository file a documented path names, or why there is none."""
    for base in (ROOT, ROOT / "stabench"):
        if (base / path).is_file():
            return base / path
    if "/" not in path:
        found = repo_files().get(path, [])
        if len(found) == 1:
            return found[0]
        if found:
            return f"'{path}' is ambiguous: {sorted(page_id(p) for p in found)}; give the path"
    return f"'{path}' does not exist"


def find_definition(body: list[ast.stmt], name: str) -> ast.AST | None:
    """The def, class or assignment of `name` in a module or class body (looking into if/try blocks)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return node
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                if any(isinstance(e, ast.Name) and e.id == name for e in elts):
                    return node
        if isinstance(node, ast.If | ast.Try | ast.With):
            inner = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                inner += handler.body
            found = find_definition(inner, name)
            if found is not None:
                return found
    return None


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def defines(path: Path, symbol: str) -> bool:
    """Whether `symbol` (`name`, `Class.method`, `Class::test`) is defined in the Python file `path`."""
    scope: ast.AST = parse(path)
    for part in symbol.replace("::", ".").split("."):
        node = find_definition(getattr(scope, "body", []), part)
        if node is None:
            return False
        scope = node
    return True


def reference_problems(text: str) -> list[str]:
    """What is wrong with the code references of one page's text."""
    problems = []
    for code in code_texts(text):
        for m in PY_REF.finditer(code):
            path, symbol = m.group(1), m.group(3)
            ref = m.group(0)
            target = resolve(path)
            if isinstance(target, str):
                problems.append(f"`{ref}`: {target}")
            elif symbol and not defines(target, symbol):
                problems.append(f"`{ref}`: {page_id(target)} defines no '{symbol}'")
        for m in REPO_PATH.finditer(code):
            if not m.group(1).endswith(".py") and not (ROOT / m.group(1)).exists():
                problems.append(f"`{m.group(1)}` does not exist")
    return problems


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc extension) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(m.group(2)) for m in HEADING.finditer(FENCE.sub("", page.read_text(encoding="utf-8")))}


def link_problems(page: Path) -> list[str]:
    """What is wrong with the relative links of one page."""
    problems = []
    for m in LINK.finditer(prose_of(page.read_text(encoding="utf-8"))):
        link = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            problems.append(f"({link}): {target} does not exist")
            continue
        if page.is_relative_to(DOCS) and not path.is_relative_to(DOCS):
            problems.append(f"({link}): a docs page may only link inside docs/ (mkdocs cannot serve it)")
        if anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"({link}): {page_id(path)} has no heading with anchor '#{anchor}'")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_code_references_resolve(page):
    problems = reference_problems(page.read_text(encoding="utf-8"))
    assert not problems, f"{page_id(page)}: broken code references:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, f"{page_id(page)}: broken links:\n" + "\n".join(problems)


def nav_pages(nav) -> list[str]:
    """Every page path listed in an mkdocs `nav` (nested lists and {title: path} mappings)."""
    if isinstance(nav, str):
        return [] if re.match(r"^[a-z]+://", nav) else [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return [p for item in nav or [] for p in nav_pages(item)]


def test_every_docs_page_is_in_the_mkdocs_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(listed)) == pages, "mkdocs.yml's nav must list every page of docs/, and only those"
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    assert "index.md" in listed


def test_readme_keeps_the_command_blocks_ci_reads():
    """.ci/run runs the ```bash block after each marker verbatim."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert marker in lines, marker
        block = lines[lines.index(marker) + 1 :]
        assert block[0] == "```bash" and block[1].strip() and block[2] == "```", marker


@pytest.mark.parametrize(
    "text, broken",
    [
        ("`stabench/engine/diffusion.py:raw_weights`", False),
        ("`stabench/engine/ema.py:MultiEMA.update` and `models/layers.py:SkipScaler`", False),
        ("`tests/test_docs.py::test_every_docs_page_is_in_the_mkdocs_nav`", False),
        ("`stabench/engine/diffusion.py:no_such_function`", True),
        ("`stabench/engine/ema.py:MultiEMA.no_such_method`", True),
        ("`stabench/no_such_module.py:anything`", True),
        ("`stabench/no_such_module.py`", True),
        ("```bash\npython benchmarks/no_such_benchmark.py\n```", True),
        ("`search_spaces/no_such_space.yaml`", True),
        ("`fidelity.py:_cache_name`", False),  # a file name that occurs once
    ],
)
def test_the_checker_tells_broken_references(text, broken):
    assert bool(reference_problems(text)) == broken, reference_problems(text)
