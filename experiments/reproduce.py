"""`python -m experiments.reproduce --suite seed|rope|smoke [--scale full|mini] [--dataset NAME] [--runs a,b,...] [--out DIR]`.

Trains the seed's eight runs (or the named subset; `--suite rope`: RoPE in AED and the baseline,
with and without position subtraction, beside the seed's learned-table pair), each in its own
workdir `<out>/<run>`, then
writes `<out>/results.md` and `<out>/results.csv` (train loss, val loss, embedding loss, params,
wall time, tokens/s, with the seed's published numbers beside ours, in the layout of the seed's
README tables) and one PNG of loss curves per comparison of the seed's README.

Re-running the same command resumes unfinished runs from their latest checkpoint and skips
finished ones (latest checkpoint step = train_steps), so it can be stopped and restarted at will;
SIGTERM or Ctrl-C saves the current run and writes the results so far. `--notrain` only rewrites
the results and figures from the workdirs as they are.

Scales: `full` is the seed's recipe (9,000 steps of 50 x 16 sequences of 200 tokens). `mini` keeps
the models and batches and divides train_steps, warmup_iters, lr_decay_iters and est_interval by
10 (900 steps, warmup 30, so the schedule has the same shape) and est_steps by 4 (50 batches per
estimate), so that one GPU runs the whole suite in well under an hour.
`--suite smoke` trains two tiny configs (configs/tiny.py and a baseline shrunk to match) for a
few steps: a CPU check, for CI, that the whole pipeline runs.

Data: the built-in corpus wiki_vital by default, which is for quick checks, not for the table: its
~943k training tokens against the recipe's 1.44B (9,000 x 160,000) would be seen ~1,500 times each.
`--dataset NAME` trains on a corpus prepared in data/NAME (`python -m aed_jax.prepare --hf ...
--out data/NAME`), `--data_dir DIR` on one prepared elsewhere.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import json
import os
import statistics
import subprocess
import time
from typing import Callable

from absl import flags
import jax
import ml_collections

from aed_jax import checkpoint
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import model as model_lib
from aed_jax import tokenizer
from aed_jax import train
from experiments import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_STEPS = 9000  # the seed's published runs
MINI_FACTOR = 10  # --scale mini: train_steps, warmup_iters, lr_decay_iters and est_interval divided by this
MINI_EST_FACTOR = 4  # --scale mini: est_steps divided by this
DEFAULT_DATASET = config_lib.base_config().dataset  # the built-in corpus, prepared on first use
EMBEDDING_TAIL = 5  # logged training values averaged for the embedding-loss column
# --suite smoke: a few steps of two tiny models, on CPU in well under a minute each.
SMOKE_OVERRIDES = dict(train_steps=6, warmup_iters=2, lr_decay_iters=6, est_interval=3, est_steps=2, log_interval=1)


@dataclasses.dataclass(frozen=True)
class Seed:
    """The seed's published numbers for a run (its README's tables); None where it published none."""
    train_loss: float | None
    val_loss: float | None
    embedding_loss: float | None = None
    params: int | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # the workdir's name under --out
    label: str  # the seed's row name
    make_config: Callable[[], ml_collections.ConfigDict]
    seed: Seed


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str  # the figure's file name, <name>.png
    title: str
    runs: tuple[str, ...]
    last_column: str  # "embedding_loss" or "params", as the seed's table for it has


@dataclasses.dataclass(frozen=True)
class Suite:
    runs: tuple[Run, ...]
    comparisons: tuple[Comparison, ...]
    note: str = ""


def _config_file(name: str) -> Callable[[], ml_collections.ConfigDict]:
    return lambda: config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))


def _variant(name: str, **model) -> Callable[[], ml_collections.ConfigDict]:
    """configs/<name>.py with some model_config keys changed."""
    def make() -> ml_collections.ConfigDict:
        c = _config_file(name)()
        c.model_config.update(model)
        config_lib.validate(c)
        return c
    return make


def _smoke_tiny() -> ml_collections.ConfigDict:
    c = _config_file("tiny")()
    c.update(SMOKE_OVERRIDES)
    return c


def _smoke_baseline() -> ml_collections.ConfigDict:
    """configs/baseline.py shrunk to the size of configs/tiny.py (4 blocks, as tiny's 2 + 2), with tiny's recipe."""
    tiny, c = _smoke_tiny(), _config_file("baseline")()
    c.model_config.update(dict(n_embed=64, n_head=4, n_layer=4, context_size=tiny.model_config.context_size))
    for key in ("batch_size", "gradient_accumulation_steps", "lr", "min_lr", *SMOKE_OVERRIDES):
        c[key] = tiny[key]
    config_lib.validate(c)
    return c


_SEED = {
    "cosine": Seed(2.993, 3.387, 8.564e-9), "mse": Seed(2.998, 3.385, 4.138e-9), "no_loss_no_pos": Seed(3.043, 3.413),
    "pos_sub": Seed(2.979, 3.381), "mse_pos_sub": Seed(2.982, 3.378, 4.673e-9, 15_763_500),
    "baseline": Seed(2.937, 3.424, None, 16_036_800), "smaller_baseline": Seed(2.958, 3.416, None, 15_441_192),
    "dropout_baseline": Seed(3.174, 3.406, None, 16_036_800),
}
_UNPUBLISHED = Seed(None, None)  # runs the seed never made: no published numbers
SUITES = {
    "seed": Suite(
        runs=tuple(Run(name, label, _config_file(name), _SEED[name]) for name, label in (
            ("cosine", "with cosine-dissimilarity embedding loss"),
            ("mse", "with MSE embedding loss"),
            ("no_loss_no_pos", "no embedding loss and no pos sub"),
            ("pos_sub", "with pos embed sub"),
            ("mse_pos_sub", "with MSE embedding loss and pos sub"),
            ("baseline", "baseline"),
            ("smaller_baseline", "smaller baseline"),
            ("dropout_baseline", "0.2 dropout baseline"))),
        comparisons=(
            Comparison("embedding_loss", "Embedding-loss types", ("cosine", "mse", "no_loss_no_pos"), "embedding_loss"),
            Comparison("pos_sub", "Positional-embedding subtraction", ("pos_sub", "no_loss_no_pos"), "embedding_loss"),
            Comparison("both", "Embedding loss and pos sub together", ("pos_sub", "mse", "mse_pos_sub"),
                       "embedding_loss"),
            Comparison("baselines", "AED against the decoder-only baselines",
                       ("mse_pos_sub", "baseline", "smaller_baseline", "dropout_baseline"), "params"))),
    "smoke": Suite(
        runs=(Run("tiny", "tiny AED (MSE + pos sub)", _smoke_tiny, _SEED["mse_pos_sub"]),
              Run("tiny_baseline", "tiny baseline", _smoke_baseline, _SEED["baseline"])),
        comparisons=(Comparison("embedding_loss", "Tiny AED with an embedding loss", ("tiny",), "embedding_loss"),
                     Comparison("baselines", "Tiny AED against a tiny baseline", ("tiny", "tiny_baseline"), "params")),
        note="Smoke suite: tiny stand-ins trained for a few steps, a check that the pipeline runs, not a "
             "reproduction. The seed columns hold the published numbers of the full-size runs they stand for "
             "(tiny: with MSE embedding loss and pos sub; tiny_baseline: baseline)."),
    "rope": Suite(
        runs=(Run("rope", "RoPE AED, MSE embedding loss and pos sub", _config_file("rope"), _UNPUBLISHED),
              Run("rope_no_pos_sub", "RoPE AED, MSE embedding loss, no pos sub",
                  _variant("rope", sub_pos_embed_to_decoder="NO"), _UNPUBLISHED),
              Run("rope_baseline", "RoPE baseline", _config_file("rope_baseline"), _UNPUBLISHED),
              Run("rope_baseline_pos_sub", "RoPE baseline with pos sub",
                  _variant("rope_baseline", sub_pos_embed_to_decoder="YES_NO_LN"), _UNPUBLISHED),
              Run("mse_pos_sub", "with MSE embedding loss and pos sub (learned table)", _config_file("mse_pos_sub"),
                  _SEED["mse_pos_sub"]),
              Run("baseline", "baseline (learned table)", _config_file("baseline"), _SEED["baseline"])),
        comparisons=(
            Comparison("rope_pos_sub", "RoPE: position subtraction in AED and in the baseline",
                       ("rope", "rope_no_pos_sub", "rope_baseline", "rope_baseline_pos_sub"), "params"),
            Comparison("rope_vs_learned", "RoPE against the seed's learned positional table",
                       ("rope", "mse_pos_sub", "rope_baseline", "baseline"), "params")),
        note="RoPE suite: rotary position embeddings (configs/rope.py, configs/rope_baseline.py) in AED and in the "
             "baseline, each with and without position subtraction, beside the seed's learned-table runs "
             "(mse_pos_sub, baseline). The seed published no RoPE run."),
}


class ReproduceError(ValueError):
    """A user error (a workdir of another scale, an ambiguous data folder): one line."""


def default_out(suite: str, scale: str, dataset: str = DEFAULT_DATASET) -> str:
    """runs/<suite>_<scale> (runs/smoke), plus -<dataset> for a corpus other than the built-in one, as main
    names workdirs: runs on different corpora never share a folder."""
    name = "smoke" if suite == "smoke" else f"{suite}_{scale}"
    return os.path.join("runs", name if dataset == DEFAULT_DATASET else f"{name}-{dataset}")


def apply_scale(c: ml_collections.ConfigDict, scale: str) -> ml_collections.ConfigDict:
    """`c` at `scale`: unchanged for full; for mini, steps and the schedule divided by MINI_FACTOR."""
    if scale == "mini":
        c.train_steps = max(1, c.train_steps // MINI_FACTOR)
        c.warmup_iters //= MINI_FACTOR
        c.lr_decay_iters = max(c.warmup_iters + 1, c.lr_decay_iters // MINI_FACTOR)
        c.est_interval = max(1, c.est_interval // MINI_FACTOR)
        c.est_steps = max(1, c.est_steps // MINI_EST_FACTOR)
    return c


def recipe(c: ml_collections.ConfigDict) -> str:
    return (f"{c.train_steps:,} steps of {c.batch_size} x {c.gradient_accumulation_steps} sequences of "
            f"{c.model_config.context_size} tokens, lr {c.lr:g} with {c.warmup_iters:,} warmup steps and cosine decay "
            f"to step {c.lr_decay_iters:,}, an estimate every {c.est_interval:,} steps over {c.est_steps} batches "
            "of each split")


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
    if c.dataset != DEFAULT_DATASET:
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


def latest_step(workdir: str) -> int | None:
    """The step of the latest checkpoint in `workdir`, or None."""
    try:
        mngr, step = checkpoint.resolve_step(workdir)
    except checkpoint.CheckpointError:
        return None
    mngr.close()
    return step


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def train_run(run: Run, c: ml_collections.ConfigDict, workdir: str, scale: str) -> str:
    """Trains or resumes `run` in `workdir`: "finished", "skipped", "interrupted" or "failed: <why>".

    `<workdir>/run.json` records the scale, the latest step and the wall time of every call so far.
    """
    info_path = os.path.join(workdir, "run.json")
    info = _read_json(info_path)
    if info.get("scale", scale) != scale:
        trained = info["scale"] or "none (smoke suite)"
        raise ReproduceError(f"{workdir} was trained at scale {trained}; pass that scale or another --out")
    step = latest_step(workdir)
    if step is not None and step >= c.train_steps:
        return "skipped"
    os.makedirs(workdir, exist_ok=True)
    start, error = time.perf_counter(), None
    try:
        train.train_and_evaluate(c, workdir)
    except train.TrainError as e:
        error = str(e)
    finally:
        step = latest_step(workdir)
        _write_json_atomic(info_path, {
            "run": run.name, "scale": scale, "train_steps": c.train_steps, "step": step,
            "finished": step is not None and step >= c.train_steps, "error": error,
            "wall_time_s": info.get("wall_time_s", 0.0) + time.perf_counter() - start,
            "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "updated": datetime.datetime.now().isoformat(timespec="seconds")})
    if error:
        return f"failed: {error}"
    return "finished" if step is not None and step >= c.train_steps else "interrupted"


def count_params(c: ml_collections.ConfigDict) -> int:
    """Parameters as the seed counts them (positional table excluded, tied matrix once), from shapes only."""
    model = model_lib.make_model(model_lib.ModelConfig.from_config(c))
    return model_lib.count_params(jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0))))


def collect(run: Run, c: ml_collections.ConfigDict, workdir: str) -> dict:
    """One results row: our last estimate, embedding loss, params, wall time, tokens/s, and the seed's numbers."""
    train_rows, estimates = plot.read_metrics(workdir)
    info, last = _read_json(os.path.join(workdir, "run.json")), (estimates[-1] if estimates else {})
    step = latest_step(workdir)
    has_embedding_loss = c.model_type == "aed" and c.model_config.embedding_loss_type != "NONE"
    tail = [r["embedding_loss"] for r in train_rows[-EMBEDDING_TAIL:] if "embedding_loss" in r]
    speeds = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
    if info.get("error"):
        status = "failed"
    elif step is None:
        status = "not run"
    else:
        status = "finished" if step >= c.train_steps else "partial"
    return {
        "run": run.name, "label": run.label, "model": c.model_type, "status": status, "step": step or 0,
        "train_steps": c.train_steps, "params": count_params(c),
        "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
        "train_accuracy_loss": last.get("train_accuracy_loss"), "val_accuracy_loss": last.get("val_accuracy_loss"),
        "estimate_step": last.get("step"),
        "embedding_loss": sum(tail) / len(tail) if has_embedding_loss and tail else None,
        "wall_time_s": info.get("wall_time_s"), "tokens_per_s": statistics.median(speeds) if speeds else None,
        "seed_train_loss": run.seed.train_loss, "seed_val_loss": run.seed.val_loss,
        "seed_embedding_loss": run.seed.embedding_loss, "seed_params": run.seed.params,
    }


CSV_COLUMNS = ("run", "label", "model", "status", "step", "train_steps", "params", "train_loss", "val_loss",
               "train_accuracy_loss", "val_accuracy_loss", "estimate_step", "embedding_loss", "wall_time_s",
               "tokens_per_s", "seed_train_loss", "seed_val_loss", "seed_embedding_loss", "seed_params")


def _fmt(value, kind: str = "loss") -> str:
    if value is None:
        return "–"
    if kind == "loss":
        return f"{value:.3f}"
    if kind == "small":
        return f"{value:.3e}" if abs(value) < 1e-2 else f"{value:.4f}"
    if kind == "int":
        return f"{value:,.0f}"
    seconds = round(value)  # kind == "time"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def _best(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return min(values) if len(values) > 1 else None


def _bold_if(text: str, value, best) -> str:
    return f"**{text}**" if best is not None and value == best else text


def markdown(suite_name: str, suite: Suite, scale: str, rows: list[dict], configs: dict, figures: dict) -> str:
    first = configs[rows[0]["run"]]
    scale_text = {"full": "the seed's recipe",
                  "mini": f"1/{MINI_FACTOR} of the seed's steps (est_steps 1/{MINI_EST_FACTOR}), so compare the "
                          "ordering of the runs with the seed's, not the values, which are for 9k steps"}.get(scale, "")
    data_text = _data_text(first)
    lines = [f"# Reproduction: suite `{suite_name}`" + (f", scale `{scale}`" if scale else ""), ""]
    if scale_text:
        lines += [f"Scale `{scale}`: {scale_text}.", ""]
    lines += [f"Recipe: {recipe(first)}.", ""]
    if suite.note:
        lines += [suite.note, ""]
    lines += ["Train and val loss: eval-mode cross-entropy at the last estimate (`est_steps` random batches of each "
              "split), as the seed reports them. Seed: the seed's published numbers (single A100, Wikipedia, 9k "
              f"steps). Embedding loss: the mean of the last {EMBEDDING_TAIL} logged training values. Wall time: "
              "training, estimates and compilation together; tokens/s: the median of the logged training steps.", "",
              f"Data: {data_text}. Device: {jax.device_count()} x "
              f"{jax.devices()[0].device_kind}. Commit: {_commit()}. Written "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}.", "", "## All runs", "",
              "| run | status | steps | params | train loss | seed | val loss | seed | embedding loss | seed | "
              "wall time | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} (`{r['run']}`) | {r['status']} | {r['step']:,}/{r['train_steps']:,} | "
            f"{_fmt(r['params'], 'int')} | {_fmt(r['train_loss'])} | {_fmt(r['seed_train_loss'])} | "
            f"{_fmt(r['val_loss'])} | {_fmt(r['seed_val_loss'])} | {_fmt(r['embedding_loss'], 'small')} | "
            f"{_fmt(r['seed_embedding_loss'], 'small')} | {_fmt(r['wall_time_s'], 'time')} | "
            f"{_fmt(r['tokens_per_s'], 'int')} |")
    by_name = {r["run"]: r for r in rows}
    for comparison in suite.comparisons:
        table = [by_name[name] for name in comparison.runs if name in by_name]
        last = ("Embedding loss", "embedding_loss", "small") if comparison.last_column == "embedding_loss" else (
            "Size (params)", "params", "int")
        best_train, best_val = _best(table, "train_loss"), _best(table, "val_loss")
        lines += ["", f"## {comparison.title}", ""]
        if comparison.name in figures:
            lines += [f"![{comparison.title}]({os.path.basename(figures[comparison.name])})", ""]
        lines += [f"|   | Train loss | seed | Val loss | seed | {last[0]} | seed |", "|---|---|---|---|---|---|---|"]
        for r in table:
            lines.append(
                f"| **{r['label']}** (`{r['run']}`) | {_bold_if(_fmt(r['train_loss']), r['train_loss'], best_train)} | "
                f"{_fmt(r['seed_train_loss'])} | {_bold_if(_fmt(r['val_loss']), r['val_loss'], best_val)} | "
                f"{_fmt(r['seed_val_loss'])} | {_fmt(r[last[1]], last[2])} | {_fmt(r['seed_' + last[1]], last[2])} |")
    return "\n".join(lines) + "\n"


