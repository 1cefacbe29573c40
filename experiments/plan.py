"""What a `reproduce` command will do, checked before jax loads: its seeds, its data, its output folder
and what each run's workdir already holds, and how many runs go side by side on which cores.

Every check here is a one-line ReproduceError (or the data's DataError) within a second of the
command's start, before any run trains: a typo never waits for jax, and a folder that cannot be
written is refused before the first step, not after the last.
"""
from __future__ import annotations

import glob
import importlib.util
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


def finished(workdir: str, train_steps: int) -> bool:
    """Whether `workdir` holds its run trained to `train_steps`, told without jax: its run.json says so
    and the last step's checkpoint folder is there (the child that would train it checks the checkpoint
    itself; this spares a finished run a process)."""
    info = read_json(os.path.join(workdir, "run.json"))
    return bool(info.get("finished") and info.get("train_steps") == train_steps
                and os.path.isdir(os.path.join(workdir, "checkpoints", str(train_steps))))


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
