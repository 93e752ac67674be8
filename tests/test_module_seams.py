"""The seams between modules of ``emoscope``, read from the source with ``ast`` (nothing is imported).

**No private name crosses a module.** A name is private when it starts with one underscore (a
dunder such as ``__all__`` is not private). A module may import a private name only from itself,
which it never needs: every ``from M import _x`` (absolute or relative, at module level or inside a
function or a ``TYPE_CHECKING`` block) in a module other than ``M`` is reported. A package's
``__init__`` gets no exception: what it re-exports is public, so it imports public names. A
*private module* (``pkg/_mod.py``) is private to its package: only modules inside ``pkg`` may
import from it (the same rule as import-linter's ``private_modules`` contract in pyproject.toml,
which also checks it).

**No import cycle.** The graph has an edge ``A -> B`` for every import, executed when ``A`` is
imported, of a module ``B`` of this package: module-level imports, ``try`` blocks and ``if``
branches at module level included; imports inside a function or class body and under
``if TYPE_CHECKING:`` left out (they run later or never). A second, stricter check counts the
imports inside functions too (TYPE_CHECKING still left out): a late import that closes a loop is
still a cycle of dependencies, only one that does not fail at import time. ``from P import x`` is an edge to the
submodule ``P.x`` when ``P/x.py`` exists, else to ``P`` (its ``__init__``). Every strongly
connected component with more than one module (or a module importing itself) is a cycle.

**One copy of a shared constant.** The regime constants (``BROKEN``, ``MIN_MEAN_TOKENS``) are
defined in ``emoscope.steering.regimes`` and nowhere else.

Each checker also runs on planted sources, so a checker that finds nothing cannot pass.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "emoscope"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_sources(src: Path = SRC, root: str = ROOT) -> dict[str, tuple[str, bool]]:
    """``{dotted module name: (source text, is a package __init__)}`` for every module under ``src/root``."""
    out = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_pkg)
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> Iterable[tuple[int, str, str | None]]:
    """Every import in ``tree`` as ``(line, module, name or None)``; ``import a.b`` gives ``(line, "a.b", None)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node)
            for a in node.names:
                yield node.lineno, target, a.name


