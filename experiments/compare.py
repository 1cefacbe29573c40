"""`python -m experiments.compare --workdir A --workdir B [...] [--out DIR] [--smooth N] [--best KEY]
[--against ROW]`: any runs side by side.

Each --workdir is a run folder (main's, or one of reproduce's `<out>/<run>[/<point>]/seed<k>`), or a
folder of runs, which stands for every run below it: a run's seeds, a sweep's or a suite's `--out`. Runs whose config.json differ
in nothing but random_seed are one configuration: drawn as the mean of its seeds in a band from the
lowest to the highest, tabled as mean ± sd over them. Writes DIR/compare.md, DIR/compare.csv and
DIR/compare.png: the training cross-entropy logged per step (a moving mean), the val loss at each estimate, and
for task runs the val token accuracy with the chance line (a guess that knows the task's format:
aed_jax/tasks.py, chance_token_accuracy). A task run's row gives the steps its seeds took to 50%, 90% and 99%
val token accuracy (`stats.crossing`); every row, the parameters, the training FLOPs per token
(`model.flops_per_token`) and the FLOPs of the steps trained. With `--best KEY` (a sweep's key, `lr`) each
configuration is one row, at its best value of the key on validation (experiments/sweep.py), with every
value's score and a flag where the best is at the edge of the values tried. With `--against ROW` every
other row's paired difference from that row, seed by seed, with its interval, p and Holm adjustment
(compare_differences.csv, and a section of compare.md). Nothing is trained or
evaluated: it reads what the runs logged.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: compare was stopped by {signal}; each file is written whole or not at all: "
                             "run it again")

import csv
import json
import os
import re

from absl import flags

from aed_jax import cli

COLUMNS = ("label", "n", "seeds", "model", "dataset", "step", "val_loss", "val_loss_sd", "val_token_accuracy",
           "val_token_accuracy_sd", "val_sequence_accuracy", "val_sequence_accuracy_sd", "chance", "params",
           "flops_per_token", "train_flops")  # then stats.CROSSING_COLUMNS, --best's BEST_COLUMNS, "workdirs"
BEST_COLUMNS = ("best_key", "best_value", "edge", "scores")
METRICS = ("val_loss", "val_token_accuracy", "val_sequence_accuracy")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_multi_string("workdir", None, "A run folder, or a folder of runs (every run below it: a run's "
                              "seeds, a sweep's or a suite's --out); repeat it (runs that differ only in their seed "
                              "are grouped).", flag_values=fv)
    flags.DEFINE_string("out", os.path.join("runs", "compare"), "Folder for compare.md, compare.csv and compare.png.",
                        flag_values=fv)
    flags.DEFINE_integer("smooth", 10, "The training-loss curve's moving mean, in logged steps (1: raw).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("best", None, "A swept config key (lr, or a dotted one): each configuration (runs that "
                        "differ only in it and their seed) at its best value on validation, a task's by val token "
                        "accuracy, a corpus's by val loss; diverged values left out, the edge of the grid flagged.",
                        flag_values=fv)
    flags.DEFINE_string("against", None, "A row's label, or a part of it that names one row: every other row's "
                        "paired difference from it, seed by seed (runs matched by random_seed), on a task's last "
                        "val token accuracy and steps to 50/90/99% or a corpus's last val loss, with its 95% "
                        "t-interval, p and the Holm "
                        "adjustment over the table's differences (compare_differences.csv, and in compare.md).",
                        flag_values=fv)


def runs_of(workdir: str) -> list[str]:
    """The run folders `workdir` stands for: itself, or every run below it (its seed<k>/ runs, a suite's or
    a sweep's `<out>` whole), in path order; one line when it holds none."""
    if os.path.isfile(os.path.join(workdir, "config.json")):
        return [workdir]
    runs = []
    for folder, subfolders, files in os.walk(workdir):
        if "config.json" in files:
            runs.append(folder)
            subfolders.clear()  # a run's own folders (checkpoints/, best/) hold no other run
        else:
            subfolders.sort()
    if not runs:
        cli.fail(f"--workdir {workdir}: no run here or below (no config.json): a folder that "
                 "python -m aed_jax.main or experiments.reproduce trained")
    return runs


def read_config(workdir: str) -> dict:
    """The run's config.json on its model type's defaults (a key added since the run was recorded at its
    default, so older and newer runs of one configuration group together)."""
    from aed_jax import config as config_lib
    try:
        return config_lib.read(os.path.join(workdir, "config.json")).to_dict()
    except config_lib.ConfigError as e:
        cli.fail(f"--workdir {workdir}: its config.json is unusable ({e}); the run's record is damaged")


def group(workdirs: list[str]) -> dict[str, list[str]]:
    """{label: run folders}: runs whose configs differ only in random_seed together (a second run of a seed
    already in a group starts another), in the order given; each labelled by the shortest ends of their
    folders' common path, less its seed<k>, that tell the groups apart."""
    groups: list[tuple[str, list[str], set]] = []
    for workdir in workdirs:
        config = read_config(workdir)
        key = json.dumps({k: v for k, v in config.items() if k not in ("random_seed", "workdir")}, sort_keys=True)
        same = next((g for g in groups if g[0] == key and config.get("random_seed") not in g[2]), None)
        if same is None:
            groups.append(same := (key, [], set()))
        same[1].append(workdir)
        same[2].add(config.get("random_seed"))
    members = [m for _, m, _ in groups]
    return dict(zip(labels(members), members))


def labels(sets: list[list[str]]) -> list[str]:
    """A label for each set of run folders: the shortest ends of their common paths, less a seed<k>, that tell
    the sets apart."""
    paths = []
    for members in sets:
        path = os.path.normpath(os.path.commonpath([os.path.abspath(w) for w in members]))
        if re.fullmatch(r"seed\d+", os.path.basename(path)):
            path = os.path.dirname(path)
        paths.append(path.split(os.sep))
    for n in range(1, max(len(p) for p in paths) + 1):
        out = ["/".join(p[-n:]) for p in paths]
        if len(set(out)) == len(out):
            return out
    return [f"{'/'.join(p)} ({i + 1})" for i, p in enumerate(paths)]  # the same folder twice


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("give the runs to compare: --workdir A --workdir B ...")
    workdirs = [run for workdir in fv.workdir for run in runs_of(workdir)]
    groups = group(workdirs)
    configs = {label: read_config(members[0]) for label, members in groups.items()}
    key = fv.best and fv.best.removeprefix("config.")
    points = best_points(groups, configs, key) if key else None  # its one-line errors before any work
    cli.check_writable_folder(fv.out)  # before any work
    from aed_jax import config as config_lib
    from aed_jax import rundir
    from aed_jax import stats
    from experiments import figures
    rows = [summarize(label, members, configs[label]) for label, members in groups.items()]
    if points is not None:
        rows = best_rows(rows, points, groups, key)
        for point_row in rows:
            print(f"{point_row['label']}: {key} {_value(point_row['best_value'])}"
                  + (f" (edge of the grid: {point_row['edge']})" if point_row["edge"] else "")
                  + f"; scores {point_row['scores']}")
    differences = paired(rows, fv.against) if fv.against else None
    shared = {r["chance"] for r in rows if r["chance"] is not None}
    chance = shared.pop() if len(shared) == 1 else None  # one line, where every task run has the same chance
    os.makedirs(fv.out, exist_ok=True)
    shown = {r["label"]: r["members"] for r in rows if r["members"]}
    png = figures.plot_compare(shown, os.path.join(fv.out, "compare.png"), chance, fv.smooth)
    columns = COLUMNS + stats.CROSSING_COLUMNS + (BEST_COLUMNS if key else ()) + ("workdirs",)
    with rundir.atomic_file(os.path.join(fv.out, "compare.csv")) as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in rows)
    text = markdown(rows, png, fv, config_lib.DEFAULT_DATASET)
    written = ("compare.md", "compare.csv")
    if differences is not None:
        text += differences_markdown(differences, fv.against)
        with rundir.atomic_file(os.path.join(fv.out, "compare_differences.csv")) as f:
            writer = csv.DictWriter(f, fieldnames=DIFFERENCE_COLUMNS)
            writer.writeheader()
            writer.writerows({k: "" if d.get(k) is None else d[k] for k in DIFFERENCE_COLUMNS} for d in differences)
        written += ("compare_differences.csv",)
        for d in differences:
            print(d["sentence"])
    rundir.write_atomic(os.path.join(fv.out, "compare.md"), text)
    for name in written + (("compare.png",) if png else ()):
        print(os.path.join(fv.out, name))


