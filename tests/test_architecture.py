"""Layering rules checked on the source: the report layer only renders typed results."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qdebug

PKG = Path(qdebug.__file__).parent
# what qdebug/report/ may import from qdebug (besides itself): the results layer and two ground-floor modules
REPORT_ALLOWED = ("qdebug.report", "qdebug.results", "qdebug.errors", "qdebug.fileio")
ROOT_NAMES = {"__version__"}  # `from qdebug import __version__`: the package root carries no layer


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(text: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute qdebug-or-other module) of every import in `text`, at any depth (functions too).

    `from qdebug import x` counts as importing `qdebug.x`; relative imports resolve against `module`.
    """
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                mod = ".".join(parts + ([mod] if mod else []))
            if mod == "qdebug":
                out += [(node.lineno, "qdebug" if a.name in ROOT_NAMES else f"qdebug.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def report_may_import(mod: str) -> bool:
    """Whether a module under qdebug/report/ may import `mod`."""
    if mod != "qdebug" and not mod.startswith("qdebug."):
        return True  # standard library and third-party packages
    return mod == "qdebug" or any(mod == a or mod.startswith(a + ".") for a in REPORT_ALLOWED)


REPORT_FILES = sorted((PKG / "report").rglob("*.py"))


def test_the_report_layer_is_found() -> None:
    assert (PKG / "report" / "build.py") in REPORT_FILES and (PKG / "report" / "plots.py") in REPORT_FILES


@pytest.mark.parametrize("path", REPORT_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_report_imports_only_results_errors_fileio(path: Path) -> None:
    mods = imported_modules(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    bad = [f"{path.relative_to(PKG.parent)}:{line}: imports {mod}" for line, mod in mods
           if not report_may_import(mod)]
    assert not bad, (f"the report layer only renders results; besides itself it may import "
                     f"{', '.join(REPORT_ALLOWED[1:])}:\n" + "\n".join(bad))


def test_the_check_sees_function_level_relative_and_root_imports() -> None:
    text = ("from . import plots\nfrom .. import errors, runners\nfrom qdebug import __version__\n"
            "def f():\n    from qdebug.runners.session import OrtSession\n    import qdebug.tasks.draw\n")
    mods = sorted(m for _, m in imported_modules(text, "qdebug.report.build"))
    assert mods == ["qdebug", "qdebug.errors", "qdebug.report", "qdebug.runners", "qdebug.runners.session",
                    "qdebug.tasks.draw"]
    assert [m for m in mods if not report_may_import(m)] == ["qdebug.runners", "qdebug.runners.session",
                                                             "qdebug.tasks.draw"]
    in_init = imported_modules("from ..blocks import il\nfrom .rows import r\n", "qdebug.report.sections", True)
    assert [m for _, m in in_init] == ["qdebug.report.blocks", "qdebug.report.sections.rows"]


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def test_no_module_over_600_lines():
    """Every module stays readable in one sitting (issue rule: none over 600 lines)."""
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_no_dynamic_imports():
    """Modules import each other plainly: no __import__ or importlib.import_module (a broken module must fail
    loudly, and the import graph must be readable from the source)."""
    bad = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in ("__import__", "import_module"):
                    bad.append(f"{m}:{node.lineno}")
    assert bad == []


def _qdebug_edges() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for _, target in imported_modules(p.read_text(), m, p.name == "__init__.py"):
            # `from qdebug.x import name` may name a submodule or an attribute: take the longest module prefix
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != m and target != "qdebug":
                edges[m].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    """No module imports (at any depth, functions included) a module that imports it back; package
    __init__ files that only register their plug-ins are the one allowed loop (package -> plug-in -> package)."""
    edges = _qdebug_edges()
    for m in list(edges):  # a plug-in importing its own package's registry is not a layering cycle
        if m.count(".") >= 2:
            pkg = m.rpartition(".")[0]
            edges[pkg] = {t for t in edges.get(pkg, set()) if not (t.startswith(pkg + ".") and pkg in edges[t])}
    assert _cycle(edges) is None


def test_the_cycle_finder_finds_a_cycle():
    """The checker itself must be able to fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def markup_fstrings(text: str) -> list[int]:
    """Lines where an f-string goes straight into rich markup (print, Table title) instead of through `mk`."""
    bad = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = list(node.args) if name == "print" else [k.value for k in node.keywords if k.arg == "title"] \
            if name == "Table" else []
        for a in args:
            parts = [a] + ([a.left, a.right] if isinstance(a, ast.BinOp) else [])
            if any(isinstance(p, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in p.values)
                   for p in parts):
                bad.append(node.lineno)
    return bad


@pytest.mark.parametrize("path", sorted((PKG / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_prints_user_text_through_the_escaping_point(path: Path) -> None:
    assert markup_fstrings(path.read_text()) == [], f"{path.name}: use terminal.mk(template, *values)"


def test_the_markup_check_sees_an_fstring_print() -> None:
    assert markup_fstrings('console.print(f"wrote {name}")\nconsole.print("x" + f"{y}")\nTable(title=f"{t}")') == \
        [1, 2, 3]
    assert markup_fstrings('console.print(mk("wrote {}", name))\nconsole.print("plain")') == []
