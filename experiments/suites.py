"""The suites of `experiments.reproduce`: their runs, the configs they train, the comparisons they report.

A module of its own so that experiments/runner.py (which trains and writes the results),
experiments/figures.py (which draws them) and the commands all read the suites without importing
each other.

Suites: `seed` (the seed's eight runs), `rope` (rotary positions), `smoke` (two tiny configs for a
few steps: CI), `tiny` (the seed's comparisons at configs/tiny.py's size, on CPU), `tasks`
(synthetic tasks, accuracy against width, AED against a baseline of matched size) and `emb_loss`
(the embedding losses that shrinking cannot meet against the seed's MSE, on sort). The sizes of
the task suite's scales are the constants in TASK_SCALES, one place to calibrate them.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import ml_collections

from aed_jax import config as config_lib
from aed_jax import errors
from aed_jax import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_STEPS = 9000  # the seed's published runs
MINI_FACTOR = 10  # --scale mini: train_steps, warmup_iters, lr_decay_iters and est_interval divided by this
MINI_EST_FACTOR = 4  # --scale mini: est_steps divided by this
DEFAULT_SEED = config_lib.base_config().random_seed  # --seeds N: this seed and the N - 1 after it
# --suite smoke: a few steps of two tiny models, on CPU in well under a minute each.
SMOKE_OVERRIDES = dict(train_steps=6, warmup_iters=2, lr_decay_iters=6, est_interval=3, est_steps=2, log_interval=1)
LOSS_METRICS = ("val_loss",)  # what a language-model suite's paired differences compare
TASK_METRICS = ("val_token_accuracy", "val_sequence_accuracy")  # and a task suite's
METRIC_NAMES = {"val_loss": "val loss", "val_token_accuracy": "val token accuracy",
                "val_sequence_accuracy": "val sequence accuracy"}


@dataclasses.dataclass(frozen=True)
class Seed:
    """The seed's published numbers for a run (its README's tables); None where it published none."""
    train_loss: float | None
    val_loss: float | None
    embedding_loss: float | None = None
    params: int | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    """Where a task run sits in its task's figure: a panel per difficulty, a line per model, x its width."""
    panel: str
    line: str
    width: int  # the AED's width; the matched baseline's own width may differ (its row says)
    model: str  # the model's short name, as the run names end: "mse_pos_sub", "no_loss_no_pos", "baseline"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # the workdir's name under --out
    label: str  # the seed's row name
    make_config: Callable[[], ml_collections.ConfigDict]
    seed: Seed
    point: Point | None = None  # task runs only


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str  # the figure's file name, <name>.png
    title: str
    runs: tuple[str, ...]
    last_column: str  # "embedding_loss" or "params", as the seed's table for it has
    pairs: tuple[tuple[str, str], ...] = ()  # (a, b): the paired differences a - b reported; () is runs[0] - each other

    def differences(self) -> tuple[tuple[str, str], ...]:
        return self.pairs or tuple((self.runs[0], other) for other in self.runs[1:])


@dataclasses.dataclass(frozen=True)
class Suite:
    runs: tuple[Run, ...]
    comparisons: tuple[Comparison, ...]
    note: str = ""
    metrics: tuple[str, ...] = LOSS_METRICS  # the metrics of the paired differences, each "val_..."


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """One setting of a task: a panel of its figure."""
    label: str  # in the run names, e.g. "kv8"
    title: str  # the panel's title
    context_size: int
    settings: dict  # task.* config keys
    train_steps: int | None = None  # this difficulty's budget; None: its scale's train_steps


@dataclasses.dataclass(frozen=True)
class TaskScale:
    """The sizes and recipe of one scale of the task suite (every run: 3 models x widths x difficulties)."""
    widths: tuple[int, ...]  # the AEDs' n_embed; the baseline matches each one's parameter count
    head_dim: int  # n_head = width // head_dim; the AED's cross-attention has 2 * n_head
    n_layer: int  # the AED has n_layer encoder + n_layer decoder blocks
    alphabet_size: int  # vocabulary; MQAR needs it above the context size
    batch_size: int
    train_steps: int
    lr: float  # peak; warmup over the first 5% of the steps, cosine decay to min_lr at the last
    estimates: int  # estimates per run, the last at train_steps
    est_steps: int  # batches of each split per estimate
    difficulties: dict[str, tuple[Difficulty, ...]]  # task name -> its settings, easiest first
    # None: lr / 10. 0.0 for a scale swept over lr (--grid lr=...), so that the points differ in lr alone,
    # not also in how far their schedule decays.
    min_lr: float | None = None
    saves: int | None = None  # checkpoints per run, the last at train_steps; None: one at every estimate