def summarize(label: str, members: list[str], config: dict) -> dict:
    """The row of one configuration's runs: their last estimates' mean and sd, a task's steps to each of
    stats.LEVELS, the chance line, and the compute: parameters (as the seed counts them), training FLOPs per
    token (`model.flops_per_token`: 6 per matmul weight and 12 T D per attention, cross-attention included)
    and the training FLOPs of the steps each seed's last estimate covers (per token x steps x
    batch_size x gradient_accumulation_steps x context_size), their mean over the seeds."""
    import ml_collections
    from aed_jax import rundir
    from aed_jax import stats
    from aed_jax import tasks
    c = ml_collections.ConfigDict(config)
    estimates = [rundir.read_metrics(m)[1] for m in members]
    last = [e[-1] for e in estimates if e]
    params, per_token = compute(config)
    tokens_per_step = c.batch_size * c.gradient_accumulation_steps * c.model_config.context_size
    row = {"label": label, "n": len(last), "seeds": " ".join(str(read_config(m).get("random_seed")) for m in members),
           "model": c.model_type, "dataset": c.dataset, "step": min((r["step"] for r in last), default=None),
           "chance": tasks.chance_token_accuracy(c), "params": params, "flops_per_token": per_token,
           "train_flops": stats.summary([per_token * r["step"] * tokens_per_step for r in last]),
           "members": members, "workdirs": " ".join(members)}
    row["train_flops"] = row["train_flops"] and row["train_flops"].mean
    for key in METRICS:
        summary = stats.summary([r[key] for r in last if key in r])
        row[key], row[f"{key}_sd"] = (summary.mean, summary.sd) if summary else (None, None)
    if row["chance"] is not None:
        curves = [[(r["step"], r["val_token_accuracy"]) for r in e if "val_token_accuracy" in r] for e in estimates]
        row["crossings"] = {key: stats.crossing(curves, level) for key, level in stats.STEPS_TO.items()}
        for key, crossing in row["crossings"].items():
            row.update(crossing.columns(key))
    return row


