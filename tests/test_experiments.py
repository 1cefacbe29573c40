"""The reproduction's smoke suite (results.md, results.csv, figures) and the Colab notebook, run headless on CPU."""
import ast
import csv
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import zipfile

import jax
import nbformat
from nbclient import NotebookClient
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # experiments/ is not installed: import it from the checkout, as `python -m` does
from aed_jax import stats  # noqa: E402
from experiments import plan  # noqa: E402
from experiments import runner  # noqa: E402
from experiments import suites  # noqa: E402


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_reproduce(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def png_size(path):
    """(width, height) of a PNG, read from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A small synthetic token folder (nanoGPT names)."""
    data_dir = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20000), ("val", 4000)):
        rng.integers(0, 64, n).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    return data_dir


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tokens):
    """The smoke suite run once through its CLI, on the synthetic token folder."""
    out = tmp_path_factory.mktemp("smoke")
    command = [sys.executable, "-m", "experiments.reproduce", "--suite", "smoke", "--out", str(out),
               "--data_dir", str(tokens), "--jobs", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, command, result


@pytest.mark.slow
def test_smoke_suite_writes_results_and_figures(smoke):
    out, command, result = smoke
    names = [run.name for run in suites.get("smoke").runs]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == names
    for r in rows:
        assert r["status"] == "finished" and r["step"] == r["train_steps"] == "6", r
        for key in ("train_loss", "val_loss", "wall_time_s", "tokens_per_s", "params", "seed_train_loss",
                    "seed_val_loss"):
            assert float(r[key]) > 0, (key, r)
    assert float(rows[0]["embedding_loss"]) > 0 and rows[1]["embedding_loss"] == ""  # the AED has an embedding loss
    assert (rows[0]["seed_val_loss"], rows[1]["seed_val_loss"]) == ("3.378", "3.424")

    md = (out / "results.md").read_text()
    assert "| run | status | steps | params | train loss | seed | val loss | seed |" in md
    assert "|   | Train loss | seed | Val loss | seed | Size (params) | seed |" in md
    for r in rows:
        line = next(line for line in md.splitlines() if line.startswith(f"| {r['label']} (`{r['run']}`)"))
        assert f"{float(r['train_loss']):.3f}" in line and f"{float(r['seed_val_loss']):.3f}" in line

    for name in ("embedding_loss", "baselines"):
        assert f"]({name}.png)" in md
        width, height = png_size(out / f"{name}.png")
        assert width > 600 and height > 300 and os.path.getsize(out / f"{name}.png") > 20_000

    for r in rows:  # run.json of each workdir
        assert os.path.isfile(out / r["run"] / "run.json")
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": skipped") == 2, again.stdout


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tokens, smoke):
    """The smoke suite with --seeds 2; after `smoke`, whose compiled steps it loads from the persistent cache."""
    out = tmp_path_factory.mktemp("seeded")
    args = ["--suite", "smoke", "--out", str(out), "--data_dir", str(tokens)]
    result = run_reproduce(*args, "--seeds", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, args


@pytest.mark.slow
def test_seeds_give_means_sds_and_paired_intervals(seeded):
    """results.csv's means and sds and differences.csv's interval, recomputed from seeds.csv's per-seed values."""
    out, _ = seeded
    per_seed = read_csv(out / "seeds.csv")
    assert [(r["run"], r["seed"]) for r in per_seed] == [("tiny", "1337"), ("tiny", "1338"),
                                                         ("tiny_baseline", "1337"), ("tiny_baseline", "1338")]
    for r in per_seed:
        assert r["status"] == "finished" and r["workdir"] == str(out / r["run"] / f"seed{r['seed']}"), r
    val = {(r["run"], int(r["seed"])): float(r["val_loss"]) for r in per_seed}
    assert val["tiny", 1337] != val["tiny", 1338]  # the seed reaches the initialisation, the data and dropout
    rows = {r["run"]: r for r in read_csv(out / "results.csv")}
    for name in ("tiny", "tiny_baseline"):
        r, mine = rows[name], [m for m in per_seed if m["run"] == name]
        assert (r["n"], r["seeds"], r["status"], r["step"]) == ("2", "1337 1338", "finished", "6")
        for key in ("train_loss", "val_loss"):
            values = [float(m[key]) for m in mine]
            assert float(r[key]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert float(r[key + "_sd"]) == pytest.approx(statistics.stdev(values), rel=1e-12)

    diff, = read_csv(out / "differences.csv")
    d = [val["tiny", seed] - val["tiny_baseline", seed] for seed in (1337, 1338)]
    mean, sd = (d[0] + d[1]) / 2, abs(d[0] - d[1]) / math.sqrt(2)
    half = 12.706205 * sd / math.sqrt(2)  # t quantile 0.975 with 1 degree of freedom
    assert [diff[k] for k in ("comparison", "a", "b", "metric", "n", "seeds")] == [
        "baselines", "tiny", "tiny_baseline", "val_loss", "2", "1337 1338"]
    assert float(diff["mean"]) == pytest.approx(mean, rel=1e-9) and float(diff["sd"]) == pytest.approx(sd, rel=1e-9)
    assert float(diff["ci_low"]) == pytest.approx(mean - half, rel=1e-6)
    assert float(diff["ci_high"]) == pytest.approx(mean + half, rel=1e-6)
    assert diff["excludes_zero"] == str((mean - half) * (mean + half) > 0)
    p = 1 - 2 * math.atan(abs(mean) / (sd / math.sqrt(2))) / math.pi  # the t distribution with 1 df is Cauchy
    assert float(diff["p"]) == pytest.approx(p, rel=1e-6) and diff["p_holm"] == diff["p"]  # a family of one
    md = (out / "results.md").read_text()
    assert f"- {diff['sentence']}" in md and diff["sentence"].startswith(f"tiny - tiny_baseline: {mean:+.3f} val loss")
    line = next(line for line in md.splitlines() if line.startswith("| tiny AED (MSE + pos sub) (`tiny`)"))
    assert f"{float(rows['tiny']['val_loss']):.3f} ± {float(rows['tiny']['val_loss_sd']):.3f}" in line
    assert "Seeds: 1337, 1338" in md
    assert png_size(out / "baselines.png")[0] > 600


@pytest.mark.slow
def test_more_seeds_resume_skipping_the_finished_ones(seeded):
    out, args = seeded
    result = run_reproduce(*args, "--seeds", "3", "--runs", "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("[1/3] tiny seed 1337: skipped", "[2/3] tiny seed 1338: skipped", "[3/3] tiny seed 1339: finished"):
        assert line in result.stdout, result.stdout
    rows = {r["run"]: r for r in read_csv(out / "results.csv")}
    assert (rows["tiny"]["n"], rows["tiny"]["status"]) == ("3", "finished")
    assert (rows["tiny_baseline"]["n"], rows["tiny_baseline"]["status"]) == ("2", "2/3 finished")
    diff, = read_csv(out / "differences.csv")
    assert (diff["n"], diff["seeds"]) == ("2", "1337 1338")  # paired: the seeds both runs have
    mixed = run_reproduce(*args, "--notrain")  # no --seeds on a folder of seeds: one line, nothing written
    assert mixed.returncode == 1 and "holds runs trained with --seeds; pass --seeds" in mixed.stderr, mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_task_suite_smoke(tmp_path):
    """The task suite at scale smoke (three tasks, three models, one tiny width, 4 steps): accuracies in the
    table, one figure per task, the paired differences in words."""
    result = run_reproduce("--suite", "tasks", "--scale", "smoke", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    suite = suites.get("tasks", "smoke")
    rows = read_csv(tmp_path / "results.csv")
    assert [r["run"] for r in rows] == [run.name for run in suite.runs]
    for r in rows:
        assert r["status"] == "finished" and r["step"] == r["train_steps"] == "4", r
        for key in ("train_token_accuracy", "val_token_accuracy", "train_sequence_accuracy", "val_sequence_accuracy"):
            assert 0 <= float(r[key]) <= 1, (key, r)
        assert float(r["val_loss"]) > 0 and r["n"] == "1"
        assert r["steps_to_50_reached"] in ("0/1", "1/1") and r["steps_to_99_seeds"]  # a step, or ">4"
    by_name = {r["run"]: r for r in rows}
    md = (tmp_path / "results.md").read_text()
    for task, difficulty in (("mqar", "T32_kv4"), ("copy", "T32_len4"), ("sort", "T32_len4")):
        aed, baseline = by_name[f"{task}_{difficulty}_w16_mse_pos_sub"], by_name[f"{task}_{difficulty}_w16_baseline"]
        assert (aed["shape"], aed["model"], baseline["model"]) == ("1+1 x 16", "aed", "baseline")
        assert abs(int(baseline["params"]) / int(aed["params"]) - 1) < 0.1
        assert f"## {task}: accuracy against width" in md and f"]({task}.png)" in md
        width, height = png_size(tmp_path / f"{task}.png")
        assert width > 600 and height > 600
    assert "- 32 tokens, 4 key-value pairs, width 16: mse_pos_sub - baseline: " in md
    diffs = read_csv(tmp_path / "differences.csv")
    assert len(diffs) == 3 * 3 * 2 and {d["metric"] for d in diffs} == {"val_token_accuracy", "val_sequence_accuracy"}
    assert all(d["n"] == "1" and "no interval from one seed" in d["sentence"] for d in diffs)
    times = [float(r["time_total_s"]) for r in read_csv(tmp_path / "seeds.csv")]  # every run wrote its phase line
    assert len(times) == len(rows) and min(times) > 0
    assert "## Where the wall time went" in md and "of their wall time went to train steps" in md
    assert "no phase line" not in md and f"| total | {sum(times):,.1f} | 100.0% |" in md


@pytest.mark.slow
def test_jobs_train_side_by_side_to_the_numbers_of_one_at_a_time(tmp_path, tokens, smoke):
    """--jobs 2: both runs at once, each pinned to its own core with its output in its train.log, and
    exactly the metrics of --jobs 1 (the `smoke` fixture): a pinned run keeps the thread pools of an
    unpinned one, so it sums in the same order."""
    one, _, _ = smoke
    result = run_reproduce("--suite", "smoke", "--out", str(tmp_path), "--data_dir", str(tokens), "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    started = [line for line in lines if "steps in" in line]
    assert len(started) == 2 and all("(log: " in line for line in started), lines
    if len(plan.usable_cores()) >= 2:  # each its own core
        assert len({line.split(", cores ")[1].split(" ")[0] for line in started}) == 2, started
    assert lines.index(started[1]) < min(i for i, line in enumerate(lines) if ": finished" in line)  # side by side
    for name in ("tiny", "tiny_baseline"):
        assert "saved checkpoint at step 6" in (tmp_path / name / "train.log").read_text()
        rows = [[json.loads(line) for line in open(out / name / "metrics.jsonl")] for out in (one, tmp_path)]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
        timing = lambda row: {k: v for k, v in row.items()
                              if k not in ("step_time_s", "tokens_per_s") and not k.startswith("time_")}
        assert [timing(r) for r in rows[0]] == [timing(r) for r in rows[1]], name
    assert read_csv(tmp_path / "results.csv")[0]["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, "[1/2] tiny: finished"), (signal.SIGINT, "[1/2] tiny: finished"),
                                      (signal.SIGINT, "step 3: train loss")],
                         ids=["SIGTERM-between-runs", "SIGINT-between-runs", "SIGINT-during-a-run"])
def test_a_signal_stops_the_suite_saves_and_writes_the_results(tmp_path, tokens, smoke, sig, when):
    """SIGTERM once the first run has ended, or Ctrl-C while it trains: no run starts after it, the one
    training saves, the results so far are written, one line says so (exit 0, as the trainer's own stop);
    the same command then resumes and finishes the suite."""
    args = ["--suite", "smoke", "--out", str(tmp_path), "--data_dir", str(tokens), "--jobs", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(when):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    lines = ("".join(seen) + out).splitlines()
    assert proc.returncode == 0, (err[-3000:], lines)
    assert lines[-1].startswith(f"stopped by {sig.name}: ") and lines[-1].endswith("run the same command to resume")
    assert "Traceback" not in err and os.path.isfile(tmp_path / "results.md")
    rows = {r["run"]: r for r in read_csv(tmp_path / "results.csv")}
    assert rows["tiny_baseline"]["status"] in ("not run", "partial"), rows  # never trained to the end
    again = run_reproduce(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["status"] for r in read_csv(tmp_path / "results.csv")] == ["finished", "finished"]


@pytest.mark.fast
def test_jobs_deal_the_cores_out(monkeypatch):
    monkeypatch.setattr(plan, "usable_cores", lambda: [0, 1, 2, 3, 4])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert plan.default_jobs() == 5 and plan.core_slots(1) == [None]
    assert plan.core_slots(2) == [[0, 2, 4], [1, 3]]
    assert plan.core_slots(7) == [[0], [1], [2], [3], [4], [0], [1]]  # more runs than cores: they share
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert plan.default_jobs() == 1 and plan.core_slots(2) == [None, None]  # an accelerator: no pinning


@pytest.mark.fast
def test_grid_flag_sets_and_sweeps_config_keys():
    assert plan.parse_grid(["config.lr=1e-3, 3e-3", "model_config.n_embed=32"]) == [
        ("lr", ["1e-3", "3e-3"]), ("model_config.n_embed", ["32"])]
    for items, message in ((["lr"], "give KEY=VALUE"), (["lr="], "give KEY=VALUE"), (["lr=1,"], "give KEY=VALUE"),
                           (["lr=1", "config.lr=2"], "lr is given twice")):
        with pytest.raises(plan.ReproduceError, match=re.escape(message)):
            plan.parse_grid(items)
    settings, points = plan.grid_points([("lr", ["1e-3", "3e-3"]), ("train_steps", ["4"]),
                                         ("model_config.n_embed", ["32", "64"])])
    assert settings == {"train_steps": "4"}
    assert [plan.point_name(p) for p in points] == ["lr=1e-3,n_embed=32", "lr=1e-3,n_embed=64", "lr=3e-3,n_embed=32",
                                                    "lr=3e-3,n_embed=64"]
    assert plan.grid_points([("lr", ["1"])])[1] == [{}]  # no swept key: one point, the suite itself
    assert plan.point_name({"model_config.n_head": "2", "model_config.cross_attn_config.n_head": "4"}) == (
        "model_config.n_head=2,model_config.cross_attn_config.n_head=4")  # leaves that clash: whole keys

    suite = suites.get("smoke")
    configs = {run.name: run.make_config() for run in suite.runs}
    grown, grown_configs = plan.expand(suite, configs, points)
    assert [run.name for run in grown.runs][:2] == ["tiny/lr=1e-3,n_embed=32", "tiny_baseline/lr=1e-3,n_embed=32"]
    c = grown_configs["tiny_baseline/lr=3e-3,n_embed=64"]
    assert (c.lr, c.model_config.n_embed, c.train_steps) == (3e-3, 64, configs["tiny_baseline"].train_steps)
    assert configs["tiny_baseline"].lr == suites.get("smoke").runs[1].make_config().lr  # the suite's own untouched
    comparison = grown.comparisons[1]
    assert comparison.name == "baselines_lr=1e-3,n_embed=32" and all(r.endswith("/lr=1e-3,n_embed=32")
                                                                     for r in comparison.runs)
    for settings, message in (({"lr_typo": "1"}, "run tiny: unknown config key lr_typo"),
                              ({"train_steps": "many"}, "run tiny: train_steps=many: "),
                              ({"lr": "-1"}, "run tiny: lr")):
        with pytest.raises(plan.config_lib.ConfigError, match=re.escape(message)):
            plan.apply(configs["tiny"], settings, "run tiny")
    assert plan.apply(configs["tiny"], {"model_config.use_bias": "true"}, "x").model_config.use_bias is True


@pytest.mark.slow
def test_a_grid_trains_each_point_in_its_folder_and_tables_it(tmp_path, tokens, smoke):
    """`--grid config.lr=...` with a `--config.` override: every run at each rate in <run>/<point>/, the
    override in every config, a row and a figure per point, and the same command again trains nothing."""
    args = ["--suite", "smoke", "--out", str(tmp_path), "--data_dir", str(tokens), "--grid", "config.lr=1e-3,3e-3",
            "--config.train_steps=4"]
    result = run_reproduce(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["run"]: r for r in read_csv(tmp_path / "results.csv")}
    assert list(rows) == ["tiny/lr=1e-3", "tiny_baseline/lr=1e-3", "tiny/lr=3e-3", "tiny_baseline/lr=3e-3"]
    assert all(r["status"] == "finished" and r["step"] == "4" for r in rows.values())
    for name in rows:
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert (saved["lr"], saved["train_steps"]) == (float(name.split("lr=")[1]), 4)
    assert rows["tiny/lr=1e-3"]["val_loss"] != rows["tiny/lr=3e-3"]["val_loss"]
    md = (tmp_path / "results.md").read_text()
    assert "Set for every run: train_steps=4." in md and "Grid: 2 points (lr=1e-3; lr=3e-3)" in md
    assert os.path.isfile(tmp_path / "baselines_lr=3e-3.png")
    again = run_reproduce(*args)
    assert again.returncode == 0 and again.stdout.count(": skipped") == 4, again.stdout


@pytest.mark.fast
def test_seeds_flag():
    assert plan.parse_seeds(None) is None
    assert plan.parse_seeds("3") == [1337, 1338, 1339]  # a count: the config's seed and those after it
    assert plan.parse_seeds("7, 8,9") == [7, 8, 9] and plan.parse_seeds("7,") == [7]
    for text, message in (("0", "a count of seeds is 1 to 100"), ("1337", "write --seeds 1337,"),
                          ("-1", "non-negative integers"), ("two", "a count (3)"), ("²", "a count (3)"), ("7,²", "a count"), ("1.5", "a count"), (",", "a count"),
                          ("7,7", "repeated"), (f"{2**32},1", "below 2**32")):
        with pytest.raises(plan.ReproduceError, match=re.escape(message)):
            plan.parse_seeds(text)
    assert suites.workdirs("out", "mse", None) == [os.path.join("out", "mse")]  # no --seeds: the layout of before
    assert suites.workdirs("out", "mse", [7, 8]) == [os.path.join("out", "mse", "seed7"),
                                                     os.path.join("out", "mse", "seed8")]


def test_tiny_suite_is_the_seeds_comparison_at_tiny_size():
    configs = {run.name: run.make_config() for run in suites.get("tiny").runs}
    tiny = runner.config_lib.load(os.path.join(ROOT, "configs", "tiny.py"))
    assert configs["mse_pos_sub"].to_dict() == tiny.to_dict()
    m = configs["no_loss_no_pos"].model_config
    assert (m.embedding_loss_type, m.sub_pos_embed_to_decoder, m.embedding_loss_coeff) == ("NONE", "NO", None)
    assert (m.n_embed, m.n_layer) == (64, 2)
    assert runner.shape(configs["baseline"]) == "4 x 64"
    for c in configs.values():  # tiny's recipe for all four
        assert (c.train_steps, c.batch_size, c.lr, c.lr_decay_iters, c.model_config.context_size) == (
            1200, 8, 3e-3, 1200, 64)
    aed, matched = suites.count_params(configs["mse_pos_sub"]), suites.count_params(configs["matched_baseline"])
    assert abs(matched / aed - 1) < 0.01
    other = configs["matched_baseline"].copy_and_resolve_references()  # its depth is the closest one
    for step in (-1, 1):
        other.model_config.n_layer = configs["matched_baseline"].model_config.n_layer + step
        assert abs(suites.count_params(other) - aed) > abs(matched - aed)


def test_task_suite_runs_the_papers_two_aeds_and_a_matched_baseline():
    suite = suites.get("tasks", "cpu")
    assert len(suite.runs) == 3 * 2 * len(suites.TASK_SCALES["cpu"].widths) * 3
    assert {c.name for c in suite.comparisons} == {"mqar", "copy", "sort"}
    for run in suite.runs[:3] + suite.runs[-3:]:
        c, point = run.make_config(), run.point
        m = c.model_config
        assert c.dataset == f"task:{run.name.split('_')[0]}" and run.name.endswith(point.model)
        assert (m.context_size, m.alphabet_size) == (64, 128)
        if point.model == "mse_pos_sub":
            assert (m.embedding_loss_type, m.embedding_loss_coeff, m.use_ln_on_encoder_out, m.detach_type,
                    m.embedding_ln_type, m.sub_pos_embed_to_decoder) == ("MSE", 8.0, True, "ENCODER_OUT", "INIT",
                                                                         "YES_NO_LN")
        if point.model != "baseline":
            assert (m.n_embed, m.n_layer, m.cross_attn_config.n_head) == (point.width, 2, 2 * m.n_head)
        else:
            aed = suite.runs[suite.runs.index(run) - 2].make_config()
            assert abs(suites.count_params(c) / suites.count_params(aed) - 1) < 0.1
            assert abs(m.n_embed - point.width) <= point.width // 8
    for run in suites.get("tasks", "full").runs:  # every size of the GPU scale is one its task takes
        if run.point.model != "baseline":
            run.make_config()


@pytest.mark.fast
def test_no_two_experiment_modules_import_each_other():
    """The suites live in experiments/suites.py, which the commands and their libraries read: no import loop."""
    graph = {}
    for name in os.listdir(os.path.join(ROOT, "experiments")):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "experiments", name), encoding="utf-8").read())
            graph[name[:-3]] = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                                and node.module == "experiments" for alias in node.names} | {
                node.module.split(".")[1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("experiments.")}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert graph["reproduce"] >= {"runner", "suites"} and graph["runner"] >= {"figures", "suites"}
    assert graph["plot"] >= {"figures", "suites"}
    assert not [name for name in graph if reaches(name, name)]


def test_dataset_flag_names_the_corpus_and_the_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "wikipedia").mkdir(parents=True)
    for split in ("train", "val"):
        np.zeros(1000, np.uint16).tofile(tmp_path / "data" / "wikipedia" / f"wikipedia_{split}.bin")
    assert plan.data_override(None, "wikipedia") == {"dataset": "wikipedia"}  # data/wikipedia
    assert plan.data_override("data/wikipedia") == {"data_dir": "data/wikipedia", "dataset": "wikipedia"}
    assert plan.data_override(None) == {}  # the built-in corpus, prepared on first use
    with pytest.raises(plan.data.DataError, match="data/other/other_train.bin: no such file"):
        plan.data_override(None, "other")  # before any training
    assert suites.default_out("seed", "full", "wikipedia") == os.path.join("runs", "seed_full-wikipedia")
    (tmp_path / "data" / "wikipedia" / "meta.json").write_text('{"source": "Hugging Face dataset wikimedia/'
                                                               'wikipedia", "train": {"tokens": 900}}')
    c = runner.config_lib.base_config()
    c.update(plan.data_override(None, "wikipedia"))
    assert runner._data_text(c) == ("`data/wikipedia` (dataset `wikipedia`): Hugging Face dataset "
                                       "wikimedia/wikipedia; 900 train tokens")  # results.md names the corpus
    assert suites.default_out("seed", "mini") == os.path.join("runs", "seed_mini")


def test_rope_suite_pairs_each_model_with_and_without_position_subtraction():
    """RoPE AED and baseline, each with and without pos sub, beside the seed's learned-table pair."""
    configs = {run.name: run.make_config() for run in suites.get("rope").runs}
    m = {name: c.model_config for name, c in configs.items()}
    for name in ("rope", "rope_no_pos_sub", "rope_baseline", "rope_baseline_pos_sub"):
        assert m[name].position_embedding_type == "ROPE"
    assert m["mse_pos_sub"].position_embedding_type == m["baseline"].position_embedding_type == "LEARNED"
    assert m["rope"].sub_pos_embed_to_decoder == m["rope_baseline_pos_sub"].sub_pos_embed_to_decoder == "YES_NO_LN"
    assert m["rope_no_pos_sub"].sub_pos_embed_to_decoder == m["rope_baseline"].sub_pos_embed_to_decoder == "NO"
    assert {configs[n].model_type for n in ("rope", "rope_no_pos_sub")} == {"aed"}
    assert {configs[n].model_type for n in ("rope_baseline", "rope_baseline_pos_sub")} == {"baseline"}


def test_cli_reports_user_errors_in_one_line():
    for args, message in ((["--runs", "nope"], "unknown run 'nope'"),
                          (["--suite", "smoke", "--scale", "mini"], "--scale"),
                          (["--suite", "tasks", "--scale", "mini"],
                           "--scale mini: --suite tasks takes cpu, calibrated, full or smoke"),
                          (["--seeds", "0"], "--seeds 0: a count of seeds is 1 to 100"),
                          (["--dataset", "not_prepared"], "data/not_prepared/not_prepared_train.bin: no such file"),
                          (["--suite", "emb_loss", "--notrain", "--out", os.path.join(ROOT, "runs", "no_such_out")],
                           "--notrain: "),
                          # A run --runs names must take the grid; one it leaves out need not (next test).
                          (["--suite", "emb_loss", "--runs", "no_loss_no_pos", "--grid",
                            "model_config.embedding_loss_coeff=0.1"], "run no_loss_no_pos: model_config.embedding_loss_coeff")):
        result = subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1 and result.stderr.startswith("error:") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_grid_leaves_out_the_unnamed_runs_that_cannot_take_it(tmp_path):
    """--runs norm_mse --grid embedding_loss_coeff=...: no_loss_no_pos (no embedding loss, so no coefficient) is
    out of this command and of its comparisons, not an error; the named run is trained at each point (here
    --notrain: the table's rows)."""
    out = tmp_path / "coeff"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--suite", "emb_loss", "--runs", "norm_mse",
                             "--grid", "model_config.embedding_loss_coeff=0.01,0.1", "--out", str(out), "--notrain"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "results.csv") as f:
        runs = [row["run"] for row in csv.DictReader(f)]
    assert "norm_mse/embedding_loss_coeff=0.01" in runs and "norm_mse/embedding_loss_coeff=0.1" in runs
    assert not any(run.startswith("no_loss_no_pos") for run in runs)
    suite = suites.get("emb_loss")
    narrowed = plan.without(suite, {"no_loss_no_pos"})
    assert [run.name for run in narrowed.runs] == [run.name for run in suite.runs if run.name != "no_loss_no_pos"]
    assert all("no_loss_no_pos" not in pair for c in narrowed.comparisons for pair in c.pairs) and narrowed.comparisons