def _mqar(context_size: int, pairs: int) -> Difficulty:
    return Difficulty(f"T{context_size}_kv{pairs}", f"{context_size} tokens, {pairs} key-value pairs", context_size,
                      {"num_kv_pairs": pairs})


def _copy(context_size: int, length: int) -> Difficulty:
    return Difficulty(f"T{context_size}_len{length}", f"{context_size} tokens, copy {length}", context_size,
                      {"copy_length": length})


def _sort(context_size: int, length: int) -> Difficulty:
    return Difficulty(f"T{context_size}_len{length}", f"{context_size} tokens, sort {length}", context_size,
                      {"sort_length": length})


# --suite tasks: calibrate here (the measurements: experiments/README.md). cpu: the whole suite (36 configs)
# with --seeds 3 in about 80 minutes on two CPU cores; full: Zoology's MQAR sizes (vocabulary 8,192, 256 and 512
# tokens, widths 64-512) for a GPU; smoke: one tiny width for a few steps, the CI check that the pipeline runs.
TASK_SCALES = {
    "cpu": TaskScale(
        widths=(32, 64), head_dim=16, n_layer=2, alphabet_size=128, batch_size=32, train_steps=300, lr=3e-3,
        estimates=2, est_steps=8,
        difficulties={"mqar": (_mqar(64, 4), _mqar(64, 8)), "copy": (_copy(64, 8), _copy(64, 16)),
                      "sort": (_sort(64, 8), _sort(64, 16))}),
    # Budgets at which the tasks can be learnt, each point meant to be swept over lr (--grid lr=...; min_lr 0 so
    # the points differ in lr alone) with an estimate every 2% of the run for its steps-to-accuracy curve.
    "calibrated": TaskScale(
        widths=(32,), head_dim=16, n_layer=2, alphabet_size=128, batch_size=32, train_steps=1500, lr=3e-3,
        estimates=50, est_steps=4, min_lr=0.0, saves=2,
        difficulties={"sort": (_sort(64, 8),)}),
    "full": TaskScale(
        widths=(64, 128, 256, 512), head_dim=32, n_layer=2, alphabet_size=8192, batch_size=64, train_steps=5000,
        lr=1e-3, estimates=5, est_steps=32,
        difficulties={"mqar": (_mqar(256, 16), _mqar(512, 64)), "copy": (_copy(256, 64), _copy(512, 128)),
                      "sort": (_sort(256, 32), _sort(512, 64))}),
    "smoke": TaskScale(
        widths=(16,), head_dim=8, n_layer=1, alphabet_size=64, batch_size=8, train_steps=4, lr=3e-3,
        estimates=1, est_steps=2,
        difficulties={"mqar": (_mqar(32, 4),), "copy": (_copy(32, 4),), "sort": (_sort(32, 4),)}),
}
TASK_MODELS = (("mse_pos_sub", "AED, MSE loss + pos sub"), ("no_loss_no_pos", "AED, no loss, no pos sub"),
               ("baseline", "baseline, matched params"))
SCALES = {"seed": ("full", "mini"), "rope": ("full", "mini"), "smoke": (), "tiny": (), "tasks": tuple(TASK_SCALES),
          "emb_loss": ()}
