"""The house rules of bfr_core (docs/ARCHITECTURE.md), checked on the source: no module imports another's private
names, module-level imports form no cycle, and the folders depend on each other only downwards."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "bfr_core"
# What each folder may import at all, besides itself and bfr_core/lazy.py (the packages' lazy exports).
ALLOWED = {
    "utils": set(),
    "io": {"utils"},
    "models": {"utils", "io"},
    "archs": {"utils", "models"},
    "faces": {"utils", "models", "archs", "io"},
    "diffusion": {"utils", "models", "archs"},
    "identity": {"utils", "models", "archs", "faces", "diffusion"},
    "restoration": {"utils", "models", "archs", "faces", "diffusion", "identity"},
    "training": {"utils", "models", "archs", "io", "restoration"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """Absolute name of what a relative import refers to."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(top_level_only: bool):
    """(importer, imported module, imported names, line) for every bfr_core-internal `from` import."""
    mods = _modules()
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = _resolve(module, path, node)
                yield module, target, [a.name for a in node.names], node.lineno, mods


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{m}:{line} imports {n} from {t}" for m, t, names, line, _ in _imports(False)
                 for n in names if n.startswith("_") and t != m]
    assert not offenders, offenders


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {}
    for m, t, names, _, mods in _imports(True):
        for n in names:  # `from . import x` imports the submodule x
            dep = f"{t}.{n}" if f"{t}.{n}" in mods else t
            if dep in mods and dep != m:
                graph.setdefault(m, set()).add(dep)
    # A package's __init__ importing its own submodules is how packages work; a submodule importing its package's
    # __init__ back (e.g. `from . import X`) is a cycle only if that __init__ also imports the submodule.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_folders_depend_only_downwards():
    offenders = []
    for m, t, _, line, _ in _imports(False):
        src, dst = m.split("."), t.split(".")
        if len(src) < 2 or len(dst) < 2 or src[1] == dst[1] or src[1] not in ALLOWED or dst[1] == "lazy":
            continue
        if dst[1] not in ALLOWED[src[1]]:
            offenders.append(f"{m}:{line} imports {t}")
    assert not offenders, offenders


def test_checks_see_the_whole_package():
    """Guards the tests above against silently checking nothing (a moved root, a renamed folder)."""
    mods = _modules()
    assert {"bfr_core.restoration.restorer", "bfr_core.diffusion.samplers", "bfr_core.archs.registry",
            "bfr_core.faces.paste", "bfr_core.training"} <= set(mods)
    assert set(ALLOWED) <= {m.split(".")[1] for m in mods if m.count(".") >= 1}
    assert sum(1 for _ in _imports(False)) > 100
