"""The package's import graph: no cycle, and every import points down the layers of ARCHITECTURE.md.

The graph is read from the source (every `import` at module level and inside functions, except under
`if TYPE_CHECKING:`, which never runs), so a function-level import that dodges a cycle still counts.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "normsearch"

# Lower rank = lower layer. A module may import its own wing, a wing of a lower rank, and a sibling of the
# same rank (search, results, analysis and bench side by side; recipe and space) unless NEVER forbids it.
# cli -> search/results/analysis/bench -> run -> recipe/space -> train -> models -> arch -> norms, data
RANK = {
    "__main__": 8,  # `python -m normsearch`: the entry point, the one module that imports the CLI
    "cli": 7,
    "search": 6,
    "results": 6,
    "analysis": 6,
    "bench": 6,
    "deploy": 6,  # a finalized model: load, evaluate, predict (reads run/finalized)
    "run": 5,
    "recipe": 4,
    "space": 4,
    "train": 3,
    "models": 2,
    "arch": 1,
    "norms": 0,
    "data": 0,
}
# Anyone may import these; they import nothing of the package but each other. `config` is the YAML/JSON
# loader with one-line errors (it needs only errors): arch, space and recipe all load files through it.
LEAVES = {"metrics", "errors", "config"}
PACKAGE_DOOR = ""  # normsearch/__init__.py: the version string, imported by train (checkpoint provenance)
NEVER = {("results", "search"), ("analysis", "search")}
# Imports that break the order, each with why. Keep this short: fix the code instead.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("models.weights", "run.files"): (
        "save_checkpoint writes atomically with run/files.py's helper; models/ is helper arch's (issue 19): "
        "the atomic writer belongs in a leaf utility"
    ),
    ("recipe", "search.constraints"): (
        "the recipe validates search.constraints with the constraint grammar, which issue 19 moved into "
        "search/; it needs only normsearch.metrics and belongs below recipe"
    ),
}


# A module whose docstring says its imports wait inside its functions (the CLI's command modules: each command
# imports its implementation inside it, so that `normsearch --help` loads neither torch nor Ray).
DEFERRAL_DOCSTRING = re.compile(r"\bimports?\b[^.]*\binside\b")
# Function-level imports of the package without a word on why, in files this check's author could not edit
# (issue 19: the lead's). Each is light (no torch, no Ray, no cycle): move it to the top and drop it here.
UNEXPLAINED: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _under_type_checking(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(n.lineno for n in ast.walk(sub) if hasattr(n, "lineno"))
    return lines


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    stem = node.module or ""
    if node.level:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        stem = f"{base}.{node.module}" if node.module else base
    return [stem, *(f"{stem}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (the longest known module each import names)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _under_type_checking(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            for target in _targets(node, module, path.name == "__init__.py"):
                if target.split(".")[0] != "normsearch":
                    continue
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_parent(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), leaving out the edges between a
    package and its own submodules (an `__init__` re-exporting its modules is not a design cycle)."""
    edges = {m: {t for t in ts if not _is_parent(m, t)} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def _short(module: str) -> str:
    return module.removeprefix("normsearch.")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up the layers (or sideways where NEVER forbids it), not in EXCEPTIONS."""
    out = []
    for module, targets in sorted(graph.items()):
        a = _wing(module)
        for target in sorted(targets):
            b = _wing(target)
            if a == b or (_short(module), _short(target)) in EXCEPTIONS:
                continue
            if a in LEAVES and b not in LEAVES:
                out.append(f"{module} -> {target}: {a} is a leaf, it imports only other leaves")
            elif b in LEAVES or b == PACKAGE_DOOR:
                continue
            elif (a, b) in NEVER or (b == "cli" and a != "__main__") or RANK.get(a, -1) < RANK.get(b, -1):
                out.append(f"{module} -> {target}")
    return out


def test_the_graph_sees_function_level_imports_and_skips_type_checking() -> None:
    graph = import_graph()
    assert "normsearch.train.loop" in graph["normsearch.train.from_recipe"]  # module level
    assert "normsearch.search.tuner" in graph["normsearch.cli.run"]  # inside a function
    assert "normsearch.recipe" not in graph["normsearch.search.moasha"]  # under TYPE_CHECKING only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_every_exception_is_still_needed() -> None:
    graph = import_graph()
    for a, b in EXCEPTIONS:
        assert f"normsearch.{b}" in graph[f"normsearch.{a}"], (
            f"{a} -> {b} no longer imported: drop the exception"
        )


def test_imports_point_down_the_layers() -> None:
    wings = {_wing(m) for m in _modules()}
    assert wings <= set(RANK) | LEAVES | {PACKAGE_DOOR}, (
        f"a wing without a layer: {wings - set(RANK) - LEAVES}"
    )
    assert layer_violations(import_graph()) == []


def test_the_cli_starts_without_torch_or_ray() -> None:
    """`normsearch --help` imports the CLI only; torch and Ray load in the commands that use them."""
    code = "import sys, normsearch.cli; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_is_entered_through_its_one_door() -> None:
    """Outside train/, the package imports `normsearch.train` (its __init__, which loads the module behind a
    name lazily), never a module behind it: train/loop, state, evaluation, ... are its implementation."""
    graph = import_graph()
    behind = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _wing(module) != "train"
        for target in targets
        if target.startswith("normsearch.train.")
    )
    assert behind == []


def unexplained_deferred_imports(source: str, module: str = "normsearch.x") -> list[tuple[int, str]]:
    """(line, imported module) of each import of a package module inside a function that does not say why it
    waits: no comment on its line(s), none on the line above its run of import lines, and no sentence in the
    module's docstring saying that its imports wait inside its functions (DEFERRAL_DOCSTRING)."""
    tree = ast.parse(source)
    if DEFERRAL_DOCSTRING.search(ast.get_docstring(tree) or ""):
        return []
    lines = source.splitlines()
    import_lines = {
        n
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for n in range(node.lineno, node.end_lineno + 1)
    }
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, True)
                continue
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                targets = [t for t in _targets(child, module, False) if t.split(".")[0] == "normsearch"]
                said = any("#" in lines[n - 1] for n in range(child.lineno, child.end_lineno + 1))
                above = child.lineno - 1
                while above in import_lines:
                    above -= 1
                said = said or (above > 0 and lines[above - 1].strip().startswith("#"))
                if targets and not said:
                    found.append((child.lineno, targets[0]))
            visit(child, in_function)

    visit(tree, False)
    return found


