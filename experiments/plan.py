"""What a `reproduce` command will do, checked before jax loads: its seeds, its data, its output folder
and what each run's workdir already holds, and how many runs go side by side on which cores.

Every check here is a one-line ReproduceError (or the data's DataError) within a second of the
command's start, before any run trains: a typo never waits for jax, and a folder that cannot be
written is refused before the first step, not after the last.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import importlib.util
import itertools
import json
import os
import pkgutil

from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import errors
from experiments import suites

MAX_SEED_COUNT = 100  # --seeds N above this is taken for a seed, not a count


class ReproduceError(errors.UserError):
    """A user error (a workdir of another scale, an ambiguous data folder, a bad --seeds): one line."""


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds: one integer N is a count (the config's seed and the N - 1 after it); a comma-separated list,
    the seeds themselves (a trailing comma makes one seed a list: "7,"). None: no --seeds."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    is_list = len(parts) > 1
    parts = [p for p in parts if p] if is_list else parts
    # ASCII digits only: str.isdigit() also accepts "²" and other digits that int() refuses.
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise ReproduceError(f"--seeds {text}: give a count (3) or a comma-separated list of seeds (1337,1338), "
                             "non-negative integers")
    numbers = [int(p) for p in parts]
    if is_list:
        if len(set(numbers)) < len(numbers):
            raise ReproduceError(f"--seeds {text}: a seed is repeated")
        if max(numbers) >= 2**32:
            raise ReproduceError(f"--seeds {text}: a seed must be below 2**32")
        return numbers
    if not 1 <= numbers[0] <= MAX_SEED_COUNT:
        raise ReproduceError(f"--seeds {text}: a count of seeds is 1 to {MAX_SEED_COUNT}; for that one seed write "
                             f"--seeds {text},")
    return [suites.DEFAULT_SEED + k for k in range(numbers[0])]


def data_override(folder: str | None, dataset: str | None = None) -> dict:
    """Config keys for --data_dir and --dataset; without --dataset, a folder's dataset is the name of its
    <name>_train.bin. Any corpus but the built-in one must be prepared already: checked here, before training."""
    if folder is None:
        override = {"dataset": dataset} if dataset else {}
    elif dataset:
        override = {"data_dir": folder, "dataset": dataset}
    else:
        override = _folder_override(folder)
    c = config_lib.base_config()
    c.update(override)
    if c.dataset != config_lib.DEFAULT_DATASET:
        data.split_paths(c)  # a DataError naming the missing file and how to make it
    return override


def _folder_override(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise ReproduceError(f"--data_dir: no such folder {folder!r}")
    if all(os.path.isfile(os.path.join(folder, f"{split}.bin")) for split in ("train", "val")):
        return {"data_dir": folder}
    trains = glob.glob(os.path.join(glob.escape(folder), "*_train.bin"))
    names = sorted(os.path.basename(p)[:-len("_train.bin")] for p in trains
                   if os.path.isfile(p[:-len("_train.bin")] + "_val.bin"))
    if len(names) > 1:
        raise ReproduceError(f"--data_dir: {folder} holds several datasets ({', '.join(names)}); keep one")
    return {"data_dir": folder, **({"dataset": names[0]} if names else {})}  # none: wiki_vital, prepared there


def check_layout(out: str, runs: tuple[suites.Run, ...], seeds: list[int] | None) -> None:
    """A run folder holds either one run (no --seeds) or one folder per seed, never both: a ReproduceError
    when the command's --seeds does not match what `out` already holds."""
    for run in runs:
        folder = os.path.join(out, run.name)
        if seeds is not None and os.path.isfile(os.path.join(folder, "run.json")):
            raise ReproduceError(f"{folder} holds a run trained without --seeds; drop --seeds or pass another --out")
        if seeds is None and glob.glob(os.path.join(glob.escape(folder), "seed*", "run.json")):
            raise ReproduceError(f"{folder} holds runs trained with --seeds; pass --seeds or another --out")


def read_json(path: str) -> dict:
    """A small JSON file (a workdir's run.json), or {} when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def check_scale(workdir: str, scale: str | None) -> None:
    """A workdir trained at another scale of the suite is refused: resuming it would mix two recipes."""
    info = read_json(os.path.join(workdir, "run.json"))
    if info.get("scale", scale) != scale:
        trained = info["scale"] or "none (a suite of one size)"
        raise ReproduceError(f"{workdir} was trained at scale {trained}; pass that scale or another --out")


def finished(workdir: str, c) -> bool:
    """Whether `workdir` holds its run of config `c` finished, told without jax: its run.json says so, at
    c.train_steps or stopped early by c.stop_accuracy (`train.stopped_early`), and that step's checkpoint
    folder is there (the child that would train it checks the checkpoint itself; this spares a finished run
    a process)."""
    info = read_json(os.path.join(workdir, "run.json"))
    step = info.get("step")
    done = info.get("train_steps") == c.train_steps == step or (
        info.get("stopped_early") and info.get("stop_accuracy") == c.stop_accuracy)
    return bool(info.get("finished") and done and os.path.isdir(os.path.join(workdir, "checkpoints", str(step))))


def has_accelerator() -> bool:
    """Whether jax will train on an accelerator, told without starting a backend (the parent of several
    runs must not take the GPU's memory from its children): JAX_PLATFORMS when set, else an installed
    GPU or TPU plugin."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    plugins = importlib.util.find_spec("jax_plugins")
    return bool(plugins and plugins.submodule_search_locations
                and any(pkgutil.iter_modules(plugins.submodule_search_locations)))


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity, as a container or taskset limits it)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def default_jobs() -> int:
    """--jobs' default: one run per usable core on CPU, where a run's set-up, compilation, estimates and
    saves leave cores idle that another run can use (BENCHMARKS.md); one on an accelerator, which a run
    has to itself."""
    return 1 if has_accelerator() else len(usable_cores())


