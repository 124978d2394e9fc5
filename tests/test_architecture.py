"""The shape of the code: imports flow one way, and the text layer never loads PyTorch.

The packages are layers. A module may import from its own layer or a lower one, never a higher
one, and the two layers that sit side by side (training and chat) never import each other:

    errors, files, paths  ->  text  ->  model  ->  train | chat  ->  analysis  ->  ui  ->  cli

Imports inside functions count too: a lazy import that runs the wrong way is still a dependency.
`contextbot/__init__.py` is the one exception: it re-exports `ChatSession` and the model lazily.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "contextbot"

#: Layer of each part of the package; "train" and "chat" share a layer but may not meet.
LAYERS = {"errors": 0, "files": 0, "paths": 0, "text": 1, "model": 2, "train": 3, "chat": 3,
          "analysis": 4, "ui": 5, "cli": 6, "__main__": 6}
PEERS = {("train", "chat"), ("chat", "train")}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, without the package's own __init__."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name != "contextbot":
            out[name] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """The contextbot modules (and other top-level packages) that `name` imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x`
    return found


def part(module: str) -> str:
    """The layer key of a contextbot module: `contextbot.model.network` -> "model"."""
    return module.split(".")[1]


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_flow_one_way(name):
    source = part(name)
    assert source in LAYERS, f"{name}: a new part of the package needs a layer in this test"
    wrong = []
    for target in imports_of(name, ALL[name]):
        if not target.startswith("contextbot.") or target not in ALL:
            continue
        t = part(target)
        if LAYERS[t] > LAYERS[source] or (source, t) in PEERS:
            wrong.append(target)
    assert not wrong, f"{name} imports upwards: {sorted(wrong)}"


def test_there_are_no_import_cycles():
    graph = {n: {t for t in imports_of(n, p) if t in ALL and t != n} for n, p in ALL.items()}
    # A package imports its own modules (re-exports); that is containment, not a cycle.
    for n in graph:
        graph[n] = {t for t in graph[n] if not n.startswith(t + ".") and not t.startswith(n + ".")}
    seen, stack, cycles = {}, [], []

    def visit(n):
        seen[n] = "open"
        stack.append(n)
        for t in sorted(graph[n]):
            if seen.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in seen:
                visit(t)
        stack.pop()
        seen[n] = "done"

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if part(n) in ("text", "errors", "files", "paths")))
def test_the_text_layer_never_names_torch(name):
    heavy = {t.split(".")[0] for t in imports_of(name, ALL[name])} & {"torch", "numpy", "numba", "safetensors"}
    assert not heavy, f"{name} imports {sorted(heavy)}"


def test_corpus_commands_run_without_loading_torch():
    code = ("import sys, contextbot.cli, contextbot.text.corpus, contextbot.text.referents, "
            "contextbot.text.dialogue, contextbot.text.turns, contextbot.files, contextbot.paths; "
            "print(sorted(m for m in ('torch', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
