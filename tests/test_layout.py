"""The package's shape: no two files import each other, directly or in a loop, docs/package.md
(the map a new contributor reads first) names every module of the package, and the commands parse
their flags before loading jax."""
import ast
import os
import re
import subprocess
import sys

import pytest

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


@pytest.mark.fast
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


@pytest.mark.fast
def test_the_package_map_names_every_module():
    text = open(os.path.join(ROOT, "docs", "package.md"), encoding="utf-8").read()
    named = set(re.findall(r"`(\w+)\.py`", text))
    missing = [name for name in modules() if name.startswith("aed_jax.") and name.split(".")[1] not in named]
    assert not missing, missing


# Each command as the shell runs it, then whether jax was loaded by the time it exited.
_LOADED_JAX = ("import runpy, sys\n"
               "sys.argv = sys.argv[1:]\n"
               "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
               "except SystemExit:\n    pass\n"
               "print('jax' in sys.modules)")


@pytest.mark.parametrize("command,argv,expected", [
    ("aed_jax.main", ["--help"], "--sample_tokens: Tokens"),
    ("aed_jax.main", ["--config=configs/tiny.py", "--config.train_step=1"], "error: unknown config key"),
    ("aed_jax.main", ["--config=configs/tiny.py", "--join_timeout=0"], "error: flag --join_timeout=0"),
    ("aed_jax.main", ["--config=configs/tiny.py", "--members=n_layer=1,2"], "error: --members n_layer=1,2: n_layer is"),
    ("aed_jax.bench", ["--config=configs/tiny.py", "--ensemble=0"], "error: --ensemble 0: give member counts"),
    ("aed_jax.evaluate", ["--help"], "--[no]full: Evaluate every"),
    ("aed_jax.evaluate", ["--workdir=x", "--full", "--batches=2"], "error: --full and --batches exclude"),
    ("aed_jax.summary", ["--help"], "--config: Path to a config file"),
    ("aed_jax.prepare", ["--help"], "--val_fraction"),
    ("aed_jax.sample", ["--help"], "--[no]cache: Use the KV cache"),
    ("aed_jax.sample", ["--workdir=x", "--num_samples=0"], "error: --num_samples must be at least 1"),
    ("aed_jax.analyze", ["--help"], "--windows: How many windows"),
    ("aed_jax.analyze", ["--workdir=x", "--out=y", "--windows=1"], "error: --windows must be at least 2"),
    ("aed_jax.analyze", ["--workdir=x", "--out=README.md/report"], "error: --out README.md/report: "),
    ("aed_jax.analyze", ["--workdir=x", "--out=y", "--windows=10000000000"], "error: --windows must be at most"),
    ("aed_jax.interop", ["--help"], "--npz: import"),
    ("aed_jax.interop", ["export", "--workdir=x"], "error: export needs --out"),
    ("aed_jax.bench", ["--help"], "--[no]memory_only: Compile"),
    ("aed_jax.bench", ["--config=configs/nope.py"], "error: "),
    ("experiments.reproduce", ["--help"], "--seeds: Train every run"),
    ("experiments.reproduce", ["--suite=tiny", "--runs=nope"], "error: --runs: unknown run 'nope'"),
    ("experiments.reproduce", ["--seeds=²"], "error: --seeds ²: give a count"),
    ("experiments.reproduce", ["--suite=smoke", "--out=README.md/x"], "error: --out README.md/x: "),
    ("experiments.reproduce", ["--suite=smoke", "--out=/proc/x"], "error: --out /proc/x: "),
    ("experiments.reproduce", ["--jobs=0"], "error: flag --jobs=0"),
    ("experiments.reproduce", ["--suite=smoke", "--grid=config.lr"], "error: --grid config.lr: give KEY=VALUE"),
    ("experiments.reproduce", ["--suite=smoke", "--config.lr_typo=1"], "unknown config key lr_typo"),
    ("experiments.compare", ["--help"], "--smooth: The training-loss"),
    ("experiments.compare", ["--workdir=/nonexistent"], "error: --workdir /nonexistent: no run here or below"),
    ("experiments.plot", ["--help"], "--suite: <"),
    ("experiments.plot", ["--out=/nonexistent"], "error: --out: no such folder"),
    ("experiments.profile_cpu", ["--help"], "--thunks: Also list"),
    ("experiments.bench_prepare", ["--help"], "--"),
    ("experiments.lease", ["--help"], "--[no]dry_run: The same rows on CPU"),
    ("experiments.lease", ["--out=x", "--rows=nope"], "error: --rows: unknown row 'nope'"),
])
def test_help_and_bad_flags_answer_before_jax_loads(command, argv, expected):
    """--help and a bad flag or config key take a fraction of a second: jax (a second or more of
    start-up alone, far more on a busy machine) loads only once a command has its flags."""
    result = subprocess.run([sys.executable, "-c", _LOADED_JAX, command, *argv], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert expected in result.stdout + result.stderr, (result.stdout[-500:], result.stderr[-500:])
    assert result.stdout.strip().splitlines()[-1] == "False", "jax was loaded before the flags were parsed"
