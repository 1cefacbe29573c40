"""What `python -m experiments.reproduce` runs: a suite's runs trained (or resumed, or skipped when
finished), seed by seed, and their results tabulated: results.md, results.csv, seeds.csv,
differences.csv (each comparison's paired differences over the seeds with their 95% t-intervals and
p-values, Holm-adjusted over every difference of the results.md, `aed_jax/stats.py`) and the figures
(`experiments/figures.py`). The command's docstring says what a user gets; the suites themselves are
`experiments/suites.py`'s.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import statistics
import subprocess
import time

import jax
import ml_collections

from aed_jax import checkpoint
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import errors
from aed_jax import progress
from aed_jax import rundir
from aed_jax import stats
from aed_jax import train
from experiments import figures
from experiments import plan
from experiments import suites
from experiments.suites import MINI_EST_FACTOR, MINI_FACTOR, Run, Suite

EMBEDDING_TAIL = 5  # logged training values averaged for the embedding-loss column
# The values a results row averages over seeds (its sd beside each), in the order of results.csv.
METRICS = ("train_loss", "val_loss", "train_accuracy_loss", "val_accuracy_loss", "embedding_loss",
           "train_token_accuracy", "val_token_accuracy", "train_sequence_accuracy", "val_sequence_accuracy")
# A run's seconds per phase (progress.PHASES) and in all, as its metrics.jsonl's phase lines name them.
PHASE_COLUMNS = (*(f"time_{key}_s" for key in progress.PHASES), "time_total_s")


def recipe(c: ml_collections.ConfigDict) -> str:
    return (f"{c.train_steps:,} steps of {c.batch_size} x {c.gradient_accumulation_steps} sequences of "
            f"{c.model_config.context_size} tokens, lr {c.lr:g} with {c.warmup_iters:,} warmup steps and cosine decay "
            f"to step {c.lr_decay_iters:,}, an estimate every {c.est_interval:,} steps over {c.est_steps} batches "
            "of each split")


def latest_step(workdir: str) -> int | None:
    """The step of the latest checkpoint in `workdir`, or None."""
    try:
        mngr, step = rundir.resolve_step(workdir)
    except checkpoint.CheckpointError:
        return None
    mngr.close()
    return step


def train_run(name: str, c: ml_collections.ConfigDict, workdir: str, scale: str | None,
              started: float | None = None) -> str:
    """Trains or resumes run `name` in `workdir`: "finished", "skipped", "interrupted" or "failed: <why>".
    What `experiments.jobs` runs in each child process; the suite checked the workdir's scale before.

    `<workdir>/run.json` records the scale, the latest step and the wall time of every call so far;
    `started` (time.time() at the process's start) makes the run log its start-up time too.
    """
    info_path = os.path.join(workdir, "run.json")
    info = plan.read_json(info_path)
    if is_finished(c, workdir, latest_step(workdir)):
        return "skipped"
    os.makedirs(workdir, exist_ok=True)
    start, error = time.perf_counter(), None
    try:
        train.train_and_evaluate(c, workdir, started=started)
    except train.TrainError as e:
        error = str(e)
    finally:
        step = latest_step(workdir)
        finished, early = is_finished(c, workdir, step), train.stopped_early(c, workdir, step)
        rundir.write_atomic(info_path, json.dumps({
            "run": name, "scale": scale, "seed": c.random_seed, "train_steps": c.train_steps, "step": step,
            "finished": finished, "stopped_early": early, "stop_accuracy": c.stop_accuracy, "error": error,
            "wall_time_s": info.get("wall_time_s", 0.0) + time.perf_counter() - start,
            "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "updated": datetime.datetime.now().isoformat(timespec="seconds")}, indent=2, sort_keys=True))
    if error:
        return f"failed: {error}"
    return "finished" if finished else "interrupted"


def is_finished(c: ml_collections.ConfigDict, workdir: str, step: int | None) -> bool:
    """Whether the run of `c` whose latest checkpoint is `step` is done: at train_steps, or stopped early there
    by stop_accuracy (its estimate at that step reached it)."""
    return step is not None and (step >= c.train_steps or train.stopped_early(c, workdir, step))


def phase_times(workdir: str) -> dict:
    """The run's seconds per phase (PHASE_COLUMNS), summed over the phase lines of its metrics.jsonl: a
    resumed run writes one per session. Every value is None where there is no line (a run from before
    them, one never trained, one whose sessions all failed): unknown, never zero. A phase no line has
    (start-up, where it was not measured) is None too; one some lines lack counts 0 in those. A session
    killed outright wrote no line, so its time is missing from the sum."""
    times = dict.fromkeys(PHASE_COLUMNS)
    path = os.path.join(workdir, rundir.METRICS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if "time_total_s" in row:
                    for key in PHASE_COLUMNS:
                        if key in row:
                            times[key] = (times[key] or 0.0) + row[key]
    return times


def collect(run: Run, c: ml_collections.ConfigDict, workdir: str, params: int) -> dict:
    """One seed's row: our last estimate, embedding loss, params, wall time and its phases, tokens/s, the seed's
    numbers, and a task run's curve of val token accuracy with the first step at each of stats.STEPS_TO's levels."""
    train_rows, estimates = rundir.read_metrics(workdir)
    curve = [(e["step"], e["val_token_accuracy"]) for e in estimates if "val_token_accuracy" in e]
    info, last = plan.read_json(os.path.join(workdir, "run.json")), (estimates[-1] if estimates else {})
    step = latest_step(workdir)
    has_embedding_loss = c.model_type == "aed" and c.model_config.embedding_loss_type != "NONE"
    tail = [r["embedding_loss"] for r in train_rows[-EMBEDDING_TAIL:] if "embedding_loss" in r]
    speeds = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
    if info.get("error"):
        status = "failed"
    elif step is None:
        status = "not run"
    else:
        status = "finished" if is_finished(c, workdir, step) else "partial"
    return {
        "run": run.name, "label": run.label, "model": c.model_type, "seed": c.random_seed, "status": status,
        "step": step or 0, "train_steps": c.train_steps, "params": params, "shape": shape(c),
        **{key: last.get(key) for key in METRICS if key != "embedding_loss"},
        "embedding_loss": sum(tail) / len(tail) if has_embedding_loss and tail else None,
        "estimate_step": last.get("step"),
        "wall_time_s": info.get("wall_time_s"), "tokens_per_s": statistics.median(speeds) if speeds else None,
        **phase_times(workdir), "workdir": workdir, "curve": curve,
        **{key: stats.first_step_at(curve, level) for key, level in stats.STEPS_TO.items()},
    }


def shape(c: ml_collections.ConfigDict) -> str:
    """Blocks x width: "2+2 x 64" for an AED (encoder + decoder blocks), "5 x 56" for a baseline."""
    m = c.model_config
    if c.model_type == "aed":
        return f"{m.n_layer_encoder or m.n_layer}+{m.n_layer_decoder or m.n_layer} x {m.n_embed}"
    return f"{m.n_layer} x {m.n_embed}"


def aggregate(run: Run, seed_rows: list[dict]) -> dict:
    """A run's results row from its seeds' rows: each metric's mean and sd over the seeds that have it (n: the
    seeds with an estimate), the fewest steps, the mean wall time and speed, each phase's mean seconds over
    the seeds with phase lines (time_n of them) and the share of their time in train steps, and the seed's
    numbers."""
    first, statuses = seed_rows[0], [r["status"] for r in seed_rows]
    estimated = [r for r in seed_rows if r["estimate_step"] is not None]
    if len(set(statuses)) == 1:
        status = statuses[0]
    else:
        status = f"{statuses.count('finished')}/{len(statuses)} finished" + ("; failed" if "failed" in statuses else "")
    row = {key: first[key] for key in ("run", "label", "model", "train_steps", "params", "shape")}
    row.update(status=status, step=min(r["step"] for r in seed_rows), n=len(estimated),
               seeds=" ".join(str(r["seed"]) for r in estimated),
               estimate_step=min((r["estimate_step"] for r in estimated), default=None))
    for key in METRICS:
        summary = stats.summary([r[key] for r in seed_rows if r[key] is not None])
        row[key], row[f"{key}_sd"] = (summary.mean, summary.sd) if summary else (None, None)
    for key in ("wall_time_s", "tokens_per_s"):
        summary = stats.summary([r[key] for r in seed_rows if r[key] is not None])
        row[key] = summary.mean if summary else None
    timed = [r for r in seed_rows if r["time_total_s"] is not None]
    for key in PHASE_COLUMNS:
        known = [r[key] for r in timed if r[key] is not None]
        row[key] = sum(known) / len(known) if known else None
    row["time_n"] = len(timed)
    total = sum(r["time_total_s"] for r in timed)
    row["time_steps_share"] = sum(r["time_steps_s"] for r in timed) / total if total else None
    row.update({f"seed_{key}": getattr(run.seed, key)
                for key in ("train_loss", "val_loss", "embedding_loss", "params")})
    row["crossings"] = {key: stats.crossing([r["curve"] for r in seed_rows], level)
                        for key, level in stats.STEPS_TO.items()}
    for key, crossing in row["crossings"].items():
        row.update(crossing.columns(key))
    return row


def differences(suite: Suite, seed_rows: dict[str, list[dict]]) -> list[dict]:
    """Each comparison's paired differences a - b of each of the suite's metrics, over the seeds at which both
    runs have an estimate of the same step, with their t-interval, t-test p-value, Holm-adjusted p-value and
    the sentence that says them.

    The Holm family is every paired difference of the one results.md (every comparison, every metric) that
    has a p-value (two seeds or more): where nothing differs, a table of 72 differences at 95% each
    would show about four intervals excluding zero by luck alone."""
    out, runs, intervals = [], {run.name: run for run in suite.runs}, []
    for comparison in suite.comparisons:
        for a, b in comparison.differences():
            where, names = "", (a, b)
            if runs[a].point and runs[b].point:  # task runs: "<difficulty>, width 64: mse_pos_sub - baseline: ..."
                where, names = f"{runs[a].point.panel}, width {runs[a].point.width}: ", (runs[a].point.model,
                                                                                        runs[b].point.model)
            for metric in suite.metrics:
                values = [{r["seed"]: (r["estimate_step"], r[metric]) for r in seed_rows[name] if r[metric] is not None}
                          for name in (a, b)]
                common = [seed for seed in values[0].keys() & values[1].keys()
                          if values[0][seed][0] == values[1][seed][0]]
                interval = stats.t_interval(stats.paired({s: values[0][s][1] for s in common},
                                                         {s: values[1][s][1] for s in common}))
                intervals.append((where, names, metric, interval))
                out.append({
                    "comparison": comparison.name, "a": a, "b": b, "metric": metric,
                    "n": interval.n if interval else 0, "seeds": " ".join(map(str, sorted(common))),
                    "mean": interval and interval.mean, "sd": interval and interval.sd,
                    "ci_low": interval and interval.low, "ci_high": interval and interval.high,
                    "excludes_zero": interval and interval.excludes_zero(),
                    "p": interval and interval.p, "p_holm": None})
    family = [row for row in out if row["p"] is not None]
    for row, adjusted in zip(family, stats.holm([row["p"] for row in family])):
        row["p_holm"] = adjusted
    for row, (where, names, metric, interval) in zip(out, intervals):
        row["sentence"] = where + stats.sentence(*names, interval, suites.METRIC_NAMES[metric],
                                                 p_holm=row["p_holm"], family=len(family))
    return out


CSV_COLUMNS = ("run", "label", "model", "status", "step", "train_steps", "params", "shape", "n", "seeds",
               *(f"{key}{sd}" for key in METRICS for sd in ("", "_sd")), "estimate_step", "wall_time_s",
               "tokens_per_s", *PHASE_COLUMNS, "time_n", "time_steps_share", "seed_train_loss", "seed_val_loss",
               "seed_embedding_loss", "seed_params", *stats.CROSSING_COLUMNS)
SEED_CSV_COLUMNS = ("run", "seed", "status", "step", "train_steps", "params", "shape", *METRICS, "estimate_step",
                    "wall_time_s", "tokens_per_s", *PHASE_COLUMNS, "workdir", *stats.STEPS_TO)
DIFFERENCE_CSV_COLUMNS = ("comparison", "a", "b", "metric", "n", "seeds", "mean", "sd", "ci_low", "ci_high",
                          "excludes_zero", "p", "p_holm", "sentence")


def _fmt(value, kind: str = "loss", sd: float | None = None) -> str:
    """A table cell; with `sd`, "mean ± sd"."""
    if value is None:
        return "–"
    if sd is not None:
        return f"{_fmt(value, kind)} ± {_fmt(sd, kind)}"
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


def markdown(suite_name: str, suite: Suite, scale: str | None, rows: list[dict], configs: dict, figures: dict,
             diffs: list[dict], seeds: list[int] | None, seed_rows: list[dict]) -> str:
    first = configs[rows[0]["run"]]
    tasks = suite.metrics == suites.TASK_METRICS
    scale_text = {"full": "the seed's recipe",
                  "mini": f"1/{MINI_FACTOR} of the seed's steps (est_steps 1/{MINI_EST_FACTOR}), so compare the "
                          "ordering of the runs with the seed's, not the values, which are for 9k steps"
                  }.get(scale, "") if not tasks else ""
    lines = [f"# Reproduction: suite `{suite_name}`" + (f", scale `{scale}`" if scale else ""), ""]
    if scale_text:
        lines += [f"Scale `{scale}`: {scale_text}.", ""]
    lines += [("Recipe (the sequence length is each difficulty's)" if tasks else "Recipe") + f": {recipe(first)}.", ""]
    if suite.note:
        lines += [suite.note, ""]
    if seeds is not None:
        lines += [f"Seeds: {', '.join(map(str, seeds))} (random_seed: initialisation, data order, dropout). Each "
                  "value is the mean ± standard deviation over a run's seeds with an estimate (n and the values of "
                  "each seed: results.csv, seeds.csv); wall time and tokens/s are means per seed. A difference "
                  "a - b is paired by seed, with its "
                  f"{stats.CONFIDENCE:.0%} Student t-interval over the seeds and the paired t-test's p-value, "
                  "Holm-adjusted over every paired difference on this page (differences.csv: p, p_holm): a "
                  "difference is shown when it excludes zero after Holm correction, suggestive when only the "
                  "unadjusted interval excludes zero; figures draw the "
                  f"mean, in a band from the lowest to the highest seed.", ""]
    if tasks:
        lines += ["Token and sequence accuracy and val loss (cross-entropy over the answer positions): the last "
                  "estimate, over `est_steps` fresh batches. " + stats.STEPS_TO_TEXT + " Wall time: training, "
                  "estimates and compilation together.", "", f"Data: {_data_text(first)}. Device: {jax.device_count()} x "
                  f"{jax.devices()[0].device_kind}. Commit: {_commit()}. Written "
                  f"{datetime.datetime.now().isoformat(timespec='seconds')}.", ""]
        return "\n".join(lines + _task_sections(suite, rows, figures, diffs) + _time_lines(seed_rows)) + "\n"
    lines += ["Train and val loss: eval-mode cross-entropy at the last estimate (`est_steps` random batches of each "
              "split), as the seed reports them. Seed: the seed's published numbers (single A100, Wikipedia, 9k "
              f"steps). Embedding loss: the mean of the last {EMBEDDING_TAIL} logged training values. Wall time: "
              "training, estimates and compilation together; tokens/s: the median of the logged training steps.", "",
              f"Data: {_data_text(first)}. Device: {jax.device_count()} x "
              f"{jax.devices()[0].device_kind}. Commit: {_commit()}. Written "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}.", "", "## All runs", "",
              "| run | status | steps | params | train loss | seed | val loss | seed | embedding loss | seed | "
              "wall time | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} (`{r['run']}`) | {r['status']} | {r['step']:,}/{r['train_steps']:,} | "
            f"{_fmt(r['params'], 'int')} | {_fmt(r['train_loss'], sd=r['train_loss_sd'])} | "
            f"{_fmt(r['seed_train_loss'])} | {_fmt(r['val_loss'], sd=r['val_loss_sd'])} | "
            f"{_fmt(r['seed_val_loss'])} | {_fmt(r['embedding_loss'], 'small', r['embedding_loss_sd'])} | "
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
                f"| **{r['label']}** (`{r['run']}`) | "
                f"{_bold_if(_fmt(r['train_loss'], sd=r['train_loss_sd']), r['train_loss'], best_train)} | "
                f"{_fmt(r['seed_train_loss'])} | "
                f"{_bold_if(_fmt(r['val_loss'], sd=r['val_loss_sd']), r['val_loss'], best_val)} | "
                f"{_fmt(r['seed_val_loss'])} | {_fmt(r[last[1]], last[2], r.get(last[1] + '_sd'))} | "
                f"{_fmt(r['seed_' + last[1]], last[2])} |")
        lines += _difference_lines(comparison.name, diffs)
    return "\n".join(lines + [""] + _time_lines(seed_rows)) + "\n"


def _time_lines(seed_rows: list[dict]) -> list[str]:
    """"Where the wall time went": each phase's seconds summed over the suite's runs (every seed) that have
    phase lines, and its share of their total; a run without any (trained before them) is unknown, said so
    and left out, never counted as zero; a run never trained has no time to count."""
    timed = [r for r in seed_rows if r["time_total_s"] is not None]
    unknown = sum(r["time_total_s"] is None and r["status"] != "not run" for r in seed_rows)
    lines = ["## Where the wall time went", ""]
    unknown_text = (f" {unknown} of the {len(timed) + unknown} runs have no phase line (trained before runs wrote "
                    "one, or failed): their time is unknown and not counted." if unknown else "")
    total = sum(r["time_total_s"] for r in timed)
    if not total:
        return lines + [f"No run has its phase times.{unknown_text}", ""]
    lines += [f"Each phase's seconds summed over the {len(timed)} runs (a run: one seed; a resumed run's sessions "
              f"summed) from their metrics.jsonl's phase lines (seeds.csv: each run's).{unknown_text} "
              f"{sum(r['time_steps_s'] for r in timed) / total:.1%} of their wall time went to train steps.", "",
              "| phase | seconds | share |", "|---|---|---|"]
    for key, words in progress.PHASES.items():
        known = [r[f"time_{key}_s"] for r in timed if r[f"time_{key}_s"] is not None]
        if known:  # start-up is absent where it was not measured
            lines.append(f"| {words} | {sum(known):,.1f} | {sum(known) / total:.1%} |")
    return lines + [f"| total | {total:,.1f} | 100.0% |", ""]


def _difference_lines(comparison: str, diffs: list[dict]) -> list[str]:
    sentences = [d["sentence"] for d in diffs if d["comparison"] == comparison]
    return ["", "Paired differences:", "", *(f"- {s}" for s in sentences)] if sentences else []


def _task_sections(suite: Suite, rows: list[dict], figures: dict, diffs: list[dict]) -> list[str]:
    """Per task: its figure, a table of every run (difficulty, width, model) and its paired differences."""
    by_name, runs, lines = {r["run"]: r for r in rows}, {run.name: run for run in suite.runs}, []
    for comparison in suite.comparisons:
        lines += [f"## {comparison.title}", ""]
        if comparison.name in figures:
            lines += [f"![{comparison.title}]({os.path.basename(figures[comparison.name])})", ""]
        lines += ["| difficulty | width | model | run | status | steps | shape | params | token accuracy | "
                  "sequence accuracy | val loss | " + " | ".join(f"steps to {k[9:]}%" for k in stats.STEPS_TO) +
                  " | wall time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in comparison.runs:
            r, point = by_name[name], runs[name].point
            lines.append(
                f"| {point.panel} | {point.width} | {point.line} | `{name}` | {r['status']} | "
                f"{r['step']:,}/{r['train_steps']:,} | {r['shape']} | {_fmt(r['params'], 'int')} | "
                f"{_fmt(r['val_token_accuracy'], sd=r['val_token_accuracy_sd'])} | "
                f"{_fmt(r['val_sequence_accuracy'], sd=r['val_sequence_accuracy_sd'])} | "
                f"{_fmt(r['val_loss'], sd=r['val_loss_sd'])} | "
                + "".join(f"{r['crossings'][key].text()} | " for key in stats.STEPS_TO)
                + f"{_fmt(r['wall_time_s'], 'time')} |")
        lines += _difference_lines(comparison.name, diffs) + [""]
    return lines


def _data_text(c: ml_collections.ConfigDict) -> str:
    """The corpus, and where its meta.json says it came from (prepare's source line), so a table names its data."""
    if c.dataset.startswith("task:"):
        return "synthetic sequences drawn on the fly by aed_jax/tasks.py (no files); each run's task and setting: " \
               "its row"
    folder = data.data_folder(c)
    text = f"`{folder}`"
    if c.dataset != config_lib.DEFAULT_DATASET:
        text += f" (dataset `{c.dataset}`)"
    elif not c.data_dir:
        text += " (the built-in corpus)"
    meta = plan.read_json(os.path.join(folder, "meta.json"))
    if meta.get("source") and meta.get("train", {}).get("tokens"):
        text += f": {meta['source']}; {meta['train']['tokens']:,} train tokens"
    return text


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=suites.ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _write_csv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    with rundir.atomic_file(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in columns} for r in rows)


