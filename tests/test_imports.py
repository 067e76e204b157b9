"""Package structure: no import cycle anywhere in ``sdk/`` (imports inside functions count), and
inspecting with a saved model never loads the trainer."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import patchloupe

PACKAGE = Path(patchloupe.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> list[Path]:
    """Every .py file of the package (following links: a development tree may link ``kernels/`` in)."""
    out = []
    for root, dirs, names in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [Path(root) / n for n in names if n.endswith(".py")]
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from every import statement (module level,
    functions and TYPE_CHECKING blocks alike); ``from x import y`` counts ``x.y`` when that is a module
    and ``x`` when ``y`` is a name defined in ``x``."""
    files = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {m: set() for m in files}
    known = set(files) | {_module_name(p) for p in PACKAGE.glob("*.pyi")}  # + the compiled _native (a leaf)
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node)
                subs = [f"{src}.{a.name}" for a in node.names]
                # `from pkg import submodule` needs the submodule; a name defined in pkg needs pkg itself
                targets = subs + ([src] if any(t not in known for t in subs) else [])
            for t in targets:
                if t in files and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None. A package's ``__init__`` importing its own
    submodules is not a cycle unless a submodule imports the package back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "patchloupe.detector" in graph and len(graph) > 20
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout


def test_load_and_inspect_never_import_the_trainer(tmp_path: Path) -> None:
    out = _run(
        "import sys, numpy as np\n"
        "from patchloupe import Detector\n"
        "det = Detector.load()\n"
        "det.inspect(np.zeros((64, 64, 3), np.uint8))\n"
        "print(sorted(m for m in sys.modules if m.startswith('patchloupe.train') or m == 'patchloupe.fit'))\n"
    )
    assert out.strip() == "[]"


def test_import_patchloupe_is_light() -> None:
    out = _run("import sys, patchloupe\nprint('torch' in sys.modules, 'cv2' in sys.modules)")
    assert out.split() == ["False", "False"]
