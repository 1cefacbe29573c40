"""Writes runs.csv and estimates.csv of this folder from the MQAR anchor attempts' run folders.

`python results/mqar_anchor-2026-12-07/collect.py NAME=RUN_FOLDER [...]`: for each run, its settings from
config.json (read on today's defaults, so a run recorded before `task.random_non_queries` existed reads
1, the random filler it trained on) and every estimate of its metrics.jsonl; runs.csv gives the last
estimate, the best, and the first step at or above 50%, 90% and 99% val token accuracy.
"""
import csv
import os
import sys

sys.path.insert(0, os.getcwd())  # run from the repository root
from aed_jax import config as config_lib  # noqa: E402
from aed_jax import rundir  # noqa: E402
from aed_jax import stats  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ("model_type", "context_size", "num_kv_pairs", "random_non_queries", "alphabet_size", "n_embed", "n_head",
            "n_layer", "batch_size", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "train_steps", "random_seed")


def settings(c) -> dict:
    m = c.model_config
    return {"model_type": c.model_type, "context_size": m.context_size, "num_kv_pairs": c.task.num_kv_pairs,
            "random_non_queries": c.task.random_non_queries, "alphabet_size": m.alphabet_size,
            "n_embed": m.n_embed, "n_head": m.n_head, "n_layer": m.n_layer, "batch_size": c.batch_size,
            "lr": c.lr, "min_lr": c.min_lr, "warmup_iters": c.warmup_iters, "lr_decay_iters": c.lr_decay_iters,
            "train_steps": c.train_steps, "random_seed": c.random_seed}


def main(pairs: list[str]) -> None:
    runs, estimates = [], []
    for pair in pairs:
        name, folder = pair.split("=", 1)
        c = config_lib.read(os.path.join(folder, "config.json"))
        points = [e for e in rundir.read_metrics(folder)[1] if "val_token_accuracy" in e]
        curve = [(e["step"], e["val_token_accuracy"]) for e in points]
        row = {"run": name, **settings(c), "last_step": points[-1]["step"],
               "last_accuracy": points[-1]["val_token_accuracy"], "best_accuracy": max(a for _, a in curve)}
        for key, level in stats.STEPS_TO.items():
            row[key] = stats.first_step_at(curve, level)
        runs.append(row)
        estimates += [{"run": name, "step": e["step"], "val_loss": e["val_loss"],
                       "val_token_accuracy": e["val_token_accuracy"]} for e in points]
    for file, rows in (("runs.csv", runs), ("estimates.csv", estimates)):
        with open(os.path.join(HERE, file), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
