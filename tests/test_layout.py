"""The package's shape: its import graph (module- and function-level imports) has no cycle, no private
name crosses a module boundary, and no module is long without saying why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "conta_kit"
MAX_LINES = 350


def module_name(path: Path, base: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every import of a package module,
    anywhere in the file (function bodies included)."""
    out = []
    for mod, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, None, node.lineno) for a in node.names if a.name in known]
            elif isinstance(node, ast.ImportFrom):
                target = resolve(mod, path, node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in known:  # `from . import distributed`: a module, not a name
                        out.append((mod, sub, None, node.lineno))
                    elif target in known:
                        out.append((mod, target, a.name, node.lineno))
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search (one per back edge)."""
    found, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    return found


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """importer -> imported modules; a package's own ``__init__`` re-exporting its submodules is not an edge
    back into the package (``a/__init__`` -> ``a.b`` is how a package is assembled)."""
    edges: dict[str, set[str]] = {}
    for src, dst, _, _ in imports(known):
        if dst != src and not (known[src].name == "__init__.py" and dst.startswith(src + ".")):
            edges.setdefault(src, set()).add(dst)
    return edges


def test_the_checks_catch_what_they_look_for(tmp_path):
    pkg = tmp_path / "conta_kit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom ..a import _secret\n\ndef g():\n    pass\n")
    known = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    found = cycles(graph(known))
    assert ["conta_kit.a", "conta_kit.sub.b", "conta_kit.a"] in found
    private = [(s, d, n) for s, d, n, _ in imports(known) if n and n.startswith("_") and not n.startswith("__")]
    assert private == [("conta_kit.sub.b", "conta_kit.a", "_secret")]


def test_no_import_cycle():
    found = cycles(graph(modules()))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_private_name_crosses_a_module():
    bad = [f"{src} imports {name} from {dst} (line {line})" for src, dst, name, line in imports(modules())
           if name and name.startswith("_") and not name.startswith("__") and dst != src]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_short_or_says_why(name):
    path = modules()[name]
    text = path.read_text()
    n = len(text.splitlines())
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert n <= MAX_LINES or "Longer than" in doc, (
        f"{path.relative_to(PACKAGE.parent)} has {n} lines (> {MAX_LINES}); split it along a noun of the pipeline "
        "or say why at its top ('Longer than ... because ...')")
