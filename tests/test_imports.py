"""The package's modules form no import cycle, and each imports alone in dependency order.

Imports inside functions count too: they are how heavy libraries stay out of the CLI's start-up,
but a cycle through one is still a design knot (the ablation once imported the CLI that imported
it). The pipeline runs the stages; no stage imports the pipeline or the CLI."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repro"


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports_of(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (a name imported from a
    package that is itself a module counts as that module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name and m != "repro"}


def test_no_module_takes_part_in_an_import_cycle():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert graph["repro.ablation"] and "repro.cli" not in graph["repro.ablation"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
    assert set(order) == set(known)
    stage_modules = ["seeds", "generate", "clean", "validate", "evol", "train", "export", "evaluate", "report"]
    for m in stage_modules:
        [module] = [name for name in known if name.rsplit(".", 1)[-1] == m]
        assert not {"repro.cli", "repro.pipeline"} & graph[module], module


def test_every_module_imports_in_dependency_order_in_a_fresh_interpreter():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint(len(sys.argv) - 1)"
    r = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == str(len(order))