def core_slots(jobs: int) -> list[list[int] | None]:
    """The cores of each of `jobs` side-by-side runs: the usable cores dealt out in turn, so each run's
    threads stay on its own cores. None (no pinning) for one job, or on an accelerator."""
    cores = usable_cores()
    if jobs == 1 or has_accelerator():
        return [None] * jobs
    return [cores[i::jobs] or [cores[i % len(cores)]] for i in range(jobs)]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """--grid KEY=V1,V2,... (and --config.KEY=V, a grid of one value): [(dotted key, [value texts])] in the
    order given, "config." dropped from the key. A key given twice, or no value, is one line."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("config.")
        texts = [v.strip() for v in values.split(",")] if sep else []
        if not key or not texts or not all(texts):
            raise ReproduceError(f"--grid {item}: give KEY=VALUE[,VALUE...], e.g. --grid config.lr=1e-3,3e-3")
        if key in (k for k, _ in grid):
            raise ReproduceError(f"--grid {item}: {key} is given twice; list its values once, comma-separated")
        grid.append((key, texts))
    return grid


def _value(c, key: str, text: str):
    """`text` as a value of `c`'s key `key`, by the key's type (ml_collections checks the assignment)."""
    *parents, name = key.split(".")
    node = c
    for parent in parents:
        node = node[parent]
    current = node[name]
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool (true or false)")
        return node, name, text.lower() in ("true", "1")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a string value: NONE, task:sort, ...
    return node, name, value


def grid_points(grid: list[tuple[str, list[str]]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(the overrides every run takes: keys of one value; the points of the grid: the product of the keys of
    several values, each {key: text}, [{}] when there are none)."""
    overrides = {key: texts[0] for key, texts in grid if len(texts) == 1}
    swept = [(key, texts) for key, texts in grid if len(texts) > 1]
    points = [dict(zip([key for key, _ in swept], combo)) for combo in itertools.product(*(t for _, t in swept))]
    return overrides, points


def point_name(point: dict[str, str]) -> str:
    """A point's folder and label: "lr=0.001,n_embed=32" (each key by its last part, unless two share it)."""
    leaves = [key.rsplit(".", 1)[-1] for key in point]
    names = [leaf if leaves.count(leaf) == 1 else key for leaf, key in zip(leaves, point)]
    return ",".join(f"{name}={text.replace(os.sep, '_')}" for name, text in zip(names, point.values()))


def apply(c, settings: dict[str, str], where: str):
    """`c` (a copy) with each key of `settings` set from its text, validated: one ConfigError line naming
    the key and `where` (the run and point) for a key no config has, a value of the wrong type, or a
    setting the config refuses."""
    c = c.copy_and_resolve_references()
    for key, text in settings.items():
        try:
            node, name, value = _value(c, key, text)
            node[name] = value
        except (KeyError, AttributeError):
            raise config_lib.ConfigError(f"{where}: unknown config key {key}; --show_config of a config file "
                                         "lists the keys") from None
        except (TypeError, ValueError) as e:
            raise config_lib.ConfigError(f"{where}: {key}={text}: {errors.one_line(e)}") from None
    try:
        config_lib.validate(c)
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"{where}: {e}") from None
    return c


def without(suite: suites.Suite, names: set[str]) -> suites.Suite:
    """The suite less the runs `names` (runs that `--runs` leaves out and that cannot take a `--grid` or
    `--config.KEY=V` setting, e.g. an embedding-loss coefficient on a run with no embedding loss), and
    less their places in its comparisons (a comparison left with fewer than two runs goes)."""
    if not names:
        return suite
    comparisons = []
    for comparison in suite.comparisons:
        runs = tuple(r for r in comparison.runs if r not in names)
        pairs = tuple((a, b) for a, b in comparison.pairs if a not in names and b not in names)
        if len(runs) > 1 and (pairs or not comparison.pairs):
            comparisons.append(dataclasses.replace(comparison, runs=runs, pairs=pairs))
    return dataclasses.replace(suite, runs=tuple(r for r in suite.runs if r.name not in names),
                               comparisons=tuple(comparisons))


def expand(suite: suites.Suite, configs: dict, points: list[dict[str, str]]) -> tuple[suites.Suite, dict]:
    """The suite with each run and comparison once per grid point: run `<run>/<point>` (its workdir a
    folder per point under the run's), comparison `<name>_<point>`, each point's configs `apply`'d.
    One point without keys is the suite itself."""
    if points == [{}]:
        return suite, configs
    runs, comparisons, expanded = [], [], {}
    for point in points:
        tag = point_name(point)
        for run in suite.runs:
            name = f"{run.name}/{tag}"
            runs.append(dataclasses.replace(run, name=name, label=f"{run.label}, {tag}"))
            expanded[name] = apply(configs[run.name], point, f"--grid {tag}, run {run.name}")
        for comparison in suite.comparisons:
            comparisons.append(dataclasses.replace(
                comparison, name=f"{comparison.name}_{tag}", title=f"{comparison.title} ({tag})",
                runs=tuple(f"{r}/{tag}" for r in comparison.runs),
                pairs=tuple((f"{a}/{tag}", f"{b}/{tag}") for a, b in comparison.pairs)))
    return dataclasses.replace(suite, runs=tuple(runs), comparisons=tuple(comparisons)), expanded