TASK_SUITES = ("tasks", "emb_loss")  # suites of task runs: they draw their own data
# --suite emb_loss (issue 34): the embedding losses that shrinking cannot meet against the seed's MSE and no loss,
# on one task at the task suite's cpu recipe; each run is mse_pos_sub but for the keys given (no_loss_no_pos: all).
EMB_LOSS_TASK, EMB_LOSS_DIFFICULTY, EMB_LOSS_WIDTH, EMB_LOSS_SCALE = "sort", _sort(64, 8), 32, "cpu"
EMB_LOSS_RUNS = (
    ("no_loss_no_pos", "AED, no embedding loss, no pos sub", "no_loss_no_pos", {}),
    ("mse_pos_sub", "AED, MSE loss + pos sub (the seed's)", "mse_pos_sub", {}),
    ("norm_mse", "AED, NORM_MSE loss + pos sub", "mse_pos_sub", {"embedding_loss_type": "NORM_MSE"}),
    ("centered_cosine", "AED, CENTERED_COSINE loss + pos sub", "mse_pos_sub",
     {"embedding_loss_type": "CENTERED_COSINE"}),
    ("mse_var", "AED, MSE loss + variance floor + pos sub", "mse_pos_sub", {"embedding_var_coeff": 1.0}),
)


def _config_file(name: str) -> Callable[[], ml_collections.ConfigDict]:
    return lambda: config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))


def _variant(name: str, recipe: Callable[[ml_collections.ConfigDict], None] | None = None,
             **model) -> Callable[[], ml_collections.ConfigDict]:
    """configs/<name>.py with a recipe of aed_jax/recipes.py applied to its model_config, then some keys changed."""
    def make() -> ml_collections.ConfigDict:
        c = _config_file(name)()
        if recipe is not None:
            recipe(c.model_config)
        c.model_config.update(model)
        config_lib.validate(c)
        return c
    return make


def count_params(c: ml_collections.ConfigDict) -> int:
    """Parameters as the seed counts them (positional table excluded, tied matrix once), from shapes only."""
    from aed_jax import model as model_lib  # here: the commands read the suites' names before jax loads
    return model_lib.count_params(model_lib.ModelConfig.from_config(c).abstract_params())