def test_the_deferred_import_rule_flags_only_unexplained_imports() -> None:
    source = (
        '"""A module."""\n'
        "import json\n\n\n"
        "def f():\n"
        "    from normsearch.arch import ArchConfig\n\n"  # flagged: says nothing
        "    # torch: only when a network is built\n"
        "    from normsearch.models import build_model\n"
        "    from normsearch.train import train_candidate\n\n"  # the comment above its run of imports
        "    import json as j  # not the package's\n"
        "    from normsearch.space import Space  # cli: keeps --help light\n"
        "    import typer\n"
    )
    assert unexplained_deferred_imports(source) == [(6, "normsearch.arch")]
    deferring = (
        '"""Commands. Each imports its implementation inside the command."""\n' + source.split("\n", 1)[1]
    )
    assert unexplained_deferred_imports(deferring) == []


def test_every_function_level_import_says_why_it_waits() -> None:
    """Issue 19: an import of the package sits inside a function only where it keeps torch, Ray or another
    heavy module out of a light path (`normsearch --help`, reading a run), and says so."""
    found = {}
    for module, path in sorted(_modules().items()):
        for line, target in unexplained_deferred_imports(path.read_text(), module):
            found.setdefault((_short(module), _short(target)), f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert sorted(set(found) - UNEXPLAINED) == [], [found[k] for k in sorted(set(found) - UNEXPLAINED)]
    assert sorted(UNEXPLAINED - set(found)) == [], "explained or moved now: drop it from UNEXPLAINED"


@pytest.mark.slow  # imports torch, Ray and Ray Tune in a fresh process (over 3 s on a 2-core machine)
def test_a_search_driver_checks_its_networks_without_torchvision_or_dynamo() -> None:
    """The driver of `run`/`resume` imports its trials' function and builds every configuration on the meta
    device (preflight), but trains nothing: torchvision and torch._dynamo (about as much CPU to import as
    torch itself) load only in the trial workers, not once more in every driver."""
    code = (
        "import sys\n"
        "from normsearch.recipe import load_recipe\n"
        "from normsearch.search.preflight import check_networks\n"
        "import normsearch.cli.run, normsearch.search.tuner\n"
        "recipe, space = load_recipe('recipes/quickstart.yaml')\n"
        "assert check_networks(recipe, space) == 5\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