def write_report(out: str, suite_name: str, suite: Suite, scale: str | None, configs: dict,
                 seeds: list[int] | None = None) -> list[str]:
    """Writes results.md, results.csv, seeds.csv, differences.csv and the figures under `out`; returns their
    paths."""
    seed_rows = {}
    for run in suite.runs:
        params = suites.count_params(configs[run.name])
        seed_rows[run.name] = [collect(run, suites.seed_config(configs[run.name], seed), workdir, params)
                               for seed, workdir in zip(seeds or [None], suites.workdirs(out, run.name, seeds))]
    rows = [aggregate(run, seed_rows[run.name]) for run in suite.runs]
    diffs = differences(suite, seed_rows)
    points = None
    if suite_name == "seed" and scale == "full":
        points = {r.name: {"step": suites.SEED_STEPS, "train_loss": r.seed.train_loss, "val_loss": r.seed.val_loss,
                           "embedding_loss": r.seed.embedding_loss} for r in suite.runs}
    paths = figures.plot_comparisons(out, suite, {run.name: suites.workdirs(out, run.name, seeds) for run in suite.runs},
                                     f"scale {scale}" if scale else suite_name, points)
    named = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    rundir.write_atomic(os.path.join(out, "results.md"), markdown(suite_name, suite, scale, rows, configs, named,
                                                                   diffs, seeds, sum(seed_rows.values(), [])))
    tables = (("results.csv", CSV_COLUMNS, rows), ("seeds.csv", SEED_CSV_COLUMNS, sum(seed_rows.values(), [])),
              ("differences.csv", DIFFERENCE_CSV_COLUMNS, diffs))
    for name, columns, table in tables:
        _write_csv(os.path.join(out, name), columns, table)
    return [os.path.join(out, "results.md"), *(os.path.join(out, name) for name, _, _ in tables), *paths]
