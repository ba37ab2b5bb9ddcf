"""The repository's house rules, checked on the source text (ast, tokenize, re; nothing is
imported or compiled, so the whole file runs in about a second):

* no tracked text file cites the developers' internal documents or their issue / session
  numbers: the repository explains itself, in its own words and its own docs/;
* every ``<file>.md#<anchor>`` a tracked file cites exists;
* no module of mpt_jax/ over 450 lines, no function (nested ones and methods included)
  over 80 lines;
* no import cycle among mpt_jax's modules (imports that run when a module is imported);
* no mpt_jax module reads another mpt_jax module's private (_underscore) name;
* 4-space indentation in mpt_jax/, configs/ and tests/.

Every failure lists file:line. Each checker takes the repository root as an argument, and
the ``*_finds_*`` tests run it on a small tree with a planted violation, so each rule is
shown to be able to fail.
"""
import ast
import json
import pathlib
import re
import subprocess
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
INDENTED_DIRS = ("mpt_jax", "configs", "tests")

# The names are split so that this file does not match its own pattern.
_DOCUMENTS = "|".join(("SP" + "EC", "GU" + "IDE", "PRE" + "AMBLE"))
CITATION = re.compile(
    rf"\b(?:{_DOCUMENTS})\b"                           # the documents, by name
    rf"|\b(?i:{_DOCUMENTS})\.md\b"                     # ... or by file name
    r"|(?<![A-Za-z])(?i:issue|session)s?[ _-]?#?\d")   # their numbers, also with -, _ or #
DOC_LINK = re.compile(r"(?<![\w./:-])([\w./-]+\.md)#([\w-]+)")  # not inside a URL


