"""`python -m experiments.reproduce --suite seed|rope|smoke|tiny|tasks [--scale SCALE] [--seeds N|a,b,...]
[--dataset NAME] [--runs a,b,...] [--out DIR]`.

Trains the seed's eight runs (or the named subset; `--suite rope`: RoPE in AED and the baseline,
with and without position subtraction, beside the seed's learned-table pair; `--suite tiny`: the
seed's comparisons at configs/tiny.py's size on CPU; `--suite tasks`: synthetic tasks, accuracy
against width), each in its own workdir `<out>/<run>`, then
writes `<out>/results.md` and `<out>/results.csv` (train loss, val loss, embedding loss, params,
wall time, tokens/s, with the seed's published numbers beside ours, in the layout of the seed's
README tables) and one PNG per comparison: loss curves for the seed's README's comparisons,
accuracy against width for the tasks.

Seeds: `--seeds 3` trains every run with the seeds 1337, 1338, 1339 (the config key random_seed:
initialisation, data order, dropout), `--seeds 7,8` with those, each in `<out>/<run>/seed<k>`.
results.csv then holds each run's mean and standard deviation over its seeds and n, seeds.csv the
values of every seed, differences.csv (and results.md, in words) each comparison's paired
differences (run a minus run b, seed by seed) with their 95% t-intervals (aed_jax/stats.py).
Without --seeds a run trains once, with its config's seed, in `<out>/<run>`.

Re-running the same command resumes unfinished runs from their latest checkpoint and skips
finished ones (latest checkpoint step = train_steps), so it can be stopped and restarted at will
(and more seeds added later: those trained are skipped);
SIGTERM or Ctrl-C saves the current run and writes the results so far. `--notrain` only rewrites
the results and figures from the workdirs as they are.

Scales: `full` is the seed's recipe (9,000 steps of 50 x 16 sequences of 200 tokens). `mini` keeps
the models and batches and divides train_steps, warmup_iters, lr_decay_iters and est_interval by
10 (900 steps, warmup 30, so the schedule has the same shape) and est_steps by 4 (50 batches per
estimate), so that one GPU runs the whole suite in well under an hour.
`--suite smoke` trains two tiny configs (configs/tiny.py and a baseline shrunk to match) for a
few steps: a CPU check, for CI, that the whole pipeline runs. The task suite's scales (`cpu`,
`full`, `smoke`) are its own sizes (experiments/suites.py, TASK_SCALES).

Data: the built-in corpus wiki_vital by default, which is for quick checks, not for the table: its
~943k training tokens against the recipe's 1.44B (9,000 x 160,000) would be seen ~1,500 times each.
`--dataset NAME` trains on a corpus prepared in data/NAME (`python -m aed_jax.prepare --hf ...
--out data/NAME`), `--data_dir DIR` on one prepared elsewhere. The task suite draws its own data.
"""
from __future__ import annotations

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
import os

