"""`python -m experiments.lease --out OUT [--dry_run] [--rows a,b,...] [--row_timeout S]`: what a GPU lease measures.

A lease is short (15 device-minutes, all tries together) and may be cut at any moment, so the rows
run most valuable first, each in a process of its own under a time limit, and each is appended to
OUT/rows.jsonl, one JSON object, the moment it ends: a cut-short lease still brings back every row
it finished. Every row's output goes to OUT/lease.log. In order:

1. `baseline`, `aed_mse_pos_sub`: the headline rows, `aed_jax.bench` of configs/baseline.py and
   configs/mse_pos_sub.py at the seed's effective batch (50 x 16 sequences of 200 tokens), 5 timed
   steps, no eval or generation timing: one compilation of the step (the one that sized its
   micro-batch), which is what let the first lease's rows overrun.
2. `ensemble_k16`: a placeholder, skipped with its reason: 16 task models as one program (`aed_jax.bench
   --ensemble`, timed on CPU in BENCHMARKS.md) is not yet one of the lease's rows. Its row says so.
3. `seed_mini_mse_pos_sub`, `seed_mini_baseline`: the trainer end to end (`aed_jax.main`: start,
   compile, steps, an estimate, a save) on the seed's models with `reproduce --scale mini`'s schedule
   (experiments/suites.py), its train_steps cut to MINI_STEPS and one estimate at the end, so that
   the pair fits a lease. Each row: the wall time, the steps' median tokens/s (the trainer's own
   timing) and the losses of that estimate. A mini seed run in full (900 steps) is
   `reproduce --suite seed --scale mini`, for a longer lease.

Each row is meant to take under a minute on an H100 (ROW_TIMEOUT_S is its limit). The other
fast-path rows of BENCHMARKS.md stay in experiments/bench_gpu.sh, for a lease with time left.

`--dry_run` runs the same rows, in the same way, on CPU at configs/tiny.py's size (tiny.py and
tiny_baseline.py, 1-2 steps): the check, in tests/test_bench.py, that the script works before a
lease is spent on it. The script loads no jax itself; its children do.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal before any row starts: one line; main installs the rows' own handler
    from aed_jax import stopping
    stopping.exit_on_signals("error: lease was stopped by {signal}; no row had started: nothing was written")

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib
from experiments import suites

MINI_STEPS = 50  # train steps of a mini seed row: 8M tokens, ~7 s at the 1.2M tokens/s target on an H200
MINI_EST_STEPS = 10  # batches of each split in its one estimate
ROW_TIMEOUT_S = 110  # a row's limit on a GPU: the four rows that run fit one 600 s device command
DRY_RUN_TIMEOUT_S = 300  # on a shared 2-core CPU, start-up and compilation alone can take a minute
SKIPPED_ENSEMBLE = ("skipped: bench --ensemble K (16 task models in one compiled program) is not yet a lease row; "
                    "python -m aed_jax.bench --ensemble 1,2,4,8,16 measures it")

# name -> (kind, the GPU row's config, the dry run's config)
ROWS = {
    "baseline": ("bench", "configs/baseline.py", "configs/tiny_baseline.py"),
    "aed_mse_pos_sub": ("bench", "configs/mse_pos_sub.py", "configs/tiny.py"),
    "ensemble_k16": ("skip", None, None),
    "seed_mini_mse_pos_sub": ("train", "configs/mse_pos_sub.py", "configs/tiny.py"),
    "seed_mini_baseline": ("train", "configs/baseline.py", "configs/tiny_baseline.py"),
}
BENCH_ARGS = ("--steps=5", "--generate_tokens=0", "--noeval", "--json")
DRY_RUN_BENCH_ARGS = ("--steps=1", "--generate_tokens=0", "--noeval", "--json")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("out", None, "Folder of rows.jsonl (one JSON object per row, appended as each ends), "
                        "lease.log (every row's output) and the mini rows' workdirs.", flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "The same rows on CPU at configs/tiny.py's size, 1-2 steps each: a check "
                      "of the script before a lease is spent on it.", flag_values=fv)
    flags.DEFINE_list("rows", None, f"Run only these rows, in the script's order (of {', '.join(ROWS)}).",
                      flag_values=fv)
    flags.DEFINE_integer("row_timeout", None, f"Seconds a row may take before it is killed and reported as timed out "
                         f"(default {ROW_TIMEOUT_S}, {DRY_RUN_TIMEOUT_S} with --dry_run).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Token files for the mini rows (--config.data_dir); default: the configs' "
                        "own (data/wiki_vital, the built-in corpus, prepared on first use).", flag_values=fv)


def mini_overrides(config_file: str, steps: int, est_steps: int) -> list[str]:
    """The trainer's --config flags of a mini seed row: `reproduce --scale mini`'s schedule for
    `config_file` (warmup and decay divided as suites.apply_scale divides them), cut to `steps` steps
    with one estimate of `est_steps` batches at the end and every step's metrics logged."""
    c = suites.apply_scale(config_lib.load(os.path.join(suites.ROOT, config_file)), "mini")
    return [f"--config.warmup_iters={c.warmup_iters}", f"--config.lr_decay_iters={c.lr_decay_iters}",
            f"--config.train_steps={steps}", f"--config.est_interval={steps}", f"--config.est_steps={est_steps}",
            "--config.log_interval=1"]