def tracked_files(root: pathlib.Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def text_lines(root: pathlib.Path, name: str):
    """(where, line) of a tracked text file; a notebook's cell sources, not its outputs.
    Binary files (figures, tickets) give nothing."""
    try:
        text = (root / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        return
    if name.endswith(".ipynb"):
        for c, cell in enumerate(json.loads(text)["cells"]):
            for i, line in enumerate("".join(cell["source"]).splitlines()):  # list or str
                yield f"{name}:cell {c}:{i + 1}", line
        return
    for i, line in enumerate(text.splitlines()):
        yield f"{name}:{i + 1}", line


def python_files(root: pathlib.Path, *dirs: str) -> list[pathlib.Path]:
    return sorted(p for d in dirs for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)


def rel(root: pathlib.Path, path: pathlib.Path) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------
# Citations and links


def find_citations(root: pathlib.Path, files: list[str]) -> dict[str, list[str]]:
    """{file: ["file:line: text", ...]} of the lines (and file names) that cite."""
    found = {}
    for name in files:
        hits = [f"{name}: (file name)"] if CITATION.search(name) else []
        hits += [f"{where}: {line.strip()[:100]}" for where, line in text_lines(root, name)
                 if CITATION.search(line)]
        if hits:
            found[name] = hits
    return found


def test_no_citations_of_internal_documents():
    """Code, configs, tests, benchmarks, experiments and docs explain behaviour themselves (or
    cite docs/), never sections of documents the reader does not have, nor issue or session
    numbers. Data paths such as ../shared/data are fine."""
    files = tracked_files(ROOT)
    assert "mpt_jax/ops.py" in files and "docs/decisions.md" in files
    found = find_citations(ROOT, files)
    hits = [hit for name in sorted(found) for hit in found[name]]
    assert not hits, "\n".join(["cites internal documents or issue/session numbers:"] + hits)


def markdown_anchors(path: pathlib.Path) -> set[str]:
    """GitHub's anchors of the headings of a markdown file."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def find_broken_doc_links(root: pathlib.Path, files: list[str]) -> list[str]:
    """``<file>.md#<anchor>`` citations whose file (next to the citing file, at the root or in
    docs/) or heading does not exist."""
    broken = []
    for name in files:
        for where, line in text_lines(root, name):
            for target, anchor in DOC_LINK.findall(line):
                bases = ((root / name).parent, root, root / "docs")
                path = next((b / target for b in bases if (b / target).is_file()), None)
                if path is None or anchor not in markdown_anchors(path):
                    broken.append(f"{where}: {target}#{anchor}")
    return broken


def test_cited_doc_anchors_exist():
    broken = find_broken_doc_links(ROOT, tracked_files(ROOT))
    assert not broken, "\n".join(["cites a heading that does not exist:"] + broken)


# ---------------------------------------------------------------------------
# Sizes


def find_long_code(root: pathlib.Path) -> list[str]:
    found = []
    for path in python_files(root, "mpt_jax"):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{rel(root, path)}:1: module of {lines} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel(root, path)}:{node.lineno}: {node.name}() of {length} "
                                 f"lines (> {MAX_FUNCTION_LINES})")
    return found


def test_modules_and_functions_are_short():
    found = find_long_code(ROOT)
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------
# Imports: the package's modules, what each imports when it is imported, private reads


def package_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dotted module name: path} of mpt_jax/ (a package under its own name)."""
    modules = {}
    for path in python_files(root, "mpt_jax"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _package_of(name: str, path: pathlib.Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module name of ``from <module> import ...`` (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _longest_module(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _import_time_nodes(tree: ast.Module):
    """The nodes that run when the module is imported: not function bodies, not
    ``if TYPE_CHECKING:`` blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph(root: pathlib.Path) -> dict[str, dict[str, int]]:
    """{module: {imported mpt_jax module: line}} for the imports that run at import time.
    ``from pkg import sub`` imports the submodule, ``from pkg import name`` the package;
    importing a.b.c also runs the __init__ of a.b, unless that package encloses the importer
    (a package importing its own submodules is the normal order, not a cycle)."""
    modules = package_modules(root)
    graph = {}
    for name, path in modules.items():
        package, edges = _package_of(name, path), {}
        for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [_longest_module(a.name, modules) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                           else _longest_module(base, modules) for a in node.names]
            else:
                continue
            for target in filter(None, targets):
                parts = target.split(".")
                parents = (".".join(parts[:i]) for i in range(1, len(parts)))
                for t in [target, *parents]:
                    if t != name and not name.startswith(t + "."):
                        edges.setdefault(t, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def describe_cycle(root: pathlib.Path, graph, cycle: list[str]) -> list[str]:
    modules = package_modules(root)
    return [f"{rel(root, modules[a])}:{graph[a][b]}: {a} imports {b}"
            for a, b in zip(cycle, cycle[1:])]


def test_no_import_cycles():
    graph = import_graph(ROOT)
    assert "mpt_jax.layers" in graph["mpt_jax.models.common"]  # the walk sees the imports
    cycle = find_cycle(graph)
    assert cycle is None, "\n".join(["import cycle:"] + describe_cycle(ROOT, graph, cycle))


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")  # dunders (__version__) are public


def _module_aliases(tree, name: str, path: pathlib.Path, modules, where: str, found: list):
    """{local name: mpt_jax module} from every import of the file (scopes ignored: a
    stricter check); ``from <mpt_jax module> import _name`` goes to ``found``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in modules:
                    aliases[a.asname] = a.name
                elif not a.asname and a.name.split(".")[0] in modules:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, _package_of(name, path))
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                elif base in modules and base != name and _private(a.name):
                    found.append(f"{where}:{node.lineno}: from {base} import {a.name}")
    return aliases


def find_private_reads(root: pathlib.Path) -> list[str]:
    """``from mpt_jax.x import _y``, ``x._y`` and ``mpt_jax.x._y`` in mpt_jax/, where x is
    another mpt_jax module than the reader."""
    modules = package_modules(root)
    found = []
    for name, path in modules.items():
        tree, where = ast.parse(path.read_text(encoding="utf-8"), str(path)), rel(root, path)
        aliases = _module_aliases(tree, name, path, modules, where, found)
        for node in ast.walk(tree):
            chain, base = [], node  # x.a.b._c: base x, chain [a, b, _c]
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if not (chain and isinstance(base, ast.Name) and base.id in aliases):
                continue
            module, start = aliases[base.id], base.id
            while chain and f"{module}.{chain[0]}" in modules:  # through dotted imports
                start = f"{start}.{chain[0]}"
                module = f"{module}.{chain.pop(0)}"
            if chain and module != name and _private(chain[0]):
                found.append(f"{where}:{node.lineno}: {start}.{chain[0]} "
                             f"(private name of {module})")
    return sorted(set(found))


def test_no_module_reads_another_modules_private_names():
    found = find_private_reads(ROOT)
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------
# Indentation


def find_bad_indentation(root: pathlib.Path, dirs=INDENTED_DIRS) -> list[str]:
    """Each indented block 4 spaces deeper than the one around it, no tabs."""
    found = []
    for path in python_files(root, *dirs):
        levels = [0]
        with open(path, "rb") as f:
            for tok in tokenize.tokenize(f.readline):
                if tok.type == tokenize.INDENT:
                    width = len(tok.string.expandtabs(8))
                    if "\t" in tok.string or width - levels[-1] != 4:
                        found.append(f"{rel(root, path)}:{tok.start[0]}: indented by "
                                     f"{tok.string!r} inside a block at {levels[-1]}")
                    levels.append(width)
                elif tok.type == tokenize.DEDENT:
                    levels.pop()
    return found


def test_four_space_indentation():
    found = find_bad_indentation(ROOT)
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------
# Each checker finds a planted violation (a tiny repository in tmp_path)


@pytest.fixture
def tree(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return name

    write("mpt_jax/__init__.py", "")
    return tmp_path, write


def test_citation_finder_finds_citations(tree):
    root, write = tree
    issue, doc = "iss" + "ue", "SP" + "EC"
    files = [write("a.py", f"x = 1  # see {doc} 1.2\n"),
             write("b.md", f"ok\nas in {issue}-6, data in ../shared/data\n"),
             write(f"c_se{'ss'}ion7.jsonl", "{}\n"),
             write("d.py", "spec = importlib.util.spec_from_file_location(name, path)\n"),
             write("e.ipynb", json.dumps({"cells": [{"source": [f"# {issue} #3\n"]}]}))]
    found = find_citations(root, files)
    assert sorted(found) == ["a.py", "b.md", f"c_se{'ss'}ion7.jsonl", "e.ipynb"]
    assert found["b.md"] == [f"b.md:2: as in {issue}-6, data in ../shared/data"]
    assert found["e.ipynb"] == [f"e.ipynb:cell 0:1: # {issue} #3"]


def test_link_finder_finds_missing_anchors(tree):
    root, write = tree
    write("docs/decisions.md", "# Decisions\n### alpha\n## Binary activations (MPT-1/1)\n")
    md = ".md" + "#"  # split: this file is searched too
    files = [write("x.py", f"# docs/decisions{md}alpha, decisions{md}binary-activations-mpt-11\n"
                           f"# docs/decisions{md}beta, docs/nothing{md}alpha\n")]
    assert find_broken_doc_links(root, files) == [f"x.py:2: docs/decisions{md}beta",
                                                  f"x.py:2: docs/nothing{md}alpha"]


def test_size_finder_finds_long_code(tree):
    root, write = tree
    body = "".join(f"            x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    write("mpt_jax/long.py",  # a method of 83 lines holding a function of 81
          "class A:\n    def f(self):\n        def g():\n" + body + "        return g\n")
    write("mpt_jax/ok.py", "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(79)))
    write("mpt_jax/big.py", "x = 0\n" * (MAX_MODULE_LINES + 1))
    found = find_long_code(root)
    assert found == [f"mpt_jax/big.py:1: module of {MAX_MODULE_LINES + 1} lines (> 450)",
                     "mpt_jax/long.py:2: f() of 83 lines (> 80)",
                     "mpt_jax/long.py:3: g() of 81 lines (> 80)"]


def test_cycle_finder_finds_cycles(tree):
    root, write = tree
    write("mpt_jax/a.py", "from mpt_jax import b\n")
    write("mpt_jax/b.py", "import os\n\n\nfrom . import c\n")
    write("mpt_jax/c.py", "def f():\n    from mpt_jax import a  # lazy: not a cycle\n")
    write("mpt_jax/sub/__init__.py", "from mpt_jax.sub import d\n")  # its own submodule
    write("mpt_jax/sub/d.py", "x = 1\n")
    graph = import_graph(root)
    assert find_cycle(graph) is None
    write("mpt_jax/c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
          "    from mpt_jax import b\nfrom mpt_jax.sub.d import x\n")
    write("mpt_jax/sub/d.py", "from mpt_jax.a import *\n")  # runs sub/__init__ first
    graph = import_graph(root)
    cycle = find_cycle(graph)
    assert cycle == ["mpt_jax.a", "mpt_jax.b", "mpt_jax.c", "mpt_jax.sub", "mpt_jax.sub.d",
                     "mpt_jax.a"]
    assert describe_cycle(root, graph, cycle)[1] == "mpt_jax/b.py:4: mpt_jax.b imports mpt_jax.c"


def test_private_read_finder_finds_private_reads(tree):
    root, write = tree
    write("mpt_jax/a.py", "_x = 1\n__all__ = []\n")
    write("mpt_jax/pkg/__init__.py", "")
    write("mpt_jax/pkg/b.py", "from mpt_jax.a import _x\nfrom .. import a\n"
                              "import mpt_jax.a\nimport mpt_jax.a as m\n"
                              "y = a._x + m._x + mpt_jax.a._x + len(a.__all__)\n"
                              "class C:\n    _z = 2\n    w = _z\n")
    write("mpt_jax/pkg/c.py", "from .b import C\nv = C._z  # a class's, not a module's\n")
    assert find_private_reads(root) == [
        "mpt_jax/pkg/b.py:1: from mpt_jax.a import _x",
        "mpt_jax/pkg/b.py:5: a._x (private name of mpt_jax.a)",
        "mpt_jax/pkg/b.py:5: m._x (private name of mpt_jax.a)",
        "mpt_jax/pkg/b.py:5: mpt_jax.a._x (private name of mpt_jax.a)"]


def test_indentation_finder_finds_bad_indentation(tree):
    root, write = tree
    write("mpt_jax/good.py", "def f(x):\n    if x:\n        return [\n          1]\n    return 0\n")
    write("mpt_jax/bad.py", "def f(x):\n  if x:\n          return 1\n")
    write("configs/tabs.py", "def f():\n\treturn 1\n")
    found = find_bad_indentation(root, dirs=("mpt_jax", "configs"))
    assert found == ["configs/tabs.py:2: indented by '\\t' inside a block at 0",
                     "mpt_jax/bad.py:2: indented by '  ' inside a block at 0",
                     "mpt_jax/bad.py:3: indented by '          ' inside a block at 2"]
