"""`python -m experiments.compare --workdir A --workdir B [...] [--out DIR] [--smooth N]`: any runs side by side.

Each --workdir is a run folder (main's, or one of reproduce's `<out>/<run>[/<point>]/seed<k>`), or a
folder of runs, which stands for every run below it: a run's seeds, a sweep's or a suite's `--out`. Runs whose config.json differ
in nothing but random_seed are one configuration: drawn as the mean of its seeds in a band from the
lowest to the highest, tabled as mean ± sd over them. Writes DIR/compare.md, DIR/compare.csv and
DIR/compare.png: the training cross-entropy logged per step (a moving mean), the val loss at each estimate, and
for task runs the val token accuracy with the chance line (a guess that knows the task's format:
aed_jax/tasks.py, chance_token_accuracy). Nothing is trained or evaluated: it reads what the runs logged.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: compare was stopped by {signal}; each file is written whole or not at all: "
                             "run it again")

import glob
import json
import os
import re

from absl import flags

from aed_jax import cli

COLUMNS = ("label", "n", "seeds", "model", "dataset", "step", "val_loss", "val_loss_sd", "val_token_accuracy",
           "val_token_accuracy_sd", "val_sequence_accuracy", "val_sequence_accuracy_sd", "chance", "workdirs")
METRICS = ("val_loss", "val_token_accuracy", "val_sequence_accuracy")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_multi_string("workdir", None, "A run folder, or a folder of runs (every run below it: a run's "
                              "seeds, a sweep's or a suite's --out); repeat it (runs that differ only in their seed "
                              "are grouped).", flag_values=fv)
    flags.DEFINE_string("out", os.path.join("runs", "compare"), "Folder for compare.md, compare.csv and compare.png.",
                        flag_values=fv)
    flags.DEFINE_integer("smooth", 10, "The training-loss curve's moving mean, in logged steps (1: raw).",
                         lower_bound=1, flag_values=fv)


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
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        cli.fail(f"--workdir {workdir}: its config.json is unreadable ({e}); the run's record is damaged")


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
    paths = []
    for _, members, _ in groups:
        path = os.path.normpath(os.path.commonpath([os.path.abspath(w) for w in members]))
        if re.fullmatch(r"seed\d+", os.path.basename(path)):
            path = os.path.dirname(path)
        paths.append(path.split(os.sep))
    for n in range(1, max(len(p) for p in paths) + 1):
        labels = ["/".join(p[-n:]) for p in paths]
        if len(set(labels)) == len(labels):
            break
    else:  # the same folder twice
        labels = [f"{'/'.join(p)} ({i + 1})" for i, p in enumerate(paths)]
    return dict(zip(labels, (members for _, members, _ in groups)))


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("give the runs to compare: --workdir A --workdir B ...")
    workdirs = [run for workdir in fv.workdir for run in runs_of(workdir)]
    groups = group(workdirs)
    cli.check_writable_folder(fv.out)  # before any work
    import ml_collections
    from aed_jax import config as config_lib
    from aed_jax import rundir
    from aed_jax import stats
    from aed_jax import tasks
    from experiments import figures
    configs = {label: ml_collections.ConfigDict(read_config(members[0])) for label, members in groups.items()}
    chances = {label: tasks.chance_token_accuracy(c) for label, c in configs.items()}
    shared = {c for c in chances.values() if c is not None}
    chance = shared.pop() if len(shared) == 1 else None  # one line, where every task run has the same chance
    rows = []
    for label, members in groups.items():
        last = [estimates[-1] for _, estimates in map(rundir.read_metrics, members) if estimates]
        row = {"label": label, "n": len(last), "seeds": " ".join(str(read_config(m).get("random_seed")) for m in members),
               "model": configs[label].model_type, "dataset": configs[label].dataset,
               "step": min((r["step"] for r in last), default=None), "chance": chances[label],
               "workdirs": " ".join(members)}
        for key in METRICS:
            summary = stats.summary([r[key] for r in last if key in r])
            row[key], row[f"{key}_sd"] = (summary.mean, summary.sd) if summary else (None, None)
        rows.append(row)
    os.makedirs(fv.out, exist_ok=True)
    png = figures.plot_compare(groups, os.path.join(fv.out, "compare.png"), chance, fv.smooth)
    with rundir.atomic_file(os.path.join(fv.out, "compare.csv")) as f:
        f.write(",".join(COLUMNS) + "\n")
        for r in rows:
            f.write(",".join(_csv(r[k]) for k in COLUMNS) + "\n")
    rundir.write_atomic(os.path.join(fv.out, "compare.md"), markdown(rows, png, fv, config_lib.DEFAULT_DATASET))
    for name in ("compare.md", "compare.csv") + (("compare.png",) if png else ()):
        print(os.path.join(fv.out, name))


def _csv(value) -> str:
    text = "" if value is None else str(value)
    return f'"{text}"' if "," in text else text


def _cell(mean, sd, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def markdown(rows: list[dict], png: str | None, fv: flags.FlagValues, default_dataset: str) -> str:
    tasks_compared = any(r["chance"] is not None for r in rows)
    lines = ["# Runs compared", "", "`python -m experiments.compare " + " ".join(f"--workdir {w}" for w in fv.workdir)
             + f" --out {fv.out}`", "",
             "Each row: the runs of one configuration (their configs differ in random_seed alone), their last "
             "estimates' mean ± sd over the seeds (n: seeds with an estimate; `step`: the earliest of those "
             "estimates, so compare rows at the same step).", ""]
    if png:
        lines += [f"![runs compared]({os.path.basename(png)})", ""]
    head = "| run | n | model | data | step | val loss |" + (" val token accuracy | val sequence accuracy | chance |"
                                                            if tasks_compared else "")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['label']} | {r['n']} | {r['model']} | {r['dataset'] or default_dataset} | "
                f"{'–' if r['step'] is None else r['step']} | {_cell(r['val_loss'], r['val_loss_sd'], 4)} |")
        if tasks_compared:
            line += (f" {_cell(r['val_token_accuracy'], r['val_token_accuracy_sd'], 3)} | "
                     f"{_cell(r['val_sequence_accuracy'], r['val_sequence_accuracy_sd'], 3)} | "
                     f"{'–' if r['chance'] is None else format(r['chance'], '.3g')} |")
        lines.append(line)
    if tasks_compared:
        lines += ["", "Chance: the token accuracy of a guess that knows the task's format but not its content "
                      "(mqar: one of the N values in the context; copy and sort: one of the ids an answer can be)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    define_flags()
    cli.run(main)