def _data_text(c: ml_collections.ConfigDict) -> str:
    """The corpus, and where its meta.json says it came from (prepare's source line), so a table names its data."""
    folder = data.data_folder(c)
    text = f"`{folder}`"
    if c.dataset != DEFAULT_DATASET:
        text += f" (dataset `{c.dataset}`)"
    elif not c.data_dir:
        text += " (the built-in corpus)"
    meta = _read_json(os.path.join(folder, "meta.json"))
    if meta.get("source") and meta.get("train", {}).get("tokens"):
        text += f": {meta['source']}; {meta['train']['tokens']:,} train tokens"
    return text


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def write_report(out: str, suite_name: str, suite: Suite, scale: str, configs: dict) -> list[str]:
    """Writes results.md, results.csv and the figures under `out`; returns their paths."""
    rows = [collect(run, configs[run.name], os.path.join(out, run.name)) for run in suite.runs]
    points = None
    if suite_name == "seed" and scale == "full":
        points = {r.name: {"step": SEED_STEPS, "train_loss": r.seed.train_loss, "val_loss": r.seed.val_loss,
                           "embedding_loss": r.seed.embedding_loss} for r in suite.runs}
    paths = plot.plot_comparisons(out, suite.comparisons, {r.name: r.label for r in suite.runs},
                                  f"scale {scale}" if scale else "smoke", points)
    figures = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(suite_name, suite, scale, rows, configs, figures))
    with open(os.path.join(out, "results.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS} for r in rows)
    return [os.path.join(out, "results.md"), os.path.join(out, "results.csv"), *paths]


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum("suite", "seed", list(SUITES), "seed: the seed's eight runs; rope: rotary position "
                      "embeddings in AED and the baseline, with and without pos sub, beside the seed's learned-table "
                      "pair; smoke: two tiny configs for a few steps (a CPU check of the whole pipeline).", flag_values=fv)
    flags.DEFINE_enum("scale", None, ["full", "mini"], "For --suite seed and rope: full (the seed's recipe, the "
                      "default) or "
                      f"mini (steps and schedule divided by {MINI_FACTOR}).", flag_values=fv)
    flags.DEFINE_list("runs", None, "Comma-separated run names to train (default: all of the suite's).",
                      flag_values=fv)
    flags.DEFINE_string("out", None, "Folder of the runs' workdirs and the results; default runs/<suite>_<scale> "
                        "(runs/smoke for the smoke suite), plus -<dataset> for another corpus than "
                        f"{DEFAULT_DATASET}.", flag_values=fv)
    flags.DEFINE_string("dataset", None, "A prepared corpus: its files <dataset>_train.bin/_val.bin, in data/<dataset> "
                        "unless --data_dir says where (python -m aed_jax.prepare ... --out data/<dataset>). Default: "
                        f"the one in --data_dir, else the built-in {DEFAULT_DATASET}, prepared on first use (for quick "
                        "checks: too small for the seed's recipe).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Folder of token files (<name>_train.bin/_val.bin or train.bin/val.bin); "
                        "default: data/<dataset>.", flag_values=fv)
    flags.DEFINE_bool("train", True, "Train (resume) the runs first; --notrain only rewrites results.md, "
                      "results.csv and the figures from the workdirs as they are.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    suite = SUITES[fv.suite]
    if fv.suite == "smoke" and fv.scale:
        cli.fail("--scale applies to --suite seed and rope; the smoke suite has its own tiny settings")
    scale = None if fv.suite == "smoke" else fv.scale or "full"
    names = [run.name for run in suite.runs]
    unknown = [name for name in fv.runs or [] if name not in names]
    if unknown:
        cli.fail(f"--runs: unknown run {', '.join(map(repr, unknown))} for --suite {fv.suite}; "
                 f"choose from {', '.join(names)}")
    selected = [run for run in suite.runs if not fv.runs or run.name in fv.runs]
    try:
        overrides = data_override(fv.data_dir, fv.dataset)
        out = fv.out or default_out(fv.suite, scale, overrides.get("dataset", DEFAULT_DATASET))
        configs = {}
        for run in suite.runs:
            c = apply_scale(run.make_config(), scale)
            c.update(overrides)
            configs[run.name] = c
        os.makedirs(out, exist_ok=True)
        for i, run in enumerate(selected if fv.train else []):
            workdir = os.path.join(out, run.name)
            print(f"[{i + 1}/{len(selected)}] {run.name}: {configs[run.name].train_steps:,} steps in {workdir}",
                  flush=True)
            status = train_run(run, configs[run.name], workdir, scale)
            print(f"[{i + 1}/{len(selected)}] {run.name}: {status}", flush=True)
            if status == "interrupted":
                print("interrupted: writing the results so far; run the same command again to resume", flush=True)
                break
        paths = write_report(out, fv.suite, suite, scale, configs)
    except (ReproduceError, config_lib.ConfigError, data.DataError, tokenizer.TokenizerError,
            checkpoint.CheckpointError) as e:
        cli.fail(str(e))
    for path in paths:
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
