"""`python -m experiments.reproduce --suite seed|rope|smoke|tiny|tasks|emb_loss [--scale SCALE] [--seeds N|a,b,...]
[--dataset NAME] [--runs a,b,...] [--out DIR] [--grid KEY=V1,V2,...] [--config.KEY=VALUE] [--jobs N]`.

Trains the seed's eight runs (or the named subset; `--suite rope`: RoPE in AED and the baseline,
with and without position subtraction, beside the seed's learned-table pair; `--suite tiny`: the
seed's comparisons at configs/tiny.py's size on CPU; `--suite tasks`: synthetic tasks, accuracy
against width; `--suite emb_loss`: the embedding losses that shrinking cannot meet, on sort), each in
its own workdir `<out>/<run>`, then
writes `<out>/results.md` and `<out>/results.csv` (train loss, val loss, embedding loss, params,
wall time, tokens/s, with the seed's published numbers beside ours, in the layout of the seed's
README tables) and one PNG per comparison: loss curves for the seed's README's comparisons,
accuracy against width for the tasks.

Seeds: `--seeds 3` trains every run with the seeds 1337, 1338, 1339 (the config key random_seed:
initialisation, data order, dropout), `--seeds 7,8` with those, each in `<out>/<run>/seed<k>`.
results.csv then holds each run's mean and standard deviation over its seeds and n, seeds.csv the
values of every seed, differences.csv (and results.md, in words) each comparison's paired
differences (run a minus run b, seed by seed) with their 95% t-intervals and paired t-test p-values,
Holm-adjusted over every difference of the results.md (aed_jax/stats.py).
Without --seeds a run trains once, with its config's seed, in `<out>/<run>`.

Each run trains in a process of its own, `--jobs` at a time (default: one per usable core on CPU,
each pinned to its own cores with its output in <workdir>/train.log; one on a GPU or TPU):
experiments/scheduler.py. Re-running the same command resumes unfinished runs from their latest
checkpoint and skips finished ones (latest checkpoint step = train_steps, or a task run's estimate there
reached its stop_accuracy), so it can be stopped and
restarted at will (and more seeds added later: those trained are skipped). SIGTERM or Ctrl-C: no run
starts after it, the runs training save and stop, the results so far are written, one line says so,
exit 0; before any run starts, one `error:` line, exit 1. Every flag, the data and the output folder
are checked before jax loads (experiments/plan.py). `--notrain` only rewrites the results and
figures from the workdirs as they are.

Sweeps: `--config.KEY=VALUE` sets a key for every run (the default --out gains `+KEY=VALUE`);
`--grid KEY=V1,V2,...` trains every run at each value (several: every combination), each point a run
of its own named `<run>/<point>` in that folder (experiments/plan.py), checked before any run starts.

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

if __name__ == "__main__":  # a signal before any run starts: one line; the suite's own handler takes over
    from aed_jax import stopping
    stopping.exit_on_signals("error: reproduce was stopped by {signal}; "
                             "no run had started: nothing was trained or written")

import dataclasses
import os
import sys

# Only what the flags need: jax and the libraries on it load in the children that train and, for the
# results, once the runs have ended, so --help and a bad flag answer in a fraction of a second.
from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import errors
from experiments import plan
from experiments import scheduler
from experiments import suites
from experiments.suites import MINI_FACTOR


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum("suite", "seed", list(suites.SCALES), "seed: the seed's eight runs; rope: rotary position "
                      "embeddings in AED and the baseline, with and without pos sub, beside the seed's learned-table "
                      "pair; smoke: two tiny configs for a few steps (a CPU check of the whole pipeline); tiny: the "
                      "seed's comparisons at configs/tiny.py's size (CPU); tasks: AED against a baseline of matched "
                      "size on synthetic tasks (MQAR, copy, sort), accuracy against width; emb_loss: the seed's MSE "
                      "embedding loss against NORM_MSE, CENTERED_COSINE, a variance floor and no loss, on sort "
                      "(CPU).", flag_values=fv)
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
    flags.DEFINE_multi_string("grid", None, "KEY=V1,V2,...: train every run at each value of a config key (several "
                              "--grid: every combination), each point in <out>/<run>/<key=value,...>/ and tabled as a "
                              "run of its own; a key of one value sets it for every run, as --config.KEY=VALUE does "
                              "(the default --out then ends in +KEY=VALUE). E.g. --grid config.lr=1e-3,3e-3,1e-2.",
                              flag_values=fv)
    flags.DEFINE_integer("jobs", None, "Runs trained side by side, each in a process of its own (pinned to its own "
                         "cores on CPU, its output in <workdir>/train.log when more than one). Default: one per "
                         "usable core on CPU (each run's idle moments are another's work: BENCHMARKS.md), one on a GPU or TPU.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("train", True, "Train (resume) the runs first; --notrain only rewrites results.md, the CSV "
                      "files and the figures from the workdirs as they are.", flag_values=fv)
    flags.DEFINE_string("compilation_cache_dir", "~/.cache/aed_jax/jax",
                        "JAX's persistent compilation cache, so that every seed of a run (and a resumed run) loads "
                        "its train step instead of compiling it again; '' disables it. The "
                        "JAX_COMPILATION_CACHE_DIR variable, when set, wins.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    scale = suites.pick_scale(fv.suite, fv.scale)
    if fv.suite in suites.TASK_SUITES and (fv.dataset or fv.data_dir):
        cli.fail("--dataset and --data_dir: the task suite draws its own data")
    suite = suites.get(fv.suite, scale)
    names = [run.name for run in suite.runs]
    unknown = [name for name in fv.runs or [] if name not in names]
    if unknown:
        cli.fail(f"--runs: unknown run {', '.join(map(repr, unknown))} for --suite {fv.suite}; "
                 f"choose from {', '.join(names)}")
    seeds = plan.parse_seeds(fv.seeds)
    settings, points = plan.grid_points(plan.parse_grid(fv.grid or []))
    overrides = plan.data_override(fv.data_dir, fv.dataset)
    out = fv.out or suites.default_out(fv.suite, scale, overrides.get("dataset", config_lib.DEFAULT_DATASET)) + (
        f"+{plan.point_name(settings)}" if settings else "")
    configs, refused = {}, set()
    for run in suite.runs:
        c = suites.apply_scale(run.make_config(), scale)
        c.update(overrides)
        try:
            configs[run.name] = plan.apply(c, settings, f"run {run.name}") if settings else c
            for point in points if fv.runs and run.name not in fv.runs else ():
                plan.apply(configs[run.name], point, f"--grid {plan.point_name(point)}, run {run.name}")
        except config_lib.ConfigError:
            if not fv.runs or run.name in fv.runs:
                raise
            refused.add(run.name)  # a run --runs leaves out that cannot take the setting: out of this command
    suite = plan.without(suite, refused)
    suite, configs = plan.expand(suite, {name: c for name, c in configs.items() if name not in refused}, points)
    if settings or points != [{}]:  # results.md says what the command changed
        suite = dataclasses.replace(suite, note=" ".join(filter(None, (
            suite.note, settings and f"Set for every run: {plan.point_name(settings)}.",
            points != [{}] and f"Grid: {len(points)} points ({'; '.join(map(plan.point_name, points))}), each run "
                               "trained at each, in <run>/<point>/."))))
    selected = [run for run in suite.runs if not fv.runs or run.name.split("/")[0] in fv.runs]
    if not fv.train and not os.path.isdir(out):
        cli.fail(f"--notrain: {out} does not exist: --notrain tables the runs already trained there (give the "
                 "--out they were trained in)")
    plan.check_layout(out, suite.runs, seeds)
    cli.check_writable_folder(out)  # before any work: created by the first run, written by the results
    total, todo = len(selected) * len(seeds or [None]), []
    for i, (seed, run) in enumerate(((seed, run) for seed in seeds or [None] for run in selected), 1):
        # seed by seed: pairs come early
        c, workdir = suites.seed_config(configs[run.name], seed), suites.workdir(out, run.name, seed)
        plan.check_scale(workdir, scale)
        job = scheduler.Job(run.name + ("" if seed is None else f" seed {seed}"), run.name, c, workdir, scale)
        if fv.train and plan.finished(workdir, c):
            print(f"[{i}/{total}] {job.name}: skipped", flush=True)
        elif fv.train:
            todo.append((i, job))
    scheduler.default_cache(fv.compilation_cache_dir)
    stopper, statuses = scheduler.Stopper(), {}
    try:
        if todo:
            statuses = scheduler.run_all(todo, min(fv.jobs or plan.default_jobs(), len(todo)), total, stopper)
        from experiments import runner  # jax: only now, once no run trains
        try:
            paths = runner.write_report(out, fv.suite, suite, scale, configs, seeds)
        except OSError as e:  # each file is written whole or not at all; the trained runs stay
            cli.fail(errors.write_failed(e, e.filename or out, "run the same command again: it trains nothing twice"))
    finally:
        stopper.restore()
    for path in paths:
        print(path)
    failed = [name for name, status in statuses.items() if status.startswith("failed")]
    if stopper.signal:
        print(f"stopped by {stopper.signal}: {sum(s == 'finished' for s in statuses.values())} of the {len(todo)} runs "
              "to train finished, the others saved their checkpoints, the results so far are written; run the same "
              "command to resume", flush=True)
    if failed:
        cli.fail(f"{len(failed)} of {total} runs failed ({', '.join(failed)}); their errors are in the lines above and "
                 "their run.json, the others' results are written")

if __name__ == "__main__":
    define_flags()
    sys.argv = [f"--grid={arg[2:]}" if arg.startswith("--config.") else arg for arg in sys.argv]  # a one-value grid
    cli.run(main)