@functools.lru_cache(maxsize=None)
def _matched_shape(target: int, width: int, n_head: int, alphabet_size: int) -> tuple[int, int]:
    """(n_embed, n_layer) of a baseline whose parameter count comes close to `target` with a shape close to the
    AED's: the depth whose count at `width` is closest, then at that depth the width (n_head divides it,
    within an eighth of `width`, ties to `width`) whose count is closest. The count is linear in the depth
    (identical blocks), so two counts give every depth's."""
    c = config_lib.base_config("baseline")
    c.model_config.update(dict(n_head=n_head, alphabet_size=alphabet_size))

    def count(w: int, depth: int) -> int:
        c.model_config.update(dict(n_embed=w, n_layer=depth))
        return count_params(c)

    one, two = count(width, 1), count(width, 2)
    depth = max(1, round((target - (2 * one - two)) / (two - one)))
    widths = range(max(n_head, (width * 7 // 8) // n_head * n_head), width * 9 // 8 + 1, n_head)
    return min(widths, key=lambda w: (abs(count(w, depth) - target), abs(w - width))), depth


def matched_baseline(aed: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """configs/baseline.py with a parameter count close to `aed`'s (the width and depth `_matched_shape` picks)
    and the same heads, context, vocabulary, data and recipe: the seed's "smaller baseline" for any AED."""
    c = _config_file("baseline")()
    m = aed.model_config
    width, depth = _matched_shape(count_params(aed), m.n_embed, m.n_head, m.alphabet_size)
    c.model_config.update(dict(n_embed=width, n_layer=depth, n_head=m.n_head, context_size=m.context_size,
                               alphabet_size=m.alphabet_size))
    for key, value in aed.items():
        if key not in ("model_type", "model_config"):
            c[key] = value
    config_lib.validate(c)
    return c


def _smoke(make: Callable[[], ml_collections.ConfigDict]) -> Callable[[], ml_collections.ConfigDict]:
    def smoke() -> ml_collections.ConfigDict:
        c = make()
        c.update(SMOKE_OVERRIDES)
        return c
    return smoke


_SEED = {
    "cosine": Seed(2.993, 3.387, 8.564e-9), "mse": Seed(2.998, 3.385, 4.138e-9), "no_loss_no_pos": Seed(3.043, 3.413),
    "pos_sub": Seed(2.979, 3.381), "mse_pos_sub": Seed(2.982, 3.378, 4.673e-9, 15_763_500),
    "baseline": Seed(2.937, 3.424, None, 16_036_800), "smaller_baseline": Seed(2.958, 3.416, None, 15_441_192),
    "dropout_baseline": Seed(3.174, 3.406, None, 16_036_800),
}
_UNPUBLISHED = Seed(None, None)  # runs the seed never made: no published numbers
_FIXED = {
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
            Comparison("embedding_loss", "Embedding-loss types", ("cosine", "mse", "no_loss_no_pos"), "embedding_loss",
                       (("cosine", "no_loss_no_pos"), ("mse", "no_loss_no_pos"))),
            Comparison("pos_sub", "Positional-embedding subtraction", ("pos_sub", "no_loss_no_pos"), "embedding_loss"),
            Comparison("both", "Embedding loss and pos sub together", ("pos_sub", "mse", "mse_pos_sub"),
                       "embedding_loss", (("mse_pos_sub", "pos_sub"), ("mse_pos_sub", "mse"))),
            Comparison("baselines", "AED against the decoder-only baselines",
                       ("mse_pos_sub", "baseline", "smaller_baseline", "dropout_baseline"), "params"))),
    "smoke": Suite(
        runs=(Run("tiny", "tiny AED (MSE + pos sub)", _smoke(_config_file("tiny")), _SEED["mse_pos_sub"]),
              Run("tiny_baseline", "tiny baseline", _smoke(_config_file("tiny_baseline")), _SEED["baseline"])),
        comparisons=(Comparison("embedding_loss", "Tiny AED with an embedding loss", ("tiny",), "embedding_loss"),
                     Comparison("baselines", "Tiny AED against a tiny baseline", ("tiny", "tiny_baseline"), "params")),
        note="Smoke suite: tiny stand-ins trained for a few steps, a check that the pipeline runs, not a "
             "reproduction. The seed columns hold the published numbers of the full-size runs they stand for "
             "(tiny: with MSE embedding loss and pos sub; tiny_baseline: baseline)."),
    "tiny": Suite(
        runs=(Run("mse_pos_sub", "tiny AED, MSE embedding loss and pos sub", _config_file("tiny"),
                  _SEED["mse_pos_sub"]),
              Run("no_loss_no_pos", "tiny AED, no embedding loss and no pos sub",
                  _variant("tiny", recipes.no_loss_no_pos), _SEED["no_loss_no_pos"]),
              Run("baseline", "tiny baseline (4 blocks, 64 wide)", _config_file("tiny_baseline"), _SEED["baseline"]),
              Run("matched_baseline", "tiny baseline matched to the AED's size",
                  lambda: matched_baseline(_config_file("tiny")()), _SEED["smaller_baseline"])),
        comparisons=(
            Comparison("embedding_loss_pos_sub", "Tiny AED: MSE embedding loss and pos sub against neither",
                       ("mse_pos_sub", "no_loss_no_pos"), "embedding_loss"),
            Comparison("baselines", "Tiny AED against the tiny decoder-only baselines",
                       ("mse_pos_sub", "baseline", "matched_baseline"), "params")),
        note="Tiny suite: the seed's comparisons at the size and recipe of configs/tiny.py (a 2 + 2-block AED "
             "64 wide, 1,200 steps of 8 x 64 tokens) on CPU. The seed columns hold the published numbers of the "
             "full-size runs they stand for: compare the ordering, not the values."),
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
                       ("rope", "rope_no_pos_sub", "rope_baseline", "rope_baseline_pos_sub"), "params",
                       (("rope", "rope_no_pos_sub"), ("rope_baseline_pos_sub", "rope_baseline"),
                        ("rope", "rope_baseline"))),
            Comparison("rope_vs_learned", "RoPE against the seed's learned positional table",
                       ("rope", "mse_pos_sub", "rope_baseline", "baseline"), "params",
                       (("rope", "mse_pos_sub"), ("rope_baseline", "baseline")))),
        note="RoPE suite: rotary position embeddings (configs/rope.py, configs/rope_baseline.py) in AED and in the "
             "baseline, each with and without position subtraction, beside the seed's learned-table runs "
             "(mse_pos_sub, baseline). The seed published no RoPE run."),
}