def private_imports(sources: Mapping[str, tuple[str, bool]], root: str = ROOT) -> list[str]:
    """``"importer:line: from M import _x"`` for every private name or private module imported
    across the boundary that makes it private (see the module docstring)."""
    found = []
    for module, (text, is_pkg) in sources.items():
        for line, target, name in _imports(ast.parse(text), module, is_pkg):
            if not (target == root or target.startswith(root + ".")):
                continue
            what = f"from {target} import {name}" if name else f"import {target}"
            is_module = name is not None and f"{target}.{name}" in sources  # a submodule: the module rule
            if name is not None and not is_module and _is_private(name) and target != module:
                found.append(f"{module}:{line}: {what}")
                continue
            parts = target.split(".") + ([name] if is_module else [])
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])  # a private module is private to this package
                if _is_private(part) and not (module == owner or module.startswith(owner + ".")):
                    found.append(f"{module}:{line}: {what}")
                    break
    return sorted(set(found))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed_imports(body: list[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
    """The imports run when the module body runs: not in functions, classes or TYPE_CHECKING blocks."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _executed_imports(node.body)
            yield from _executed_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _executed_imports(block)
        elif isinstance(node, ast.With):
            yield from _executed_imports(node.body)


def _all_imports(body: list[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import in ``body``, inside functions and classes too, but not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _all_imports(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _all_imports([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])


def import_graph(sources: Mapping[str, tuple[str, bool]], root: str = ROOT, *,
                 late: bool = False) -> dict[str, set[str]]:
    """``{module: modules of this package it imports when it is imported}`` (see the module
    docstring); with ``late=True`` also the imports inside functions and classes."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, (text, is_pkg) in sources.items():
        body = ast.parse(text).body
        for node in (_all_imports(body) if late else _executed_imports(body)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(module, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names]
            graph[module] |= {t for t in targets if t in sources}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` that hold a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~200)
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def constant_definitions(sources: Mapping[str, tuple[str, bool]], names: Iterable[str]) -> dict[str, list[str]]:
    """``{name: modules that assign it at module level}`` (under any underscore spelling)."""
    wanted = {n.lstrip("_") for n in names}
    out: dict[str, list[str]] = {n: [] for n in sorted(wanted)}
    for module, (text, _) in sources.items():
        for node in ast.parse(text).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Name) and t.id.lstrip("_") in wanted:
                    out[t.id.lstrip("_")].append(module)
    return out


# ---------------------------------------------------------------- the package itself

SOURCES = module_sources()


def test_the_package_is_read():
    assert len(SOURCES) > 150 and "emoscope.steering.regimes" in SOURCES and "emoscope.steering" in SOURCES
    assert SOURCES["emoscope.steering"][1] and not SOURCES["emoscope.steering.regimes"][1]


def test_no_private_name_is_imported_across_modules():
    found = private_imports(SOURCES)
    assert not found, f"{len(found)} private imports across modules:\n" + "\n".join(found)


def test_no_import_cycle():
    graph = import_graph(SOURCES)
    assert sum(map(len, graph.values())) > 200  # the graph is read, not empty
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_through_late_imports():
    """Stricter: an import inside a function counts too (the ``modes`` <-> ``modes_run`` cycle of
    issue 23 ran through two such imports). A module importing itself late is left out."""
    graph = {m: deps - {m} for m, deps in import_graph(SOURCES, late=True).items()}
    found = cycles(graph)
    assert not found, "import cycles through late imports:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_regime_constants_are_defined_once():
    defs = constant_definitions(SOURCES, ["BROKEN", "MIN_MEAN_TOKENS"])
    assert defs == {"BROKEN": ["emoscope.steering.regimes"], "MIN_MEAN_TOKENS": ["emoscope.steering.regimes"]}


# ---------------------------------------------------------------- planted cases: the checkers can fail

PLANTED = {
    "pkg": ("", True),
    "pkg.a": ("from pkg.b import _hidden, shown\nfrom .b import _also\nimport pkg.b\n", False),
    "pkg.b": ("def _hidden(): ...\ndef shown(): ...\n_also = 1\n", False),
    "pkg.c": ("def f():\n    from pkg.b import _late\n", False),
    "pkg.d": ("from pkg.sub._inner import thing\nfrom pkg.sub import _inner\n", False),
    "pkg.sub": ("from pkg.sub._inner import thing\n", True),
    "pkg.sub._inner": ("thing = 1\nfrom pkg.sub import __all__ as x\n", False),
    "pkg.sub.e": ("from ._inner import thing\nfrom .. import b\nfrom pkg.sub import _inner\n", False),
}


def test_private_import_checker_reports_planted_imports():
    found = private_imports(PLANTED, root="pkg")
    assert found == [
        "pkg.a:1: from pkg.b import _hidden",
        "pkg.a:2: from pkg.b import _also",   # relative import resolved
        "pkg.c:2: from pkg.b import _late",   # function-local import
        "pkg.d:1: from pkg.sub._inner import thing",  # a private module outside its package
        "pkg.d:2: from pkg.sub import _inner",
    ]  # not reported: public names, dunders, a private module imported inside its own package


def test_cycle_checker_reports_a_planted_cycle_and_ignores_late_imports():
    planted = {
        "p": ("", True),
        "p.stage": ("from p.work import run\nCONST = 1\n", False),
        "p.work": ("from p import stage\n", False),  # `from p import stage` is the submodule p.stage
        "p.late": ("def f():\n    from p.lazy import g\n", False),
        "p.lazy": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.late import f\n"
                   "import p.late\n", False),
        "p.tri_a": ("from .tri_b import x\n", False),
        "p.tri_b": ("try:\n    from p.tri_c import y\nexcept ImportError:\n    pass\n", False),
        "p.tri_c": ("import p.tri_a\n", False),
        "p.self_": ("from p.self_ import z\n", False),
    }
    graph = import_graph(planted, root="p")
    assert graph["p.work"] == {"p.stage"} and graph["p.late"] == set() and graph["p.lazy"] == {"p.late"}
    assert cycles(graph) == [["p.self_"], ["p.stage", "p.work"], ["p.tri_a", "p.tri_b", "p.tri_c"]]
    late = import_graph(planted, root="p", late=True)  # the function-local import counts, TYPE_CHECKING does not
    assert late["p.late"] == {"p.lazy"} and late["p.lazy"] == {"p.late"} and ["p.late", "p.lazy"] in cycles(late)
    # break the stage <-> work cycle the way the package does: the work module no longer imports the stage
    planted["p.work"] = ("def f():\n    from p import stage\n", False)
    assert ["p.stage", "p.work"] not in cycles(import_graph(planted, root="p"))


def test_constant_checker_finds_a_second_copy():
    planted = {"p.regimes": ("BROKEN = ('a',)\nMIN_MEAN_TOKENS: float = 2.0\n", False),
               "p.effects": ("_BROKEN = ('a',)\ndef f():\n    BROKEN = 1\n", False)}
    assert constant_definitions(planted, ["BROKEN", "MIN_MEAN_TOKENS"]) == {
        "BROKEN": ["p.regimes", "p.effects"], "MIN_MEAN_TOKENS": ["p.regimes"]}


# ---------------------------------------------------------------- renamed modules: the old paths still work

#: old import path -> new one (issue 23); each old module is a shim for one release
RENAMED = {
    "emoscope.elicit.modes": "emoscope.elicit.modes_stage",
    "emoscope.elicit.modes_run": "emoscope.elicit.mode_comparison",
    "emoscope.vectors.units": "emoscope.vectors.strength",
    "emoscope.steering.units": "emoscope.steering.strength",
    "emoscope.models.work": "emoscope.models.units",
    "emoscope.introspection.work": "emoscope.introspection.units",
    "emoscope.heads.decode": "emoscope.heads.units",
    "emoscope.models.heads": "emoscope.models.head_outputs",
    "emoscope.models.peek": "emoscope.models.shape",
    "emoscope.patching.step1": "emoscope.patching.next_token",
    "emoscope.core.placebo": "emoscope.core.decoys",
    "emoscope.probing.report": "emoscope.probing.probe_report",
    "emoscope.vectors._data": "emoscope.core.arrays",  # moved to the shared layer
    "emoscope.datasets._cards": "emoscope.datasets.cards",  # made public: other packages use it
}


def test_old_import_paths_reexport_the_new_modules():
    import importlib

    for old, new in RENAMED.items():
        o, n = importlib.import_module(old), importlib.import_module(new)
        assert o.__doc__.startswith(f"Deprecated import path: use ``{new}``"), old
        assert list(o.__all__) == list(n.__all__) and n.__all__, old
        assert all(getattr(o, k) is getattr(n, k) for k in n.__all__), old
        # a shim holds nothing of its own: no function or class is defined in it
        tree = ast.parse(SOURCES[old][0])
        assert not [s for s in tree.body if isinstance(s, ast.FunctionDef | ast.ClassDef)], old
    from emoscope import steering

    assert steering.patch is steering.replace_residual  # the old name of the function, for one release


def importers_of(sources: Mapping[str, tuple[str, bool]], paths: set[str]) -> list[str]:
    """``"importer: module"`` for every import (anywhere in a module) of one of ``paths`` by a module not in it."""
    out = set()
    for m, (text, is_pkg) in sources.items():
        for _, target, name in _imports(ast.parse(text), m, is_pkg):
            full = f"{target}.{name}" if name and f"{target}.{name}" in sources else target
            if full in paths and m not in paths:
                out.add(f"{m}: {full}")
    return sorted(out)


def test_no_module_imports_a_deprecated_path():
    """The package itself uses the new names only (a shim may import its new module)."""
    assert not importers_of(SOURCES, {*RENAMED, "emoscope.cli._stage_cmd"})
    planted = {"p": ("", True), "p.new": ("x = 1\n", False), "p.old": ("from p.new import *\n", False),
               "p.user": ("def f():\n    from p import old\n", False), "p.other": ("import p.new\n", False)}
    assert importers_of(planted, {"p.old"}) == ["p.user: p.old"]


# ---------------------------------------------------------------- package surfaces

def package_all(sources: Mapping[str, tuple[str, bool]]) -> dict[str, list[str]]:
    """``{package: its __all__}`` for every package ``__init__`` that assigns a literal ``__all__``
    (the top-level ``emoscope``, whose ``__all__`` is built from its lazy table, is left out)."""
    out = {}
    for module, (text, is_pkg) in sources.items():
        if is_pkg:
            for node in ast.parse(text).body:
                if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
                        and all(isinstance(e, ast.Constant) for e in node.value.elts)):
                    out[module] = [e.value for e in node.value.elts]
    return out


def off_surface_imports(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """``"importer: from P import x"`` for a package ``P`` with an ``__all__`` that lacks ``x``
    (and ``x`` is no submodule of ``P``): such a name is plumbing, imported from its module."""
    surfaces = package_all(sources)
    out = []
    for module, (text, is_pkg) in sources.items():
        for _, target, name in _imports(ast.parse(text), module, is_pkg):
            if (name and target in surfaces and target != module and name not in surfaces[target]
                    and f"{target}.{name}" not in sources and name != "*"):
                out.append(f"{module}: from {target} import {name}")
    return sorted(out)


def test_packages_export_what_a_user_calls():
    surfaces = package_all(SOURCES)
    sizes = {p.removeprefix("emoscope."): len(v) for p, v in surfaces.items()}
    # issue 23: heads 15, introspection 11, geometry 22 names before, plumbing included
    assert sizes["heads"] <= 10 and sizes["introspection"] <= 10 and sizes["geometry"] <= 11, sizes
    assert max(sizes.values()) <= 12, sizes
    assert not off_surface_imports(SOURCES)
    import importlib

    for pkg, names in surfaces.items():  # every exported name exists
        mod = importlib.import_module(pkg)
        assert all(hasattr(mod, n) for n in names), pkg


def test_off_surface_checker_reports_a_planted_import():
    planted = {"p": ('from p.m import a, b\n__all__ = ["a"]\n', True), "p.m": ("a = b = 1\n", False),
               "p.sub": ("", False), "q": ("from p import a, b, sub\n", False)}
    assert off_surface_imports(planted) == ["q: from p import b"]


# ---------------------------------------------------------------- names

def name_clashes(sources: Mapping[str, tuple[str, bool]], root: str = ROOT) -> list[str]:
    """Modules named like a package of ``root`` they do not belong to (``models/heads.py`` beside
    the ``heads`` package)."""
    packages = {m.split(".")[1] for m, (_, is_pkg) in sources.items() if is_pkg and m.count(".") == 1}
    return sorted(m for m, (_, is_pkg) in sources.items()
                  if not is_pkg and m.count(".") >= 2 and m.rsplit(".", 1)[1] in packages
                  and m.split(".")[1] != m.rsplit(".", 1)[1])


def test_no_module_is_named_like_another_package():
    # the three shims, for one release
    assert name_clashes(SOURCES) == ["emoscope.core.placebo", "emoscope.models.heads", "emoscope.probing.report"]
    assert all(old in RENAMED for old in name_clashes(SOURCES))
    planted = {"p": ("", True), "p.heads": ("", True), "p.models": ("", True), "p.models.heads": ("", False),
               "p.heads.heads": ("", False), "p.heads.decode": ("", False)}
    assert name_clashes(planted, root="p") == ["p.models.heads"]


def test_every_stage_lives_in_a_stage_module():
    """``core/stages.yaml`` names each stage's module: ``stage.py``, or ``<name>_stage.py`` where a
    package holds more than one stage."""
    import yaml

    catalog = yaml.safe_load((SRC / ROOT / "core" / "stages.yaml").read_text(encoding="utf-8"))
    modules = {name: entry["module"] for name, entry in catalog.items()}
    assert len(modules) >= 13 and all(m in SOURCES for m in modules.values()), modules
    bad = {n: m for n, m in modules.items() if not (m.endswith(".stage") or m.endswith("_stage"))}
    assert not bad, bad
