"""The package's import graph: every import points one way, the maths pages reach no kernel and
no backend switch, and the library imports without PyTorch.

The graph is read from the source with `ast` (nothing is imported): an arrow for every import
of a halo_ref module, at the top of a module or inside a function, and, where the importer lies
outside the imported module's packages, one to each of those packages too (Python runs a
package's `__init__` before any module in it); the top package `halo_ref` is left out of those,
its `__init__` always runs first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "halo_ref"

# The maths pages: plain NumPy, the pages to read. Their kernels sit beside them and the backend
# switch above them; the maths must not know either.
MATHS_PAGES = (
    "halo_ref.attention.blocking",
    "halo_ref.attention.relpos",
    "halo_ref.attention.core",
    "halo_ref.nn.functional",
)
# Imports inside a function are allowed for an optional dependency only (PyTorch's side).
LAZY_ALLOWED = {"halo_ref.verification.torch_side"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_graph(root: Path = PACKAGE):
    """(modules, arrows, lazy): module name -> source path; name -> set of names it imports;
    (importer, imported) pairs of imports written inside a function."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    arrows, lazy = {name: set() for name in modules}, set()

    def target(base: str) -> str | None:
        while base and base not in modules:  # `from .x import name`: name is not a module
            base = base.rpartition(".")[0]
        return base or None

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        inside = {id(node) for f in functions for node in ast.walk(f)}
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                found = [f"{base}.{alias.name}" for alias in node.names]
            for imported in found:
                hit = target(imported)
                if hit is None or hit == name:
                    continue
                parts = hit.split(".")
                holders = {".".join(parts[:i]) for i in range(2, len(parts))}  # not the top one
                outside = {h for h in holders if name != h and not name.startswith(h + ".")}
                for held in {hit} | outside:
                    arrows[name].add(held)
                    if id(node) in inside:
                        lazy.add((name, held))
    return modules, arrows, lazy


def find_cycle(arrows):
    """One cycle as a list of module names, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(arrows.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(arrows):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(arrows, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in arrows.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def kernel_modules(modules):
    """The backend switch and every module that imports Numba."""
    found = {"halo_ref.backend"}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == "numba" or n.startswith(("numba.", "llvmlite")) for n in names):
                found.add(name)
    return found


def check_graph(root: Path = PACKAGE) -> list[str]:
    """Every problem of the import graph under `root`, one line each (none: all is well)."""
    modules, arrows, lazy = read_graph(root)
    problems = []
    cycle = find_cycle(arrows)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    kernels = kernel_modules(modules)
    for page in MATHS_PAGES:
        bad = sorted(reachable(arrows, page) & kernels)
        if bad:
            problems.append(f"maths page {page} reaches kernel or backend modules {bad}")
    for importer, imported in sorted(lazy):
        if imported not in LAZY_ALLOWED:
            problems.append(f"{importer} imports {imported} inside a function")
    return problems


def test_imports_point_one_way_and_the_maths_pages_reach_no_kernel():
    modules, _, _ = read_graph()
    assert set(MATHS_PAGES) <= set(modules)  # a renamed page must be renamed here too
    assert {"halo_ref.attention.kernels", "halo_ref.nn.kernels"} <= kernel_modules(modules)
    assert check_graph() == []


@pytest.mark.parametrize(
    "file, line, problem",
    [
        ("attention/core.py", "from ..backend import current", "maths page"),
        ("nn/functional.py", "from .kernels import add", "maths page"),
        ("attention/relpos.py", "from ..nn.layers import Conv2d", "maths page"),
        ("nn/module.py", "from ..models import halonet", "import cycle"),
        ("models/configs.py", "from .halonet import HaloNet", "import cycle"),
        # through a package's __init__: models/__init__ imports models.halonet, which imports
        # the layer
        ("attention/layer.py", "from ..models.configs import CONFIGS", "import cycle"),
    ],
)
def test_a_planted_bad_import_is_caught(tmp_path, file, line, problem):
    """The check itself can fail: each planted import is reported."""
    copy = tmp_path / "halo_ref"
    for path in PACKAGE.rglob("*.py"):
        dest = copy / path.relative_to(PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())
    assert check_graph(copy) == []  # the copy is clean
    planted = copy / file
    original = planted.read_text()
    planted.write_text(original + f"\n{line}\n")
    assert any(problem in p for p in check_graph(copy)), check_graph(copy)
    planted.write_text(original + f"\n\ndef late():\n    {line}\n")
    found = check_graph(copy)
    assert any(problem in p for p in found) and any("inside a function" in p for p in found)


def torch_importers(root: Path = PACKAGE):
    """(modules importing torch at their top, modules importing it inside a function only)."""
    top, lazy = set(), set()
    for name, path in read_graph(root)[0].items():
        tree = ast.parse(path.read_text())
        inside = {
            id(node)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(n == "torch" or n.startswith("torch.") for n in names):
                (lazy if id(node) in inside else top).add(name)
    return top, lazy - top


def test_only_the_pytorch_side_imports_torch():
    """PyTorch is imported at the top of the PyTorch side (verification/torch_side.py) only, and
    inside a function only where a PyTorch weight file (.pth) is read."""
    top, lazy = torch_importers()
    assert top == LAZY_ALLOWED
    assert lazy == {"halo_ref.models.pretrained"}


def test_the_library_imports_without_pytorch():
    """Every module but the PyTorch side imports with torch missing, and asking for a PyTorch
    adapter says what to install."""
    modules = sorted(set(read_graph()[0]) - LAZY_ALLOWED - {"halo_ref.__main__"})
    code = (
        "import importlib, sys\n"
        "sys.modules['torch'] = None  # `import torch` now raises ImportError\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from halo_ref import HaloRefError\n"
        "from halo_ref.verification.adapters import resolve_adapter\n"
        "try:\n"
        "    resolve_adapter('torch')\n"
        "except HaloRefError as exc:\n"
        "    assert 'pip install torch' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no error without torch')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