def task_config(model: str, task: str, difficulty: Difficulty, width: int, s: TaskScale) -> ml_collections.ConfigDict:
    """One run of the task suite: the AED as configs/mse_pos_sub.py or configs/no_loss_no_pos.py at `width`,
    or the baseline matched to the first's parameter count, trained on `task` with `s`'s recipe."""
    if model == "baseline":
        return matched_baseline(task_config("mse_pos_sub", task, difficulty, width, s))
    c = _config_file(model)()
    n_head = width // s.head_dim
    c.model_config.update(dict(n_embed=width, n_head=n_head, n_layer=s.n_layer, context_size=difficulty.context_size,
                               alphabet_size=s.alphabet_size))
    c.model_config.cross_attn_config.n_head = 2 * n_head
    c.dataset = f"task:{task}"
    c.task.update(difficulty.settings)
    steps = difficulty.train_steps or s.train_steps
    est_interval = max(1, steps // s.estimates)
    c.update(dict(batch_size=s.batch_size, gradient_accumulation_steps=1, train_steps=steps, lr=s.lr,
                  min_lr=s.lr / 10 if s.min_lr is None else s.min_lr, warmup_iters=steps // 20, lr_decay_iters=steps,
                  est_interval=est_interval, est_steps=s.est_steps, log_interval=max(1, steps // 50),
                  save_interval=None if s.saves is None else est_interval * max(1, s.estimates // s.saves)))
    config_lib.validate(c)  # a size in TASK_SCALES that the task cannot take fails here, before any run trains
    return c


def _task_suite(scale: str) -> Suite:
    s = TASK_SCALES[scale]
    runs, comparisons = [], []
    for task, difficulties in s.difficulties.items():
        names, pairs = [], []
        for difficulty in difficulties:
            for width in s.widths:
                point = f"{task}_{difficulty.label}_w{width}"
                for model, line in TASK_MODELS:
                    make = functools.partial(task_config, model, task, difficulty, width, s)
                    runs.append(Run(f"{point}_{model}", f"{line}, width {width}, {difficulty.title}", make,
                                    _UNPUBLISHED, Point(difficulty.title, line, width, model)))
                    names.append(runs[-1].name)
                pairs += [(f"{point}_{a}", f"{point}_{b}") for a, b in (
                    ("mse_pos_sub", "baseline"), ("no_loss_no_pos", "baseline"), ("mse_pos_sub", "no_loss_no_pos"))]
        comparisons.append(Comparison(task, f"{task}: accuracy against width", tuple(names), "params", tuple(pairs)))
    return Suite(
        runs=tuple(runs), comparisons=tuple(comparisons), metrics=TASK_METRICS,
        note=f"Task suite, scale `{scale}`: synthetic tasks drawn on the fly (aed_jax/tasks.py), scored on the "
             "answer positions only. Each width has the AED with MSE embedding loss and pos sub "
             "(configs/mse_pos_sub.py), the AED with neither (configs/no_loss_no_pos.py), both with "
             f"{s.n_layer} + {s.n_layer} blocks, and a decoder-only baseline whose width and depth bring its "
             "parameter count closest to the first's. Token accuracy: the fraction of answer tokens predicted "
             "right; sequence accuracy: the fraction of problems with every answer right (sort packs several "
             "problems a sequence).")


def _emb_loss_config(model: str, changes: dict) -> ml_collections.ConfigDict:
    """One run of the emb_loss suite: `task_config`'s AED at EMB_LOSS_WIDTH on EMB_LOSS_TASK, with `changes`."""
    c = task_config(model, EMB_LOSS_TASK, EMB_LOSS_DIFFICULTY, EMB_LOSS_WIDTH, TASK_SCALES[EMB_LOSS_SCALE])
    c.model_config.update(changes)
    config_lib.validate(c)
    return c


def _emb_loss_suite() -> Suite:
    runs = tuple(Run(name, label, functools.partial(_emb_loss_config, model, changes), _UNPUBLISHED,
                     Point(EMB_LOSS_DIFFICULTY.title, label, EMB_LOSS_WIDTH, name))
                 for name, label, model, changes in EMB_LOSS_RUNS)
    variants = [name for name, *_ in EMB_LOSS_RUNS[2:]]
    pairs = (("mse_pos_sub", "no_loss_no_pos"), *((v, "mse_pos_sub") for v in variants),
             *((v, "no_loss_no_pos") for v in variants))
    return Suite(
        runs=runs, metrics=TASK_METRICS,
        comparisons=(Comparison("emb_loss", f"Embedding losses on task:{EMB_LOSS_TASK} ({EMB_LOSS_DIFFICULTY.title})",
                                tuple(run.name for run in runs), "params", pairs),),
        note=f"Embedding-loss suite (issue 34): the AED of the task suite (scale `{EMB_LOSS_SCALE}`, width "
             f"{EMB_LOSS_WIDTH}) on task:{EMB_LOSS_TASK} ({EMB_LOSS_DIFFICULTY.title}): the seed's MSE + pos sub "
             "(configs/mse_pos_sub.py), the same with each loss that shrinking its LayerNorms cannot meet "
             "(NORM_MSE, CENTERED_COSINE) and with the variance floor (embedding_var_coeff 1), every other key the "
             "same, and the AED with neither loss nor pos sub. Whether a loss is met by collapse: "
             "`python -m aed_jax.analyze` on the runs (the shrinking factor, docs/model.md).")


def pick_scale(name: str, scale: str | None) -> str | None:
    """`scale`, or suite `name`'s default (its first; None for a suite of one size); an errors.UserError, one line, for
    a scale the suite does not have."""
    scales = SCALES[name]
    if scale is not None and scale not in scales:
        raise errors.UserError(f"--scale {scale}: --suite {name} " + (
            f"takes {', '.join(scales[:-1])} or {scales[-1]}" if scales else "has one size, no --scale"))
    return scale or (scales[0] if scales else None)


def get(name: str, scale: str | None = None) -> Suite:
    """Suite `name` at `scale` (for the task suite: which of TASK_SCALES; the others build their scale's configs
    in experiments.reproduce)."""
    if name == "emb_loss":
        return _emb_loss_suite()
    return _task_suite(scale or SCALES["tasks"][0]) if name == "tasks" else _FIXED[name]


def default_out(suite: str, scale: str | None, dataset: str = config_lib.DEFAULT_DATASET) -> str:
    """runs/<suite>_<scale> (runs/<suite> for a suite with one size), plus -<dataset> for a corpus other than
    the built-in one, as main names workdirs: runs on different corpora never share a folder."""
    name = suite if scale is None else f"{suite}_{scale}"
    return os.path.join("runs", name if dataset == config_lib.DEFAULT_DATASET else f"{name}-{dataset}")


def workdir(out: str, run: str, seed: int | None) -> str:
    """A run's workdir for one seed, `<out>/<run>/seed<k>`; without --seeds (seed None), `<out>/<run>` itself."""
    return os.path.join(out, run) if seed is None else os.path.join(out, run, f"seed{seed}")


def workdirs(out: str, run: str, seeds: list[int] | None) -> list[str]:
    """A run's workdirs, one per seed of --seeds (None: no --seeds)."""
    return [workdir(out, run, seed) for seed in seeds or [None]]


def seed_config(c: ml_collections.ConfigDict, seed: int | None) -> ml_collections.ConfigDict:
    """`c` with random_seed `seed` (None: as it is)."""
    if seed is None:
        return c
    c = c.copy_and_resolve_references()
    c.random_seed = seed
    return c


def apply_scale(c: ml_collections.ConfigDict, scale: str | None) -> ml_collections.ConfigDict:
    """`c` at `scale`: unchanged but for mini, whose steps and schedule are divided by MINI_FACTOR."""
    if scale == "mini":
        c.train_steps = max(1, c.train_steps // MINI_FACTOR)
        c.warmup_iters //= MINI_FACTOR
        c.lr_decay_iters = max(c.warmup_iters + 1, c.lr_decay_iters // MINI_FACTOR)
        c.est_interval = max(1, c.est_interval // MINI_FACTOR)
        c.est_steps = max(1, c.est_steps // MINI_EST_FACTOR)
    return c
