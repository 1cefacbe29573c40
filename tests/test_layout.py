"""The package's shape: no two files import each other, directly or in a loop, and docs/package.md
(the map a new contributor reads first) names every module of the package."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("aed_jax", "experiments")


def modules() -> dict[str, str]:
    """{"aed_jax.train": path} for every module of the repository's packages."""
    found = {}
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py") and name != "__init__.py":
                found[f"{package}.{name[:-3]}"] = os.path.join(ROOT, package, name)
    return found


def imports(path: str, known: set[str]) -> set[str]:
    """The repository modules `path` imports anywhere in it (at the top or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {f"{node.module}.{alias.name}" for alias in node.names} & known
            out |= {node.module} & known
    return out


def test_no_import_runs_in_a_loop():
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    done, cycles = set(), []

    def visit(name, stack):
        if name in stack:
            cycles.append(stack[stack.index(name):] + [name])
            return
        if name in done:
            return
        for dependency in sorted(graph[name]):
            visit(dependency, stack + [name])
        done.add(name)

    for name in graph:
        visit(name, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_package_map_names_every_module():
    text = open(os.path.join(ROOT, "docs", "package.md"), encoding="utf-8").read()
    named = set(re.findall(r"`(\w+)\.py`", text))
    missing = [name for name in modules() if name.startswith("aed_jax.") and name.split(".")[1] not in named]
    assert not missing, missing