def plan(name: str, out: str, dry_run: bool, data_dir: str | None):
    """Row `name`'s command line (after the interpreter) and the function that reads its figures from
    its stdout; None for a row that is skipped."""
    kind, gpu_config, cpu_config = ROWS[name]
    config = cpu_config if dry_run else gpu_config
    if kind == "bench":
        return (["-m", "aed_jax.bench", f"--config={config}", *(DRY_RUN_BENCH_ARGS if dry_run else BENCH_ARGS)],
                lambda stdout: json.loads(stdout.strip().splitlines()[-1]))
    if kind == "train":
        steps, est_steps = (2, 1) if dry_run else (MINI_STEPS, MINI_EST_STEPS)
        workdir = os.path.join(out, "seed_mini", name)
        return (["-m", "aed_jax.main", f"--config={config}", *mini_overrides(config, steps, est_steps),
                 *([f"--config.data_dir={data_dir}"] if data_dir else []), f"--workdir={workdir}", "--fresh",
                 "--sample_tokens=0"],
                lambda _: train_results(workdir))
    return None


def train_results(workdir: str) -> dict:
    """A mini row's figures from its workdir's metrics.jsonl: the median tokens/s of its steps (the first
    left out: it waited for the compilation) and its last estimate's losses."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    steps = [line["tokens_per_s"] for line in lines if "tokens_per_s" in line]
    estimate = next((line for line in reversed(lines) if "val_loss" in line), {})
    return {"train_steps": max(line["step"] for line in lines), "steps_tokens_per_s": statistics.median(
        steps[1:] or steps), **{k: estimate[k] for k in ("train_loss", "val_loss") if k in estimate}}


def run_row(name: str, planned, timeout_s: int, log, running: dict) -> dict:
    """Row `name` (`plan`'s), run and summarised as the JSON object rows.jsonl gets: its command, wall
    time and status ("ok", "failed", "timed out", "skipped") and, when ok, its figures."""
    if planned is None:
        return {"row": name, "status": "skipped", "note": SKIPPED_ENSEMBLE}
    argv, read = planned
    row = {"row": name, "command": "python " + " ".join(argv)}
    log.write(f"== {name}: {row['command']}\n")
    log.flush()
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=log, text=True, cwd=suites.ROOT)
    running["child"], stdout = child, ""
    try:
        stdout, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        stdout, _ = child.communicate()
        return {**row, "status": "timed out", "wall_s": time.perf_counter() - start,
                "error": f"killed after {timeout_s} s"}
    finally:
        running.pop("child", None)
        log.write(stdout)
        log.flush()
    row["wall_s"] = time.perf_counter() - start
    if child.returncode != 0:
        return {**row, "status": "failed", "error": f"exit {child.returncode}: see lease.log"}
    try:
        return {**row, "status": "ok", **read(stdout)}
    except (ValueError, IndexError, KeyError, OSError) as e:
        return {**row, "status": "failed", "error": f"its output could not be read: {e}"}


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.out:
        cli.fail("--out is required: the folder of rows.jsonl")
    unknown = [name for name in fv.rows or [] if name not in ROWS]
    if unknown:
        cli.fail(f"--rows: unknown row {', '.join(map(repr, unknown))}; choose from {', '.join(ROWS)}")
    cli.check_writable_folder(fv.out)
    out = os.path.abspath(fv.out)  # the rows run from the repository's root
    os.makedirs(out, exist_ok=True)
    rows_path = os.path.join(out, "rows.jsonl")
    timeout_s = fv.row_timeout or (DRY_RUN_TIMEOUT_S if fv.dry_run else ROW_TIMEOUT_S)
    running = {}

    def stop(signum, _):  # the rows already written stay; the one running is killed, not left behind
        if "child" in running:
            running["child"].kill()
        os.write(2, f"error: lease was stopped by {signal.Signals(signum).name}; the rows that finished are in "
                    f"{rows_path}\n".encode())
        os._exit(1)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    data_dir = fv.data_dir and os.path.abspath(fv.data_dir)
    with open(os.path.join(out, "lease.log"), "a", encoding="utf-8") as log:
        for name in ROWS:
            if fv.rows and name not in fv.rows:
                continue
            row = run_row(name, plan(name, out, fv.dry_run, data_dir), timeout_s, log, running)
            with open(rows_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            shown = {k: row[k] for k in ("wall_s", "tokens_per_s", "mfu", "steps_tokens_per_s", "val_loss", "error",
                                         "note") if k in row}
            print(f"{name}: {row['status']} {json.dumps(shown)}", flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
