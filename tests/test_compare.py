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
from experiments import sweep

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


def rate(value, accuracy=None, val_loss=1.0, excluded=None):
    return sweep.Rate(f"lr={value}", value, accuracy is not None, accuracy, val_loss, excluded)


def test_best_rate_ties_go_to_the_lower_loss_then_the_smaller_rate():
    point = sweep.choose(["a", "b", "c", "d"], [rate(1e-2, 0.9, 0.5), rate(1e-3, 0.8, 0.1), rate(3e-3, 0.9, 0.4),
                                                rate(3e-2, 0.9, 0.4)])
    assert [r.value for r in point.rates] == [1e-3, 3e-3, 1e-2, 3e-2]  # in increasing value
    assert point.best.value == 3e-3 and point.edge is None  # 0.9 three times; loss 0.4 twice; the smaller rate
    assert point.scores() == ("0.001: 0.800 (0.1000); 0.003: 0.900 (0.4000) chosen; 0.01: 0.900 (0.5000); "
                              "0.03: 0.900 (0.4000)")


def test_best_rate_at_the_edge_of_the_grid_is_flagged():
    assert sweep.choose([], [rate(1e-3, 0.9), rate(3e-3, 0.5)]).edge == "lowest"
    assert sweep.choose([], [rate(1e-3, 0.5), rate(3e-3, 0.9)]).edge == "highest"
    assert sweep.choose([], [rate(1e-3, 0.5)]).edge == "only value tried"
    # The highest rate diverged: the best is next to it, not at the edge of what was tried, which bounds it.
    point = sweep.choose([], [rate(1e-3, 0.5), rate(3e-3, 0.7), rate(1e-2, excluded="diverged: loss nan at step 4")])
    assert point.best.value == 3e-3 and point.edge is None
    assert point.scores().endswith("0.01: diverged: loss nan at step 4")
    assert sweep.choose([], [rate(1e-3, excluded="no estimate")]).best is None


def test_a_corpus_is_chosen_by_val_loss_a_task_by_accuracy():
    corpus = [rate(1e-3, None, 3.2), rate(3e-3, None, 3.1), rate(1e-2, None, 3.3)]
    assert sweep.choose([], corpus).best.value == 3e-3 and corpus[1].score() == "3.1000"
    task = [rate(1e-3, 0.6, 0.9), rate(3e-3, 0.7, 1.5), rate(1e-2, 0.5, 0.2)]
    assert sweep.choose([], task).best.value == 3e-3  # the accuracy decides, whatever the loss


def test_a_diverged_failed_or_unestimated_seed_leaves_its_rate_out(tmp_path):
    good, nan, failed, empty = (tmp_path / name for name in ("good", "nan", "failed", "empty"))
    for workdir in (good, nan, failed, empty):
        workdir.mkdir()
    (good / "metrics.jsonl").write_text('{"step": 5, "ce": 2.0}\n{"step": 5, "val_loss": 2.0}\n{"step": 6, "ce": 2')
    (nan / "metrics.jsonl").write_text('{"step": 5, "val_loss": 2.0}\n{"step": 6, "ce": NaN, "loss": NaN}\n')
    (failed / "metrics.jsonl").write_text('{"step": 5, "val_loss": 2.0}\n')
    (failed / "run.json").write_text(json.dumps({"error": "loss is nan at step 7; stopped without saving it"}))
    assert sweep.problem(str(good)) is None  # a line cut short by a kill is skipped
    assert sweep.problem(str(nan)) == "diverged: ce nan at step 6"
    assert sweep.problem(str(failed)) == "failed: loss is nan at step 7; stopped without saving it"
    assert sweep.problem(str(empty)) == "no estimate"
    config = {"lr": 1e-3, "dataset": "wiki_vital"}
    both = sweep.rate("lr=0.001", config, "lr", [str(good), str(nan)], [{"val_loss": 2.0}] * 2, task=False)
    assert both.excluded == "diverged: ce nan at step 6 (1 of 2 seeds)"
    one = sweep.rate("lr=0.001", config, "lr", [str(good)], [{"val_loss": 2.0}], task=False)
    assert (one.excluded, one.val_loss) == (None, 2.0)


