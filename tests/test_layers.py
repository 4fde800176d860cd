"""The package is layered: every import points to its own subpackage or to a lower floor, and no modules import
each other in a circle.

The import graph is read from the source with `ast` (every `import` and `from ... import`, inside functions too:
an import deferred for speed is still a dependency), so nothing here imports stabench. A unit is a subpackage
(`stabench/engine/`) or the package root (`stabench/*.py`: the face and the cross-cutting modules every floor
uses). Siblings on one floor are independent: a unit imports only itself and units on lower floors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stabench"
ROOT = ""  # the unit of the modules at the package root

FLOORS = {
    ROOT: 0,  # the face (__init__.py) and what every layer uses: errors, paths, secrets, files
    "config": 1,  # validated trial configs, keys, the hash
    "models": 2,  # backbones and their presets
    "workloads": 2,  # datasets
    "scoring": 3,  # FID/KID: extractors (the digits CNN reads the digits workload); writes through files, not records
    "records": 3,  # the record, the metric registry, the store, statistics across seeds, W&B
    "engine": 4,  # one trial
    "sweep": 5,  # many trials: spaces, backends, baselines, confirm
    "leaderboard": 5,  # records ranked and rendered
    "validate": 6,  # the known-effect validation: sweeps of trials read into leaderboards
    "cli": 7,  # the command line
}
ROOT_MODULES = {"stabench", "stabench.errors", "stabench.paths", "stabench.secrets", "stabench.files"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The subpackage a module lies in (`stabench.engine.trial` -> `engine`), or ROOT."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return ROOT


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> set[tuple[str, tuple[str, ...]]]:
    """The stabench modules that `module` imports, each with the names it takes (`from m import a, b`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "stabench"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "stabench":
                continue
            names = [alias.name for alias in node.names]
            for name in names:  # `from . import output`: the submodule itself
                if f"{target}.{name}" in known:
                    found.add((f"{target}.{name}", ()))
            plain = tuple(n for n in names if f"{target}.{n}" not in known)
            if plain:
                found.add((target, plain))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the stabench modules it imports, with the parent packages Python imports on the way
    (`stabench.engine.telemetry` runs `stabench/engine/__init__.py` first) when they lie in another unit."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges = set()
        for target, _ in imports_of(module, path, set(mods)):
            assert target in mods, f"{module} imports {target}, which is not a module of the package"
            edges.add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if unit_of(parent) != unit_of(module):
                    edges.add(parent)
        graph[module] = edges - {module}
    return graph


def layer_violations(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        if unit not in floors:
            problems.append(f"{module}: its subpackage '{unit}' has no floor in FLOORS")
            continue
        for target in sorted(targets):
            other = unit_of(target)
            if other != unit and floors.get(other, len(floors) + 99) >= floors[unit]:
                problems.append(
                    f"{module} (floor {floors[unit]}) imports {target} ({other or 'root'}, floor {floors.get(other)})"
                )
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_has_a_floor_and_the_root_holds_only_the_cross_cutting_modules():
    mods = modules()
    assert {unit_of(m) for m in mods} == set(FLOORS)
    assert {m for m in mods if unit_of(m) == ROOT} == ROOT_MODULES


def test_no_import_runs_up_a_floor_or_across_to_a_sibling():
    problems = layer_violations(import_graph(), FLOORS)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle():
    found = circles(import_graph())
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_no_module_takes_a_private_name_from_another_subpackage():
    mods = modules()
    private = [
        f"{module} imports {target}:{name}"
        for module, path in mods.items()
        for target, names in imports_of(module, path, set(mods))
        for name in names
        if name.startswith("_") and not name.startswith("__") and unit_of(target) != unit_of(module)
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize(
    "graph, rule",
    [
        ({"stabench.records.store": {"stabench.engine.trial"}}, "layer"),  # up a floor
        ({"stabench.sweep.core": {"stabench.leaderboard.build"}}, "layer"),  # across to a sibling
        ({"stabench.config.keys": {"stabench.nowhere.x"}}, "layer"),  # a subpackage without a floor
        (
            {"stabench.sweep.backend": {"stabench.sweep.optuna"}, "stabench.sweep.optuna": {"stabench.sweep.backend"}},
            "circle",
        ),
    ],
)
def test_the_checks_catch_a_broken_rule(graph, rule):
    if rule == "layer":
        assert layer_violations(graph, FLOORS)
        assert layer_violations({m: set() for m in graph}, FLOORS) == []
    else:
        assert circles(graph)