@pytest.mark.slow
def test_colab_notebook_runs_headless_on_cpu(tmp_path, smoke):
    """Executes experiments/colab.ipynb with a tiny CPU setting injected after its parameters cell.

    Depends on `smoke` only so that it runs after it: the tiny config and its smoke overrides are
    the same, so the notebook's train step comes from the persistent compilation cache.
    """
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"CONFIG = 'configs/tiny.py'\nOVERRIDES = {suites.SMOKE_OVERRIDES!r}\nWORKDIR = {str(workdir)!r}\n"
        f"DATA_DIR = {str(data_dir)!r}\nEVAL_BATCHES = 2\nMAX_NEW_TOKENS = 5\nPROMPT = 'Paris is'",
        metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()

    text = lambda cell: "".join(o.get("text", "") for o in cell.get("outputs", []))
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "devices:" in "".join(map(text, code))
    assert os.path.isfile(data_dir / "wiki_vital_train.bin")  # the built-in corpus, really prepared
    assert "step 6: train loss" in "".join(map(text, code))
    assert png_size(workdir / "curves.png")[0] > 600
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for cell in code for o in cell.outputs)
    assert "ce_loss" in "".join(map(text, code)) and "perplexity" in "".join(map(text, code))
    assert text(code[-1]).startswith("Paris is") and len(text(code[-1]).strip()) > len("Paris is")