def test_points_are_configs_that_differ_only_in_the_key():
    base = config_lib.base_config("baseline").to_dict()
    configs = {}
    for name, lr, width, seed in (("a", 1e-3, 32, 1), ("b", 3e-3, 32, 1), ("c", 1e-3, 64, 2), ("d", 3e-3, 64, 1)):
        configs[name] = json.loads(json.dumps(base))
        configs[name].update(lr=lr, random_seed=seed)
        configs[name]["model_config"]["n_embed"] = width
    assert sweep.points_of(configs, "lr") == [["a", "b"], ["c", "d"]]
    assert sweep.points_of(configs, "model_config.n_embed") == [["a", "c"], ["b", "d"]]
    assert sweep.value(configs["c"], "model_config.n_embed") == 64
    with pytest.raises(KeyError):
        sweep.value(configs["c"], "model_config.nope")


def make_tiny(workdir, model_type, lr, seed, curve, val_loss=1.0, dataset="task:sort", nan_at=None):
    """A run of a tiny model (D 32, 2 blocks, T 16, V 32, 8 x 2 sequences a step) with estimates `curve`:
    [(step, val token accuracy)], each at `val_loss`; a training line of NaN loss at `nan_at`."""
    c = config_lib.base_config(model_type)
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=2, context_size=16, alphabet_size=32))
    c.update(dict(dataset=dataset, random_seed=seed, lr=lr, min_lr=1e-4, batch_size=8, gradient_accumulation_steps=2))
    c.task.sort_length = 4
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(c.to_dict(), f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, accuracy in curve:
            f.write(json.dumps({"step": step, "ce": 2.0, "loss": float("nan") if step == nan_at else 2.0}) + "\n")
            f.write(json.dumps({"step": step, "train_loss": val_loss, "val_loss": val_loss,
                                **({} if dataset == "wiki_vital" else {"val_token_accuracy": accuracy,
                                                                     "val_sequence_accuracy": accuracy / 2})}) + "\n")


@pytest.mark.slow  # three runs of the command: over 10 s on one core
def test_compare_best_lr_tables_each_point_at_its_best_rate_with_its_compute(tmp_path):
    """A sweep of two models over three rates, two seeds each: each model at its best rate, the edge flagged, a
    diverged rate left out; steps to each accuracy; params and FLOPs against a count by hand."""
    sweep_out = tmp_path / "sweep"
    for model_type, scores in (("baseline", {1e-3: (0.5, 0.6), 3e-3: (0.9, 1.0), 1e-2: None}),
                               ("aed", {1e-3: (0.3, 0.3), 3e-3: (0.5, 0.5), 1e-2: (0.7, 0.8)})):
        for lr, accuracy in scores.items():
            for seed in (1, 2):
                last = 0.6 if accuracy is None else accuracy[seed - 1]
                make_tiny(sweep_out / f"sort_{model_type}" / f"lr={lr}" / f"seed{seed}", model_type, lr, seed,
                          [(10, 0.2), (20, 0.55 if seed == 1 else 0.4), (30, last)],
                          nan_at=30 if accuracy is None and seed == 2 else None)
    out = tmp_path / "best"
    result = compare("--workdir", str(sweep_out), "--best", "config.lr", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout.splitlines()
    assert said[:2] == [  # in path order
        "sort_aed: lr 0.01 (edge of the grid: highest); scores 0.001: 0.300 (1.0000); 0.003: 0.500 (1.0000); "
        "0.01: 0.750 (1.0000) chosen",
        "sort_baseline: lr 0.003; scores 0.001: 0.550 (1.0000); 0.003: 0.950 (1.0000) chosen; "
        "0.01: diverged: loss nan at step 30 (1 of 2 seeds)"]
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["best_value"], r["edge"]) for r in rows] == [("sort_aed", "0.01", "highest"),
                                                                        ("sort_baseline", "0.003", "")]
    baseline = rows[1]
    assert float(baseline["val_token_accuracy"]) == pytest.approx(0.95) and baseline["seeds"] == "1 2"
    # Steps to 50%: 20 and 30 (a mean of 25 with an interval); to 90%: both seeds at 30; 99%: seed 2 alone (1.0).
    assert (baseline["steps_to_50"], baseline["steps_to_50_seeds"], baseline["steps_to_90_seeds"]) == ("25.0", "20 30",
                                                                                                       "30 30")
    assert (baseline["steps_to_99"], baseline["steps_to_99_reached"], baseline["steps_to_99_seeds"]) == ("", "1/2",
                                                                                                         ">30 30")
    # By hand, the baseline of D 32, 2 blocks, T 16, V 32 (no biases): 12 D^2 of matmuls a block and the tied
    # output layer V D; one attention a block. Params: those, a block's two LayerNorm scales, the last one.
    D, L, T, V = 32, 2, 16, 32
    per_token = 6 * (L * 12 * D * D + V * D) + 12 * L * T * D
    assert per_token == 165_888 and float(baseline["flops_per_token"]) == per_token
    assert int(baseline["params"]) == V * D + L * (12 * D * D + 2 * D) + D == 25_760
    assert float(baseline["train_flops"]) == per_token * 30 * 8 * 2 * T == 1_274_019_840  # 30 steps of 8 x 2 x T
    md = (out / "compare.md").read_text()
    assert "| lr | edge | scores |" in md and "| 25,760 | 1.66e+05 | 1.27e+09 | 0.003 |  |" in md
    assert "| 0.01 | highest | 0.001: 0.300" in md
    assert "| 25 (95% CI -39 to 89, 2 seeds) | 30 (95% CI 30 to 30, 2 seeds) | 1 of 2 seeds: 30; > 30 |" in md
    assert "![runs compared](compare.png)" in md
    corpus = tmp_path / "corpus"
    for lr, loss in ((1e-3, 3.0), (3e-3, 2.5), (1e-2, 2.7)):
        make_tiny(corpus / f"lr={lr}", "baseline", lr, 1, [(30, None)], val_loss=loss, dataset="wiki_vital")
    result = compare("--workdir", str(corpus), "--best", "lr", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "corpus: lr 0.003; scores 0.001: 3.0000; 0.003: 2.5000 chosen; 0.01: 2.7000"
    bad = compare("--workdir", str(corpus), "--best", "model_config.nope", "--out", str(tmp_path / "d"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: --best model_config.nope: ") and \
        len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_against_gives_paired_differences_seed_by_seed_with_holm(tmp_path):
    """--against: each other row minus the reference over the seeds both have, against a direct computation
    (scipy's paired t-test; Holm over the table's differences, by hand for the smallest p), steps to a level
    paired over the seeds where both reached it, and its one-line error."""
    from scipy import stats as scipy_stats
    aed = {1: 0.9, 2: 0.88, 3: 0.93}
    base = {1: 0.5, 2: 0.45, 3: 0.6, 4: 0.5}  # seed 4: no partner, left out
    other = {1: 0.52, 2: 0.47, 3: 0.58}
    for name, model, accuracies in (("aed", "aed", aed), ("baseline", "baseline", base),
                                    ("other", "aed", other)):
        for seed, accuracy in accuracies.items():
            make_run(tmp_path / "runs" / name / f"seed{seed}", model, seed, (0.1, accuracy),
                     lr=1e-3 if name == "other" else 3e-3)
    out = tmp_path / "cmp"
    result = compare("--workdir", str(tmp_path / "runs"), "--out", str(out), "--against", "baseline")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "compare_differences.csv") as f:
        every = list(csv.DictReader(f))
    rows = {r["a"]: r for r in every if r["metric"] == "val_token_accuracy"}
    assert set(rows) == {"aed", "other"} and rows["aed"]["seeds"] == "1 2 3"
    # Steps to 50%: aed reaches it at step 10 in every seed (0.1 at 5), so does the baseline but for seed 2
    # (0.45 at 10: never): paired over seeds 1 and 3 alone, both 10 - 10 = 0.
    steps = next(r for r in every if r["a"] == "aed" and r["metric"] == "steps_to_50")
    assert (steps["n"], steps["seeds"], float(steps["mean"])) == ("2", "1 3", 0.0)
    assert len(every) == 8  # 2 rows x (accuracy, steps to 50, 90, 99)
    tested = [r for r in every if r["p"]]
    p = {name: scipy_stats.ttest_rel([d[s] for s in (1, 2, 3)], [base[s] for s in (1, 2, 3)]).pvalue
         for name, d in (("aed", aed), ("other", other))}
    low, high = sorted(p, key=p.get)
    assert float(rows["aed"]["mean"]) == pytest.approx(statistics.fmean(aed[s] - base[s] for s in (1, 2, 3)))
    assert float(rows["aed"]["p"]) == pytest.approx(p["aed"], rel=1e-6)
    from aed_jax import stats
    assert [float(r["p_holm"]) for r in tested] == pytest.approx(stats.holm([float(r["p"]) for r in tested]))
    m = len(tested)  # Holm by hand for the two accuracy differences, the smallest p's of the family
    assert float(rows[low]["p_holm"]) == pytest.approx(min(1, m * p[low]), rel=1e-6)
    md = (out / "compare.md").read_text()
    assert "## Paired differences against baseline" in md and rows["aed"]["sentence"] in md
    assert "after Holm correction" in rows["aed"]["sentence"] and "includes zero" in rows["other"]["sentence"]
    bad = compare("--workdir", str(tmp_path / "runs"), "--out", str(out), "--against", "nothing")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --against nothing: names no row") \
        and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
