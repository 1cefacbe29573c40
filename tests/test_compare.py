"""experiments.compare on run folders written by hand (config.json and metrics.jsonl as the trainer
writes them): the grouping of seeds, the table's means and sds against a direct computation, the chance
line, and its one-line errors."""
import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from aed_jax import config as config_lib
from aed_jax import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(workdir, model_type, seed, accuracies, lr=3e-3):
    """A finished task run's record: its config, 10 logged steps and two estimates."""
    c = config_lib.base_config(model_type)
    c.dataset, c.random_seed, c.lr = "task:mqar", seed, lr
    c.task.num_kv_pairs = 4
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(c.to_dict(), f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, 11):
            f.write(json.dumps({"step": step, "ce": 5.0 - step / 10 - seed / 1e4, "loss": 6.0}) + "\n")
        for step, accuracy in zip((5, 10), accuracies):
            f.write(json.dumps({"step": step, "train_loss": 4.0, "val_loss": 4.0 - accuracy, "val_token_accuracy":
                                accuracy, "val_sequence_accuracy": accuracy / 2}) + "\n")


def compare(*args):
    return subprocess.run([sys.executable, "-m", "experiments.compare", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_compare_groups_seeds_tables_them_and_draws_chance(tmp_path):
    for seed, accuracy in ((1, 0.5), (2, 0.7), (3, 0.9)):
        make_run(tmp_path / "sweep" / "aed" / f"seed{seed}", "aed", seed, (0.3, accuracy))
    make_run(tmp_path / "sweep" / "baseline" / "seed1", "baseline", 1, (0.2, 0.4))
    make_run(tmp_path / "sweep" / "baseline_lr" / "seed1", "baseline", 1, (0.2, 0.6), lr=1e-2)
    out = tmp_path / "cmp"
    result = compare("--workdir", str(tmp_path / "sweep" / "aed"), "--workdir", str(tmp_path / "sweep" / "baseline"),
                     "--workdir", str(tmp_path / "sweep" / "baseline_lr" / "seed1"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(out / name) for name in ("compare.md", "compare.csv", "compare.png")]
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["n"], r["seeds"], r["model"]) for r in rows] == [
        ("aed", "3", "1 2 3", "aed"), ("baseline", "1", "1", "baseline"), ("baseline_lr", "1", "1", "baseline")]
    aed = rows[0]
    assert float(aed["val_token_accuracy"]) == pytest.approx(statistics.fmean([0.5, 0.7, 0.9]))
    assert float(aed["val_token_accuracy_sd"]) == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert float(aed["val_loss"]) == pytest.approx(4.0 - 0.7) and aed["step"] == "10"
    assert rows[1]["val_token_accuracy_sd"] == ""  # one seed: no sd
    chance = tasks.chance_token_accuracy(config_lib.base_config().copy_and_resolve_references())
    assert chance is None  # a corpus has none; MQAR's is 1 / its pairs:
    assert float(aed["chance"]) == pytest.approx(1 / 4)
    md = (out / "compare.md").read_text()
    assert "| aed | 3 | aed | task:mqar | 10 | 3.3000 ± 0.2000 | 0.700 ± 0.200 | 0.350 ± 0.100 | 0.25 |" in md
    assert "![runs compared](compare.png)" in md and os.path.getsize(out / "compare.png") > 20_000
    whole = compare("--workdir", str(tmp_path / "sweep"), "--out", str(tmp_path / "all"))  # a sweep's folder whole
    assert whole.returncode == 0, whole.stderr[-3000:]
    with open(tmp_path / "all" / "compare.csv") as f:
        assert [(r["label"], r["n"]) for r in csv.DictReader(f)] == [("aed", "3"), ("baseline", "1"),
                                                                      ("baseline_lr", "1")]


def test_compare_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in ((["--out", str(tmp_path / "o")], "give the runs to compare"),
                          (["--workdir", str(tmp_path / "empty")], "no run here or below"),
                          (["--workdir", str(tmp_path / "empty"), "--smooth", "0"], "flag --smooth=0")):
        result = compare(*args)
        assert result.returncode == 1 and result.stderr.startswith("error:") and message in result.stderr, \
            result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