def test_colab_setup_cells_on_a_simulated_colab(tmp_path):
    """The notebook's Colab-only path without Colab, a network or pip: `google.colab` faked, a zip of a
    repository uploaded, pip recorded (its first call failing, as when the runtime's JAX is too old)."""
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    cells = {cell.id: cell.source for cell in nb.cells}
    (tmp_path / "uploads").mkdir()
    with zipfile.ZipFile(tmp_path / "uploads" / "aed_jax.zip", "w") as archive:  # GitHub's "Download ZIP" layout
        archive.writestr("aed_jax-main/setup.cfg", "[metadata]\nname = aed_jax\n")
        archive.writestr("aed_jax-main/aed_jax/__init__.py", "")
    record_pip = (
        "calls = []\n"
        "def fake_run(command, **kwargs):\n"
        "    constraints = open(command[command.index('-c') + 1]).read() if '-c' in command else None\n"
        "    calls.append((command[1:], constraints))\n"
        "    return subprocess.CompletedProcess(command, int(len(calls) == 1), '', 'ERROR: ResolutionImpossible')\n"
        "subprocess.run = fake_run")
    sources = [
        cells["parameters"],
        "import sys, types\ncolab = sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
        "colab.output = types.ModuleType('google.colab.output')  # jax's debugger imports it on Colab",
        cells["get-code"],  # 2: no REPO, no upload
        "os.replace('uploads/aed_jax.zip', 'aed_jax.zip')",
        cells["get-code"],  # 4: finds /content/aed_jax.zip (here tmp_path/aed_jax.zip)
        record_pip,
        cells["install"],  # 6
        "print(calls)",
        f"del sys.modules['google.colab']\nos.chdir({str(tmp_path)!r})",
        cells["get-code"],  # 9: outside Colab, not in a checkout
    ]
    run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    NotebookClient(run, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def error(i):
        errors = [o for o in run.cells[i].outputs if o.output_type == "error"]
        return errors[0].traceback if errors else None

    assert error(2) == ["error: no code to install: set REPO in the parameters cell to a git URL, a .zip or a "
                        "folder of the repository, or upload aed_jax.zip to /content (the first cell says how)"]
    assert error(4) is None and run.cells[4].outputs[-1].text == f"code: {tmp_path}/aed_jax_repo/aed_jax-main\n"
    calls = ast.literal_eval(run.cells[7].outputs[0].text)  # [(command without python, constraints text)]
    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib")}
    assert calls[0][0][:6] == ["-m", "pip", "install", "-q", "-e", "."] and calls[0][0][6] == "-c"
    assert {f"{name}=={v}" for name, v in versions.items()} <= set(calls[0][1].split())  # the runtime's JAX kept
    assert calls[1] == (["-m", "pip", "install", "-q", "-e", ".[cuda12]"], None)  # fallback: the CUDA 12 extra
    install_text = "".join(o.get("text", "") for o in run.cells[6].outputs)
    assert f"jax=={versions['jax']}, jaxlib=={versions['jaxlib']}" in install_text and "devices:" in install_text
    no_gpu = ["error: JAX sees no GPU: choose Runtime > Change runtime type > GPU (this restarts the runtime), "
              "then Runtime > Run all"]
    assert error(6) == (None if jax.default_backend() == "gpu" else no_gpu)
    assert error(9) == ["error: open this notebook from the aed_jax repository (or its experiments/ folder) after "
                        "pip install -e \".[dev]\""]


def test_colab_notebook_trains_the_cpu_quick_start_when_it_finds_no_gpu(tmp_path, capsys):
    """The parameters cell, then the prepare cell on this CPU: the seed-size CONFIG is swapped for
    configs/tiny.py (CPU_PRESET), with a line saying so; CPU_PRESET = False keeps it."""
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    parameters = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    prepare_cell = next(cell for cell in nb.cells if cell.cell_type == "code" and "prepare_wiki_vital" in cell.source)
    for split in ("train", "val"):  # token files already there: nothing to prepare
        np.arange(1000, dtype=np.uint16).tofile(tmp_path / f"wiki_vital_{split}.bin")
    for preset, expected in ((True, "configs/tiny.py"), (False, "configs/mse_pos_sub.py")):
        scope = {"os": os}
        exec(parameters.source, scope)
        scope.update(DATA_DIR=str(tmp_path), CPU_PRESET=preset)
        assert scope["CONFIG"] == "configs/mse_pos_sub.py"
        exec(prepare_cell.source, scope)
        assert scope["CONFIG"] == expected and scope["config"].model_config.n_embed == (64 if preset else 150)
        assert ("No GPU on this runtime: training configs/tiny.py" in capsys.readouterr().out) == preset


@pytest.mark.fast
def test_differences_give_p_values_holm_adjusted_over_the_page():
    """The tiny suite's committed per-seed val losses through `runner.differences`: each paired difference's
    p-value is scipy's paired t-test, the Holm family is the page's three differences (adjusted by hand from
    the sorted p-values), and each sentence says which of the three verdicts it is."""
    from scipy import stats as scipy_stats
    suite = suites.get("tiny")
    val = {(r["run"], int(r["seed"])): float(r["val_loss"])
           for r in read_csv(os.path.join(ROOT, "results", "tiny-2026-12-04", "seeds.csv"))}
    seed_rows = {run.name: [{"seed": seed, "estimate_step": 1200, "val_loss": v}
                            for (name, seed), v in val.items() if name == run.name] for run in suite.runs}
    diffs = runner.differences(suite, seed_rows)
    seeds = (1337, 1338, 1339)
    p = [scipy_stats.ttest_rel([val[d["a"], s] for s in seeds], [val[d["b"], s] for s in seeds]).pvalue for d in diffs]
    assert [d["p"] for d in diffs] == pytest.approx(p, rel=1e-9)
    order = sorted(range(3), key=lambda i: p[i])
    by_hand = [0.0] * 3
    by_hand[order[0]] = 3 * p[order[0]]
    by_hand[order[1]] = max(by_hand[order[0]], 2 * p[order[1]])
    by_hand[order[2]] = max(by_hand[order[1]], p[order[2]])
    assert [d["p_holm"] for d in diffs] == pytest.approx([min(1.0, v) for v in by_hand], rel=1e-9)
    for d in diffs:
        if d["p_holm"] < 0.05:
            assert "excludes zero after Holm correction (Holm-adjusted p = " in d["sentence"], d
        elif d["excludes_zero"]:
            assert "suggestive" in d["sentence"] and "over 3 comparisons)" in d["sentence"], d
        else:
            assert "the interval includes zero" in d["sentence"], d
    # mse_pos_sub - baseline: p = 0.0153, adjusted 3 x 0.0153 = 0.046: shown; - no_loss_no_pos (p = 0.049,
    # adjusted 2 x 0.049 = 0.098): suggestive.
    assert [d["b"] for d in diffs if "after Holm" in d["sentence"]] == ["baseline"]
    assert [d["b"] for d in diffs if "suggestive" in d["sentence"]] == ["no_loss_no_pos"]


def test_task_results_give_steps_to_each_accuracy_over_seeds(tmp_path):
    """results.csv and results.md of a task run from its seeds' logged curves: steps to 50% (every seed: the mean
    and its t-interval), 90% (two of three seeds: a count, no mean) and 99% (none: beyond the last estimate)."""
    suite = suites.get("tasks", "smoke")
    run = suite.runs[0]
    curves = {1: [(2, 0.3), (4, 0.6), (6, 0.95), (8, 0.9)], 2: [(2, 0.55), (4, 0.5), (6, 0.7), (8, 0.8)],
              3: [(2, 0.2), (4, 0.4), (6, 0.6), (8, 0.92)]}
    seed_rows = []
    for seed, curve in curves.items():
        workdir = tmp_path / f"seed{seed}"
        workdir.mkdir()
        with open(workdir / "metrics.jsonl", "w") as f:
            for step, accuracy in curve:
                f.write(json.dumps({"step": step, "train_loss": 1.0, "val_loss": 1.0, "val_token_accuracy": accuracy})
                        + "\n")
        c = suites.seed_config(run.make_config(), seed)
        seed_rows.append(runner.collect(run, c, str(workdir), 100))
    assert [(r["steps_to_50"], r["steps_to_90"], r["steps_to_99"]) for r in seed_rows] == [
        (4, 6, None), (2, None, None), (6, 8, None)]
    row = runner.aggregate(run, seed_rows)
    half = 4.302653 * 2 / math.sqrt(3)  # steps 4, 2, 6: mean 4, sd 2
    assert row["steps_to_50"] == pytest.approx(4) and row["steps_to_50_ci_low"] == pytest.approx(4 - half, abs=1e-4)
    assert (row["steps_to_50_reached"], row["steps_to_50_seeds"]) == ("3/3", "4 2 6")
    assert (row["steps_to_90"], row["steps_to_90_reached"], row["steps_to_90_seeds"]) == (None, "2/3", "6 >8 8")
    assert (row["steps_to_99"], row["steps_to_99_reached"]) == (None, "0/3")
    cells = [row["crossings"][key].text() for key in stats.STEPS_TO]
    assert cells == ["4 (95% CI -1 to 9, 3 seeds)", "2 of 3 seeds: 6, 8; > 8", "> 8"]
    one = dataclasses.replace(suite, comparisons=(dataclasses.replace(suite.comparisons[0], runs=(run.name,)),))
    md = "\n".join(runner._task_sections(one, [row], {}, []))
    assert "| steps to 50% | steps to 90% | steps to 99% |" in md and " | ".join(cells) in md


def test_the_emb_loss_suite_differs_from_mse_pos_sub_only_in_the_loss():
    """Each run of --suite emb_loss is the task suite's cpu AED on sort 8 in 64 tokens at width 32, the seed's
    MSE + pos sub run but for its own loss keys; the recipe is the same for every run."""
    configs = {run.name: run.make_config().to_dict() for run in suites.get("emb_loss").runs}
    assert list(configs) == [name for name, *_ in suites.EMB_LOSS_RUNS]
    seed = configs["mse_pos_sub"]
    assert (seed["dataset"], seed["task"]["sort_length"], seed["model_config"]["context_size"],
            seed["model_config"]["n_embed"], seed["train_steps"]) == ("task:sort", 8, 64, 32, 300)
    assert seed["model_config"]["embedding_loss_type"] == "MSE"
    for name, _, model, changes in suites.EMB_LOSS_RUNS:
        c = configs[name]
        assert {k: v for k, v in c.items() if k != "model_config"} == {k: v for k, v in seed.items() if k != "model_config"}
        if model == "mse_pos_sub":
            assert {k: v for k, v in c["model_config"].items() if seed["model_config"][k] != v} == changes
    assert configs["no_loss_no_pos"]["model_config"]["embedding_loss_type"] == "NONE"


@pytest.mark.fast
def test_results_say_where_the_wall_time_went(tmp_path):
    """Each run's phase seconds summed over its sessions' phase lines (seeds.csv's columns), results.csv's mean
    per timed seed, and results.md's table of the suite's totals and shares; a run without a phase line (an
    older one) is unknown, said so, and counted in no sum."""
    suite = suites.get("tasks", "smoke")
    run = suite.runs[0]
    lines = {1: [{"step": 2, "ce": 1.0}, {"step": 2, "val_loss": 1.0, "val_token_accuracy": 0.5},
                 {"step": 2, "time_startup_s": 1.0, "time_setup_s": 2.0, "time_compile_s": 3.0, "time_steps_s": 10.0,
                  "time_estimates_s": 1.5, "time_saves_s": 0.5, "time_total_s": 18.0},
                 {"step": 4, "ce": 0.5},
                 {"step": 4, "time_startup_s": 1.0, "time_setup_s": 1.0, "time_compile_s": 2.0, "time_steps_s": 20.0,
                  "time_estimates_s": 0.5, "time_saves_s": 1.5, "time_total_s": 26.0}],  # resumed: two sessions
             2: [{"step": 4, "ce": 0.7}, {"step": 4, "val_loss": 0.9, "val_token_accuracy": 0.6}]}  # no phase line
    seed_rows = []
    for seed, rows in lines.items():
        workdir = tmp_path / f"seed{seed}"
        workdir.mkdir()
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "ti')
        (workdir / "run.json").write_text(json.dumps({"wall_time_s": 50.0}))
        seed_rows.append(runner.collect(run, suites.seed_config(run.make_config(), seed), str(workdir), 100))
    assert [seed_rows[0][k] for k in runner.PHASE_COLUMNS] == pytest.approx([2.0, 3.0, 5.0, 30.0, 2.0, 2.0, 44.0])
    assert all(seed_rows[1][k] is None for k in runner.PHASE_COLUMNS)  # unknown, not zero
    row = runner.aggregate(run, seed_rows)
    assert (row["time_n"], row["time_steps_s"], row["time_total_s"]) == (1, pytest.approx(30.0), pytest.approx(44.0))
    assert row["time_steps_share"] == pytest.approx(30 / 44)
    for r in seed_rows:
        r["status"] = "partial"  # no checkpoint here; a run trained all the same
    md = "\n".join(runner._time_lines(seed_rows))
    assert "1 of the 2 runs have no phase line" in md and "their time is unknown and not counted" in md
    assert f"{30 / 44:.1%} of their wall time went to train steps" in md  # 68.2%
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| phase")]
    assert table == ["| start-up | 2.0 | 4.5% |", "| set-up | 3.0 | 6.8% |", "| compiling | 5.0 | 11.4% |",
                     "| steps | 30.0 | 68.2% |", "| estimates | 2.0 | 4.5% |", "| saves | 2.0 | 4.5% |",
                     "| total | 44.0 | 100.0% |"]
    seed_rows[1]["status"] = "not run"  # never trained: no time to count, and nothing unknown
    assert runner._time_lines(seed_rows[1:]) == ["## Where the wall time went", "", "No run has its phase times.", ""]