from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import errors
from experiments import suites
from experiments.suites import MINI_FACTOR


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum("suite", "seed", list(suites.SCALES), "seed: the seed's eight runs; rope: rotary position "
                      "embeddings in AED and the baseline, with and without pos sub, beside the seed's learned-table "
                      "pair; smoke: two tiny configs for a few steps (a CPU check of the whole pipeline); tiny: the "
                      "seed's comparisons at configs/tiny.py's size (CPU); tasks: AED against a baseline of matched "
                      "size on synthetic tasks (MQAR, copy, sort), accuracy against width.", flag_values=fv)
    flags.DEFINE_enum("scale", None, sorted({s for scales in suites.SCALES.values() for s in scales}),
                      "For --suite seed and rope: full (the seed's recipe, the default) or mini (steps and schedule "
                      f"divided by {MINI_FACTOR}). For --suite tasks: cpu (the default; the whole suite with 3 seeds "
                      "in about 80 minutes on 2 CPU cores), full (Zoology's sizes, for a GPU) or smoke (a few steps of "
                      "one tiny width: CI).", flag_values=fv)
    flags.DEFINE_string("seeds", None, "Train every run with several random seeds, each in <out>/<run>/seed<k>, and "
                        "report means, standard deviations and paired differences with 95% intervals: a count N (the "
                        f"seeds {suites.DEFAULT_SEED}, {suites.DEFAULT_SEED + 1}, ...) or a comma-separated list "
                        "(7,8,9; one seed: 7,). Default: one run with its config's seed, in <out>/<run>.",
                        flag_values=fv)
    flags.DEFINE_list("runs", None, "Comma-separated run names to train (default: all of the suite's).",
                      flag_values=fv)
    flags.DEFINE_string("out", None, "Folder of the runs' workdirs and the results; default runs/<suite>_<scale> "
                        "(runs/<suite> for smoke and tiny), plus -<dataset> for another corpus than "
                        f"{config_lib.DEFAULT_DATASET}.", flag_values=fv)
    flags.DEFINE_string("dataset", None, "A prepared corpus: its files <dataset>_train.bin/_val.bin, in data/<dataset> "
                        "unless --data_dir says where (python -m aed_jax.prepare ... --out data/<dataset>). Default: "
                        f"the one in --data_dir, else the built-in {config_lib.DEFAULT_DATASET}, prepared on first use (for quick "
                        "checks: too small for the seed's recipe). Not for --suite tasks.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Folder of token files (<name>_train.bin/_val.bin or train.bin/val.bin); "
                        "default: data/<dataset>. Not for --suite tasks.", flag_values=fv)
    flags.DEFINE_bool("train", True, "Train (resume) the runs first; --notrain only rewrites results.md, the CSV "
                      "files and the figures from the workdirs as they are.", flag_values=fv)
    flags.DEFINE_string("compilation_cache_dir", "~/.cache/aed_jax/jax",
                        "JAX's persistent compilation cache, so that every seed of a run (and a resumed run) loads "
                        "its train step instead of compiling it again; '' disables it. The "
                        "JAX_COMPILATION_CACHE_DIR variable, when set, wins.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    scale = suites.pick_scale(fv.suite, fv.scale)
    if fv.suite == "tasks" and (fv.dataset or fv.data_dir):
        cli.fail("--dataset and --data_dir: the task suite draws its own data")
    suite = suites.get(fv.suite, scale)
    names = [run.name for run in suite.runs]
    unknown = [name for name in fv.runs or [] if name not in names]
    if unknown:
        cli.fail(f"--runs: unknown run {', '.join(map(repr, unknown))} for --suite {fv.suite}; "
                 f"choose from {', '.join(names)}")
    selected = [run for run in suite.runs if not fv.runs or run.name in fv.runs]
    import jax
    from experiments import runner
    if fv.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compilation_cache_dir))
    seeds = runner.parse_seeds(fv.seeds)
    overrides = runner.data_override(fv.data_dir, fv.dataset)
    out = fv.out or suites.default_out(fv.suite, scale, overrides.get("dataset", config_lib.DEFAULT_DATASET))
    configs = {}
    for run in suite.runs:
        c = suites.apply_scale(run.make_config(), scale)
        c.update(overrides)
        configs[run.name] = c
    runner.check_layout(out, suite.runs, seeds)
    os.makedirs(out, exist_ok=True)
    jobs = [(run, seed) for seed in seeds or [None] for run in selected]  # seed by seed: pairs come early
    for i, (run, seed) in enumerate(jobs if fv.train else []):
        name, workdir = run.name + ("" if seed is None else f" seed {seed}"), suites.workdir(out, run.name, seed)
        c = runner._seed_config(configs[run.name], seed)
        print(f"[{i + 1}/{len(jobs)}] {name}: {c.train_steps:,} steps in {workdir}", flush=True)
        status = runner.train_run(run, c, workdir, scale)
        print(f"[{i + 1}/{len(jobs)}] {name}: {status}", flush=True)
        if status == "interrupted":
            print("interrupted: writing the results so far; run the same command again to resume", flush=True)
            break
    try:
        paths = runner.write_report(out, fv.suite, suite, scale, configs, seeds)
    except OSError as e:  # each file is written whole or not at all; the trained runs stay
        cli.fail(errors.write_failed(e, e.filename or out, "run the same command again: it trains nothing twice"))
    for path in paths:
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