_COMPUTE: dict[str, tuple[int, float]] = {}


def compute(config: dict) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of the run config's model, from its shapes (once per model)."""
    key = json.dumps([config["model_type"], config["model_config"]], sort_keys=True)
    if key not in _COMPUTE:
        import ml_collections
        from aed_jax import model as model_lib
        cfg = model_lib.ModelConfig.from_config(ml_collections.ConfigDict(config))
        abstract = cfg.abstract_params()
        _COMPUTE[key] = model_lib.count_params(abstract), model_lib.flops_per_token(abstract, cfg)
    return _COMPUTE[key]


def best_points(groups: dict[str, list[str]], configs: dict[str, dict], key: str) -> list:
    """`sweep.choose` for each configuration: its groups, that differ only in `key`, scored by their seeds'
    last estimates. One line for a key a run's config lacks or a value that is not a number."""
    from aed_jax import rundir
    from aed_jax import tasks
    from experiments import sweep
    points = []
    for members in sweep.points_of(configs, key):
        rates = []
        for label in members:
            try:
                value = sweep.value(configs[label], key)
            except KeyError:
                cli.fail(f"--best {key}: {label}'s config has no key {key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                cli.fail(f"--best {key}: {label}'s {key} is {value!r}, not a number")
            last = [e[-1] for e in (rundir.read_metrics(m)[1] for m in groups[label]) if e]
            rates.append(sweep.rate(label, configs[label], key, groups[label], last,
                                    tasks.task_name(configs[label]["dataset"]) is not None))
        points.append(sweep.choose(members, rates))
    return points


def best_rows(rows: list[dict], points: list, groups: dict[str, list[str]], key: str) -> list[dict]:
    """One row a configuration: its chosen group's row, labelled by the configuration (every group of it), with
    the chosen value, the edge flag and every value's score; a configuration whose every value was left out
    keeps its model, data and compute, and no estimate."""
    by_label, out = {r["label"]: r for r in rows}, []
    names = labels([[w for label in p.members for w in groups[label]] for p in points])
    for point, name in zip(points, names):
        if point.best is not None:
            row = dict(by_label[point.best.label])
        else:
            first = by_label[point.members[0]]
            row = {k: first[k] if k in ("model", "dataset", "chance", "params", "flops_per_token") else None
                   for k in first}
            row.update(n=0, members=[], workdirs="")
        row.update(label=name, best_key=key, best_value=point.best and point.best.value, edge=point.edge,
                   scores=point.scores())
        out.append(row)
    return out


DIFFERENCE_COLUMNS = ("a", "b", "metric", "n", "seeds", "mean", "ci_low", "ci_high", "p", "p_holm", "sentence")


def paired(rows: list[dict], against: str) -> list[dict]:
    """Each row but the reference (the row whose label is `against`, else the one row whose label contains it)
    minus the reference, seed by seed over the random seeds both have: on the last estimate's val loss, or
    for task runs its val token accuracy and the steps to each of stats.LEVELS (over the seeds where both
    reached the level; how many did, in `n`). Each difference's t-interval and p (`stats.t_interval`), and
    the Holm adjustment over every difference of the table that has one (`stats.holm`). One line when
    `against` names no row or several."""
    from aed_jax import rundir
    from aed_jax import stats
    named = [r for r in rows if r["label"] == against] or [r for r in rows if against in r["label"]]
    if len(named) != 1:
        cli.fail(f"--against {against}: " + ("names no row" if not named else "names several rows: "
                                             + ", ".join(r["label"] for r in named)) + "; the rows are "
                 + ", ".join(r["label"] for r in rows))
    reference = named[0]
    task = reference["chance"] is not None
    metrics = ("val_token_accuracy", *stats.STEPS_TO) if task else ("val_loss",)

    def by_seed(row: dict) -> dict:
        """{metric: {seed: value}}, a seed left out of a metric it has no value for."""
        out = {metric: {} for metric in metrics}
        for member in row["members"]:
            estimates, seed = rundir.read_metrics(member)[1], read_config(member).get("random_seed")
            if not estimates:
                continue
            for metric in metrics:
                if metric in stats.STEPS_TO:
                    curve = [(e["step"], e["val_token_accuracy"]) for e in estimates if "val_token_accuracy" in e]
                    value = stats.first_step_at(curve, stats.STEPS_TO[metric])
                else:
                    value = estimates[-1].get(metric)
                if value is not None:
                    out[metric][seed] = value
        return out

    base = by_seed(reference)
    out = []
    for row in rows:
        if row is reference:
            continue
        values = by_seed(row)
        for metric in metrics:
            seeds = sorted(set(values[metric]) & set(base[metric]))
            interval = stats.t_interval([values[metric][s] - base[metric][s] for s in seeds])
            out.append({"a": row["label"], "b": reference["label"], "metric": metric, "n": len(seeds),
                        "seeds": " ".join(map(str, seeds)), "interval": interval,
                        "mean": interval and interval.mean, "ci_low": interval and interval.low,
                        "ci_high": interval and interval.high, "p": interval and interval.p})
    tested = [d for d in out if d["p"] is not None]
    for d, adjusted in zip(tested, stats.holm([d["p"] for d in tested])):
        d["p_holm"] = adjusted
    for d in out:
        steps = d["metric"] in stats.STEPS_TO
        what = f"steps to {stats.STEPS_TO[d['metric']]:.0%}" if steps else d["metric"].replace("_", " ")
        d["sentence"] = stats.sentence(d["a"], d["b"], d["interval"], what,
                                       digits=0 if steps else 3,
                                       p_holm=d.get("p_holm"), family=len(tested))
    return out


def differences_markdown(differences: list[dict], against: str) -> str:
    return "\n".join(["", f"## Paired differences against {differences[0]['b'] if differences else against}", "",
                      "Each row minus the reference, seed by seed (the seeds both have), on the last estimate (a "
                      "task's steps to 50/90/99%: over the seeds where both reached it); "
                      "95% t-intervals, p of the paired t-test, and Holm's adjustment over the differences "
                      "listed: a difference is shown where the adjusted p is under 0.05, suggestive where only "
                      "the unadjusted interval excludes zero.", ""]
                     + [f"- {d['sentence']}" for d in differences]) + "\n"


def _value(value) -> str:
    return "–" if value is None else f"{value:g}"


def _cell(mean, sd, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def markdown(rows: list[dict], png: str | None, fv: flags.FlagValues, default_dataset: str) -> str:
    from aed_jax import stats
    tasks_compared = any(r["chance"] is not None for r in rows)
    key = fv.best and fv.best.removeprefix("config.")
    lines = ["# Runs compared", "", "`python -m experiments.compare " + " ".join(f"--workdir {w}" for w in fv.workdir)
             + f" --out {fv.out}" + (f" --best {fv.best}" if key else "") + "`", "",
             "Each row: the runs of one configuration (their configs differ in random_seed alone), their last "
             "estimates' mean ± sd over the seeds (n: seeds with an estimate; `step`: the earliest of those "
             "estimates, so compare rows at the same step). Params: as the seed counts them; FLOPs per token: "
             "training (forward and backward), 6 per matmul weight plus 12 T D per attention, cross-attention "
             "included; train FLOPs: per token x the tokens of the steps to each seed's last estimate, the mean "
             "over the seeds.", ""]
    if key:
        lines += [f"`--best {key}`: each row is a configuration (its runs differ only in {key} and their seed) at "
                  f"the {key} that did best on validation: a task's highest val token accuracy at the last estimate "
                  "(mean over the seeds), ties to the lower val loss, then the smaller value; a corpus's lowest val "
                  f"loss. Scores: each {key} tried, a task's accuracy (val loss), a corpus's val loss; a value with a "
                  "seed that diverged or has no estimate is left out, with why. Edge: the best is the lowest or "
                  f"highest {key} tried, so a better one may lie beyond: widen the grid.", ""]
    if png:
        lines += [f"![runs compared]({os.path.basename(png)})", ""]
    head = ("| run | n | model | data | step | val loss |" + (" val token accuracy | val sequence accuracy | chance | "
                                                             "steps to 50% | steps to 90% | steps to 99% |"
                                                             if tasks_compared else "")
            + " params | FLOPs per token | train FLOPs |" + (f" {key} | edge | scores |" if key else ""))
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['label']} | {r['n']} | {r['model']} | {r['dataset'] or default_dataset} | "
                f"{'–' if r['step'] is None else r['step']} | {_cell(r['val_loss'], r['val_loss_sd'], 4)} |")
        if tasks_compared:
            crossings = r.get("crossings") or {}
            line += (f" {_cell(r['val_token_accuracy'], r['val_token_accuracy_sd'], 3)} | "
                     f"{_cell(r['val_sequence_accuracy'], r['val_sequence_accuracy_sd'], 3)} | "
                     f"{'–' if r['chance'] is None else format(r['chance'], '.3g')} |"
                     + "".join(f" {crossings[k].text() if k in crossings else '–'} |" for k in stats.STEPS_TO))
        line += (f" {r['params']:,} | {r['flops_per_token']:.3g} | "
                 f"{'–' if r['train_flops'] is None else format(r['train_flops'], '.3g')} |")
        if key:
            line += f" {_value(r['best_value'])} | {r['edge'] or ''} | {r['scores']} |"
        lines.append(line)
    if tasks_compared:
        lines += ["", "Chance: the token accuracy of a guess that knows the task's format but not its content "
                      "(mqar: one of the N values in the context; copy and sort: one of the ids an answer can be). "
                  + stats.STEPS_TO_TEXT]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    define_flags()
    cli.run(main)
